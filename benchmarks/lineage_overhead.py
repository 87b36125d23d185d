"""How much per-cell lineage costs: a 100k-row run with the test engine, lineage on vs off.

The test engine answers instantly, so this measures semframe's own per-row work (rendering,
dedup, bookkeeping) and the share of it that lineage adds; with a real model the engine's time
dwarfs both. Runs alternate on/off, ``--repeats`` times each. The overhead is computed on CPU
time (``time.process_time``, all threads of this process), taking the least of the repeats:
on a shared 2-core machine wall time swings with other processes' load far more than lineage
costs; the median wall time is printed beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lineage_overhead.py            # 100k rows
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lineage_overhead.py --rows 10000 --repeats 1

Prints a Markdown table (the one in docs/results/lineage_overhead.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import polars as pl

import semframe as sf


def workloads(rows: int) -> dict[str, tuple[pl.DataFrame, object]]:
    distinct = pl.DataFrame({"text": [f"review {i}: the product arrived on day {i % 31}" for i in range(rows)]})
    repeats = pl.DataFrame({"text": [f"review {i % (rows // 10)}" for i in range(rows)]})
    return {
        "classify, all rows distinct": (distinct, lambda lf: lf.semantic.classify("text", ["pos", "neg", "neu"])),
        "classify, 10% distinct (dedup)": (repeats, lambda lf: lf.semantic.classify("text", ["pos", "neg", "neu"])),
        "extract {topic: str, score: int}": (distinct, lambda lf: lf.semantic.extract(
            "text", {"topic": str, "score": int})),
    }


def timed(df: pl.DataFrame, build, lineage: bool) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, lineage rows) of one run, including building the lineage frame."""
    plan = build(df.lazy())
    cpu, wall = time.process_time(), time.perf_counter()
    result = plan.run(sf.DeterministicEngine(), cache=False, lineage=lineage, progress=False)
    return time.process_time() - cpu, time.perf_counter() - wall, result.lineage.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"rows={args.rows:,} repeats={args.repeats} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"cpus={os.cpu_count()} python={platform.python_version()} polars={pl.__version__}\n")
    print("| workload | CPU s, lineage off | CPU s, lineage on | overhead (CPU) | per cell | wall s off / on (median) "
          "| lineage rows |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (df, build) in workloads(args.rows).items():
        timed(df.head(1000), build, True)  # warm up
        off, on, cells = [], [], 0
        for _ in range(args.repeats):
            off.append(timed(df, build, False))
            run_on = timed(df, build, True)
            on.append(run_on)
            cells = run_on[2]
        c_off, c_on = min(r[0] for r in off), min(r[0] for r in on)
        w_off, w_on = statistics.median(r[1] for r in off), statistics.median(r[1] for r in on)
        per_cell = 1e6 * (c_on - c_off) / max(cells, 1)
        print(f"| {name} | {c_off:.2f} | {c_on:.2f} | {100 * (c_on / c_off - 1):+.1f}% | {per_cell:+.1f} µs "
              f"| {w_off:.2f} / {w_on:.2f} | {cells:,} |")


if __name__ == "__main__":
    main()
