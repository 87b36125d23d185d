"""Real processes: a run killed mid-way resumes from the cache; two processes share one cache;
kill -9 at random moments loses no answer and repeats at most one batch per kill."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import semframe as sf
from semframe.cache import open_exact_cache
from tests.cache.trials import corrupt_files, kill_trial
from tests.cache.trials import start as _start
from tests.cache.worker import plan


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


def test_kill_9_at_random_moments_loses_nothing_and_repeats_at_most_a_batch(tmp_path):
    """A handful of kills (the full run of 20+: benchmarks/kill_trials.py), each resuming the
    previous one's work on the same cache."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cache_dir = tmp_path / "cache"
    n_rows, batch = 240, 10
    trials = []
    for k in range(4):
        trial = kill_trial(cache_dir, tmp_path / f"progress{k}", rng, n_rows=n_rows, batch_size=batch, sleep_s=0.01)
        trials.append(trial)
        assert trial.lost <= 0, (seed, trials)
        assert trial.repeated <= batch, (seed, trials)
        assert not corrupt_files(cache_dir), (seed, trials)
    sf.configure(cache_dir=cache_dir)
    engine = sf.DeterministicEngine()
    resumed = plan(n_rows).run(engine, batch_size=batch)
    assert engine.requests_seen == n_rows - trials[-1].after
    asked = sum(t.asked for t in trials) + engine.requests_seen
    assert asked <= n_rows + len(trials) * batch, (seed, trials)
    sf.configure(cache_dir=tmp_path / "fresh")
    assert resumed.df.equals(plan(n_rows).run(sf.DeterministicEngine(), batch_size=batch).df)
