"""kill -9 at random moments: the trial loop shared by ``test_processes.py`` (a handful of kills)
and ``benchmarks/kill_trials.py`` (20 or more).

One trial starts a real worker process (``worker.py``) on a cache directory the earlier trials
used too, lets it run for a random time, kills it with SIGKILL, and compares what the worker
reported with what the cache holds:

- *asked*: requests the engine started answering (the worker writes each batch's size before
  answering it);
- *stored*: answers whose ``put_many`` returned (written after it returns, so committed);
- *lost* = before + stored - after: answers the cache had, or was told it had, and does not --
  must be 0 or less (less: the kill came after a batch was committed, before the worker wrote
  that it was);
- *repeated* = asked - (after - before): answers the engine computed that are not in the cache
  (they will be asked again) -- at most one batch, the one in flight.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WORKER = str(Path(__file__).with_name("worker.py"))
ROOT = str(Path(__file__).parents[2])


def start(cache_dir, n_rows, batch_size, sleep_s, progress, offset=0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1"}
    args = [sys.executable, WORKER, str(cache_dir), str(n_rows), str(batch_size), str(sleep_s), str(progress),
            str(offset)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _numbers(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def cached(cache_dir: Path) -> int:
    """How many answers the cache holds (this process opens and closes it)."""
    from semframe.cache import open_exact_cache

    cache = open_exact_cache(cache_dir)
    try:
        return cache.count()
    finally:
        getattr(cache, "close", lambda: None)()  # (the store before issue 10 kept nothing open)


@dataclass
class Trial:
    kill_after_s: float  # after the worker's first engine batch started
    finished: bool  # the worker was done before the kill
    before: int
    after: int
    asked: int
    stored: int

    @property
    def lost(self) -> int:
        """Answers missing from the cache (negative: more there than the worker reported)."""
        return self.before + self.stored - self.after

    @property
    def repeated(self) -> int:
        return self.asked - (self.after - self.before)


def kill_trial(cache_dir: Path, progress: Path, rng: random.Random, *, n_rows: int, batch_size: int,
               sleep_s: float, timeout_s: float = 120.0) -> Trial:
    before = cached(cache_dir)
    proc = start(cache_dir, n_rows, batch_size, sleep_s, progress)
    deadline = time.monotonic() + timeout_s
    while not progress.exists() and proc.poll() is None:  # the worker's imports take a second
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the worker made no progress")
        time.sleep(0.002)
    remaining_batches = max(1, -(-(n_rows - before) // batch_size))
    delay = rng.uniform(0.0, 1.2 * remaining_batches * (sleep_s + 0.01))  # ~10 ms of semframe per batch
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    if finished:
        assert proc.returncode == 0, proc.stderr
    return Trial(delay, finished, before, cached(cache_dir), sum(_numbers(progress)),
                 sum(_numbers(progress.with_name(progress.name + ".stored"))))


def corrupt_files(cache_dir: Path) -> list[Path]:
    """Files the store moved aside as unreadable: a kill must never make one."""
    return sorted((Path(cache_dir) / "answers").glob("*.corrupt-*"))
