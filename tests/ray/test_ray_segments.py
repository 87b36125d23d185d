"""The Ray executor with ``shared_cache=``: the data mode's actors write answer segments to the
shared directory (not the DuckDB file), a rerun is answered from them with no engine call, and
the pool mode's driver reads the same segments."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import semframe as sf
from semframe.cache import SegmentCache, open_exact_cache

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "semframe[ray]")')


def _plan():
    titles = [None if i == 7 else f"Battle number {i % 23}" for i in range(40)]  # 23 distinct, a null
    return pl.DataFrame({"title": titles}).lazy().semantic.classify("title", ["YES", "NO"], name="c")


def test_a_data_mode_rerun_is_answered_by_the_segments(ray_cluster, tmp_path: Path):
    shared = tmp_path / "shared"
    executor = sf.RayExecutor(num_actors=2, batch_size=8, mode="data", shared_cache=f"file://{shared}")
    assert executor.shared_cache == str(shared)
    first = _plan().run("deterministic", executor=executor)
    assert first.metrics["engine_requests"].item() == 23
    segments = SegmentCache(shared).segments()
    assert len(segments) >= 2  # one per engine batch, from both actors
    assert SegmentCache(shared).count() == 23
    assert open_exact_cache().count() == 0  # nothing went to the DuckDB file
    again = _plan().run("deterministic", executor=executor)
    assert again.metrics["engine_requests"].item() == 0  # no engine call on the rerun
    assert again.metrics["exact_cache_hits"].item() == 23
    assert again.df.equals(first.df)
    assert SegmentCache(shared).segments() == segments  # and nothing new written
    pooled = _plan().run("deterministic", executor=sf.RayExecutor(num_actors=2, mode="pool", shared_cache=shared))
    assert pooled.metrics["engine_requests"].item() == 0  # the pool mode's driver reads them too
    assert pooled.df.equals(first.df)


def test_a_data_mode_run_shares_answer_segments_on_an_object_store(ray_cluster):
    """The same, with the segments in an S3 bucket (moto's server on loopback): the actors write
    them there, a pool-mode rerun reads them back, and the URL's credentials stay out of sight."""
    from tests.s3_server import s3_server

    pafs = pytest.importorskip("pyarrow.fs")
    with s3_server() as endpoint:
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing",
                          region="us-east-1", allow_bucket_creation=True).create_dir("answers")
        # Credentials in the URL: the actors run in other processes, without this test's environment.
        url = f"s3://testing:s3cr3t-in-url@answers/run?endpoint_override={endpoint}&scheme=http&region=us-east-1"
        executor = sf.RayExecutor(num_actors=2, batch_size=8, mode="data", shared_cache=url)
        assert "s3cr3t-in-url" not in repr(executor)
        first = _plan().run("deterministic", executor=executor)
        assert first.metrics["engine_requests"].item() == 23
        assert SegmentCache(url).count() == 23 and len(SegmentCache(url).segments()) >= 2
        assert open_exact_cache().count() == 0
        pooled = _plan().run("deterministic", executor=sf.RayExecutor(num_actors=1, mode="pool", shared_cache=url))
        assert pooled.metrics["engine_requests"].item() == 0 and pooled.metrics["exact_cache_hits"].item() == 23
        assert pooled.df.equals(first.df)
