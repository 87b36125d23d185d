"""The answer resolver: the only code that talks to the answer sources.

An operator hands the resolver a list of requests (one per row, None for a row it skips) and
gets back one :class:`~semframe.execution.lineage.Outcome` per request. Each request is
answered by the first source that has it:

1. the in-run memo -- an identical request earlier in the run (when the step dedupes);
2. the persistent exact cache;
3. the semantic cache -- a near-duplicate text's answer (when the step has a threshold);
4. the engine: every request still open goes to it in one batch.

An operator may call :meth:`AnswerResolver.resolve` as often as it needs, with requests built
from earlier answers (rounds of a top-k, levels of a reduce). Observers (budgets, progress)
see each engine batch before it is sent -- and may stop the run there -- and after it returns.

When the engine fails a whole batch (it raises), the resolver retries it a few times with
exponential backoff and jitter (``tenacity``, a well-kept retry library, rather than a loop of
our own); a batch that still fails is split in halves, recursively, so that only the request(s)
the engine cannot answer fail: each of those becomes a null with the engine's error as the
reason, and the run completes. With ``on_error="raise"`` the first failure that survives the
retries stops the run instead, as :class:`~semframe.errors.EngineFailure` naming the step and
the batch (and carrying the partial result). Answers of finished batches are in the cache either
way. An engine that breaks its contract (the wrong number of results) is a bug, not a bad row:
that error is raised as it is.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from semframe.engines.base import Completion, Engine, Request
from semframe.errors import EngineFailure, PlanError, SemframeError
from semframe.execution.lineage import LineageRecorder, Outcome, StepMetrics

logger = logging.getLogger("semframe")


@dataclass
class StepInfo:
    """What the resolver needs to know about the step asking.

    ``semantic_key`` identifies the step for the semantic cache (its operator, shared text,
    template, spec and decoding settings); near-duplicates are only reused within one such key.
    """

    index: int
    operator: str
    column: str | None
    metrics: StepMetrics
    dedupe: bool = True
    exact_cache: bool = True
    semantic_threshold: float | None = None
    semantic_key: dict[str, Any] = field(default_factory=dict)
    #: The step's own engine (a model per step); None: the run's engine.
    engine: Engine | None = None
    #: The step shows label probabilities: an earlier answer without them (one cached before the
    #: cache stored them, or whose stored ones failed their check) is asked again, so every
    #: answered row has them where the engine gives them.
    probabilities: bool = False

    @property
    def where(self) -> str:
        return f"step {self.index} ({self.operator})"


class Observer(Protocol):
    """Sees engine batches. Either method may be left out."""

    def before_engine_batch(self, step: StepInfo, requests: Sequence[Request]) -> None: ...

    def after_engine_batch(self, step: StepInfo, completions: Sequence[Completion]) -> None: ...


class AnswerResolver:
    """Answers requests from the memo, the caches and the engine, in that order (see module doc).

    Parameters
    ----------
    engine
        The engine that answers what no cache has (None: a plan without semantic steps).
    exact_cache
        Optional persistent cache: ``get_many(fingerprint, keys) -> {key: Completion}``,
        ``put_many(fingerprint, [(key, Request, Completion)])`` and ``store`` (where semantic
        entries persist too). Answers are stored as each engine batch returns.
    recorder
        Keeps each request's prompt text once (for lineage).
    observers
        Objects with ``before_engine_batch`` / ``after_engine_batch`` (budgets, progress).
    on_error
        ``"null"`` (default): a request the engine cannot answer gets a null and a reason;
        ``"raise"``: stop the run with :class:`~semframe.errors.EngineFailure`.
    attempts
        Tries per engine batch before it is split (1 = no retry).
    backoff_s
        The first retry's wait; it doubles per retry (with jitter), up to 2 s.
    memo_size
        The most answers the in-run memo keeps (the oldest go first), so memory stays flat
        however many rows a run has; a repeat older than that comes from the exact cache (or,
        with the cache off, is asked again).
    """

    def __init__(self, engine: Engine | None, *, exact_cache: Any = None,
                 recorder: LineageRecorder | None = None, observers: Sequence[Any] = (),
                 on_error: str = "null", attempts: int = 3, backoff_s: float = 0.1, memo_size: int = 100_000):
        if on_error not in ("null", "raise"):
            raise ValueError(f"on_error must be 'null' or 'raise', got {on_error!r}")
        self.engine = engine
        self.on_error = on_error
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.memo_size = memo_size
        self.exact_cache = exact_cache
        self.recorder = recorder or LineageRecorder(enabled=False)
        self._before = [o.before_engine_batch for o in observers if hasattr(o, "before_engine_batch")]
        self._after = [o.after_engine_batch for o in observers if hasattr(o, "after_engine_batch")]
        self._memos: dict[str, OrderedDict[str, tuple[Completion, int, int | None]]] = {}  # per engine fingerprint
        self._samples: OrderedDict[str, int] = OrderedDict()
        self._semantic: dict[int, Any] = {}
        self._fingerprints: dict[int, str] = {}
        #: Every semantic-cache reuse of the run (for ``audit_semantic_cache``).
        self.semantic_hits: list[Any] = []

    def engine_of(self, step: StepInfo) -> Engine:
        """The engine that answers ``step``: its own, else the run's."""
        engine = step.engine if step.engine is not None else self.engine
        if engine is None:
            raise PlanError("a semantic step needs an engine; pass engine=... or sf.configure(engine=...)")
        return engine

    def fingerprint_of(self, step: StepInfo) -> str:
        """The fingerprint of the step's engine, computed once per engine (it keys the caches)."""
        engine = self.engine_of(step)
        fp = self._fingerprints.get(id(engine))
        if fp is None:
            fp = self._fingerprints[id(engine)] = engine.fingerprint()
        return fp

    def _memo_of(self, step: StepInfo) -> OrderedDict[str, tuple[Completion, int, int | None]]:
        fp = self.fingerprint_of(step) if step.engine is not None else ""
        memo = self._memos.get(fp)
        if memo is None:
            memo = self._memos[fp] = OrderedDict()
        return memo

    # ------------------------------------------------------------------ resolution

    def resolve(self, step: StepInfo, requests: Sequence[Request | None], texts: Sequence[str | None],
                row_ids: Sequence[int | None] | None = None) -> list[Outcome | None]:
        """One outcome per request (None where the request is None), in order.

        ``texts`` are the rows' rendered texts (the semantic cache embeds them); ``row_ids``
        name the rows whose answers others reuse (lineage's ``source_row_id``).
        """
        n = len(requests)
        ids: Sequence[int | None] = row_ids if row_ids is not None else [None] * n
        outcomes: list[Outcome | None] = [None] * n
        use_exact = step.exact_cache and self.exact_cache is not None
        # Rows still to answer, grouped by cache key. Deduping, that is the request key; else each
        # row is its own sample: the n-th row asking a request is sample n of it (its own cache
        # entry, so a rerun gives every row its own sample back).
        pending: dict[str, list[int]] = {}
        keyed: dict[str, Request] = {}
        memo = self._memo_of(step) if step.dedupe else None
        remember = self.recorder.remember_prompt if self.recorder.enabled else None
        for i, req in enumerate(requests):
            if req is None:
                continue
            key = req.key
            if step.dedupe:
                hit = memo.get(key)  # type: ignore[union-attr]
                if hit is not None and not (step.probabilities and hit[0].probabilities is None):
                    # Row ids name rows of one input: an answer first given to another step's row
                    # names no row here.
                    source = hit[2] if hit[1] == step.index else None
                    outcomes[i] = _outcome(hit[0], "dedup", key, source_row_id=source, free=True)
                    continue
                group_key = key
            else:
                k = self._samples.get(key, 0)
                self._samples[key] = k + 1
                if len(self._samples) > self.memo_size:
                    self._samples.popitem(last=False)  # bounded like the memo
                group_key = key if k == 0 else f"{key}#{k}"
            rows = pending.get(group_key)
            if rows is None:
                pending[group_key] = [i]
                keyed[group_key] = req
                if remember is not None:
                    remember(req)
            else:
                rows.append(i)
        if pending and use_exact:
            hits = self.exact_cache.get_many(self.fingerprint_of(step), set(pending))
            for gk in [gk for gk in pending if gk in hits]:
                comp = _revalidated(hits[gk], keyed[gk])
                if comp is not None and step.probabilities and comp.probabilities is None:
                    continue  # the step shows probabilities and this answer has none: ask again
                if comp is None:  # a stored answer that no longer fits its spec: ask again
                    step.metrics.cache_rejects += 1
                    continue
                self._fan_out(step, comp, "exact_cache", keyed[gk].key, pending.pop(gk), ids, outcomes)
        if not pending:
            return outcomes
        order = list(pending)
        if step.semantic_threshold is None:
            completions = self._ask_engine(step, [keyed[gk] for gk in order], order)
            for gk, comp in zip(order, completions):
                self._fan_out(step, comp, "engine", keyed[gk].key, pending[gk], ids, outcomes)
            return outcomes
        self._resolve_semantic(step, order, pending, keyed, texts, ids, outcomes)
        return outcomes

    def _resolve_semantic(self, step: StepInfo, order: list[str], pending: dict[str, list[int]],
                          keyed: dict[str, Request], texts: Sequence[str | None], ids: Sequence[int | None],
                          outcomes: list[Outcome | None]) -> None:
        """Reuse answers of near-duplicate texts; send one representative per cluster to the engine."""
        from semframe.cache.embed import text_digest
        from semframe.cache.semantic import SemanticHit

        cache = self._semantic_cache(step)
        group_texts: list[str] = [texts[pending[gk][0]] or "" for gk in order]
        vectors = cache.embed(group_texts)
        plan = cache.plan(vectors)
        for pos, hit in plan.hits.items():
            gk = order[pos]
            first = pending[gk][0]
            cache.note_hit(keyed[gk], group_texts[pos], hit, ids[first])
            self._fan_out(step, hit.completion, "semantic_cache", keyed[gk].key, pending[gk], ids, outcomes,
                          similarity=hit.similarity, source_row_id=hit.source_row_id)
        reps = plan.representatives
        completions = self._ask_engine(step, [keyed[order[p]] for p in reps], [order[p] for p in reps])
        answer = dict(zip(reps, completions))
        for p, comp in answer.items():
            self._fan_out(step, comp, "engine", keyed[order[p]].key, pending[order[p]], ids, outcomes)
        cache.add(vectors[reps], completions, [ids[pending[order[p]][0]] for p in reps],
                  [text_digest(group_texts[p]) for p in reps])
        # A member reuses its representative's answer; if that failed, it asks for itself.
        retry = [m for m, (rep, _) in plan.members.items() if not answer[rep].ok]
        retried = (dict(zip(retry, self._ask_engine(step, [keyed[order[m]] for m in retry],
                                                    [order[m] for m in retry])))
                   if retry else {})
        for m, (rep, sim) in plan.members.items():
            gk = order[m]
            if m in retried:
                self._fan_out(step, retried[m], "engine", keyed[gk].key, pending[gk], ids, outcomes)
                continue
            hit = SemanticHit(answer[rep], sim, ids[pending[order[rep]][0]])
            cache.note_hit(keyed[gk], group_texts[m], hit, ids[pending[gk][0]])
            self._fan_out(step, hit.completion, "semantic_cache", keyed[gk].key, pending[gk], ids, outcomes,
                          similarity=sim, source_row_id=hit.source_row_id)

    def _semantic_cache(self, step: StepInfo) -> Any:
        cache = self._semantic.get(step.index)
        if cache is None:
            from semframe.cache.embed import default_embedder
            from semframe.cache.semantic import SemanticCache, semantic_step_key

            embedder = default_embedder()
            key = semantic_step_key({**step.semantic_key, "engine": self.fingerprint_of(step)}, embedder.model_id)
            store = getattr(self.exact_cache, "store", None) if step.exact_cache else None
            cache = SemanticCache(key, step.semantic_threshold, embedder, store,  # type: ignore[arg-type]
                                  hits=self.semantic_hits)
            self._semantic[step.index] = cache
        return cache

    def _ask_engine(self, step: StepInfo, batch: list[Request], cache_keys: list[str]) -> list[Completion]:
        """One engine call; answers go to the exact cache (under ``cache_keys``) as soon as it returns."""
        if not batch:
            return []
        if step.metrics.pricing is None:  # the step is billed as its engine is: by token or by hour
            step.metrics.pricing = self.engine_of(step).pricing
        for before in self._before:
            before(step, batch)  # may raise (a budget) before anything is spent
        completions = self._generate(step, batch)
        step.metrics.engine_batches += 1
        if step.exact_cache and self.exact_cache is not None:
            self.exact_cache.put_many(self.fingerprint_of(step),
                                      [(k, r, c) for k, r, c in zip(cache_keys, batch, completions) if c.ok])
        for after in self._after:
            after(step, completions)
        return completions

    def _generate(self, step: StepInfo, batch: list[Request]) -> list[Completion]:
        """One engine batch under the failure policy (see the module docstring)."""
        import tenacity

        engine = self.engine_of(step)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=tenacity.wait_exponential_jitter(multiplier=self.backoff_s, max=2.0, jitter=self.backoff_s),
            retry=tenacity.retry_if_not_exception_type(SemframeError),  # our own errors are not transient
            before_sleep=lambda _: _count_retry(step),
            reraise=True,
        )
        try:
            return retrying(engine.generate, batch)
        except SemframeError:
            raise
        except Exception as exc:
            if self.on_error == "raise":
                raise EngineFailure(
                    f"{step.where}, engine batch {step.metrics.engine_batches + 1}: {type(engine).__name__} "
                    f"failed {len(batch)} request(s) after {self.attempts} attempt(s): {type(exc).__name__}: {exc}"
                ) from exc
            if len(batch) == 1:
                step.metrics.engine_failures += 1
                return [Completion(None, None, "error",
                                   error=f"engine failed: {type(exc).__name__}: {exc}".strip())]
            half = len(batch) // 2
            return self._generate(step, batch[:half]) + self._generate(step, batch[half:])

    def _fan_out(self, step: StepInfo, comp: Completion, source: str, key: str, rows: list[int],
                 ids: Sequence[int | None], outcomes: list[Outcome | None], *, similarity: float | None = None,
                 source_row_id: int | None = None) -> None:
        first = rows[0]
        outcomes[first] = _outcome(comp, source, key, free=source != "engine", similarity=similarity,
                                   source_row_id=source_row_id)
        if len(rows) > 1:
            reused = _outcome(comp, "dedup", key, source_row_id=ids[first], free=True)
            for i in rows[1:]:
                outcomes[i] = reused
        if step.dedupe:
            memo = self._memo_of(step)
            if key not in memo:
                memo[key] = (comp, step.index, ids[first])
                if len(memo) > self.memo_size:
                    memo.popitem(last=False)  # the oldest answer (O(1), unlike a dict's first key)


def _revalidated(comp: Completion, request: Request) -> Completion | None:
    """A cached answer parsed again from its raw text against the request's spec (None if it does
    not fit): what the cache file says is never trusted on its own."""
    if comp.text is None:
        return None
    try:
        value = request.spec.parse(comp.text)
    except Exception as exc:  # OutputError, or a broken stored text
        logger.warning("exact cache: a stored answer does not fit its spec (%s); asking the engine again", exc)
        return None
    probs = comp.probabilities
    if probs is not None:  # stored label probabilities: a distribution over this request's labels, or none
        from semframe.cache.store import checked_probabilities

        probs = checked_probabilities(probs, tuple(getattr(request.spec, "labels", None) or ()))
    return Completion(comp.text, value, comp.finish_reason, comp.prompt_tokens, comp.cached_prompt_tokens,
                      comp.output_tokens, comp.latency_s, probabilities=probs)


def _count_retry(step: StepInfo) -> None:
    step.metrics.engine_retries += 1


def _outcome(comp: Completion, source: str, key: str, *, source_row_id: int | None = None,
             free: bool = False, similarity: float | None = None) -> Outcome:
    """An Outcome from a completion; ``free`` rows reuse an answer and cost no tokens."""
    if free:
        return Outcome(comp.value, source, key, comp.text, comp.error, comp.finish_reason,
                       source_row_id=source_row_id, similarity=similarity, probabilities=comp.probabilities)
    return Outcome(comp.value, source, key, comp.text, comp.error, comp.finish_reason, comp.prompt_tokens,
                   comp.cached_prompt_tokens, comp.output_tokens, comp.latency_s, source_row_id, similarity,
                   comp.probabilities, comp.engine_s, comp.attempts, comp.note)
