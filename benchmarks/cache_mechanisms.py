"""Engine calls and wall time with each cache mechanism on and off; a re-run; a killed run resumed.

The column is BBC News leads with d% exact repeats and p% near-duplicates (``cache_data.py``).
The engine is a DeterministicEngine with a simulated cost of 50 ms per batch plus 4 ms per
request (a stand-in: the point is which requests reach the engine, and the caches' own overhead,
which is measured for real -- DuckDB, locking, embeddings, search).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cache_mechanisms.py [N] [D%] [P%]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cache_data import column  # noqa: E402

import semframe as sf  # noqa: E402

BATCH = 64


class SimulatedEngine(sf.DeterministicEngine):
    def __init__(self, progress: str | None = None):
        super().__init__()
        self.progress = progress

    def _generate(self, requests):
        if self.progress:
            with open(self.progress, "a") as f:
                f.write(f"{len(requests)}\n")
        time.sleep(0.05 + 0.004 * len(requests))
        return super()._generate(requests)


def plan(df, semantic: float | None = None):
    return df.lazy().semantic.classify("text", ["business", "entertainment", "politics", "sports", "tech"],
                                       instruction="What is the topic of this news story?", semantic_cache=semantic)


def measure(label, df, *, semantic=None, cache_dir=None, **run):
    sf.configure(cache_dir=cache_dir or tempfile.mkdtemp())
    engine = SimulatedEngine()
    t = time.perf_counter()
    result = plan(df, semantic).run(engine, batch_size=BATCH, **run)
    wall = time.perf_counter() - t
    m = result.metrics.row(0, named=True)
    print(f"| {label} | {engine.requests_seen} | {len(engine.batches)} | {m['dedup_hits']} | "
          f"{m['exact_cache_hits']} | {m['semantic_cache_hits']} | {wall:.2f} s |")
    return result


def child(parquet: str, cache_dir: str, progress: str) -> None:
    import polars as pl

    sf.configure(cache_dir=cache_dir)
    plan(pl.read_parquet(parquet)).run(SimulatedEngine(progress), batch_size=BATCH)


def killed_and_resumed(df, kill_after: int) -> None:
    work = Path(tempfile.mkdtemp())
    df.write_parquet(work / "col.parquet")
    progress = work / "progress"
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(work / "col.parquet"), str(work / "cache"),
                             str(progress)])
    while not progress.exists() or len(progress.read_text().splitlines()) < kill_after:
        if proc.poll() is not None:
            raise RuntimeError("the child finished before it was killed")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [int(x) for x in progress.read_text().split()]
    sf.configure(cache_dir=work / "cache")
    engine = SimulatedEngine()
    t = time.perf_counter()
    resumed = plan(df).run(engine, batch_size=BATCH)
    wall = time.perf_counter() - t
    sf.configure(cache_dir=tempfile.mkdtemp())
    whole = SimulatedEngine()
    straight = plan(df).run(whole, batch_size=BATCH)
    sent = sum(before)
    print(f"\nKilled (SIGKILL) after the engine had been sent {len(before)} batches ({sent} requests; "
          f"the last one was in flight).")
    print(f"Resumed run: {engine.requests_seen} requests ({resumed.metrics['exact_cache_hits'][0]} "
          f"rows from the exact cache), {wall:.2f} s.")
    print(f"Total requests sent: {sent + engine.requests_seen}; answered and kept: "
          f"{sent - before[-1] + engine.requests_seen}; uninterrupted run: {whole.requests_seen}. "
          f"Same result as uninterrupted: {resumed.df.equals(straight.df)}.")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    d = float(sys.argv[2]) if len(sys.argv) > 2 else 20
    p = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    df = column(n, d, p)
    print(f"{n} rows, {d:g}% exact repeats, {p:g}% near-duplicates; batch size {BATCH}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    from semframe.cache.embed import default_embedder, load_model

    t = time.perf_counter()
    load_model(default_embedder().path)
    print(f"(embedding model loaded once beforehand: {time.perf_counter() - t:.1f} s)\n")
    print("| mechanisms | engine requests | engine batches | dedup | exact cache | semantic cache | wall |")
    print("|---|---|---|---|---|---|---|")
    measure("none (optimize=False, cache=False)", df, optimize=False, cache=False)
    measure("in-run dedup", df, cache=False)
    measure("dedup + exact cache (cold)", df)
    sem_dir = tempfile.mkdtemp()
    measure("dedup + exact + semantic 0.95 (cold)", df, semantic=0.95, cache_dir=sem_dir)
    measure("re-run of the finished plan (warm)", df, semantic=0.95, cache_dir=sem_dir)
    warm_dir = tempfile.mkdtemp()
    measure("dedup + exact (cold), for the re-run below", df, cache_dir=warm_dir)
    measure("re-run of the finished plan (warm, exact only)", df, cache_dir=warm_dir)
    measure("dedup + semantic 0.90, cache=False", df, semantic=0.90, cache=False)
    killed_and_resumed(df, kill_after=5)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
