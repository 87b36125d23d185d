"""Approximate classify and filter: a proxy answers what it is certified to, the oracle the rest.

:class:`ApproxClassifyOp` runs a :class:`~semframe.plan.approx.SemApproxClassify` (and
:class:`ApproxFilterOp` a :class:`~semframe.plan.approx.SemApproxFilter`, whose labels are YES
and NO) in five moves,
over its whole input (it needs every row to draw the sample):

1. **sample**: ``Target.sample`` rows (default :func:`~semframe.execution.calibration.default_sample_size`)
   drawn at random (``Target.seed``) from the rows with text;
2. **oracle on the sample**: asked through the answer resolver like any step (memo, exact cache,
   engine), so a rerun -- or a recalibration after new rows arrive -- asks nothing for rows
   already answered;
3. **proxy scores** for every row: the *learned proxy* (embeddings of the row's text, then
   scikit-learn's ``LogisticRegression``, a well-kept implementation, trained on the oracle
   answers of half the sample; its score is its largest class probability) or a *cascade*
   (a cheaper engine asked the same request under the same labels; its score is the probability
   of the label it chose, ``Completion.probabilities``);
4. **certify** a score threshold on the calibration rows the proxy was not trained on
   (:func:`~semframe.execution.calibration.certify_threshold`);
5. **answer**: calibration rows keep the oracle's answer; other rows scoring at or above the
   threshold take the proxy's (unless their text repeats a sampled row's: then the oracle's
   answer is reused, free); the rest are asked of the oracle. No certified threshold: the
   oracle answers every row, and metrics, lineage and the step's notes say so.

Lineage sources: ``calibration`` (an oracle answer of the sample; ``note`` says how it was
fetched), ``proxy`` / ``cascade`` (``note`` says the threshold and target), and the usual
``engine`` / ``exact_cache`` / ``dedup`` for the oracle rows below the threshold (``note`` says
so). In every row of the step ``similarity`` holds the proxy's score (where it has one). Metrics:
``proxy_answers`` counts the oracle calls saved; ``notes["approx"]`` has the certification.
``RunResult.audit(k)`` re-asks the oracle about ``k`` proxy-answered cells.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from semframe.execution.calibration import certify_threshold, default_sample_size
from semframe.execution.context import RunContext
from semframe.execution.lineage import Outcome, StepMetrics
from semframe.execution.provenance import Batch, scalar_ids
from semframe.execution.render import render_texts
from semframe.execution.resolver import StepInfo
from semframe.physical.base import EstimateContext, EstState
from semframe.physical.semantic import ClassifyOp, FilterOp, StepRun, gather, physical_for
from semframe.plan.approx import SemApproxClassify, SemApproxFilter

#: Share of the calibration sample the learned proxy trains on (the rest certifies it).
TRAIN_SHARE = 0.5


def _join(*notes: str | None) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


@dataclass
class ApproxPool:
    """The proxy-answered cells of one step, for :meth:`RunResult.audit`."""

    step: int
    engine: Any
    requests: list[Any]
    rows: list[int | None]
    values: list[str]
    scores: list[float]
    sources: list[str]


class ApproxRowOp:
    """The approximate algorithm (see the module doc), mixed in before an exact row operator
    (:class:`ApproxClassifyOp`, :class:`ApproxFilterOp`) whose requests and rows it reuses."""

    node: Any

    # ------------------------------------------------------------------ execution

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node, target = self.node, self.node.approx
        assert target is not None
        run = self.open_step(ctx)
        metrics = run.metrics
        batch = gather(self.inputs[0], ctx)
        start = time.perf_counter()
        texts, reasons = render_texts(node.template, batch.frame)
        requests = self.builder.build_all(texts)
        n = batch.height
        row_ids = scalar_ids(batch.ids)
        askable = [i for i, r in enumerate(requests) if r is not None]
        size = min(len(askable), target.sample if target.sample is not None else default_sample_size(len(askable)))
        rng = random.Random(target.seed)
        sample = sorted(rng.sample(askable, size))
        outcomes: list[Outcome | None] = [None] * n

        # 2. the oracle on the sample
        for i, o in zip(sample, self._resolve(ctx, run.info, requests, texts, row_ids, sample)):
            outcomes[i] = o
        metrics.add_all([outcomes[i] for i in sample])  # type: ignore[misc]

        # 3. proxy answers and scores (learned: train on part of the sample, certify on the rest)
        in_sample = set(sample)
        kind = "proxy" if node.is_learned else "cascade"
        calibrate: list[int] = []
        preds: dict[int, str] = {}
        scores: dict[int, float] = {}
        if len(sample) == len(askable):
            pass  # the sample is every row: the oracle answered all of them, no proxy is needed
        elif node.is_learned:
            train = set(random.Random(target.seed + 1).sample(sample, int(len(sample) * TRAIN_SHARE)))
            calibrate = [i for i in sample if i not in train]
            preds, scores = self._learned(texts, askable, outcomes, sorted(train))
        else:
            calibrate = list(sample)
            preds, scores = self._cascade(ctx, run, requests, texts, row_ids, askable)

        # 4. certify a threshold on rows the proxy did not learn from, for this table's rows:
        # the calibration rows are a random sample of the rows outside the training half.
        rest = [i for i in askable if i not in in_sample]
        usable = [i for i in calibrate if i in preds]  # an oracle null counts as the proxy being wrong
        # A row repeating a sampled row's text takes the oracle's answer (a free dedup hit), so
        # the proxy does not answer it; whether the proxy was right on it is known.
        sampled: dict[str | None, Any] = {}
        if self.dedupe:
            for i in sample:
                sampled.setdefault(texts[i], outcomes[i].value)  # type: ignore[union-attr]
        known = [i for i in rest if i in preds and texts[i] in sampled]
        cert = certify_threshold([scores[i] for i in usable],
                                 [preds[i] == outcomes[i].value for i in usable],  # type: ignore[union-attr]
                                 accuracy=target.accuracy, confidence=target.confidence,
                                 population=[scores[i] for i in usable + [j for j in rest if j in preds]],
                                 known_scores=[scores[i] for i in known],
                                 known_correct=[preds[i] == sampled[texts[i]] for i in known])

        # 5. answer: proxy above the threshold, oracle below
        t = cert.threshold
        by_proxy = [] if t is None else [i for i in rest if i in preds and scores[i] >= t
                                         and texts[i] not in sampled]
        proxied = set(by_proxy)
        by_oracle = [i for i in rest if i not in proxied]
        oracle_done = self._resolve(ctx, run.info, requests, texts, row_ids, by_oracle)
        metrics.add_all(oracle_done)
        below = (f"{kind} score below threshold {t:.4g}: asked the oracle" if t is not None
                 else f"no {kind} threshold certified: asked the oracle")
        for i, o in zip(by_oracle, oracle_done):
            outcomes[i] = dataclasses.replace(o, similarity=scores.get(i), note=_join(o.note, below))
        why = (f"score >= threshold {t:.4g} certified for {kind} accuracy >= {target.accuracy:g} "
               f"at confidence {target.confidence:g}") if t is not None else None
        for i in by_proxy:
            outcomes[i] = Outcome(preds[i], kind, similarity=float(scores[i]), note=why)
        metrics.add_all([outcomes[i] for i in by_proxy])  # type: ignore[misc]
        cal_note = cert.describe() if len(sample) < len(askable) else (
            f"the calibration sample is every row ({len(sample)}): the oracle answered all of them")
        for i in sample:
            o = outcomes[i]
            score = f", {kind} score {scores[i]:.3f}" if i in preds else ""
            note = f"calibration sample (oracle answer from {o.source}{score}); {cal_note}"  # type: ignore[union-attr]
            outcomes[i] = dataclasses.replace(o, source="calibration", similarity=scores.get(i),  # type: ignore[arg-type]
                                              note=note)
        for i in range(n):
            if outcomes[i] is None:
                outcomes[i] = Outcome(None, "skipped", error=reasons[i] or "no request")
                metrics.add(outcomes[i])  # type: ignore[arg-type]
        done: list[Outcome] = outcomes  # type: ignore[assignment]
        ctx.recorder.record(self.index, node.operator, node.output_name, run.model, batch.ids, done)

        metrics.notes["approx"] = {
            "source": kind, "target_accuracy": target.accuracy, "confidence": target.confidence,
            "sample": len(sample), "calibration_rows": cert.calibration_rows, "threshold": t,
            "certified": cert.certified, "lower_bound": cert.lower_bound, "proxy_answers": len(by_proxy),
            "oracle_rows": len(by_oracle), "summary": cal_note,
            "fallback": None if cert.certified else cal_note if len(sample) == len(askable)
            else "no threshold certified: the oracle answered every row",
        }
        metrics.notes["approx_audit"] = ApproxPool(
            self.index, ctx.resolver.engine_of(run.info), [requests[i] for i in by_proxy],
            [None if row_ids is None else row_ids[i] for i in by_proxy], [preds[i] for i in by_proxy],
            [float(scores[i]) for i in by_proxy], [kind] * len(by_proxy))
        metrics.rows_in += n
        out = self.emit_outcomes(batch, done)
        metrics.rows_out += out.height
        metrics.seconds += time.perf_counter() - start
        if ctx.progress is not None:
            ctx.progress.rows(n, step=self.index)
        self.close_step(ctx, run)
        yield out

    def _resolve(self, ctx: RunContext, info: StepInfo, requests: list[Any], texts: list[str | None],
                 row_ids: list[Any] | None, rows: list[int]) -> list[Outcome]:
        if not rows:
            return []
        got = ctx.resolver.resolve(info, [requests[i] for i in rows], [texts[i] for i in rows],
                                   None if row_ids is None else [row_ids[i] for i in rows])
        return got  # type: ignore[return-value]

    def _learned(self, texts: list[str | None], askable: list[int], outcomes: list[Outcome | None],
                 train: list[int]) -> tuple[dict[int, str], dict[int, float]]:
        """Logistic regression on embeddings, trained on the oracle answers of ``train``."""
        labelled = [i for i in train if outcomes[i].value is not None]  # type: ignore[union-attr]
        if not labelled:
            return {}, {}
        distinct = list(dict.fromkeys(texts[i] for i in askable))
        vectors = self._embed(distinct)  # type: ignore[arg-type]
        where = {t: j for j, t in enumerate(distinct)}
        X = vectors[[where[texts[i]] for i in askable]]
        pos = {i: j for j, i in enumerate(askable)}
        y = [outcomes[i].value for i in labelled]  # type: ignore[union-attr]
        classes = sorted(set(y))
        if len(classes) == 1:  # one label seen: the proxy can only say that, with full confidence
            return {i: classes[0] for i in askable}, {i: 1.0 for i in askable}
        from sklearn.linear_model import LogisticRegression

        # Weak regularization (C=10): C=100 certified more often on BBC headlines but made
        # overconfident errors on other data (docs/approximation.md).
        model = LogisticRegression(C=10.0, max_iter=2000)
        model.fit(X[[pos[i] for i in labelled]], y)
        proba = model.predict_proba(X)
        best = proba.argmax(axis=1)
        labels = model.classes_
        return ({i: str(labels[best[j]]) for j, i in enumerate(askable)},
                {i: float(proba[j, best[j]]) for j, i in enumerate(askable)})

    def _embed(self, texts: list[str]) -> np.ndarray:
        embedder = self.node.embedder
        if embedder is None:
            from semframe.cache.embed import default_embedder

            return np.asarray(default_embedder().embed(texts), dtype=np.float32)
        if hasattr(embedder, "embed") and not isinstance(embedder, str):
            return np.asarray(embedder.embed(texts), dtype=np.float32)
        from semframe.engines.embedding import resolve_embedder

        return np.asarray(resolve_embedder(embedder).embed(texts), dtype=np.float32)

    def _cascade(self, ctx: RunContext, run: StepRun, requests: list[Any], texts: list[str | None],
                 row_ids: list[Any] | None, askable: list[int]) -> tuple[dict[int, str], dict[int, float]]:
        """The cheaper engine's answers and label probabilities, through the resolver (cached)."""
        engine = ctx.engine_for(self.node.proxy)
        proxy_metrics = StepMetrics(step=self.index, operator=self.node.operator, column=self.node.output_name)
        info = StepInfo(index=self.index, operator=self.node.operator, column=self.node.output_name,
                        metrics=proxy_metrics,
                        engine=engine, dedupe=self.dedupe, exact_cache=self.exact_cache, probabilities=True)
        got = self._resolve(ctx, info, requests, texts, row_ids, askable)
        proxy_metrics.add_all(got)
        run.metrics.notes["cascade"] = {"model": getattr(engine, "model", "?"),
                                        "engine_requests": proxy_metrics.engine_requests,
                                        "reused": proxy_metrics.dedup_hits + proxy_metrics.exact_cache_hits,
                                        "engine_seconds": proxy_metrics.engine_seconds}
        preds: dict[int, str] = {}
        scores: dict[int, float] = {}
        for i, o in zip(askable, got):
            if o.value is None:
                continue
            preds[i] = o.value
            p = (o.probabilities or {}).get(o.value)
            scores[i] = float(p) if p is not None else 0.0  # no probability: never trusted
        return preds, scores

    # ------------------------------------------------------------------ display and estimate

    def describe(self) -> str:
        target = self.node.approx
        text = super().describe()
        assert target is not None
        return text[:-1] + f"; approx accuracy >= {target.accuracy:g} @ confidence {target.confidence:g}]"

    def detail_lines(self) -> list[str]:
        target = self.node.approx
        assert target is not None
        sample = "a fifth of the rows (200-2,000)" if target.sample is None else f"{target.sample} rows"
        return super().detail_lines() + [
            f"approx target: {target.describe()}, over the rows the proxy answers",
            f"calibration: oracle on {sample}, seed {target.seed}; threshold by fixed-sequence exact (hypergeometric) tests",
            "expected oracle calls saved: the rows outside the sample scoring above the certified threshold "
            "(up to rows - sample; 0 if nothing certifies); estimate() gives the range",
        ]

    def estimate(self, est: EstimateContext) -> EstState:
        state = super().estimate(est)
        step = est.steps[-1]
        target = self.node.approx
        assert target is not None
        rows = step.calls_high
        sample = min(rows, target.sample if target.sample is not None else default_sample_size(rows))
        # Best case: the proxy answers every row outside the sample; worst: nothing certifies.
        est.steps[-1] = dataclasses.replace(step, calls_low=min(step.calls_low, sample), rows_exact=False)
        return state


@physical_for(SemApproxClassify)
class ApproxClassifyOp(ApproxRowOp, ClassifyOp):
    node: SemApproxClassify


@physical_for(SemApproxFilter)
class ApproxFilterOp(ApproxRowOp, FilterOp):
    node: SemApproxFilter  # type: ignore[assignment]
