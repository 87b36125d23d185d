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

**Pipelining.** A row-wise step streams batches; against an engine that answers without this
process's CPU (``Engine.pipelined``: a remote server), waiting for one batch's answers before
sending the next leaves the server idle while the answers are attached, recorded and passed on,
and drains its queue at the end of every batch. :meth:`AnswerResolver.submit` with
``overlap=True`` therefore sends the engine batch from a background thread (one per engine) and
returns at once; the operator builds and submits its next batch, then takes this one's answers
with :meth:`PendingAnswers.result`. Everything else stays on the calling thread, in order: the
observers see the batch before it is sent (a budget reserves its worst case until its answers
are counted), and answers reach the exact cache, the memo and lineage when the result is taken.
A request identical to one still in flight is not sent again: it waits for that answer (the
in-run dedup across batches). Only the executor's resolver pipelines (``pipeline=True``), only
steps without a semantic cache (near-duplicates need the earlier answers), and only where the
operator says it will read on (not under a ``head``, which may stop after this batch).

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
import threading
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

    def after_engine_batch(self, step: StepInfo, completions: Sequence[Completion],
                           requests: Sequence[Request]) -> None:
        """``requests`` is the very list ``before_engine_batch`` saw (batches in flight may be
        counted out of order: a budget matches its reservation by it)."""


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
                 on_error: str = "null", attempts: int = 3, backoff_s: float = 0.1, memo_size: int = 100_000,
                 pipeline: bool = False):
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
        self.pipeline = pipeline
        # Requests in flight on a background thread, by memo (engine) and key: their batch.
        self._inflight: dict[str, dict[str, PendingAnswers]] = {}
        self._pools: dict[int, Any] = {}  # one sending thread per engine
        self._outstanding: list[PendingAnswers] = []  # sent in the background, not taken yet

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
        return self.submit(step, requests, texts, row_ids).result()

    def submit(self, step: StepInfo, requests: Sequence[Request | None], texts: Sequence[str | None],
               row_ids: Sequence[int | None] | None = None, *, overlap: bool = False) -> PendingAnswers:
        """Start answering ``requests``; :meth:`PendingAnswers.result` gives what :meth:`resolve`
        returns. With ``overlap`` (the caller does other work before it takes the result), the
        engine batch is sent from a background thread where the resolver pipelines and the
        step's engine allows it (see the module docstring); otherwise everything is done here."""
        n = len(requests)
        ids: Sequence[int | None] = row_ids if row_ids is not None else [None] * n
        outcomes: list[Outcome | None] = [None] * n
        handle = PendingAnswers(self, step, outcomes, ids)
        pending, keyed = self._lookup(step, requests, ids, outcomes, handle)
        if not pending:
            if self._semantic_calibrating(step):  # the calibration's batch, answered already
                self._resolve_semantic(step, [], pending, keyed, texts, ids, outcomes)
            return handle
        order = list(pending)
        if step.semantic_threshold is not None:
            self._resolve_semantic(step, order, pending, keyed, texts, ids, outcomes)
            return handle
        batch = [keyed[gk] for gk in order]
        engine = self.engine_of(step)
        if overlap and self.pipeline and engine.pipelined:
            self._before_engine(step, batch)
            counts = _Counts()
            future = self._pool(engine).submit(self._generate, step, batch, counts)
            handle._send(order, pending, keyed, batch, future, counts)
            self._outstanding.append(handle)
            if step.dedupe:
                inflight = self._inflight.setdefault(self._memo_name(step), {})
                for gk in order:
                    inflight[gk] = handle
            return handle
        completions = self._ask_engine(step, batch, order)
        for gk, comp in zip(order, completions):
            self._fan_out(step, comp, "engine", keyed[gk].key, pending[gk], ids, outcomes)
        return handle

    def _lookup(self, step: StepInfo, requests: Sequence[Request | None], ids: Sequence[int | None],
                outcomes: list[Outcome | None], handle: PendingAnswers) -> tuple[dict[str, list[int]], dict[str, Request]]:
        """Answer what the memo and the exact cache can; the rest, grouped by cache key."""
        use_exact = step.exact_cache and self.exact_cache is not None
        # Rows still to answer, grouped by cache key. Deduping, that is the request key; else each
        # row is its own sample: the n-th row asking a request is sample n of it (its own cache
        # entry, so a rerun gives every row its own sample back).
        pending: dict[str, list[int]] = {}
        keyed: dict[str, Request] = {}
        memo = self._memo_of(step) if step.dedupe else None
        inflight = self._inflight.get(self._memo_name(step)) if step.dedupe else None
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
                owner = inflight.get(key) if inflight else None
                if owner is not None and owner is not handle:
                    handle._wait_for(owner, key, req, i)  # asked already, answer still in flight
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
        return pending, keyed

    def _memo_name(self, step: StepInfo) -> str:
        return self.fingerprint_of(step) if step.engine is not None else ""

    def _pool(self, engine: Engine) -> Any:
        pool = self._pools.get(id(engine))
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor

            pool = self._pools[id(engine)] = ThreadPoolExecutor(1, thread_name_prefix=f"semframe-{engine.name}-send")
        return pool

    def _finish_sent(self, handle: PendingAnswers) -> None:
        """Take a background batch's answers: as :meth:`_ask_engine` and the fan-out do after
        the engine returns (on the calling thread, in order)."""
        step, counts = handle.step, handle._counts
        try:
            completions = handle._future.result()
        finally:
            counts.apply(step.metrics)  # type: ignore[union-attr]
            inflight = self._inflight.get(self._memo_name(step))
            if inflight:
                for gk in handle._order:
                    if inflight.get(gk) is handle:
                        del inflight[gk]
        self._after_engine(step, handle._batch, handle._order, completions)
        for gk, comp in zip(handle._order, completions):
            self._fan_out(step, comp, "engine", handle._keyed[gk].key, handle._pending[gk], handle.ids, handle.outcomes)

    def settle(self) -> int:
        """Take every batch sent in the background whose answers no operator took (the run
        stopped above it): its answers reach the exact cache and the memo, and its tokens the
        budget -- finished work is never lost -- though not the result or lineage, which hold
        the rows passed on. Returns how many were settled."""
        left, self._outstanding = self._outstanding, []
        settled = 0
        for handle in left:
            if handle._done:
                continue
            try:
                handle.result()
                settled += 1
            except Exception:  # noqa: BLE001 - the run is ending for another reason already
                logger.debug("a batch in flight failed while the run stopped", exc_info=True)
        return settled

    def close(self, *, wait: bool = True) -> None:
        """Stop the sending threads. After a finished run nothing is in flight; after an
        interrupted one (``wait=False``) batches not yet started are cancelled and the one being
        sent is not waited for."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=wait, cancel_futures=not wait)

    def _resolve_semantic(self, step: StepInfo, order: list[str], pending: dict[str, list[int]],
                          keyed: dict[str, Request], texts: Sequence[str | None], ids: Sequence[int | None],
                          outcomes: list[Outcome | None]) -> None:
        """Reuse answers of near-duplicate texts; send one representative per cluster to the engine.

        A calibrated step (``semantic_cache=True`` or ``sf.Target``) calibrates its threshold on
        its first batch (:meth:`_calibrate_semantic`); if nothing certified, it reuses nothing."""
        from semframe.cache.embed import text_digest
        from semframe.cache.semantic import SemanticHit

        cache = self._semantic_cache(step)
        if cache.calibrating:
            self._calibrate_semantic(step, cache, order, pending, keyed, texts, ids, outcomes)
            return
        if cache.threshold is None:  # calibrated, and no threshold certified: the engine answers all
            self._ask_groups(step, order, pending, keyed, ids, outcomes)
            return
        how = cache.describe_threshold()
        if cache.target is None:
            step.metrics.notes.setdefault("semantic_cache", {"mode": "fixed", "threshold": cache.threshold,
                                                             "certified": False, "summary": how})
        group_texts: list[str] = [texts[pending[gk][0]] or "" for gk in order]
        vectors = cache.embed(group_texts)
        plan = cache.plan(vectors)
        for pos, hit in plan.hits.items():
            gk = order[pos]
            self._reuse_semantic(step, cache, keyed[gk], group_texts[pos], hit, pending[gk], ids, outcomes, how)
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
            self._reuse_semantic(step, cache, keyed[gk], group_texts[m], hit, pending[gk], ids, outcomes, how)

    def _reuse_semantic(self, step: StepInfo, cache: Any, request: Request, text: str, hit: Any, rows: list[int],
                        ids: Sequence[int | None], outcomes: list[Outcome | None], how: str) -> None:
        """Answer ``rows`` (one request) with a near-duplicate's answer; lineage's ``note`` says
        whose answer, how similar and under which threshold."""
        import dataclasses

        cache.note_hit(request, text, hit, ids[rows[0]])
        self._fan_out(step, hit.completion, "semantic_cache", request.key, rows, ids, outcomes,
                      similarity=hit.similarity, source_row_id=hit.source_row_id)
        source = "an earlier run's answer" if hit.source_row_id is None else f"row {hit.source_row_id}'s answer"
        outcomes[rows[0]] = dataclasses.replace(  # type: ignore[arg-type]
            outcomes[rows[0]], note=f"semantic neighbour: {source}, similarity {hit.similarity:.4f} >= {how}")

    def _ask_groups(self, step: StepInfo, groups: list[str], pending: dict[str, list[int]],
                    keyed: dict[str, Request], ids: Sequence[int | None],
                    outcomes: list[Outcome | None]) -> dict[str, Completion]:
        """Ask the engine for ``groups`` (cache keys of pending requests) in one batch; answers
        are fanned out to their rows as usual. Returns each group's completion."""
        if not groups:
            return {}
        completions = self._ask_engine(step, [keyed[gk] for gk in groups], list(groups))
        for gk, comp in zip(groups, completions):
            self._fan_out(step, comp, "engine", keyed[gk].key, pending[gk], ids, outcomes)
        return dict(zip(groups, completions))

    def _calibrate_semantic(self, step: StepInfo, cache: Any, order: list[str], pending: dict[str, list[int]],
                            keyed: dict[str, Request], texts: Sequence[str | None], ids: Sequence[int | None],
                            outcomes: list[Outcome | None]) -> None:
        """Calibrate a calibrated step's threshold on this batch, its first, and answer the batch
        (the procedure and its guarantee: :mod:`semframe.cache.semantic`, "Calibrated thresholds").

        The pool and the sampled candidates go through the usual path (a text already answered
        by the memo or the exact cache is not asked again), so a rerun of the same rows draws the
        same pool and sample, finds their answers in the exact cache and certifies the same
        threshold without asking the engine anything."""
        import random

        import numpy as np

        from semframe.cache.embed import text_digest
        from semframe.cache.semantic import (CALIBRATION_FLOOR, SemanticCalibration, SemanticHit,
                                             calibration_sample_size, nearest)
        from semframe.execution.calibration import THRESHOLDS, certify_threshold, min_rows_to_certify

        target = cache.target
        groups, first, answers = self._semantic_window(order, pending, texts, outcomes)
        distinct = sorted(first, key=first.__getitem__)

        def ask(positions: list[int]) -> list[str]:
            """Answers for these texts (the engine for those not answered yet); the ones asked."""
            asked = [distinct[p] for p in positions if distinct[p] not in answers]
            got = self._ask_groups(step, [gk for t in asked for gk in groups[t]], pending, keyed, ids, outcomes)
            for t in asked:
                answers[t] = got[groups[t][0]]
            return asked

        n = len(distinct)
        vectors = cache.embed(distinct) if n else np.zeros((0, 1), dtype=np.float32)
        pool = sorted(random.Random(target.seed).sample(range(n), n // 2))
        asked = ask(pool)
        in_pool = set(pool)
        pool_ok = [p for p in pool if answers[distinct[p]].ok]
        rest = [p for p in range(n) if p not in in_pool]
        sims, where = nearest(vectors[rest], vectors[pool_ok])
        neighbour = {p: (float(s), pool_ok[int(w)]) for p, s, w in zip(rest, sims, where) if s >= CALIBRATION_FLOOR}
        candidates = sorted(neighbour)
        size = calibration_sample_size(len(candidates), target.accuracy, target.confidence, target.sample)
        sample = sorted(random.Random(target.seed + 1).sample(candidates, size))
        asked += ask(sample)

        def agrees(p: int) -> bool:
            own, theirs = answers[distinct[p]], answers[distinct[neighbour[p][1]]]
            return own.ok and own.value == theirs.value

        sampled = set(sample)
        # The bound is about this batch's candidates (hypergeometric: the sample is drawn from
        # them without replacement), less the sampled ones and those answered some other way:
        # so it holds for exactly the rows reused below.
        known = [p for p in candidates if p not in sampled and distinct[p] in answers]
        cert = certify_threshold([neighbour[p][0] for p in sample], [agrees(p) for p in sample],
                                 accuracy=target.accuracy, confidence=target.confidence,
                                 thresholds=[t for t in THRESHOLDS if t >= CALIBRATION_FLOOR],
                                 min_rows=min_rows_to_certify(target.accuracy, target.confidence),
                                 population=[neighbour[p][0] for p in candidates],
                                 known_scores=[neighbour[p][0] for p in known],
                                 known_correct=[agrees(p) for p in known])
        cache.threshold = cert.threshold
        # The batch's other candidates at or above the threshold reuse their nearest pool answer.
        reuse = [] if cert.threshold is None else [
            p for p in candidates if p not in sampled and neighbour[p][0] >= cert.threshold and distinct[p] in groups
            and distinct[p] not in answers]
        how = cache.describe_threshold() if cert.threshold is not None else ""
        for p in reuse:
            sim, q = neighbour[p]
            hit = SemanticHit(answers[distinct[q]], round(sim, 4), ids[first[distinct[q]]])
            for gk in groups[distinct[p]]:
                self._reuse_semantic(step, cache, keyed[gk], distinct[p], hit, pending[gk], ids, outcomes, how)
        reused = {distinct[p] for p in reuse}
        asked += ask([p for p in range(n) if distinct[p] not in answers and distinct[p] not in reused])
        cache.calibration = SemanticCalibration(
            target.accuracy, target.confidence, n, len(pool), len(candidates), len(sample),
            sum(agrees(p) for p in sample), cert.threshold, cert.rows_above, cert.correct_above, cert.lower_bound,
            min_rows_to_certify(target.accuracy, target.confidence),
            sum(len(pending[gk]) for t in reused for gk in groups[t]))
        self._note_calibration(step, cache, [distinct[p] for p in pool], {distinct[p]: (neighbour[p], agrees(p))
                                                                          for p in sample}, distinct, first, ids, outcomes)
        if cert.threshold is not None:  # later batches reuse from every answer of this one
            position = {t: p for p, t in enumerate(distinct)}
            fresh = set(asked)
            for persist in (True, False):  # engine answers are stored; the exact cache's already were
                chosen = [t for t in distinct if t not in reused and (t in fresh) == persist]
                if chosen:
                    cache.add(vectors[[position[t] for t in chosen]], [answers[t] for t in chosen],
                              [ids[first[t]] for t in chosen], [text_digest(t) for t in chosen], persist=persist)

    def _semantic_calibrating(self, step: StepInfo) -> bool:
        """Whether ``step`` is a calibrated semantic step that has not calibrated yet in this run
        (its next batch is the calibration's, even if the memo and the exact cache answer it all)."""
        if step.semantic_threshold is None:
            return False
        return self._semantic_cache(step).calibrating

    @staticmethod
    def _semantic_window(order: list[str], pending: dict[str, list[int]], texts: Sequence[str | None],
                         outcomes: list[Outcome | None]) -> tuple[dict[str, list[str]], dict[str, int],
                                                                  dict[str, Completion]]:
        """The batch a calibration runs on, by distinct text: the pending groups asking it, its
        first row, and the answer of each text that the memo or the exact cache already gave."""
        row_text = {i: texts[i] or "" for gk in order for i in pending[gk]}
        groups: dict[str, list[str]] = {}
        for gk in order:
            groups.setdefault(row_text[pending[gk][0]], []).append(gk)
        for i, done in enumerate(outcomes):
            if done is not None and i not in row_text:
                row_text[i] = texts[i] or ""
        first: dict[str, int] = {}
        for i in sorted(row_text):
            first.setdefault(row_text[i], i)
        answers: dict[str, Completion] = {}
        for text, i in first.items():
            done = outcomes[i]
            if done is not None:  # an engine answer, from the memo or the exact cache
                answers[text] = Completion(done.raw_output, done.value, done.finish_reason or "stop",
                                           error=done.error, probabilities=done.probabilities)
        return groups, first, answers

    def _note_calibration(self, step: StepInfo, cache: Any, pool: list[str], sample: dict[str, Any],
                          distinct: list[str], first: dict[str, int], ids: Sequence[int | None],
                          outcomes: list[Outcome | None]) -> None:
        """Say what the calibration did: in the step's notes (``notes["semantic_cache"]``), in a
        log line, and in the lineage ``note`` of each pool and sampled row."""
        import dataclasses

        def _joined(*notes: str | None) -> str:
            return "; ".join(n for n in notes if n)

        calibration = cache.calibration
        step.metrics.notes["semantic_cache"] = calibration.as_dict()
        logger.info("%s: %s", step.where, calibration.describe())
        for text in pool:
            o = outcomes[first[text]]
            if o is not None:
                outcomes[first[text]] = dataclasses.replace(o, note=_joined(
                    o.note, "semantic cache calibration: a pool row (its answer is what near-duplicates would reuse)"))
        for text, ((sim, q), agreed) in sample.items():
            o = outcomes[first[text]]
            if o is not None:
                said = "agrees" if agreed else "differs"
                outcomes[first[text]] = dataclasses.replace(o, similarity=round(sim, 4), note=_joined(
                    o.note, f"semantic cache calibration: a sampled candidate; its nearest pool row "
                            f"(row {ids[first[distinct[q]]]}, similarity {sim:.4f}) {said}"))

    def _semantic_cache(self, step: StepInfo) -> Any:
        cache = self._semantic.get(step.index)
        if cache is None:
            from semframe.cache.embed import default_embedder
            from semframe.cache.semantic import SemanticCache, calibration_target, semantic_step_key

            embedder = default_embedder()
            key = semantic_step_key({**step.semantic_key, "engine": self.fingerprint_of(step)}, embedder.model_id)
            store = getattr(self.exact_cache, "store", None) if step.exact_cache else None
            target = calibration_target(step.semantic_threshold)
            threshold = None if target is not None else step.semantic_threshold
            cache = SemanticCache(key, threshold, embedder, store, hits=self.semantic_hits,  # type: ignore[arg-type]
                                  target=target)
            self._semantic[step.index] = cache
        return cache

    def _ask_engine(self, step: StepInfo, batch: list[Request], cache_keys: list[str]) -> list[Completion]:
        """One engine call; answers go to the exact cache (under ``cache_keys``) as soon as it returns."""
        if not batch:
            return []
        self._before_engine(step, batch)
        counts = _Counts()
        try:
            completions = self._generate(step, batch, counts)
        finally:
            counts.apply(step.metrics)
        self._after_engine(step, batch, cache_keys, completions)
        return completions

    def _before_engine(self, step: StepInfo, batch: list[Request]) -> None:
        if step.metrics.pricing is None:  # the step is billed as its engine is: by token or by hour
            step.metrics.pricing = self.engine_of(step).pricing
        for before in self._before:
            before(step, batch)  # may raise (a budget) before anything is spent

    def _after_engine(self, step: StepInfo, batch: list[Request], cache_keys: list[str],
                      completions: list[Completion]) -> None:
        step.metrics.engine_batches += 1
        if step.exact_cache and self.exact_cache is not None:
            self.exact_cache.put_many(self.fingerprint_of(step),
                                      [(k, r, c) for k, r, c in zip(cache_keys, batch, completions) if c.ok])
        for after in self._after:
            after(step, completions, batch)

    def _generate(self, step: StepInfo, batch: list[Request], counts: _Counts) -> list[Completion]:
        """One engine batch under the failure policy (see the module docstring). Retries and
        failures are counted in ``counts`` (this may run on a sending thread: the step's metrics
        are only touched by the thread that runs the operator)."""
        import tenacity

        engine = self.engine_of(step)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=tenacity.wait_exponential_jitter(multiplier=self.backoff_s, max=2.0, jitter=self.backoff_s),
            # Our own errors are not transient, and an interrupt (KeyboardInterrupt) is not an error.
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, Exception) and not isinstance(e, SemframeError)),
            before_sleep=lambda _: counts.add_retry(),
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
                counts.failures += 1
                return [Completion(None, None, "error",
                                   error=f"engine failed: {type(exc).__name__}: {exc}".strip())]
            half = len(batch) // 2
            return self._generate(step, batch[:half], counts) + self._generate(step, batch[half:], counts)

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


class _Counts:
    """Retries and failed requests of engine batches, counted apart from the step's metrics."""

    __slots__ = ("retries", "failures", "_lock")

    def __init__(self) -> None:
        self.retries = 0
        self.failures = 0
        self._lock = threading.Lock()

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def apply(self, metrics: StepMetrics) -> None:
        with self._lock:
            metrics.engine_retries += self.retries
            metrics.engine_failures += self.failures
            self.retries = self.failures = 0


class PendingAnswers:
    """The answers of one :meth:`AnswerResolver.submit`: :meth:`result` waits for any batch still
    in flight, attaches its answers, and gives one outcome per request (computed once)."""

    def __init__(self, resolver: AnswerResolver, step: StepInfo, outcomes: list[Outcome | None],
                 ids: Sequence[int | None]):
        self.resolver, self.step, self.outcomes, self.ids = resolver, step, outcomes, ids
        self._future: Any = None
        self._waits: list[tuple[PendingAnswers, str, Request, int]] = []
        self._done = False

    def _send(self, order: list[str], pending: dict[str, list[int]], keyed: dict[str, Request],
              batch: list[Request], future: Any, counts: _Counts) -> None:
        self._order, self._pending, self._keyed, self._batch = order, pending, keyed, batch
        self._future, self._counts = future, counts

    def _wait_for(self, owner: PendingAnswers, key: str, request: Request, row: int) -> None:
        self._waits.append((owner, key, request, row))

    @property
    def in_flight(self) -> bool:
        """Whether an engine batch of this submit is still being answered in the background."""
        return self._future is not None and not self._done

    def result(self) -> list[Outcome | None]:
        if self._done:
            return self.outcomes
        self._done = True
        resolver, step = self.resolver, self.step
        if self._future is not None:
            if self in resolver._outstanding:
                resolver._outstanding.remove(self)
            resolver._finish_sent(self)
        if self._waits:
            memo = resolver._memo_of(step)
            again: dict[str, tuple[Request, list[int]]] = {}
            for owner, key, request, row in self._waits:
                owner.result()  # an earlier batch: its answers enter the memo
                hit = memo.get(key)
                if hit is not None and not (step.probabilities and hit[0].probabilities is None):
                    source = hit[2] if hit[1] == step.index else None
                    self.outcomes[row] = _outcome(hit[0], "dedup", key, source_row_id=source, free=True)
                else:  # gone from the memo (a tiny memo_size), or without probabilities: ask here
                    again.setdefault(key, (request, []))[1].append(row)
            if again:
                keys = list(again)
                completions = resolver._ask_engine(step, [again[k][0] for k in keys], keys)
                for k, comp in zip(keys, completions):
                    resolver._fan_out(step, comp, "engine", k, again[k][1], self.ids, self.outcomes)
        return self.outcomes


def _outcome(comp: Completion, source: str, key: str, *, source_row_id: int | None = None,
             free: bool = False, similarity: float | None = None) -> Outcome:
    """An Outcome from a completion; ``free`` rows reuse an answer and cost no tokens."""
    if free:
        return Outcome(comp.value, source, key, comp.text, comp.error, comp.finish_reason,
                       source_row_id=source_row_id, similarity=similarity, probabilities=comp.probabilities)
    return Outcome(comp.value, source, key, comp.text, comp.error, comp.finish_reason, comp.prompt_tokens,
                   comp.cached_prompt_tokens, comp.output_tokens, comp.latency_s, source_row_id, similarity,
                   comp.probabilities, comp.engine_s, comp.attempts, comp.note)
