"""Engine batches answered by a pool of Ray actors: :class:`EnginePool` and :class:`PoolEngine`.

This is how :class:`~semframe.physical.ray.RayExecutor` runs *every* operator, not only the
row-wise ones: the physical operators run on the driver exactly as in a local run (a join's
candidate pairs, a reduce's levels, a top-k's comparison rounds, a cascade's proxy and oracle),
with the driver's own :class:`~semframe.execution.resolver.AnswerResolver` -- so the in-run memo,
the exact cache, the semantic cache, the budget and the progress display are the local ones --
and only the engine is remote. The run's engine is a :class:`PoolEngine`: an
:class:`~semframe.engines.base.Engine` whose :meth:`~PoolEngine.generate` splits each engine
batch over the pool's actors (contiguous chunks, one per actor), waits for all of them, and
returns the completions in the batch's order. Each actor (:class:`EngineActor`) builds each
engine it is asked for once, from an engine *spec* (a name or a function that makes the engine:
engines are never pickled), and answers with that engine's own ``generate``, so parsing, timing
and token counts are the engine's.

What the driver needs to know about an engine without running it -- its model name, its
fingerprint (the caches' key: a pool engine's answers are cached under the actors' engine's
fingerprint, so a local rerun finds them), its prices, its device, its context window -- is asked
once, when the pool builds the engine. Token counts (budgets, the reduce's packing) are asked of
an actor, which counts them with the engine's own tokenizer; they are remembered by text.

An actor that dies is restarted by Ray and the call retried (``max_restarts`` /
``max_task_retries``); the restarted actor rebuilds its engines on first use, since the spec
travels with every call (as one object in Ray's store, put once).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from semframe.engines.base import _USAGE_LOCK, Completion, Engine, RawCompletion, Request
from semframe.errors import EngineError, PlanError

#: Token counts a pool engine remembers (by request key or text), so memory stays bounded.
COUNT_MEMO = 100_000


def build_engine(spec: Any) -> Engine:
    """The engine an actor answers with: ``"default"``, an engine name, or a function of no
    arguments that returns one (see :func:`semframe.physical.ray.engine_spec`).

    >>> build_engine("deterministic").model
    'deterministic-v1'
    """
    from semframe.engines.registry import engine_by_name, resolve_engine

    if isinstance(spec, str):
        return resolve_engine(None) if spec == "default" else engine_by_name(spec)
    engine = spec()
    if not isinstance(engine, Engine):
        raise PlanError(f"RayExecutor: the engine function returned {type(engine).__name__}, not an Engine")
    return engine


def split_batch(n: int, actors: int, most: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk when ``n`` requests go to ``actors`` actors: contiguous,
    as even as possible, one per actor (more, round robin, if a chunk may hold at most ``most``).

    >>> split_batch(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    >>> split_batch(10, 2, most=3)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    >>> split_batch(1, 4)
    [(0, 1)]
    """
    if n <= 0:
        return []
    chunks = min(n, actors)
    if most is not None:
        chunks = max(chunks, math.ceil(n / most))
    base, extra = divmod(n, chunks)
    out, start = [], 0
    for i in range(chunks):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


class EngineActor:
    """One Ray actor of the pool: builds each engine it is asked for once and answers with it.

    Every method takes the engine's ``key`` and ``spec``; an actor that was restarted (its
    process died) rebuilds the engine from the spec on its first call.
    """

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}

    def _engine(self, key: str, spec: Any) -> Engine:
        engine = self.engines.get(key)
        if engine is None:
            engine = self.engines[key] = build_engine(spec)
        return engine

    def describe(self, key: str, spec: Any) -> dict[str, Any]:
        """What the driver needs to know about the engine (building it if needed)."""
        e = self._engine(key, spec)
        return {"model": e.model, "fingerprint": e.fingerprint(), "name": getattr(e, "name", "engine"),
                "device": getattr(e, "device", None), "pricing": e.pricing, "context_window": e.context_window,
                "constrained_decoding": e.constrained_decoding,
                "exact_counts": any(callable(getattr(e, a, None)) for a in ("count_prompt_tokens", "render"))}

    def generate(self, key: str, spec: Any, requests: list[Request]) -> list[Completion]:
        return self._engine(key, spec).generate(requests)

    def counts(self, key: str, spec: Any, requests: list[Request]) -> list[tuple[int, int, int]]:
        """Per request: its prompt tokens and the most (prompt, output) tokens answering it can bill."""
        from semframe.accounting.tokens import request_prompt_tokens

        e = self._engine(key, spec)
        out = []
        for r in requests:
            p = request_prompt_tokens(r, e)
            out.append((p, *e.token_bound(r, p)))
        return out

    def count_tokens(self, key: str, spec: Any, texts: list[str]) -> list[int]:
        e = self._engine(key, spec)
        return [e.count_tokens(t) for t in texts]

    def label_output_tokens(self, key: str, spec: Any, labels: tuple[str, ...], max_tokens: int | None) -> int | None:
        return self._engine(key, spec).label_output_tokens(labels, max_tokens)

    def ping(self) -> int:
        import os

        return os.getpid()


class EnginePool:
    """``num_actors`` :class:`EngineActor` s for one run, and a :class:`PoolEngine` per engine spec.

    Parameters
    ----------
    num_actors, num_cpus, num_gpus
        The actors and the Ray resources each asks for.
    max_retries
        Restarts of a dead actor and retries of its call.
    chunk
        The most requests one actor call takes (None: a batch is split in ``num_actors`` chunks).

    The actors start when the first engine is asked for (:meth:`engine`) and are killed by
    :meth:`close`.
    """

    def __init__(self, num_actors: int, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 3,
                 chunk: int | None = None):
        self.num_actors = num_actors
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.chunk = chunk
        self.actors: list[Any] = []
        self._engines: dict[str, PoolEngine] = {}
        self._specs: dict[int, tuple[Any, str]] = {}  # id(callable spec) -> (spec, key): keeps it alive

    def _start(self) -> None:
        import ray

        remote = ray.remote(EngineActor).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus or None, max_restarts=self.max_retries,
            max_task_retries=self.max_retries)
        self.actors = [remote.remote() for _ in range(self.num_actors)]

    def key_of(self, spec: Any) -> str:
        """A name for an engine spec: the name itself, or one per function object."""
        if isinstance(spec, str):
            return f"name:{spec}"
        known = self._specs.get(id(spec))
        if known is None:
            known = self._specs[id(spec)] = (spec, f"fn:{len(self._specs)}")
        return known[1]

    def engine(self, spec: Any) -> PoolEngine:
        """The pool engine for ``spec`` (built in every actor the first time, in parallel)."""
        import ray

        key = self.key_of(spec)
        engine = self._engines.get(key)
        if engine is None:
            if not self.actors:
                self._start()
            spec_ref = ray.put(spec)
            facts = ray.get([a.describe.remote(key, spec_ref) for a in self.actors])
            engine = self._engines[key] = PoolEngine(self, key, spec_ref, facts[0])
        return engine

    def call(self, method: str, key: str, spec_ref: Any, requests: Sequence[Any]) -> list[Any]:
        """``method`` of the actors over ``requests``, split in chunks; the results in order."""
        import ray

        chunks = split_batch(len(requests), len(self.actors), self.chunk)
        refs = [getattr(self.actors[i % len(self.actors)], method).remote(key, spec_ref, list(requests[a:b]))
                for i, (a, b) in enumerate(chunks)]
        return [x for part in ray.get(refs) for x in part]

    def close(self) -> None:
        """Kill the actors (their engines go with them)."""
        if not self.actors:
            return
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # pragma: no cover - an actor already gone
                pass
        self.actors = []
        self._engines.clear()


class PoolEngine(Engine):
    """The driver's view of one engine answered by an :class:`EnginePool`.

    It has the remote engine's model, fingerprint, prices, device and context window, so caches,
    lineage, cost and budgets treat it as that engine; :meth:`generate` sends each batch to the
    actors. Token counts are the remote engine's, asked of an actor and remembered (bounded).
    """

    def __init__(self, pool: EnginePool, key: str, spec_ref: Any, facts: dict[str, Any]):
        super().__init__()
        self.pool = pool
        self.key = key
        self.spec_ref = spec_ref
        self.facts = facts
        self.name = facts["name"]
        self.device = facts["device"]
        self.pricing = facts["pricing"]
        self.context_window = facts["context_window"]
        self.constrained_decoding = facts["constrained_decoding"]
        self._prompt_counts: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._text_counts: OrderedDict[str, int] = OrderedDict()
        self._labels: dict[tuple[tuple[str, ...], int | None], int | None] = {}

    @property
    def model(self) -> str:
        return self.facts["model"]

    def fingerprint(self) -> str:
        return self.facts["fingerprint"]

    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:  # pragma: no cover - not used
        raise EngineError("PoolEngine answers through generate(): its actors parse and time their own batches")

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """One engine batch, split over the actors; one completion per request, in order.

        Each completion is the actor engine's own (parsed and timed there), so the machine time a
        batch is charged is the actors' engine seconds, summed.
        """
        requests = list(requests)
        if not requests:
            return []
        start = time.perf_counter()
        done: list[Completion] = self.pool.call("generate", self.key, self.spec_ref, requests)
        if len(done) != len(requests):  # never silently: a lost answer is a bug
            raise EngineError(f"RayExecutor: the actors returned {len(done)} answers for {len(requests)} requests")
        with _USAGE_LOCK:
            self._count(done, time.perf_counter() - start)  # the usage totals, as every engine keeps them
        return done

    # ------------------------------------------------------------------ counting, as the engine counts

    def prefetch_counts(self, requests: Sequence[Request]) -> None:
        """Count a batch's requests in one call to the actors (before a budget checks them)."""
        missing = list({r.key: r for r in requests if r.key not in self._prompt_counts}.values())
        if missing:
            for r, c in zip(missing, self.pool.call("counts", self.key, self.spec_ref, missing)):
                _remember(self._prompt_counts, r.key, tuple(c))

    def _counts(self, request: Request) -> tuple[int, int, int]:
        got = self._prompt_counts.get(request.key)
        if got is None:
            self.prefetch_counts([request])
            got = self._prompt_counts[request.key]
        return got

    def count_prompt_tokens(self, request: Request) -> int:
        """The request's prompt tokens as the remote engine counts them (its chat template where
        it has one)."""
        return self._counts(request)[0]

    def token_bound(self, request: Request, prompt_tokens: int) -> tuple[int, int]:
        _, p, o = self._counts(request)
        return p, o

    def count_tokens(self, text: str) -> int:
        got = self._text_counts.get(text)
        if got is None:
            got = self.pool.call("count_tokens", self.key, self.spec_ref, [text])[0]
            _remember(self._text_counts, text, got)
        return got

    def label_output_tokens(self, labels: Sequence[str], max_tokens: int | None = None) -> int | None:
        k = (tuple(labels), max_tokens)
        if k not in self._labels:
            import ray

            self._labels[k] = ray.get(self.pool.actors[0].label_output_tokens.remote(
                self.key, self.spec_ref, k[0], max_tokens))
        return self._labels[k]


def _remember(memo: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    memo[key] = value
    if len(memo) > COUNT_MEMO:
        memo.popitem(last=False)


class PrefetchCounts:
    """An answer-resolver observer, placed before the budget: it counts each engine batch's
    prompts in one call to the actors, so the budget's per-request counts are answered locally."""

    def __init__(self, default: Engine | None):
        self.default = default

    def before_engine_batch(self, step: Any, requests: Sequence[Request]) -> None:
        engine = step.engine if getattr(step, "engine", None) is not None else self.default
        if isinstance(engine, PoolEngine):
            engine.prefetch_counts(requests)


def pool_engines(pool: EnginePool, spec_of: Callable[[Any], Any]) -> Callable[[Any], PoolEngine]:
    """``ref -> PoolEngine``: the pool engine for an engine reference (a step's ``engine=``)."""
    return lambda ref: pool.engine(spec_of(ref))
