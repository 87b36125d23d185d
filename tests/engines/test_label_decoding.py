"""Labels in one decode step, and the label probabilities it gives for free.

The deterministic-engine tests run in the quick suite: they check the plan, the output column
(``classify(probabilities=True)``), lineage and the caches without vLLM. The vLLM tests check the
one-step path itself on the tiny random-weight model and on SmolLM2: the label table (which
labels get one step, which fall back to the grammar), one output token, labels mapped right,
probabilities summing to 1 over the labels, and the fallback.
"""

from __future__ import annotations

import math

import polars as pl
import pytest

import semframe as sf
from semframe.engines.base import Message, Request
from semframe.errors import PlanError
from semframe.plan.spec import ChoiceSpec, TextSpec

YES_NO = ChoiceSpec(("YES", "NO"))
TOPICS = ChoiceSpec(("business", "entertainment", "politics", "sport", "tech"))
#: Labels whose first word, hence first token on any byte-level BPE, is the same.
SHARED_FIRST = ChoiceSpec(("alpha one", "alpha two"))
TITLES = ["Battle of Waterloo", "Banana bread recipe", "Treaty of Versailles", "Knitting for beginners",
          "Fall of Rome", "The Congress of Vienna", "Stock markets rally", "New phone released",
          "Napoleon crowned emperor", "Premier League results", "The Hundred Years' War", "Film awards night"]
INSTRUCTION = "Is the title related to the history of Europe?\nAnswer with exactly one of: YES, NO."


def ask(text: str, spec: ChoiceSpec = YES_NO, max_tokens: int | None = None) -> Request:
    return Request((Message("system", INSTRUCTION), Message("user", text)), spec,
                   max_tokens or spec.default_max_tokens())


def assert_distribution(probabilities: dict[str, float], spec: ChoiceSpec, value: str) -> None:
    assert list(probabilities) == list(spec.labels)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)
    assert probabilities[value] > 0.0


# -- the deterministic engine: plan, output column, lineage, caches ---------------------------------


def frame() -> pl.DataFrame:
    return pl.DataFrame({"title": ["Battle of Waterloo", "Banana bread", "Battle of Waterloo", None, "Fall of Rome"]})


def test_classify_probabilities_column(engine):
    out = frame().semantic.classify("title", ["pos", "neg", "mid"], name="s", probabilities=True,
                                     engine=engine, cache=False)
    assert out.columns == ["title", "s", "s_probabilities"]
    assert out.schema["s_probabilities"] == pl.Struct({"pos": pl.Float64, "neg": pl.Float64, "mid": pl.Float64})
    for value, probs in zip(out["s"].to_list(), out["s_probabilities"].to_list()):
        if value is None:  # the null title: skipped, no probabilities
            assert probs is None
            continue
        assert_distribution(probs, ChoiceSpec(("pos", "neg", "mid")), value)
        assert max(probs, key=probs.get) == value  # the deterministic engine's answer is its most likely label
    # The repeated title (answered by the in-run memo) shows the same distribution.
    assert out["s_probabilities"][0] == out["s_probabilities"][2]


def test_lineage_has_the_probabilities_of_every_answered_cell(engine):
    plan = frame().lazy().semantic.classify("title", ["YES", "NO"], name="eu")
    run = plan.run(engine, cache=False)
    assert "eu_probabilities" not in run.df.columns  # the column only when asked for
    lineage = run.lineage
    cols = lineage.columns
    assert cols.index("probabilities") == cols.index("value") + 1
    assert lineage.schema["probabilities"] == pl.List(pl.Struct({"label": pl.String, "probability": pl.Float64}))
    for row in lineage.iter_rows(named=True):
        if row["source"] == "skipped":
            assert row["probabilities"] is None
            continue
        probs = {p["label"]: p["probability"] for p in row["probabilities"]}
        assert_distribution(probs, YES_NO, row["value"])


def test_filter_cells_have_probabilities_in_lineage(engine):
    frame().semantic.filter("Is {title} about a war?", engine=engine, cache=False)
    lineage = sf.last_run().lineage.filter(pl.col("source") != "skipped")
    assert lineage["probabilities"].null_count() == 0
    assert lineage["probabilities"].list.len().to_list() == [2] * lineage.height


def test_a_responder_gives_one_hot_probabilities():
    engine = sf.DeterministicEngine(responder=lambda r: "NO")
    out = frame().semantic.classify("title", ["YES", "NO"], probabilities=True, engine=engine, cache=False)
    assert out["classify_probabilities"].drop_nulls().to_list() == [{"YES": 0.0, "NO": 1.0}] * 4


def test_probabilities_are_a_plan_property(engine):
    lf = frame().lazy().semantic.classify("title", ["YES", "NO"], name="eu", probabilities=True)
    assert "probabilities]" in lf.explain().splitlines()[1]
    assert lf.collect_schema()["eu_probabilities"] == pl.Struct({"YES": pl.Float64, "NO": pl.Float64})
    # Reading only the probabilities keeps the step; reading neither column drops it.
    assert "SEMANTIC CLASSIFY" in lf.select("eu_probabilities").explain()
    assert "SEMANTIC CLASSIFY" not in lf.select("title").explain()
    only = lf.select("eu_probabilities").run(engine, cache=False).df
    assert only.columns == ["eu_probabilities"] and only.height == 5
    est = lf.select("title", "eu_probabilities").estimate(engine)
    assert est.steps[0].calls_high == 3


def test_the_probabilities_column_must_be_new(engine):
    df = pl.DataFrame({"title": ["a"], "eu_probabilities": [1.0]})
    with pytest.raises(PlanError, match="eu_probabilities"):
        df.semantic.classify("title", ["YES", "NO"], name="eu", probabilities=True, engine=engine)
    with pytest.raises(PlanError, match="probabilities must be True or False"):
        df.semantic.classify("title", ["YES", "NO"], name="x", probabilities="yes", engine=engine)


def test_pandas_gets_the_probabilities_as_dicts(engine):
    pd = pytest.importorskip("pandas")
    pdf = pd.DataFrame({"title": ["Battle of Waterloo", "Banana bread"]})
    out = pdf.semantic.classify("title", ["YES", "NO"], name="eu", probabilities=True, engine=engine, cache=False)
    assert list(out.columns) == ["title", "eu", "eu_probabilities"]
    assert all(set(p) == {"YES", "NO"} for p in out["eu_probabilities"])


def test_a_cached_answer_keeps_its_probabilities(engine):
    # The persistent cache stores the probabilities with the answer (tests/cache/
    # test_probabilities_stored.py): a step that shows them asks the engine nothing on a rerun.
    df = frame()
    first = df.lazy().semantic.classify("title", ["YES", "NO"], name="eu", probabilities=True).run(engine)
    assert first.step_metrics[0].engine_requests == 3
    plain = df.lazy().semantic.classify("title", ["YES", "NO"], name="eu").run(engine)
    assert plain.step_metrics[0].exact_cache_hits == 3 and plain.step_metrics[0].engine_requests == 0
    again = df.lazy().semantic.classify("title", ["YES", "NO"], name="eu", probabilities=True).run(engine)
    assert again.step_metrics[0].engine_requests == 0 and again.step_metrics[0].exact_cache_hits == 3
    assert again.df["eu_probabilities"].null_count() == 1  # only the null title
    assert again.df["eu_probabilities"].to_list() == first.df["eu_probabilities"].to_list()
    assert again.df["eu"].to_list() == first.df["eu"].to_list() == plain.df["eu"].to_list()


def test_completion_probabilities_do_not_change_equality(engine):
    (a,) = engine.generate([ask("Battle of Waterloo")])
    assert a.probabilities is not None
    stripped = sf.engines.base.Completion(a.text, a.value, a.finish_reason, a.prompt_tokens,
                                          a.cached_prompt_tokens, a.output_tokens, a.latency_s)
    assert stripped == a and hash(stripped) == hash(a)
    (text,) = engine.generate([Request((Message("user", "hi"),), TextSpec(), 4)])
    assert text.probabilities is None


# -- vLLM: the one-step path ----------------------------------------------------------------------


@pytest.mark.vllm
def test_tiny_label_table_and_one_step(tiny_vllm_engine):
    engine = tiny_vllm_engine
    table = engine.label_table(YES_NO.labels)
    assert table is not None
    # Every allowed token begins exactly one label, and each label has its own first token.
    assert sorted(set(table.tokens.values())) == [0, 1]
    decode = engine._tokenizer.decode
    for token, label in table.tokens.items():
        assert YES_NO.labels[label].startswith(decode([token]).strip())
    requests = [ask(t) for t in TITLES]
    done = engine.generate(requests)
    assert all(c.ok for c in done), [c.error for c in done]
    assert [c.output_tokens for c in done] == [1] * len(done)
    assert {c.finish_reason for c in done} == {"stop"}
    for c in done:
        assert c.text == c.value and c.value in YES_NO.labels
        assert_distribution(c.probabilities, YES_NO, c.value)


@pytest.mark.vllm
def test_tiny_fallback_when_labels_share_a_first_token(tiny_vllm_engine):
    engine = tiny_vllm_engine
    assert engine.label_table(SHARED_FIRST.labels) is None
    assert engine.label_table(("NO", "NONE")) is None  # "NO" begins both
    done = engine.generate([ask(t, SHARED_FIRST) for t in TITLES[:4]])
    assert all(c.ok and c.value in SHARED_FIRST.labels for c in done), [c.error for c in done]
    assert all(c.output_tokens >= 2 for c in done)  # spelled out by the grammar
    assert all(c.probabilities is None for c in done)


@pytest.mark.vllm
def test_tiny_no_room_for_the_grammar_means_no_one_step(tiny_vllm_engine):
    # With max_tokens too small for the grammar to spell a label and stop, the request is not
    # decoded in one step either: the answer is cut off exactly as the grammar path cuts it.
    table = tiny_vllm_engine.label_table(YES_NO.labels)
    (cut,) = tiny_vllm_engine.generate([ask("Fall of Rome", max_tokens=table.longest)])
    assert not cut.ok and cut.finish_reason == "length"
    (fits,) = tiny_vllm_engine.generate([ask("Fall of Rome", max_tokens=table.longest + 1)])
    assert fits.ok and fits.output_tokens == 1


@pytest.mark.vllm
def test_tiny_grammar_engine_answers_alike_with_another_fingerprint(tiny_vllm_engine, tiny_model_dir):
    from semframe.engines.vllm import VLLMEngine

    grammar = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=32 << 20, max_model_len=256,
                         choice_decoding="grammar")
    try:
        assert grammar.fingerprint() != tiny_vllm_engine.fingerprint()
        requests = [ask(t) for t in TITLES]
        one = tiny_vllm_engine.generate(requests)
        spelled = grammar.generate(requests)
        assert all(c.ok for c in spelled) and all(c.probabilities is None for c in spelled)
        assert sum(c.output_tokens for c in spelled) > len(requests)
        # The one-step token is the grammar's first token (both greedy over the same tokens),
        # so the labels agree up to numerical noise between the two engines.
        agree = sum(a.value == b.value for a, b in zip(one, spelled))
        assert agree >= len(requests) - 2, [(a.value, b.value) for a, b in zip(one, spelled)]
    finally:
        grammar.close()
    with pytest.raises(sf.EngineError, match="choice_decoding"):
        VLLMEngine(str(tiny_model_dir), choice_decoding="fast")


@pytest.mark.vllm
def test_tiny_classify_and_filter_through_a_run(tiny_vllm_engine):
    df = pl.DataFrame({"title": TITLES[:6] + [None]})
    out = df.semantic.classify("title", list(YES_NO.labels), name="eu", probabilities=True,
                               engine=tiny_vllm_engine, cache=False)
    run = sf.last_run()
    assert run.step_metrics[0].output_tokens == 6
    for value, probs in zip(out["eu"].to_list()[:6], out["eu_probabilities"].to_list()[:6]):
        assert_distribution(probs, YES_NO, value)
    assert out["eu_probabilities"][6] is None
    df.semantic.filter("Is {title} about a war?", engine=tiny_vllm_engine, cache=False)
    lineage = sf.last_run().lineage.filter(pl.col("source") == "engine")
    assert lineage["output_tokens"].to_list() == [1] * 6
    assert lineage["probabilities"].null_count() == 0


@pytest.mark.vllm
@pytest.mark.smollm2
def test_smollm2_label_tables(smollm2_engine):
    tok = smollm2_engine._tokenizer
    yes_no = smollm2_engine.label_table(YES_NO.labels)
    # SmolLM2 spells YES as "Y" "ES" and NO as one token; "N" also begins NO only.
    assert {tok.decode([t]): YES_NO.labels[i] for t, i in yes_no.tokens.items()} == {"Y": "YES", "NO": "NO", "N": "NO"}
    assert yes_no.longest == 2
    topics = smollm2_engine.label_table(TOPICS.labels)
    assert topics is not None and sorted(set(topics.tokens.values())) == [0, 1, 2, 3, 4]
    # "s" is "sport"'s first token and also begins "science": the grammar decides.
    assert smollm2_engine.label_table(("sport", "science")) is None


@pytest.mark.vllm
@pytest.mark.smollm2
def test_smollm2_one_step_matches_the_grammar(smollm2_engine):
    requests = [ask(t) for t in TITLES] + [ask(t, TOPICS) for t in TITLES]
    one = smollm2_engine.generate(requests)
    saved = smollm2_engine._choice_decoding
    smollm2_engine._choice_decoding = "grammar"  # same weights and prompts, the other decoding
    try:
        spelled = smollm2_engine.generate(requests)
    finally:
        smollm2_engine._choice_decoding = saved
    assert all(c.ok for c in one + spelled), [c.error for c in one + spelled]
    assert [c.output_tokens for c in one] == [1] * len(one)
    assert sum(c.output_tokens for c in spelled) >= 2 * len(spelled)
    for r, c in zip(requests, one):
        assert_distribution(c.probabilities, r.spec, c.value)
    agree = sum(a.value == b.value for a, b in zip(one, spelled))
    assert agree >= len(requests) - 1, [(a.value, b.value) for a, b in zip(one, spelled)]
