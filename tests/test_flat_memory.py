"""What keeps a long run's memory flat: lineage spilled to disk, a bounded memo, streaming sinks."""

from __future__ import annotations

import functools

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import semframe as sf
import semframe.physical.executor as executor
from semframe.execution.lineage import LineageRecorder


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"t": [f"text {i % 7}" if i % 3 else f"other {i}" for i in range(40)]})


def plan(df):
    return df.lazy().semantic.classify("t", ["A", "B"], name="c")


def test_lineage_spilled_in_parts_reads_back_the_same(df, monkeypatch):
    whole = plan(df).run(sf.DeterministicEngine(), batch_size=8, cache=False)
    monkeypatch.setattr(executor, "LineageRecorder", functools.partial(LineageRecorder, spill_rows=5))
    spilled = plan(df).run(sf.DeterministicEngine(), batch_size=8, cache=False)
    assert len(spilled.recorder._parts) == 5 and len(spilled.recorder._prompt_parts) >= 1
    assert_frame_equal(spilled.lineage.drop("latency_s"), whole.lineage.drop("latency_s"))
    assert_frame_equal(spilled.prompts, whole.prompts)
    lazy = spilled.scan_lineage().filter(pl.col("source") == "dedup").collect()
    assert lazy.height == whole.lineage.filter(pl.col("source") == "dedup").height
    folder = spilled.recorder._dir
    assert folder is not None and folder.exists()
    del spilled, lazy
    plan(df).run(sf.DeterministicEngine(), cache=False)  # sf.last_run() no longer holds it
    import gc

    gc.collect()
    assert not folder.exists()  # the parts go with the result


def test_a_bounded_memo_falls_back_to_the_cache_or_asks_again(df):
    # With the cache off, repeats older than the memo are asked again (and answered the same).
    unbounded = plan(df).run(sf.DeterministicEngine(), cache=False, batch_size=4)
    engine = sf.DeterministicEngine()
    result = executor.run_plan(plan(df).plan, engine=engine, cache=False, batch_size=4, memo_size=2)
    assert engine.requests_seen > unbounded.engine_requests
    assert_frame_equal(result.df, unbounded.df)
    # With the cache on, they come from the exact cache: the engine is asked each distinct text once.
    cached = sf.DeterministicEngine()
    again = executor.run_plan(plan(df).plan, engine=cached, batch_size=4, memo_size=2)
    assert cached.requests_seen == unbounded.engine_requests
    assert again.metrics["exact_cache_hits"][0] > 0
    assert_frame_equal(again.df, unbounded.df)


def test_a_failed_sink_leaves_no_file_and_a_good_one_streams(df, tmp_path):
    class Crash(sf.DeterministicEngine):
        def _generate(self, requests):
            if self.requests_seen >= 8:
                raise sf.EngineError("gone")  # a contract-level error: not retried, ends the run
            return super()._generate(requests)

    path = tmp_path / "out.parquet"
    with pytest.raises(sf.EngineError):
        plan(df).sink_parquet(path, engine=Crash(), batch_size=8, cache=False)
    assert not path.exists() and not list(tmp_path.iterdir())
    result = plan(df).sink_parquet(path, engine=sf.DeterministicEngine(), batch_size=8, cache=False)
    assert result.rows_written == 40 and result.df.height == 0
    assert_frame_equal(pl.read_parquet(path), plan(df).collect(engine=sf.DeterministicEngine(), cache=False))
    for method, reader in (("sink_csv", pl.read_csv), ("sink_ndjson", pl.read_ndjson), ("sink_ipc", pl.read_ipc)):
        out = tmp_path / f"out.{method}"
        getattr(plan(df), method)(out, engine=sf.DeterministicEngine(), cache=False)
        assert reader(out).height == 40


def test_sink_options_are_checked_before_the_run(df, tmp_path):
    engine = sf.DeterministicEngine()
    with pytest.raises(sf.PlanError, match="unsupported option"):
        plan(df).sink_parquet(tmp_path / "x.parquet", engine=engine, bogus=1)
    with pytest.raises(sf.PlanError, match="does not exist"):
        plan(df).sink_parquet(tmp_path / "nope" / "x.parquet", engine=engine)
    assert engine.requests_seen == 0


def test_an_empty_result_still_writes_a_file_with_the_schema(tmp_path):
    empty = pl.DataFrame({"t": ["a"]}).lazy().filter(pl.col("t") == "zzz").semantic.classify("t", ["A", "B"], name="c")
    path = tmp_path / "empty.parquet"
    empty.sink_parquet(path, engine=sf.DeterministicEngine())
    assert pl.read_parquet(path).schema == pl.Schema({"t": pl.String, "c": pl.String})
