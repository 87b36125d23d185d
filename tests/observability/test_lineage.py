"""Row-level lineage: stable row ids, how each cell was answered, prompts, and export."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

import semframe as sf


def test_row_ids_survive_filters_sorts_and_heads(reviews):
    # Row ids are positions in the scanned input; semframe's own filters run after they are assigned.
    run = (reviews.lazy().semantic.classify("text", ["good", "bad"], name="label")
           .filter(pl.col("stars") >= 3).sort("stars", descending=True).head(4)
           .run(sf.DeterministicEngine(), cache=False))
    assert run.row_ids.to_list() == [0, 2, 10, 6]
    joined = run.with_row_ids().join(reviews.with_row_index("row_id"), on="row_id", suffix="_in")
    assert (joined["text"].fill_null("") == joined["text_in"].fill_null("")).all()
    assert (joined["stars"] == joined["stars_in"]).all()
    cells = run.with_row_ids().join(run.lineage.filter(pl.col("step") == 0), on="row_id", how="left")
    assert cells.height == 4
    assert (cells["label"].fill_null("-") == cells["value"].fill_null("-")).all()


def test_each_cell_says_how_it_was_answered(reviews):
    engine = sf.DeterministicEngine()
    plan = reviews.lazy().semantic.classify("text", ["good", "bad"], name="label")
    first = plan.run(engine)
    src = dict(zip(first.lineage["row_id"].to_list(), first.lineage["source"].to_list()))
    assert src[0] == "engine" and src[2] == "dedup" and src[5] == "skipped" and src[7] == "skipped"
    dup = first.lineage.filter(pl.col("row_id") == 2).row(0, named=True)
    assert dup["source_row_id"] == 0 and dup["prompt_tokens"] == 0
    assert first.lineage.filter(pl.col("row_id") == 5)["error"][0].startswith("null input")
    second = plan.run(engine)
    assert set(second.lineage["source"]) == {"exact_cache", "dedup", "skipped"}
    row = first.lineage.filter(pl.col("row_id") == 0).row(0, named=True)
    assert row["model"] == "deterministic-v1" and row["raw_output"] == row["value"]
    assert "great phone" in first.prompt(row["request_key"])
    assert first.lineage_with_prompts().filter(pl.col("row_id") == 2)["prompt"][0] == first.prompt(row["request_key"])
    with pytest.raises(KeyError, match="lineage=False"):
        first.prompt("nope")


def test_extract_values_are_json_text(reviews):
    run = reviews.lazy().semantic.extract("text", {"topic": str, "score": int}, name="x").run(
        sf.DeterministicEngine(), cache=False)
    value = run.lineage.filter(pl.col("source") == "engine")["value"][0]
    assert value.startswith("{") and '"score"' in value


def test_export_to_parquet_and_duckdb(reviews, tmp_path):
    run = reviews.lazy().semantic.classify("text", ["good", "bad"]).run(sf.DeterministicEngine(), cache=False)
    path = tmp_path / "lineage.parquet"
    run.lineage_to_parquet(path)
    assert pl.read_parquet(path).equals(run.lineage)
    run.lineage_to_parquet(tmp_path / "with_prompts.parquet", with_prompts=True)
    assert "prompt" in pl.read_parquet(tmp_path / "with_prompts.parquet").columns
    db = tmp_path / "runs.duckdb"
    run.lineage_to_duckdb(db, "lin")
    with duckdb.connect(str(db)) as con:
        assert con.execute("select count(*) from lin").fetchone()[0] == 12
        assert con.execute("select count(*) from semframe_prompts").fetchone()[0] == 4
    con = duckdb.connect()
    run.lineage_to_duckdb(con, "lin", prompts_table=None)
    assert con.execute("select count(distinct source) from lin").fetchone()[0] == 3


def test_with_row_ids_refuses_a_clash(reviews):
    run = reviews.lazy().semantic.classify("text", ["good", "bad"]).run(sf.DeterministicEngine(), cache=False)
    with pytest.raises(ValueError, match="name="):
        run.with_row_ids("text")


def test_lineage_off_records_nothing_but_metrics_stay(reviews):
    run = reviews.lazy().semantic.classify("text", ["good", "bad"]).run(
        sf.DeterministicEngine(), cache=False, lineage=False)
    assert run.lineage.is_empty() and run.prompts.is_empty()
    assert run.metrics["engine_requests"][0] == 4 and run.cost.saved_requests["dedup"] == 6
