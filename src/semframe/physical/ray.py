"""Run a plan's semantic steps on a Ray cluster: :class:`RayExecutor`.

``plan.collect(executor=sf.RayExecutor(num_actors=2))`` plans the query exactly as a local run
does (same optimizer, same physical operators), then runs it in one of two ways:

- **pool** (any plan; chosen for a plan with a join, an aggregate, a top-k or sort, a cluster or
  dedup, an approximate step, an embedding step, a step that asks every row or uses the semantic
  cache, and for any run with a budget): the physical operators run on the driver unchanged,
  with the driver's resolver, caches, budget and progress; only the engine is remote -- each
  engine batch is split over a pool of actors and the completions gathered in order
  (:mod:`semframe.physical.ray_pool`). The budget is checked on the driver before each batch is
  sent, so it holds across the cluster exactly as it holds locally.
- **data** (row-wise plans: classify, filter, extract, map), below.

In the data mode each row-wise semantic step runs on a pool of Ray Data actors:

1. the driver runs everything below the step with polars (the local operators) and takes the
   step's input a window at a time (``window_rows`` rows: a frame and its provenance ids);
2. it renders the step's prompts and builds the requests (the same ``RequestBuilder``), and
   keeps one request per distinct request key -- the cluster-wide dedup: a text repeated on
   many rows is asked once, whichever actor would have got it;
3. those distinct requests go to Ray as Arrow blocks (``ray.data.from_arrow``, at least one
   block per actor); ``map_batches`` with an actor pool (``ActorPoolStrategy(size=n)``) answers
   them: each actor builds its engine once, from an engine *spec* (an engine name such as
   ``"deterministic"`` or a model path, or a function that makes the engine: engines are never
   pickled) and answers through its own :class:`~semframe.execution.resolver.AnswerResolver`
   over the shared exact cache (the DuckDB store, which hands its lock between processes on one
   machine; or, with ``shared_cache=``, answer segments in a shared directory);
4. every answer comes back as data -- a pickled :class:`~semframe.execution.lineage.Outcome` per
   request and the batch's engine counters -- and the driver joins the answers back to the
   rows (repeats become ``dedup`` rows naming the row first asked, as locally), records lineage
   and metrics into the run's recorder, and builds the step's output with the operator's own
   ``emit_outcomes``;
5. the relational steps above run on the driver, as locally.

So the same plan gives the same answers, lineage and engine-request counts on both executors
and in both modes (tests/ray/ checks this). The driver's progress display follows the blocks as
they come back (data) or the engine batches (pool). What is not built yet is listed in
docs/scale-out.md: relational steps as Ray operations. For workers on several machines, give
``RayExecutor(shared_cache=<a shared directory>)``: the exact cache is then answer segments there
(:mod:`semframe.cache.segments`), in both modes.
The data mode reads a step's input in windows of ``window_rows`` rows (one Ray Data execution
each), so the driver holds one window at a time; the pool mode streams batch by batch.

An actor that dies (a killed process, a lost node) is restarted by Ray and its batch retried
(``max_restarts`` / ``max_task_retries``); no row is ever dropped (``max_errored_blocks`` is never
used, and the driver checks that every request came back).
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from semframe import config
from semframe.engines.base import Engine
from semframe.errors import PlanError
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import LineageRecorder, Outcome, StepMetrics
from semframe.execution.progress import Progress, progress_mode
from semframe.execution.provenance import Batch, scalar_ids
from semframe.execution.render import render_texts
from semframe.execution.resolver import AnswerResolver, StepInfo
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.executor import _failed_to_start, execute, prepare
from semframe.physical.ray_pool import EnginePool, PoolEngine, PrefetchCounts, build_engine
from semframe.physical.relational import rebatch
from semframe.physical.semantic import RowOperator, SemanticOperator, expected_rows, gather

__all__ = ["RayExecutor", "RayRowStep", "build_engine", "engine_spec"]

#: How a run uses the cluster (see :class:`RayExecutor`).
MODES = ("auto", "data", "pool")

#: Counters an actor reports per batch (the rest of a step's metrics come from its outcomes).
_BATCH_COUNTERS = ("engine_batches", "engine_retries", "engine_failures", "cache_rejects")


class RayExecutor:
    """Runs plans with their row-wise semantic steps on a Ray Data actor pool.

    Parameters
    ----------
    num_actors
        Actors per semantic step; each builds one engine (one model replica).
    num_cpus_per_actor, num_gpus_per_actor
        Ray resources each actor asks for (``num_gpus_per_actor=1``: one replica per GPU).
    batch_size
        Requests per actor call (one engine batch); None: the run's ``batch_size``.
    address
        The Ray cluster to join (``"auto"``: the one ``ray start --head`` started on this
        machine). None: the Ray already initialized in this process, else a local cluster bound to
        loopback only, with its files in a temporary directory, started on first use and stopped
        by :meth:`shutdown` (or at exit).
    engine
        The engine spec the actors build: an engine name (``"deterministic"``, a model folder, an
        OpenAI-compatible URL, a name registered with ``sf.configure(engines=...)`` whose entry is
        a function) or a function of no arguments that returns an engine. None: the run's
        ``engine=`` argument, else the configured engine, else the default vLLM engine.
    max_retries
        Restarts of a dead actor, and retries of its batch (finite, so a batch that kills every
        actor it reaches fails the run instead of looping).
    retry_on_errors
        Also retry a batch whose actor raised (Ray Data's ``actor_task_retry_on_errors``): True,
        or a list of exception types. Engine errors never reach Ray: the resolver turns them into
        null answers with a reason (``on_error="null"``) as in a local run.
    blocks_per_actor
        Arrow blocks per actor (more blocks: finer load balancing, more calls).
    cpus
        CPUs of the local cluster (None: Ray's default, every core); ignored with ``address``.
    mode
        How a run uses the cluster. ``"data"``: each row-wise step (classify, filter, extract,
        map) is one Ray Data execution over its distinct requests (streamed over
        ``num_actors * blocks_per_actor`` blocks; the driver waits for nothing but the end);
        other operators, budgets, ``dedupe=False`` / ``temperature > 0`` steps and the semantic
        cache are refused. ``"pool"``: every operator runs on the driver exactly as locally (the
        same physical operators, resolver, caches, budget and progress) and only the engine
        batches go to a pool of ``num_actors`` actors, each batch split over them
        (:mod:`semframe.physical.ray_pool`). ``"auto"`` (default): ``"data"`` for a plan it can
        run, else ``"pool"``.
    window_rows
        The data mode reads a step's input in windows of this many rows, each one Ray Data
        execution (its own actor pool start, a few seconds), so the driver holds one window at a
        time; repeats across windows are answered from the run's bounded memo. None: the whole
        input in one execution (the fewest pool starts, memory that grows with the rows).
    shared_cache
        A directory every node can read and write (a shared file system; a ``file://`` URL is
        taken as its path), or an object store's URL (``s3://bucket/prefix``,
        ``s3://bucket/prefix?region=eu-west-1``, ``gs://bucket/prefix``: any URL
        ``pyarrow.fs.FileSystem.from_uri`` opens), for a cluster-safe exact cache: answer
        segments, one file (object) per engine batch
        (:class:`~semframe.cache.segments.SegmentCache`). With it the data mode's actors and the
        pool mode's driver read and write the answers there instead of the DuckDB file under the
        cache directory (which actors on other machines cannot share). A directory is made
        absolute; a URL is checked here (a malformed one, or an unknown scheme, is a ValueError
        before any cluster starts) and handed to the actors as given. Credentials: from each
        node's environment (``AWS_ACCESS_KEY_ID`` ..., an instance role; recommended) or in the
        URL (``s3://KEY:SECRET@bucket/...``: never shown in ``repr`` or messages, but it travels
        to the actors and stays in ``shared_cache``). None (default): the DuckDB exact cache of
        ``sf.configure(cache_dir=...)``. ``cache=False`` still turns caching off; the semantic
        cache and embeddings then stay in memory for the run.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> ex = sf.RayExecutor(num_actors=2)  # starts nothing until a plan runs
    >>> ex.num_actors, ex.mode
    (2, 'auto')
    """

    def __init__(self, num_actors: int = 2, num_cpus_per_actor: float = 1, batch_size: int | None = None,
                 address: str | None = None, *, engine: Any = None, num_gpus_per_actor: float = 0,
                 max_retries: int = 3, retry_on_errors: bool | list[type] = False, blocks_per_actor: int = 2,
                 cpus: int | None = None, mode: str = "auto", window_rows: int | None = 100_000,
                 shared_cache: str | os.PathLike | None = None):
        if mode not in MODES:
            raise ValueError(f"RayExecutor: mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        for name, value, low in (("num_actors", num_actors, 1), ("blocks_per_actor", blocks_per_actor, 1),
                                 ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"RayExecutor: {name} must be an integer >= {low}, got {value!r}")
        if window_rows is not None and (isinstance(window_rows, bool) or not isinstance(window_rows, int)
                                        or window_rows < 1):
            raise ValueError(f"RayExecutor: window_rows must be a positive integer or None, got {window_rows!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"RayExecutor: batch_size must be a positive integer or None, got {batch_size!r}")
        self.num_actors = num_actors
        self.num_cpus_per_actor = num_cpus_per_actor
        self.num_gpus_per_actor = num_gpus_per_actor
        self.batch_size = batch_size
        self.address = address
        self.engine = engine
        self.max_retries = max_retries
        self.retry_on_errors = retry_on_errors
        self.blocks_per_actor = blocks_per_actor
        self.cpus = cpus
        self.mode = mode
        self.window_rows = window_rows
        self.shared_cache = _shared_cache_dir(shared_cache)  # a path, a URL, or None
        self._temp_dir: str | None = None  # set when this executor started a local cluster

    def __repr__(self) -> str:
        from semframe.cache.segments import redact_url

        where = self.address or "local"
        shared = f", shared_cache={redact_url(self.shared_cache)!r}" if self.shared_cache else ""
        return f"RayExecutor(num_actors={self.num_actors}, address={where!r}{shared})"

    # ------------------------------------------------------------------ the cluster

    def connect(self) -> None:
        """Join the cluster (or start the local one); a no-op when Ray is already initialized."""
        if self.address is None and "ray" not in sys.modules:
            # Read when ray is imported: without it a local cluster binds every interface and
            # advertises the machine's external address (measured: ../shared/DESIGN.md).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        if ray.is_initialized():
            return
        if self.address is not None:
            ray.init(address=self.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
            return
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            raise PlanError("RayExecutor: ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so "
                            "a local cluster would listen on every interface; set it before importing ray, or "
                            "call ray.init() yourself, or pass address=")
        self._temp_dir = tempfile.mkdtemp(prefix="semframe-ray-")
        atexit.register(self.shutdown)
        ray.init(num_cpus=self.cpus, include_dashboard=False, _temp_dir=self._temp_dir,
                 configure_logging=False, log_to_driver=False)

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the local cluster this executor started (a cluster it joined keeps running)."""
        if self._temp_dir is None:
            return
        import ray

        ray.shutdown()
        shutil.rmtree(self._temp_dir, ignore_errors=True)
        self._temp_dir = None

    # ------------------------------------------------------------------ running a plan

    def run(self, plan: Any, *, engine: Any = None, max_cost: float | None = None, max_tokens: int | None = None,
            sink: Any = None, **options: Any) -> Any:
        """Run ``plan`` (a logical plan) and return its :class:`~semframe.RunResult`.

        Row-wise plans run their steps on Ray Data (:class:`RayRowStep`); any other plan, and any
        plan with a budget, runs its operators on the driver with the engine batches answered by
        an actor pool (:mod:`semframe.physical.ray_pool`); ``mode`` chooses (see the class).
        """
        pool = None
        try:
            opts = RunOptions.resolve(config.settings, **options)
            plan, root = prepare(plan, opts)
            run_engine = self.engine if self.engine is not None else engine
            if run_engine is None:
                run_engine = config.settings.engine
            budget = max_cost is not None or max_tokens is not None
            if self._uses_pool(root, budget):
                pool = EnginePool(self.num_actors, self.num_cpus_per_actor, self.num_gpus_per_actor,
                                  self.max_retries, self.batch_size)
                ctx = self._pool_context(plan, root, run_engine, opts, pool, max_cost, max_tokens)
            else:
                state = _RunState(self, opts)
                root = self._distribute(root, run_engine, state)
                ctx = self._data_context(opts, state)
        except BaseException as exc:  # the run could not start: last_run says so, as for a local run
            if pool is not None:
                pool.close()
            if sink is not None:
                sink.close(ok=False)
            _failed_to_start(plan, exc)
            raise
        try:
            result = execute(root, ctx, plan, sink)
        finally:
            if pool is not None:
                pool.close()  # scale to zero: the actors (and their engines) go with the run
        if pool is None:
            result.engine_model = state.model
        return result

    def _uses_pool(self, root: PhysicalOp, budget: bool) -> bool:
        """Whether the run answers its engine batches from the actor pool (else Ray Data)."""
        if self.mode == "pool":
            return True
        reasons = [(op, why) for op in root.walk() if (why := _not_on_data(op)) is not None]
        if self.mode == "data":
            if budget:
                raise PlanError("RayExecutor(mode='data'): budgets (max_cost, max_tokens) are checked before "
                                "each engine batch, which only mode='pool' (or 'auto') does; drop mode='data'")
            if reasons:
                op, why = reasons[0]
                raise PlanError(f"RayExecutor(mode='data'): step {op.index} ({op.node.operator}) {why}; "
                                "use mode='auto' (its operators then run on the driver, asking the actor pool)")
            return False
        return budget or bool(reasons)

    def _data_context(self, opts: RunOptions, state: _RunState) -> RunContext:
        """The context of a run whose row-wise steps are Ray Data executions (the driver asks nothing)."""
        if state.steps:
            self.connect()
        recorder = LineageRecorder(enabled=opts.lineage)
        progress = _progress(opts, state.steps, None)
        # The driver never asks an engine: its resolver has none (the actors have theirs).
        return RunContext(engine=None, options=opts, recorder=recorder, progress=progress,
                          resolver=AnswerResolver(None, recorder=recorder))

    def _pool_context(self, plan: Any, root: PhysicalOp, run_engine: Any, opts: RunOptions, pool: EnginePool,
                      max_cost: float | None, max_tokens: int | None) -> RunContext:
        """The context of a run whose operators run on the driver as locally, with the engines
        answered by ``pool``: the local resolver, caches, budget and progress, unchanged."""
        from semframe.accounting.budget import Budget
        from semframe.accounting.prices import machine_price
        from semframe.accounting.throughput import throughput_for
        from semframe.physical.executor import _open_exact_cache, has_semantic, uses_llm
        from semframe.plan.nodes import walk

        llm_nodes = [n for n in walk(plan) if uses_llm(n)]
        engine_of = _EngineRefs(pool, run_engine)
        for n in llm_nodes:  # every engine the plan names can be sent, before the cluster starts
            engine_of.spec(n.engine)  # type: ignore[attr-defined]
        if llm_nodes:
            self.connect()
        eng = engine_of(None) if any(n.engine is None for n in llm_nodes) else None  # type: ignore[attr-defined]
        machine_engine = eng if eng is not None or not llm_nodes else engine_of(llm_nodes[0].engine)  # type: ignore[attr-defined]
        machine = machine_price(machine_engine)
        observers: list[Any] = []
        if max_cost is not None or max_tokens is not None:
            observers.append(PrefetchCounts(eng))  # one count call per batch, before the budget reads it
            observers.append(Budget(max_tokens=max_tokens, max_cost=max_cost, machine=machine,
                                    throughput=throughput_for(machine_engine, machine.kind), engine=machine_engine))
        steps = [op for op in root.walk() if isinstance(op, SemanticOperator)]
        progress = _progress(opts, steps, machine) if has_semantic(plan) else None
        if progress is not None:
            observers.append(progress)
        exact_cache = None
        if opts.cache and has_semantic(plan):
            exact_cache = _open_cache(("segments", self.shared_cache)) if self.shared_cache else _open_exact_cache()
        recorder = LineageRecorder(enabled=opts.lineage)
        return _PoolContext(engine=eng, options=opts, recorder=recorder, progress=progress, machine=machine,
                            resolver=AnswerResolver(eng, exact_cache=exact_cache, recorder=recorder,
                                                    observers=observers, on_error=opts.on_error,
                                                    memo_size=opts.memo_size),
                            engines=engine_of)

    def _distribute(self, op: PhysicalOp, run_engine: Any, state: _RunState) -> PhysicalOp:
        """The operator tree with every row-wise semantic step replaced by its Ray Data form."""
        op.inputs = tuple(self._distribute(child, run_engine, state) for child in op.inputs)
        if isinstance(op, SemanticOperator):
            node = op.node
            ref = node.engine if node.engine is not None else run_engine
            step = RayRowStep(op, state, engine_spec(ref, f"RayExecutor: step {op.index} ({node.operator})"),
                              memo_key=_memo_key(node.engine))
            state.steps.append(step)
            return step
        return op


def _not_on_data(op: PhysicalOp) -> str | None:
    """Why ``op`` cannot be a Ray Data step (None: it can, or it is not a semantic step)."""
    if not isinstance(op, SemanticOperator):
        return None
    if not (isinstance(op, RowOperator) and type(op).execute is RowOperator.execute):
        return "asks in rounds (not one request per row)"
    if not op.dedupe:
        return "asks every row (temperature > 0 or dedupe=False)"
    if op.node.semantic_cache is not None:
        return "uses the semantic cache"
    return None


def _progress(opts: RunOptions, steps: list[Any], machine: Any) -> Progress | None:
    """The run's progress display, as a local run makes it (None: off, or no semantic step)."""
    mode = progress_mode(opts.progress) if steps else None
    if not mode:
        return None
    progress = Progress(mode, machine=machine)
    progress.plan_steps((op.index, op.node.operator, op.node.output_name) for op in steps)
    return progress


class _EngineRefs:
    """``ref -> PoolEngine``: the pool engine a step's ``engine=`` names (None: the run's)."""

    def __init__(self, pool: EnginePool, run_engine: Any):
        self.pool = pool
        self.run_engine = run_engine

    def spec(self, ref: Any) -> Any:
        where = "RayExecutor" if ref is None else f"RayExecutor: engine {ref!r:.60}"
        return engine_spec(self.run_engine if ref is None else ref, where)

    def __call__(self, ref: Any) -> PoolEngine:
        return self.pool.engine(self.spec(ref))


@dataclass
class _PoolContext(RunContext):
    """A run context whose step engines (``engine_for``) are pool engines, not local ones."""

    engines: Any = None

    def engine_for(self, ref: Any) -> Any:
        return self.engine if ref is None and self.engine is not None else self.engines(ref)


class _RunState:
    """What the Ray steps of one run share: the executor, the options, the cross-step memo."""

    def __init__(self, executor: RayExecutor, options: RunOptions):
        self.executor = executor
        self.options = options
        self.steps: list[RayRowStep] = []
        self.model = ""
        #: (engine, request key) -> (outcome, step, first row id), bounded like the resolver's memo.
        self.memo: OrderedDict[tuple[Any, str], tuple[Outcome, int, int | None]] = OrderedDict()


def _memo_key(engine: Any) -> Any:
    """Which memo a step's answers go to: the run engine's (None) or its own engine's."""
    return None if engine is None else (engine if isinstance(engine, str) else id(engine))


def engine_spec(ref: Any, where: str = "RayExecutor") -> Any:
    """What an actor rebuilds its engine from: a name, or a function of no arguments.

    An engine *object* cannot be sent to an actor (a vLLM engine holds a model and processes):
    give its name, model path or URL, or a function that makes it.
    """
    if ref is None:
        return "default"
    if isinstance(ref, Engine):
        raise PlanError(f"{where}: an engine object cannot be sent to Ray actors (each actor builds its own); "
                        "pass a name ('deterministic', a model folder, a server URL) or a function that makes the "
                        "engine, e.g. engine=lambda: sf.DeterministicEngine(responder=...)")
    if isinstance(ref, str):
        registered = config.settings.engines.get(ref)
        if registered is None:
            from semframe.engines.registry import check_engine

            check_engine(ref, where)
            return ref
        ref = registered  # a registered name is only known in this process: send what it names
        if isinstance(ref, Engine):
            raise PlanError(f"{where}: engine name registered as an engine object; register a function that makes "
                            "it (sf.configure(engines={name: lambda: ...})) so each actor can build its own")
    if callable(ref):
        return ref
    raise PlanError(f"{where}: engine must be a name or a function that makes an engine, got {type(ref).__name__}")


class RayRowStep(PhysicalOp):
    """One row-wise semantic step whose requests are answered by a Ray Data actor pool."""

    def __init__(self, inner: RowOperator, state: _RunState, spec: Any, memo_key: Any = None):
        super().__init__(inner.node, inner.inputs)
        self.inner = inner
        self.state = state
        self.spec = spec
        self.memo_key = memo_key
        self.index = inner.index

    def describe(self) -> str:
        return f"{self.inner.describe()} on Ray ({self.state.executor.num_actors} actors)"

    def detail_lines(self) -> list[str]:
        return self.inner.detail_lines()

    def estimate(self, est: EstimateContext) -> EstState:
        self.inner.inputs = self.inputs
        return self.inner.estimate(est)

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        inner, node = self.inner, self.inner.node
        inner.inputs = self.inputs
        metrics = StepMetrics(step=inner.index, operator=node.operator, column=node.output_name)
        ctx.metrics.append(metrics)
        info = inner.step_info(metrics, None)
        progress = ctx.progress
        if progress is not None:
            progress.start_step(inner.index, node.operator, node.output_name,
                                expected_rows(self.inputs[0], progress), metrics)
        window = self.state.executor.window_rows
        windows = (rebatch(self.inputs[0].execute(ctx), window) if window is not None
                   else iter([gather(self.inputs[0], ctx)]))
        size = ctx.options.batch_size
        for batch in windows:
            out = self._answer_window(ctx, info, metrics, batch)
            for offset in range(0, out.height, size):
                yield out.slice(offset, size)
        if progress is not None:
            progress.end_step(inner.index)

    def _answer_window(self, ctx: RunContext, info: StepInfo, metrics: StepMetrics, batch: Batch) -> Batch:
        """One window of the step's input answered by one Ray Data execution: its output rows."""
        inner, node = self.inner, self.inner.node
        progress = ctx.progress
        start = time.perf_counter()
        texts, reasons = render_texts(node.template, batch.frame)
        requests = inner.builder.build_all(texts)
        ids = scalar_ids(batch.ids)
        row_id: Callable[[int], Any] = (lambda i: ids[i]) if ids is not None else (lambda i: None)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            if req is not None:
                groups.setdefault(req.key, []).append(i)
        outcomes: list[Outcome | None] = [None] * len(requests)
        memo, opts = self.state.memo, self.state.options
        ask: list[str] = []
        for key, rows in groups.items():
            hit = memo.get((self.memo_key, key))
            if hit is not None and not (info.probabilities and hit[0].probabilities is None):
                source = hit[2] if hit[1] == inner.index else None
                reused = _reused(hit[0], key, source)
                for i in rows:
                    outcomes[i] = reused
                continue
            ask.append(key)
            if ctx.recorder.enabled:
                ctx.recorder.remember_prompt(requests[rows[0]])  # type: ignore[arg-type]
        if progress is not None:  # the rows answered without asking: skipped, or an earlier step's answer
            progress.rows(batch.height - sum(len(groups[k]) for k in ask), step=inner.index)
        if ask:
            def answered(positions: list[int], outcomes: list[Outcome]) -> None:
                """A block came back: its rows (repeats included) are done."""
                if progress is not None:
                    progress.engine_batch([o for o in outcomes if o.source == "engine"], step=inner.index)
                    progress.rows(sum(len(groups[ask[p]]) for p in positions), step=inner.index)

            answers, counters = self._ask_cluster(info, [texts[groups[k][0]] for k in ask],  # type: ignore[misc]
                                                  [row_id(groups[k][0]) for k in ask], ask, answered)
            for name in _BATCH_COUNTERS:
                setattr(metrics, name, getattr(metrics, name) + counters.get(name, 0))
            if counters.get("pricing") is not None and metrics.pricing is None:
                metrics.pricing = counters["pricing"]
            for key, answer in zip(ask, answers):
                rows = groups[key]
                first = rows[0]
                outcomes[first] = answer
                if len(rows) > 1:
                    reused = _reused(answer, key, row_id(first))
                    for i in rows[1:]:
                        outcomes[i] = reused
                memo[(self.memo_key, key)] = (answer, inner.index, row_id(first))
                if len(memo) > opts.memo_size:
                    memo.popitem(last=False)
        done = [o if o is not None else Outcome(None, "skipped", error=reasons[i] if reasons else "no request")
                for i, o in enumerate(outcomes)]
        ctx.recorder.record(inner.index, node.operator, node.output_name, self.state.model, batch.ids, done)
        metrics.add_all(done)
        metrics.rows_in += batch.height
        out = inner.emit_outcomes(batch, done)
        metrics.rows_out += out.height
        metrics.seconds += time.perf_counter() - start
        return out

    def _ask_cluster(self, info: StepInfo, texts: list[str], row_ids: list[Any], keys: list[str],
                     answered: Callable[[list[int], list[Outcome]], None] | None = None,
                     ) -> tuple[list[Outcome], dict[str, Any]]:
        """Each distinct request answered once by the actor pool, in order, and the step's counters.

        The blocks are read as they come back (Ray Data streams them); ``answered(positions,
        outcomes)`` is told of each one (the progress display).
        """
        import pyarrow as pa
        import ray.data

        ex, opts = self.state.executor, self.state.options
        n = len(texts)
        table = pa.table({
            "pos": pa.array(range(n), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "row_id": pa.array(row_ids, pa.uint32()) if all(r is None or isinstance(r, int) for r in row_ids)
            else pa.nulls(n, pa.uint32()),
            "key": pa.array(keys, pa.string()),
        })
        cache_dir = None
        if info.exact_cache and opts.cache:
            cache_dir = (("segments", ex.shared_cache) if ex.shared_cache
                         else ("duckdb", str(config.cache_dir().resolve())))
        template = replace(info, metrics=StepMetrics(step=info.index, operator=info.operator, column=info.column),
                           engine=None)
        data_ctx = ray.data.DataContext.get_current()
        saved = (data_ctx.execution_options.preserve_order, data_ctx.actor_task_retry_on_errors)
        try:
            data_ctx.execution_options.preserve_order = True
            data_ctx.actor_task_retry_on_errors = ex.retry_on_errors
            blocks = max(1, min(n, ex.num_actors * ex.blocks_per_actor))
            ds = ray.data.from_arrow(table, override_num_blocks=blocks)
            with warnings.catch_warnings():  # max_restarts / max_task_retries have no named parameter yet
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
                ds = _map(ds, ray.data, self.spec, self.inner.builder, template, cache_dir, opts, ex,
                          actors=min(ex.num_actors, blocks))  # no idle engine for a few requests
            answers: list[Outcome | None] = [None] * n
            counters: dict[str, Any] = {}
            for part in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                positions = part.column("pos").to_pylist()
                got = []
                for pos, blob, stats in zip(positions, part.column("outcome").to_pylist(),
                                            part.column("stats").to_pylist()):
                    if answers[pos] is not None:
                        raise RuntimeError(f"RayExecutor: request {pos} of step {info.index} came back twice")
                    answers[pos] = outcome = pickle.loads(blob)
                    got.append(outcome)
                    if stats is not None:
                        batch_stats = pickle.loads(stats)
                        for name in _BATCH_COUNTERS:
                            counters[name] = counters.get(name, 0) + batch_stats[name]
                        counters.setdefault("pricing", batch_stats["pricing"])
                        if not self.state.model:
                            self.state.model = batch_stats["model"]
                if answered is not None:
                    answered(positions, got)
        finally:
            data_ctx.execution_options.preserve_order, data_ctx.actor_task_retry_on_errors = saved
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:  # never silently: a lost row is a failed run
            raise RuntimeError(f"RayExecutor: {len(missing)} of {n} requests of step {info.index} did not come "
                               "back from the actors")
        return answers, counters  # type: ignore[return-value]


def _shared_cache_dir(where: str | os.PathLike | None) -> str | None:
    """``RayExecutor(shared_cache=...)`` as an absolute directory path, or an object-store URL as
    given, checked (without the network) by pyarrow (None: none)."""
    from semframe.cache.segments import check_url, redact_url

    if where is None:
        return None
    text = os.fspath(where)
    if not isinstance(text, str) or not text:
        raise ValueError(f"RayExecutor: shared_cache must be a directory path or an object-store URL, "
                         f"got {redact_url(text) if isinstance(text, str) else where!r}")
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        check_url(text, what="RayExecutor: shared_cache")  # a ValueError, credentials redacted
        return text
    return os.path.abspath(os.path.expanduser(text))


def _open_cache(spec: tuple[str, str]) -> Any:
    """The exact cache a spec names: ("segments", dir) a SegmentCache, ("duckdb", dir) the DuckDB one."""
    kind, where = spec
    if kind == "segments":
        from semframe.cache.segments import SegmentCache

        return SegmentCache(where)
    from semframe.cache import open_exact_cache

    return open_exact_cache(where)


def _map(ds: Any, data: Any, spec: Any, builder: Any, info: StepInfo, cache_dir: tuple[str, str] | None,
         opts: RunOptions,
         ex: RayExecutor, actors: int) -> Any:
    """The step as ``map_batches`` on an actor pool of ``actors`` actors."""
    return ds.map_batches(
        StepActor,
        fn_constructor_kwargs={"engine_spec": spec, "builder": builder, "info": info, "cache_dir": cache_dir,
                               "on_error": opts.on_error, "memo_size": opts.memo_size},
        batch_size=ex.batch_size or opts.batch_size, batch_format="pyarrow",
        compute=data.ActorPoolStrategy(size=actors),
        num_cpus=ex.num_cpus_per_actor, num_gpus=ex.num_gpus_per_actor or None,
        max_restarts=ex.max_retries, max_task_retries=ex.max_retries,
    )


def _reused(answer: Outcome, key: str, source_row_id: Any) -> Outcome:
    """A repeat's outcome: the first row's answer, free (as the resolver's dedup makes it)."""
    return Outcome(answer.value, "dedup", key, answer.raw_output, answer.error, answer.finish_reason,
                   source_row_id=source_row_id, probabilities=answer.probabilities)


class StepActor:
    """A Ray Data actor: one engine, built once, answering one step's requests per Arrow batch
    through an :class:`~semframe.execution.resolver.AnswerResolver` over the shared exact cache
    (``cache_dir``: ("duckdb", the cache directory) or ("segments", ``RayExecutor(shared_cache=)``))."""

    def __init__(self, engine_spec: Any, builder: Any, info: StepInfo, cache_dir: tuple[str, str] | None,
                 on_error: str, memo_size: int):
        self.engine = build_engine(engine_spec)
        self.builder = builder
        self.info = info
        cache = _open_cache(cache_dir) if cache_dir is not None else None
        self.resolver = AnswerResolver(self.engine, exact_cache=cache, on_error=on_error, memo_size=memo_size)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = table.column("text").to_pylist()
        requests = [self.builder.build(t) for t in texts]
        for req, key in zip(requests, table.column("key").to_pylist()):
            if req.key != key:  # the driver and the actor must build the very same request
                raise RuntimeError("RayExecutor: an actor built a different request than the driver")
        metrics = StepMetrics(step=self.info.index, operator=self.info.operator, column=self.info.column)
        info = replace(self.info, metrics=metrics)
        outcomes = self.resolver.resolve(info, requests, texts, table.column("row_id").to_pylist())
        stats = {name: getattr(metrics, name) for name in _BATCH_COUNTERS}
        stats["pricing"] = metrics.pricing
        stats["model"] = self.engine.model
        n = len(outcomes)
        blobs = [pickle.dumps(o) for o in outcomes]
        return pa.table({
            "pos": table.column("pos"),
            "outcome": pa.array(blobs, pa.binary()),
            "stats": pa.array([pickle.dumps(stats)] + [None] * (n - 1), pa.binary()),
        })
