"""semantic.embed, semantic.search, semantic.sim_join: plans, exact results against brute force,
caching and reruns, lineage, estimates, the optimizer, and every frontend.

Most tests use :class:`sf.HashingEmbedder` (deterministic, no model); the ones marked
``embeddings`` load the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import semframe as sf
from semframe.engines.embedding import EmbeddingEngine
from semframe.errors import PlanError, SemframeError
from semframe.plan.embedding import SemEmbed, SemSearch, SemSimJoin
from semframe.plan.nodes import Scan, Source
from semframe.plan.template import Template

H = sf.HashingEmbedder(dimension=128)

TITLES = ["Battle of Waterloo", "Banana bread recipe", None, "The battle of Hastings", "Banana bread recipe",
          "Knitting for beginners", "   ", "Waterloo station reopens", "Fall of Rome", "Battle of Waterloo"]


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"title": TITLES, "n": list(range(len(TITLES)))})


def brute_force(query_vecs: np.ndarray, corpus: np.ndarray, k: int) -> list[list[int]]:
    """Per query, the k best corpus positions by (similarity desc, position asc)."""
    sims = query_vecs @ corpus.T
    return [sorted(range(len(corpus)), key=lambda j: (-sims[i, j], j))[:k] for i in range(len(query_vecs))]


class Unsized(EmbeddingEngine):
    """An engine whose width is only known after a call (as an OpenAI server without dimensions=)."""

    name = "unsized"

    def __init__(self) -> None:
        super().__init__()
        self.inner = sf.HashingEmbedder(dimension=8)
        self._dimension = None

    @property
    def model(self) -> str:
        return "unsized"

    def fingerprint(self) -> str:
        return "unsized-" + self.inner.fingerprint()

    def known_dimension(self) -> None:
        return None

    def _embed_batch(self, texts):
        return self.inner.embed(texts)


# --------------------------------------------------------------------------- plans and validation


def test_embed_schema_and_node_properties(df):
    plan = df.lazy().semantic.embed("title", embedder=H)
    assert plan.collect_schema()["embedding"] == pl.Array(pl.Float32, 128)
    node = plan.plan
    assert isinstance(node, SemEmbed) and node.uses_llm is False and node.rows == "aligned"
    assert node.produces == {"embedding"} and node.removable_if_unread
    assert node.columns_needed(frozenset({"n", "embedding"})) == (frozenset({"n", "title"}),)
    lst = df.lazy().semantic.embed("{title} #{n}", name="v", embedder=Unsized())
    assert lst.collect_schema()["v"] == pl.List(pl.Float32)


def test_search_and_sim_join_nodes_are_barriers(df):
    search = df.lazy().semantic.search("q", "title", k=3, embedder=H).plan
    join = df.lazy().semantic.sim_join(df.lazy(), left_on="title", right_on="title", embedder=H).plan
    assert isinstance(search, SemSearch) and isinstance(join, SemSimJoin)
    for node in (search, join):
        assert node.rows == "other" and not node.uses_llm and not node.removable_if_unread
    assert search.schema[-1] == ("score", pl.Float64)
    assert join.columns == ("title", "n", "title_right", "n_right", "similarity")
    # a needed right column that was renamed keeps the left column it clashed with
    assert join.columns_needed(frozenset({"n_right"})) == (frozenset({"title", "n"}), frozenset({"title", "n"}))


@pytest.mark.parametrize("call, match", [
    (lambda lf: lf.semantic.embed("titel", embedder=H), "semantic.embed: 'titel' is neither a column.*'title'"),
    (lambda lf: lf.semantic.embed("{titel}", embedder=H), "semantic.embed: column 'titel' not found"),
    (lambda lf: lf.semantic.embed("title", name="n", embedder=H), "'n' already exists"),
    (lambda lf: lf.semantic.embed("title", name="__sf_x", embedder=H), "reserved prefix"),
    (lambda lf: lf.semantic.embed("title", embedder=42), "embedder must be"),
    (lambda lf: lf.semantic.search("", "title", embedder=H), "query must be a non-empty string"),
    (lambda lf: lf.semantic.search("q", "title", k=0, embedder=H), "k must be a positive integer"),
    (lambda lf: lf.semantic.search("q", "title", k=True, embedder=H), "k must be a positive integer"),
    (lambda lf: lf.semantic.search("q", "title", name="title", embedder=H), "'title' already exists"),
    (lambda lf: lf.semantic.sim_join(lf, left_on="title", right_on="nope", embedder=H), r"\(right_on\).*'nope'.*columns are 'title', 'n'"),
    (lambda lf: lf.semantic.sim_join(lf, left_on="x", right_on="title", embedder=H), r"\(left_on\)"),
    (lambda lf: lf.semantic.sim_join(lf, left_on="title", right_on="title", threshold=1.5, embedder=H), "threshold"),
    (lambda lf: lf.semantic.sim_join(lf, left_on="title", right_on="title", k=-1, embedder=H), "k must be"),
    (lambda lf: lf.semantic.sim_join(lf, left_on="title", right_on="title", name="n_right", embedder=H),
     "similarity column 'n_right' already exists"),
    (lambda lf: lf.semantic.sim_join(pl.DataFrame({"other": [1]}), left_on="title", right_on="other",
                                     embedder=H), None),  # any dtype renders: no error
])
def test_validation_names_the_verb_and_the_fix(df, call, match):
    if match is None:
        call(df.lazy())
        return
    with pytest.raises(PlanError, match=match):
        call(df.lazy())


def test_sim_join_refuses_a_double_clash():
    left = pl.DataFrame({"a": ["x"], "a_right": ["y"]})
    with pytest.raises(PlanError, match="'a_right' exists too"):
        left.lazy().semantic.sim_join(pl.DataFrame({"a": ["x"]}), left_on="a", right_on="a", embedder=H)


def test_engine_is_refused_or_taken_as_the_embedder(df):
    for call in (lambda: df.semantic.embed("title", engine=sf.DeterministicEngine()),
                 lambda: df.lazy().semantic.search("q", "title", engine=sf.DeterministicEngine()),
                 lambda: pd.DataFrame({"title": ["a"]}).semantic.embed("title", engine="small")):
        with pytest.raises(PlanError, match="asks no LLM engine.*embedder="):
            call()
    out = df.semantic.embed("title", engine=H)  # an embedding engine given as engine= is the embedder
    assert out.schema["embedding"] == pl.Array(pl.Float32, 128)
    with pytest.raises(PlanError, match="once"):
        df.semantic.embed("title", engine=H, embedder=sf.HashingEmbedder(dimension=16))
    scan = Scan(Source.from_data(df))
    with pytest.raises(PlanError, match="asks no LLM engine"):
        SemEmbed(scan, Template.for_column("title"), engine=sf.DeterministicEngine())


def test_a_plan_of_embedding_steps_starts_no_llm_engine(df, monkeypatch):
    import semframe.physical.executor as executor

    def boom(*a, **k):
        raise AssertionError("an LLM engine was resolved")

    monkeypatch.setattr(executor, "resolve_engine", boom)
    plan = (df.lazy().semantic.embed("title", embedder=H)
            .semantic.search("battle", "title", k=3, embedder=H)
            .semantic.sim_join(df.lazy(), left_on="title", right_on="title", embedder=H))
    run = plan.run()
    assert run.engine_requests == 0 and run.df.height == 3


def test_explain_shows_the_embedder_and_k_without_loading_a_model():
    code = (
        "import sys, polars as pl, semframe as sf\n"
        "df = pl.DataFrame({'title': ['a', 'b']})\n"
        "plan = df.lazy().semantic.embed('title').semantic.search('q', 'title', k=7)\n"
        "print(plan.explain())\n"
        "print(plan.collect_schema()['embedding'])\n"
        "print([m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "SEMANTIC SEARCH -> score (step 1) [top 7 by cosine similarity" in out
    assert "embedder sentence-transformers:all-MiniLM-L6-v2 (default)" in out
    assert "Array(Float32, shape=(384,))" in out
    assert out.strip().endswith("[]"), out


def test_explain_of_each_operator(df):
    text = (df.lazy().semantic.sim_join(df.lazy(), left_on="title", right_on="title", k=3, threshold=0.5,
                                        embedder=H).explain())
    assert "SEMANTIC SIM_JOIN -> similarity (step 0) [top 3 right rows per left row, similarity >= 0.5" in text
    assert "embedder hashing:char2-4-hash128" in text and "left_on: '{title}'" in text
    assert "SEMANTIC EMBED -> embedding (step 0) [embedder hashing" in df.lazy().semantic.embed(
        "title", embedder=H).explain()


# --------------------------------------------------------------------------- embed


def test_embed_values_nulls_and_lineage(df):
    run = df.lazy().semantic.embed("title", embedder=H).run()
    out = run.df
    assert out.columns == ["title", "n", "embedding"]
    assert out["embedding"].is_null().to_list() == [t is None or not t.strip() for t in TITLES]
    texts = [t for t in TITLES if t is not None and t.strip()]
    want = H.embed(texts)
    got = np.array([v for v in out["embedding"].to_list() if v is not None], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    lin = run.lineage.sort("row_id")
    assert lin["source"].to_list() == ["engine", "engine", "skipped", "engine", "dedup", "engine", "skipped",
                                       "engine", "engine", "dedup"]
    assert lin["source_row_id"].to_list()[4] == 1 and lin["source_row_id"].to_list()[9] == 0
    assert lin["error"].to_list()[2] == "null input in column 'title'"
    assert lin["value"].null_count() == len(TITLES) and set(lin["model"]) == {H.label()}
    assert lin["note"][0] == f"embedding, fingerprint {H.fingerprint()}"
    (m,) = run.step_metrics
    assert (m.rows_in, m.rows_out, m.skipped, m.texts_embedded, m.texts_cached, m.texts_repeated) == (
        10, 10, 2, 6, 0, 2)
    assert m.engine_requests == 0 and m.embedder == H.label()
    assert run.metrics["engine_requests"][0] == 0


def test_embed_rerun_embeds_nothing_and_cache_off_embeds_again(df):
    plan = df.lazy().semantic.embed("title", embedder=H)
    first = plan.run()
    second = plan.run()
    assert second.step_metrics[0].texts_embedded == 0 and second.step_metrics[0].texts_cached == 6
    assert first.df["embedding"].to_list() == second.df["embedding"].to_list()
    assert set(second.lineage["source"]) == {"exact_cache", "dedup", "skipped"}
    off = plan.run(cache=False)
    assert off.step_metrics[0].texts_embedded == 6


def test_embed_with_an_unsized_embedder_is_a_list_column(df):
    out = df.semantic.embed("title", embedder=Unsized())
    assert out.schema["embedding"] == pl.List(pl.Float32)
    assert len(out["embedding"][0]) == 8 and out["embedding"][2] is None
    allnull = pl.DataFrame({"t": [None, None]}, schema={"t": pl.String}).semantic.embed("t", embedder=Unsized())
    assert allnull["embedding"].null_count() == 2


def test_embed_refuses_a_changed_model_width(df):
    plan = df.lazy().semantic.embed("title")  # built for the default model: 384 dims
    sf.configure(embedding_model=sf.HashingEmbedder(dimension=32))
    with pytest.raises(SemframeError, match="built for 384"):
        plan.collect()


def test_embed_across_batches_and_a_template(df):
    one = df.lazy().semantic.embed("{title} / {n}", embedder=H).collect()
    small = df.lazy().semantic.embed("{title} / {n}", embedder=H).collect(batch_size=3)
    assert one["embedding"].to_list() == small["embedding"].to_list()
    # a null in any referenced column skips the row, as for the LLM verbs; "   / 6" is not blank
    assert one["embedding"].is_null().to_list() == [t is None for t in TITLES]


def test_the_optimizer_moves_filters_and_heads_below_embed_and_drops_an_unread_one(df):
    plan = df.lazy().semantic.embed("title", embedder=H).filter(pl.col("n") < 4).head(2)
    run = plan.run()
    assert run.step_metrics[0].rows_in == 2 and run.df.height == 2
    text = plan.explain()
    assert text.index("SEMANTIC EMBED") < text.index("HEAD")  # head below embed (read bottom-up)
    unread = df.lazy().semantic.embed("title", embedder=H).select("n")
    assert "EMBED" not in unread.explain()
    assert unread.run().step_metrics == []


def test_embed_estimate_counts_no_engine_calls_and_the_texts(df):
    est = df.lazy().semantic.embed("title", embedder=H).estimate()
    (s,) = est.steps
    assert (s.calls_low, s.calls_high, s.rows_high, s.skipped) == (0, 0, 10, 2)
    assert s.texts_high == 6


# --------------------------------------------------------------------------- search


def test_search_matches_brute_force(df):
    out = df.semantic.search("battle of waterloo", "title", k=4, embedder=H)
    texts = [t if t is not None and t.strip() else None for t in TITLES]
    valid = [i for i, t in enumerate(texts) if t is not None]
    corpus = H.embed([texts[i] for i in valid])
    q = H.embed(["battle of waterloo"])
    best = [valid[j] for j in brute_force(q, corpus, 4)[0]]
    assert out["n"].to_list() == best
    np.testing.assert_allclose(out["score"].to_numpy(), (corpus @ q[0])[[valid.index(i) for i in best]], atol=1e-6)
    assert out["score"].to_list() == sorted(out["score"].to_list(), reverse=True)
    assert out["n"].to_list()[:2] == [0, 9]  # a tie keeps input order


@pytest.mark.parametrize("batch_size", [1, 2, 3, 512])
def test_search_streams_with_a_running_top_k(df, batch_size):
    want = df.semantic.search("banana", "title", k=3, embedder=H)
    got = df.lazy().semantic.search("banana", "title", k=3, embedder=H).collect(batch_size=batch_size)
    # the same rows; similarities equal up to float32 rounding (BLAS sums blocks of other shapes)
    assert_frame_equal(got, want, check_exact=False, abs_tol=1e-6)


def test_search_k_beyond_the_rows_lineage_and_metrics(df):
    run = df.lazy().semantic.search("rome", "title", k=50, embedder=H).run()
    assert run.df.height == 8  # the rows with a text
    lin = run.lineage
    assert lin.height == 8 and lin["row_id"].to_list() == run.row_ids.to_list()
    np.testing.assert_allclose(lin["similarity"].to_numpy(), run.df["score"].to_numpy())
    assert lin["note"][0] == "rank 1 of 50"
    m = run.step_metrics[0]
    assert (m.rows_in, m.rows_out, m.skipped, m.texts_embedded) == (10, 8, 2, 7)  # 6 texts + the query
    empty = pl.DataFrame({"t": [None]}, schema={"t": pl.String}).semantic.search("x", "t", embedder=H)
    assert empty.height == 0 and empty.columns == ["t", "score"]


def test_search_estimate(df):
    (s,) = df.lazy().semantic.search("rome", "title", k=3, embedder=H).estimate().steps
    assert (s.calls_high, s.texts_high) == (0, 7)
    est = df.lazy().semantic.search("rome", "title", k=3, embedder=H).semantic.classify(
        "title", ["A", "B"], name="c").estimate(sf.DeterministicEngine())
    assert est.steps[1].calls_high == 3  # the classify above sees at most k rows


# --------------------------------------------------------------------------- sim_join


@pytest.fixture
def sides() -> tuple[pl.DataFrame, pl.DataFrame]:
    left = pl.DataFrame({"name": ["jonh smith", "mary jones", None, "peter pann", "zzz qqq"], "id": [1, 2, 3, 4, 5]})
    right = pl.DataFrame({"name": ["Mary Jones", "John Smith", "Peter Pan", None, "Jon Smithe"],
                          "id": [10, 20, 30, 40, 50], "city": ["a", "b", "c", "d", "e"]})
    return left, right


def test_sim_join_matches_brute_force_with_renamed_columns(sides):
    left, right = sides
    out = left.semantic.sim_join(right, left_on="name", right_on="name", k=2, embedder=H)
    assert out.columns == ["name", "id", "name_right", "id_right", "city", "similarity"]
    lv = H.embed([t for t in left["name"].to_list() if t])
    r_valid = [i for i, t in enumerate(right["name"].to_list()) if t]
    rv = H.embed([right["name"][i] for i in r_valid])
    best = brute_force(lv, rv, 2)
    want = [(lid, right["id"][r_valid[j]]) for lid, js in zip([1, 2, 4, 5], best) for j in js]
    assert list(zip(out["id"], out["id_right"])) == want
    assert out["id"].to_list()[:2] == [1, 1] and out["id_right"][0] == 20
    sims = lv @ rv.T
    np.testing.assert_allclose(out["similarity"].to_numpy(),
                               [sims[i, j] for i, js in enumerate(best) for j in js], atol=1e-6)


def test_sim_join_threshold_provenance_and_lineage(sides):
    left, right = sides
    run = left.lazy().semantic.sim_join(right, left_on="name", right_on="name", k=3, threshold=0.5,
                                        embedder=H).run()
    assert (run.df["similarity"] >= 0.5).all()
    assert 5 not in run.df["id"].to_list()  # "zzz qqq" is like nobody
    pairs = run.row_ids.to_list()
    assert pairs[0] == {"left": 0, "right": 1}
    assert [(p["left"], p["right"]) for p in pairs] == [
        (left["id"].to_list().index(a), right["id"].to_list().index(b)) for a, b in zip(run.df["id"], run.df["id_right"])]
    lin = run.lineage
    assert lin.height == run.df.height and lin["row_id"].null_count() == lin.height
    assert json.loads(lin["provenance"][0]) == {"left": 0, "right": 1}
    np.testing.assert_allclose(lin["similarity"].to_numpy(), run.df["similarity"].to_numpy())
    m = run.step_metrics[0]
    assert (m.rows_in, m.right_rows, m.skipped, m.rows_out) == (5, 5, 1, run.df.height)
    assert m.texts_embedded == 8 and m.engine_requests == 0


@pytest.mark.parametrize("batch_size", [1, 2, 512])
def test_sim_join_streams_the_left_side(sides, batch_size):
    left, right = sides
    want = left.semantic.sim_join(right, left_on="name", right_on="name", k=2, embedder=H)
    got = left.lazy().semantic.sim_join(right.lazy(), left_on="name", right_on="name", k=2,
                                        embedder=H).collect(batch_size=batch_size)
    assert_frame_equal(got, want, check_exact=False, abs_tol=1e-6)


def test_sim_join_with_a_plan_on_the_right_and_relational_steps_above(sides):
    left, right = sides
    rplan = right.lazy().semantic.embed("name", embedder=H).filter(pl.col("id") > 10)
    plan = (left.lazy().semantic.sim_join(rplan, left_on="name", right_on="name", embedder=H)
            .filter(pl.col("similarity") > 0.3).select("id", "id_right"))
    out = plan.collect()
    assert 10 not in out["id_right"].to_list()
    assert out.columns == ["id", "id_right"]
    run = plan.run()
    # nothing reads the right side's embedding column: the optimizer dropped that step
    assert [m.operator for m in run.step_metrics] == ["sim_join"]
    # the projection pushdown kept the clashing left column, so the right one keeps its _right name
    assert plan.collect_schema().names() == ["id", "id_right"]


def test_sim_join_rerun_and_estimate(sides):
    left, right = sides
    plan = left.lazy().semantic.sim_join(right, left_on="name", right_on="name", k=2, embedder=H)
    plan.run()
    again = plan.run()
    assert again.step_metrics[0].texts_embedded == 0 and again.step_metrics[0].texts_cached == 8
    (s,) = plan.estimate().steps
    assert (s.calls_low, s.calls_high, s.rows_high, s.texts_high) == (0, 0, 5, 8)
    nxt = plan.semantic.classify("{name} / {name_right}", ["A", "B"], name="c").estimate(sf.DeterministicEngine())
    assert nxt.steps[1].calls_high == 8  # 4 left rows with a text x 2 matches


def test_sim_join_with_nothing_to_match():
    left = pl.DataFrame({"a": ["x", "y"]})
    right = pl.DataFrame({"b": [None]}, schema={"b": pl.String})
    out = left.semantic.sim_join(right, left_on="a", right_on="b", embedder=H)
    assert out.height == 0 and out.columns == ["a", "b", "similarity"]


def test_sim_join_links_febrl_records_with_the_hashing_embedder():
    from semframe.datasets import febrl

    a = febrl("dataset4a").head(300)
    b = febrl("dataset4b")
    b = pl.concat([b.filter(pl.col("entity").is_in(a["entity"].implode())), b.head(700)]).unique("rec_id",
                                                                                                  maintain_order=True)
    out = a.semantic.sim_join(b, left_on="text", right_on="text", k=1, embedder=sf.HashingEmbedder(dimension=512))
    assert out.height == 300
    recall = (out["entity"] == out["entity_right"]).mean()
    assert recall >= 0.95, recall


# --------------------------------------------------------------------------- frontends


def test_pandas_frontend():
    pdf = pd.DataFrame({"title": ["Battle of Waterloo", "Banana bread", None]}, index=[10, 20, 30])
    out = pdf.semantic.embed("title", embedder=H)
    assert list(out.index) == [10, 20, 30] and len(out["embedding"][10]) == 128 and out["embedding"][30] is None
    hits = pdf.semantic.search("banana", "title", k=1, embedder=H)
    assert hits["title"].tolist() == ["Banana bread"]
    joined = pdf.semantic.sim_join(pd.DataFrame({"t": ["banana bread!", "waterloo"]}), left_on="title",
                                   right_on="t", embedder=H)
    assert joined[["title", "t"]].values.tolist() == [["Battle of Waterloo", "waterloo"],
                                                     ["Banana bread", "banana bread!"]]


def test_eager_lazy_and_semlazy_frontends_agree(df):
    eager = df.semantic.search("battle", "title", k=3, embedder=H)
    lazy = df.lazy().semantic.search("battle", "title", k=3, embedder=H).collect()
    chained = df.lazy().semantic.embed("title", embedder=H).semantic.search("battle", "title", k=3,
                                                                             embedder=H).collect()
    assert_frame_equal(eager, lazy)
    assert_frame_equal(chained.drop("embedding"), eager, check_exact=False, abs_tol=1e-6)


# --------------------------------------------------------------------------- the real model


@pytest.mark.embeddings
def test_the_default_model_end_to_end():
    docs = pl.DataFrame({"text": ["The striker scored twice in the cup final", "Shares fell sharply on Wall Street",
                                  "A new smartphone with a folding screen", "The goalkeeper saved a penalty"]})
    plan = docs.lazy().semantic.embed("text").semantic.search("football match", "text", k=2)
    run = plan.run()
    assert run.df.schema["embedding"] == pl.Array(pl.Float32, 384)
    assert set(run.df["text"]) == {docs["text"][0], docs["text"][3]}
    again = plan.run()
    assert sum(m.texts_embedded for m in again.step_metrics) == 0
    pairs = docs.semantic.sim_join(pl.DataFrame({"topic": ["sport", "finance", "technology"]}), left_on="text",
                                   right_on="topic")
    assert pairs["topic"].to_list() == ["sport", "finance", "technology", "sport"]
