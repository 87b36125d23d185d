"""The semantic cache calibrates its own threshold (``semantic_cache=True`` / ``sf.Target``).

The engine is a :class:`~semframe.DeterministicEngine` answering from gold labels and the texts are
embedded by an engine serving vectors built here, so each test knows exactly which near-duplicates
share the engine's answer and how similar they are. The guarantee is then checked, not assumed:
every reused answer is compared with the answer the engine gives the row itself.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import polars as pl
import pytest

import semframe as sf
from semframe.cache.semantic import CALIBRATION_FLOOR, CalibratedThreshold
from semframe.engines.embedding import EmbeddingEngine

LABELS = ["A", "B", "C", "D"]
DIM = 64


class Vectors(EmbeddingEngine):
    """Serves the vectors of a dict (text -> vector); counts what it embedded."""

    name = "vectors"

    def __init__(self, table: dict[str, np.ndarray]):
        super().__init__(batch_size=4096)
        self.table = table

    @property
    def model(self) -> str:
        return "test-vectors"

    def fingerprint(self) -> str:
        return "test-vectors-v1"

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _near(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` similarity to the unit vector ``v``."""
    noise = rng.standard_normal(v.shape)
    noise -= (noise @ v) * v
    noise /= np.linalg.norm(noise)
    return _unit(cosine * v + np.sqrt(1 - cosine ** 2) * noise)


def make_table(n_items: int, *, twins: int, twin_cos: float = 0.99, look_alikes: int = 0,
               look_alike_cos: float = 0.9, seed: int = 0):
    """Texts ``item <k>`` (k < n_items) with a gold label each; ``twins`` of them get a
    near-duplicate ``item <k> (copy)`` (the same item: the same answer) at ``twin_cos``, and
    ``look_alikes`` a *different* item ``item <k'>`` at ``look_alike_cos`` with another label
    (the FEBRL case: two people whose records look alike, different surnames)."""
    rng = np.random.default_rng(seed)
    label = {k: LABELS[int(rng.integers(len(LABELS)))] for k in range(n_items + look_alikes)}
    table = {f"item {k}": _unit(rng.standard_normal(DIM)) for k in range(n_items)}
    texts = [f"item {k}" for k in range(n_items)]
    for k in range(twins):
        text = f"item {k} (copy)"
        table[text] = _near(table[f"item {k}"], twin_cos + 0.005 * (k % 2), rng)
        texts.append(text)
    for j in range(look_alikes):
        k, other = twins + j, n_items + j
        label[other] = next(x for x in LABELS if x != label[k])
        table[f"item {other}"] = _near(table[f"item {k}"], look_alike_cos, rng)
        texts.append(f"item {other}")
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], table, label


def gold_engine(label: dict[int, str]) -> sf.DeterministicEngine:
    """Answers each row with its item's gold label (the engine's own answer for the row)."""

    def respond(request):
        return label[int(re.search(r"item (\d+)", request.prompt_text).group(1))]

    return sf.DeterministicEngine(responder=respond)


def own_answer(label: dict[int, str], text: str) -> str:
    return label[int(re.search(r"item (\d+)", text).group(1))]


def classify(texts: list[str], semantic_cache=True):
    return pl.DataFrame({"text": texts}).lazy().semantic.classify("text", LABELS, name="c",
                                                                  semantic_cache=semantic_cache)


@pytest.fixture
def use_vectors():
    def configure(table):
        engine = Vectors(table)
        sf.configure(embedding_model=engine)
        return engine
    return configure


def _semantic_rows(run) -> pl.DataFrame:
    return run.lineage.filter(pl.col("source") == "semantic_cache")


# ---------------------------------------------------------------- the guarantee, checked


def test_twins_with_the_same_answer_certify_and_every_reuse_is_right(use_vectors):
    texts, table, label = make_table(400, twins=400)
    use_vectors(table)
    engine = gold_engine(label)
    run = classify(texts).run(engine, batch_size=1000, cache=False)
    notes = run.step_metrics[0].notes["semantic_cache"]
    assert notes["mode"] == "calibrated" and notes["certified"]
    assert notes["texts"] == 800 and notes["pool"] == 400
    assert notes["sampled"] == 118 and notes["agreeing"] == 118  # twice the fewest that can certify 0.95
    assert notes["threshold"] >= CALIBRATION_FLOOR and notes["lower_bound"] >= 0.95
    hits = _semantic_rows(run)
    assert hits.height == notes["reused"] == notes["candidates"] - notes["sampled"] > 0
    assert run.engine_requests == 800 - hits.height
    # every reused answer is the engine's own answer for that row
    out = run.df.with_columns(own=pl.col("text").map_elements(lambda t: own_answer(label, t), pl.String))
    assert (out["c"] == out["own"]).all()
    # lineage: whose answer, how similar, under which threshold
    assert hits["similarity"].min() >= notes["threshold"]
    assert all("calibrated threshold" in n and "accuracy >= 0.95" in n for n in hits["note"])
    assert hits["source_row_id"].null_count() == 0


def test_look_alikes_with_other_answers_keep_the_threshold_above_them(use_vectors):
    # 900 twins at 0.99-0.995 (same item), 200 look-alikes at 0.9 (another item, another label):
    # a fixed 0.9 would reuse wrong answers; the calibrated threshold stops above 0.9. (Enough
    # twins that the rows left to reuse after the sample are many: the bound is about them.)
    texts, table, label = make_table(1200, twins=900, look_alikes=200, look_alike_cos=0.9)
    use_vectors(table)
    run = classify(texts).run(gold_engine(label), batch_size=4000, cache=False)
    notes = run.step_metrics[0].notes["semantic_cache"]
    assert notes["certified"] and 0.9 < notes["threshold"] <= 0.99
    assert notes["agreeing"] < notes["sampled"]  # the sample saw look-alikes that disagree
    out = run.df.with_columns(own=pl.col("text").map_elements(lambda t: own_answer(label, t), pl.String))
    assert _semantic_rows(run).height > 0 and (out["c"] == out["own"]).all()
    fixed = classify(texts, semantic_cache=0.9).run(gold_engine(label), batch_size=4000, cache=False)
    wrong = fixed.df.with_columns(own=pl.col("text").map_elements(lambda t: own_answer(label, t), pl.String))
    assert (wrong["c"] != wrong["own"]).sum() > 0  # what the calibration avoided


def test_too_few_near_duplicates_certify_nothing_and_nothing_is_reused(use_vectors, caplog):
    texts, table, label = make_table(300, twins=30)
    use_vectors(table)
    with caplog.at_level("INFO", logger="semframe"):
        run = classify(texts).run(gold_engine(label), batch_size=100, cache=False)
    notes = run.step_metrics[0].notes["semantic_cache"]
    assert not notes["certified"] and notes["threshold"] is None
    assert notes["texts"] == 100  # calibrated on the first batch only
    assert "reuses no near-duplicate answers" in notes["summary"]
    assert _semantic_rows(run).height == 0 and run.engine_requests == len(texts)  # later batches too
    assert any("reuses no near-duplicate answers" in r.getMessage() for r in caplog.records)


def test_later_batches_reuse_at_the_certified_threshold(use_vectors):
    # The first batch (800 texts) holds the first 400 items and their twins; later rows are twins
    # of items of the first batch, answered from the cache at the certified threshold.
    texts, table, label = make_table(400, twins=400)
    rng = np.random.default_rng(1)
    later = [f"item {k} (again)" for k in range(100)]
    for k, text in enumerate(later):
        table[text] = _near(table[f"item {k}"], 0.985, rng)
    use_vectors(table)
    run = classify(texts + later).run(gold_engine(label), batch_size=800, cache=False)
    notes = run.step_metrics[0].notes["semantic_cache"]
    assert notes["certified"] and notes["texts"] == 800
    lin = run.lineage.sort("row_id")
    tail = lin.slice(800)
    assert (tail["source"] == "semantic_cache").all()
    assert tail["similarity"].min() >= notes["threshold"]
    assert (run.df.slice(800)["c"] == [own_answer(label, t) for t in later]).all()


def test_a_sample_size_and_a_target_can_be_chosen(use_vectors):
    texts, table, label = make_table(400, twins=400)
    use_vectors(table)
    target = sf.Target(accuracy=0.9, confidence=0.9, sample=40, seed=3)
    plan = classify(texts, semantic_cache=target)
    assert "semantic cache >= calibrated: accuracy >= 0.9 at confidence 0.9 (sample 40, seed 3)" in plan.explain()
    run = plan.run(gold_engine(label), batch_size=1000, cache=False)
    notes = run.step_metrics[0].notes["semantic_cache"]
    assert notes["sampled"] == 40 and notes["accuracy"] == 0.9 and notes["certified"]


# ---------------------------------------------------------------- reruns, fixed thresholds, plans


def test_a_rerun_asks_nothing_and_certifies_the_same_threshold(use_vectors):
    texts, table, label = make_table(400, twins=400)
    use_vectors(table)
    engine = gold_engine(label)  # one engine: a responder is part of the fingerprint
    first = classify(texts).run(engine, batch_size=1000)
    asked = engine.requests_seen
    again = classify(texts).run(engine, batch_size=1000)
    assert asked > 0 and engine.requests_seen == asked  # the rerun asked nothing
    a, b = first.step_metrics[0].notes["semantic_cache"], again.step_metrics[0].notes["semantic_cache"]
    assert (a["threshold"], a["sampled"], a["agreeing"]) == (b["threshold"], b["sampled"], b["agreeing"])
    assert first.df.equals(again.df)


def test_calibration_rows_say_so_in_lineage(use_vectors):
    texts, table, label = make_table(400, twins=400)
    use_vectors(table)
    run = classify(texts).run(gold_engine(label), batch_size=1000, cache=False)
    notes = run.lineage["note"].fill_null("")
    assert notes.str.contains("a pool row").sum() == 400
    sampled = run.lineage.filter(notes.str.contains("a sampled candidate"))
    assert sampled.height == 118 and (sampled["source"] == "engine").all()
    assert sampled["similarity"].min() >= CALIBRATION_FLOOR


def test_a_float_is_a_fixed_threshold_and_says_so(use_vectors):
    texts, table, label = make_table(50, twins=50)
    use_vectors(table)
    plan = classify(texts, semantic_cache=0.95)
    assert "semantic cache >= 0.95" in plan.explain()
    run = plan.run(gold_engine(label), cache=False)
    notes = run.step_metrics[0].notes["semantic_cache"]
    assert notes["mode"] == "fixed" and notes["threshold"] == 0.95
    hits = _semantic_rows(run)
    assert hits.height == 50  # no calibration: every twin reused at once
    assert all("fixed threshold 0.95 (not calibrated)" in n for n in hits["note"])


def test_the_setting_is_validated_and_survives_pickling():
    with pytest.raises(sf.PlanError, match=r"semantic_cache must be True \(a threshold calibrated"):
        classify(["a"], semantic_cache="yes")
    node = classify(["a"], semantic_cache=True).plan
    assert isinstance(node.semantic_cache, CalibratedThreshold)
    assert node.semantic_cache.target == sf.Target(accuracy=0.95, confidence=0.95)
    back = pickle.loads(pickle.dumps(node.semantic_cache))
    assert back == node.semantic_cache and back.target == node.semantic_cache.target
    assert CalibratedThreshold(sf.Target()) != 1.0  # not a fixed threshold of 1.0
    with pytest.raises(sf.PlanError, match="semantic_cache takes an accuracy target"):
        classify(["a"], semantic_cache=sf.Target(recall=0.9))


def test_an_audit_of_a_calibrated_step_re_asks_its_hits(use_vectors):
    from semframe.cache import audit_semantic_cache

    texts, table, label = make_table(400, twins=400)
    use_vectors(table)
    report = audit_semantic_cache(classify(texts), engine=gold_engine(label), k=20, batch_size=1000, cache=False)
    assert report.hits > 0 and report.checked == 20 and report.agreed == 20
    assert report.thresholds[0]["mode"] == "calibrated" and report.thresholds[0]["certified"]
    assert f"step 0: calibrated threshold {report.thresholds[0]['threshold']:.4g}" in str(report)


def test_a_batch_file_of_a_calibrated_step_holds_its_pool_first(tmp_path, use_vectors):
    # A batch file cannot answer the calibration's later rounds yet: it holds the pool (half the
    # distinct texts); the rest is written after its answers are loaded (the step is cut).
    texts, table, label = make_table(40, twins=0)
    use_vectors(table)
    summary = classify(texts).write_batch(tmp_path / "in.jsonl", engine=sf.DeterministicEngine())
    assert summary.requests == 20 and "depend on earlier answers" in str(summary)


def test_a_rerun_asks_nothing_when_the_first_run_reused_only_after_its_first_batch(use_vectors):
    # ~100 candidates in the first batch: all sampled, none reused there; later rows are reused.
    texts, table, label = make_table(400, twins=200)
    rng = np.random.default_rng(1)
    later = [f"item {k} (again)" for k in range(100)]
    for k, text in enumerate(later):
        table[text] = _near(table[f"item {k}"], 0.985, rng)
    use_vectors(table)
    engine = gold_engine(label)
    first = classify(texts + later).run(engine, batch_size=600)
    assert first.step_metrics[0].notes["semantic_cache"]["reused"] == 0
    assert first.step_metrics[0].semantic_cache_hits == 100
    asked = engine.requests_seen
    again = classify(texts + later).run(engine, batch_size=600)
    assert engine.requests_seen == asked and again.df.equals(first.df)


def test_a_calibrated_setting_survives_a_plan_file():
    plan = pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.classify("t", ["YES", "NO"], name="c", semantic_cache=True)
    back = sf.deserialize(plan.serialize())
    assert isinstance(back.plan.semantic_cache, CalibratedThreshold)  # not the 1.0 it poses as
    assert back.plan.semantic_cache == plan.plan.semantic_cache
    fixed = pl.DataFrame({"t": ["a"]}).lazy().semantic.classify("t", ["YES", "NO"], semantic_cache=0.9)
    assert sf.deserialize(fixed.serialize()).plan.semantic_cache == 0.9
