"""The persistent exact cache and in-run dedup, with the DeterministicEngine."""

from __future__ import annotations

import stat

import polars as pl
import pytest

import semframe as sf
from semframe.cache import AnswerStore, CacheError, answers_dir, clear_cache, open_exact_cache
from semframe.cache.store import SCHEMA_VERSION


def _classify(df: pl.DataFrame, **kw):
    return df.lazy().semantic.classify("title", ["YES", "NO"], instruction="European history?", **kw)


def test_rerun_of_a_finished_plan_asks_the_engine_nothing(titles, engine):
    first = _classify(titles).run(engine)
    asked = engine.requests_seen
    assert asked == 5  # six rows, one repeat
    second = _classify(titles).run(engine)
    assert engine.requests_seen == asked
    assert second.df.equals(first.df)
    sources = second.lineage["source"].to_list()
    assert sources.count("exact_cache") == 5 and sources.count("dedup") == 1
    assert second.metrics["exact_cache_hits"].to_list() == [5]
    assert second.lineage["prompt_tokens"].sum() == 0


@pytest.mark.parametrize(
    "change",
    [
        dict(instruction="Asian history?"),
        dict(labels=["YES", "NO", "MAYBE"]),
        dict(max_tokens=7),
        dict(temperature=0.5),
        dict(engine=sf.DeterministicEngine(model="other-model")),
    ],
    ids=["instruction", "labels", "max_tokens", "temperature", "model"],
)
def test_changing_anything_that_can_change_the_answer_misses(titles, change):
    base = sf.DeterministicEngine()
    titles.lazy().semantic.classify("title", ["YES", "NO"], instruction="European history?").run(base)
    engine = change.pop("engine", sf.DeterministicEngine())
    labels = change.pop("labels", ["YES", "NO"])
    kw = {"instruction": "European history?", **change}
    titles.lazy().semantic.classify("title", labels, **kw).run(engine)
    assert engine.requests_seen >= 5
    assert "exact_cache" not in sf.last_run().lineage["source"].to_list()


def test_extract_and_map_answers_round_trip(titles, engine):
    plan = (titles.lazy()
            .semantic.extract("title", {"place": str, "year": int, "tags": list[str]}, name="facts")
            .semantic.map("Summarize {title}.", name="gist"))
    first = plan.run(engine)
    second = plan.run(sf.DeterministicEngine())
    assert second.engine_requests == 0
    assert second.df.equals(first.df)


def test_cache_false_per_call_and_globally(titles, engine, _isolated_settings):
    _classify(titles, cache=False).run(engine)
    assert not answers_dir().exists()
    _classify(titles).run(engine, cache=False)
    assert not answers_dir().exists()
    sf.configure(cache=False)
    _classify(titles).run(engine)
    assert not answers_dir().exists()
    assert "exact cache off" in _classify(titles).explain()
    sf.configure(cache=True)
    _classify(titles).run(engine)
    assert open_exact_cache().count() == 5


def test_configured_cache_dir_is_used(titles, engine, tmp_path):
    sf.configure(cache_dir=tmp_path / "mine")
    _classify(titles).run(engine)
    assert (tmp_path / "mine" / "answers" / "answers.duckdb").exists()


def test_dedup_across_batches(engine):
    df = pl.DataFrame({"title": ["a", "b", "a", "c", "b", "a", "d", "a"]})
    result = _classify(df).run(engine, batch_size=2, cache=False)
    asked = [r.messages[-1].content for batch in engine.batches for r in batch]
    assert sorted(asked) == ["a", "b", "c", "d"]  # each distinct text once, over four batches
    lineage = result.lineage.sort("row_id")
    assert lineage["source"].to_list() == ["engine", "engine", "dedup", "engine", "dedup", "dedup", "engine", "dedup"]
    assert lineage["source_row_id"].to_list() == [None, None, 0, None, 1, 0, None, 0]


def test_failed_answers_are_not_cached(titles):
    bad = sf.DeterministicEngine(responder=lambda r: "PERHAPS")  # not a label: parse error
    _classify(titles).run(bad)
    assert open_exact_cache().count() == 0
    good = sf.DeterministicEngine(responder=lambda r: "YES")
    assert _classify(titles).run(good).df["classify"].to_list() == ["YES"] * 6


def test_explain_names_dedup_and_the_caches(titles):
    text = _classify(titles, semantic_cache=0.9).explain()
    assert "dedupe" in text and "exact cache" in text and "semantic cache >= 0.9" in text


def test_files_are_private_and_hold_plain_data(titles, engine):
    _classify(titles).run(engine)
    folder = answers_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    store = AnswerStore(folder)
    with store.connect() as con:
        types = {t for (t,) in con.execute("SELECT DISTINCT data_type FROM information_schema.columns").fetchall()}
    assert "BLOB" not in types  # values are JSON text, never pickles
    assert types <= {"VARCHAR", "BIGINT", "DOUBLE", "FLOAT[]"}


def test_clear_cache(titles, engine):
    _classify(titles).run(engine)
    assert open_exact_cache().count() == 5
    clear_cache()
    assert open_exact_cache().count() == 0
    _classify(titles).run(engine)
    assert engine.requests_seen == 10


def test_a_cache_from_another_format_version_is_refused_with_the_fix(titles, engine):
    _classify(titles).run(engine)
    store = AnswerStore(answers_dir())
    with store.connect() as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    with pytest.raises(CacheError, match="clear_cache"):
        AnswerStore(answers_dir()).counts()


def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    store = AnswerStore(tmp_path, lock_timeout=0.2)
    with store.locked():
        other = AnswerStore(tmp_path, lock_timeout=0.2)
        with pytest.raises(CacheError, match="locked by another process"):
            other.counts()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_sampled_steps_keep_one_sample_per_row_and_rerun_from_the_cache(batch_size):
    """temperature > 0: each row is its own sample (no dedup), also across batches, and a rerun
    gives every row its own sample back from the cache."""
    calls = iter(range(1000))
    engine = sf.DeterministicEngine(responder=lambda r: f"sample {next(calls)}")
    plan = pl.DataFrame({"t": ["same"] * 4}).lazy().semantic.map("{t}", name="m", temperature=0.8)
    first = plan.run(engine, batch_size=batch_size)
    assert engine.requests_seen == 4
    assert first.df["m"].n_unique() == 4
    again = plan.run(engine, batch_size=5 - batch_size)
    assert engine.requests_seen == 4
    assert again.df["m"].to_list() == first.df["m"].to_list()
    assert set(again.lineage["source"]) == {"exact_cache"}


def test_a_run_opens_the_database_once_not_per_batch(monkeypatch):
    """Issue 10, item 16: the store used to open (and close) the DuckDB file twice per engine batch,
    ~20 ms each; now a run opens it once and keeps it while it uses it (the throughput figures:
    benchmarks/cache_throughput.py)."""
    import duckdb

    opens = []
    real = duckdb.connect

    def counting(*args, **kwargs):
        opens.append(args[0] if args else kwargs.get("database"))
        return real(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counting)
    df = pl.DataFrame({"title": [f"t{i}" for i in range(400)]})
    engine = sf.DeterministicEngine()
    _classify(df).run(engine, batch_size=20)  # 20 engine batches: 20 lookups, 20 inserts
    assert len(engine.batches) == 20
    assert len(opens) == 1  # was 40
    again = _classify(df).run(sf.DeterministicEngine(), batch_size=20)
    assert again.engine_requests == 0
    assert len(opens) <= 2  # at most one more (if the first was closed after a second unused)
