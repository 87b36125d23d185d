"""The approximate classify operator: a proxy answers what it is certified to, the oracle the rest.

:class:`ApproxClassifyOp` runs a :class:`~semframe.plan.approx.SemApproxClassify` in five moves,
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
   threshold take the proxy's; the rest are asked of the oracle. No certified threshold: the
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

from semframe.execution.calibration import Certification, certify_threshold, default_sample_size
from semframe.execution.context import RunContext
from semframe.execution.lineage import Outcome, StepMetrics
from semframe.execution.provenance import Batch, scalar_ids
from semframe.execution.render import render_texts
from semframe.execution.resolver import StepInfo
from semframe.physical.base import EstimateContext, EstState
from semframe.physical.semantic import ClassifyOp, StepRun, gather, physical_for
from semframe.plan.approx import SemApproxClassify

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


@physical_for(SemApproxClassify)
class ApproxClassifyOp(ClassifyOp):
    node: SemApproxClassify

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
        if node.is_learned:
            train = set(random.Random(target.seed + 1).sample(sample, int(len(sample) * TRAIN_SHARE)))
            calibrate = [i for i in sample if i not in train]
            preds, scores = self._learned(texts, askable, outcomes, sorted(train))
            kind = "proxy"
        else:
            calibrate = list(sample)
            preds, scores = self._cascade(ctx, run, requests, texts, row_ids, askable)
            kind = "cascade"

        # 4. certify a threshold on rows the proxy did not learn from
        usable = [i for i in calibrate if outcomes[i].value is not None and i in preds]  # type: ignore[union-attr]
        cert = certify_threshold([scores[i] for i in usable],
                                 [preds[i] == outcomes[i].value for i in usable],  # type: ignore[union-attr]
                                 accuracy=target.accuracy, confidence=target.confidence)

        # 5. answer: proxy above the threshold, oracle below
        rest = [i for i in askable if i not in in_sample]
        t = cert.threshold
        by_proxy = [] if t is None else [i for i in rest if i in preds and scores[i] >= t]
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
        cal_note = cert.describe()
        for i in sample:
            o = outcomes[i]
            score = f", {kind} score {scores[i]:.3f}" if i in preds else ""
            outcomes[i] = dataclasses.replace(o, source="calibration", similarity=scores.get(i),  # type: ignore[arg-type]
                                              note=f"calibration sample (oracle answer from {o.source}{score}); "  # type: ignore[union-attr]
                                                   f"{cal_note}")
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
            "fallback": None if cert.certified else "no threshold certified: the oracle answered every row",
        }
        metrics.notes["approx_audit"] = ApproxPool(
            self.index, ctx.resolver.engine_of(run.info), [requests[i] for i in by_proxy],
            [None if row_ids is None else row_ids[i] for i in by_proxy], [preds[i] for i in by_proxy],
            [float(scores[i]) for i in by_proxy], [kind] * len(by_proxy))
        self.certification: Certification = cert
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
        proxy_metrics = StepMetrics(step=self.index, operator="classify", column=self.node.output_name)
        info = StepInfo(index=self.index, operator="classify", column=self.node.output_name, metrics=proxy_metrics,
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
        return text[:-1] + f"; approx accuracy >= {target.accuracy:g} @ confidence {target.confidence:g}]"  # type: ignore[union-attr]

    def detail_lines(self) -> list[str]:
        target = self.node.approx
        assert target is not None
        sample = "a fifth of the rows (200-2,000)" if target.sample is None else f"{target.sample} rows"
        return super().detail_lines() + [
            f"approx target: {target.describe()}, over the rows the proxy answers",
            f"calibration: oracle on {sample}, seed {target.seed}; threshold by fixed-sequence Clopper-Pearson tests",
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
