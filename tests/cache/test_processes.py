"""Real processes: a run killed mid-way resumes from the cache; two processes share one cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import semframe as sf
from semframe.cache import open_exact_cache
from tests.cache.worker import plan

WORKER = str(Path(__file__).with_name("worker.py"))
ROOT = str(Path(__file__).parents[2])


def _start(cache_dir, n_rows, batch_size, sleep_s, progress, offset=0):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, WORKER, str(cache_dir), str(n_rows), str(batch_size), str(sleep_s), str(progress), str(offset)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_killed_run_resumes_without_asking_again(tmp_path):
    cache_dir, progress = tmp_path / "cache", tmp_path / "progress"
    n_rows, batch = 200, 10
    proc = _start(cache_dir, n_rows, batch, 0.05, progress)
    deadline = time.monotonic() + 60
    while _lines(progress) < 5:  # let it answer several batches, then kill it mid-run
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    started = _lines(progress)
    saved = open_exact_cache(cache_dir).count()
    assert 0 < saved < n_rows
    assert saved >= (started - 1) * batch  # every finished batch was written; at most the one in flight is lost

    sf.configure(cache_dir=cache_dir)
    engine = sf.DeterministicEngine()
    resumed = plan(n_rows).run(engine, batch_size=batch)
    assert engine.requests_seen == n_rows - saved  # nothing answered before the kill is asked again
    assert resumed.metrics["exact_cache_hits"].to_list() == [saved]

    sf.configure(cache_dir=tmp_path / "fresh")
    uninterrupted = plan(n_rows).run(sf.DeterministicEngine(), batch_size=batch)
    assert resumed.df.equals(uninterrupted.df)


def test_two_processes_share_one_cache(tmp_path):
    cache_dir = tmp_path / "cache"
    # Overlapping work (rows 0-119 and 60-179), small batches: many interleaved writes.
    procs = [_start(cache_dir, 120, 5, 0.0, tmp_path / f"p{k}", offset=60 * k) for k in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert open_exact_cache(cache_dir).count() == 180
    sf.configure(cache_dir=cache_dir)
    engine = sf.DeterministicEngine()
    plan(180).run(engine, batch_size=64)
    assert engine.requests_seen == 0
