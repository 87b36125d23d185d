"""What the persistent exact cache costs in throughput: cache off vs on (cold) vs on (warm rerun).

100k distinct short rows are classified on ``sf.DeterministicEngine()`` (an engine that answers
in microseconds, so what is measured is semframe and its cache, not a model):

- **off**: ``cache=False``;
- **on, cold**: ``cache=True`` on an empty cache directory (every answer is looked up, missed,
  asked and stored);
- **on, warm**: a new process on the directory the cold run filled (every answer comes from the
  cache; the process opens the file and reads its key index first).

Each run is its own subprocess with ``SEMFRAME_CACHE_DIR`` a fresh temp dir and
``OMP_NUM_THREADS=1``; only ``run()`` is timed: duckdb and pyarrow are imported before the clock
starts in every mode (a one-time ~0.3 s the first cached run of a process pays, reported
separately: it is not a cost per row). The three are measured side by side, interleaved,
``--repeats`` times (default 3), and the median of each is reported, because the machine is
shared. Prints a table and writes ``docs/results/cache_throughput.md``.

    .venv/bin/python benchmarks/cache_throughput.py [--rows 100000] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "cache_throughput.md"


def child(rows: int, cache: bool) -> None:
    t = time.perf_counter()
    import duckdb  # noqa: F401  -- imported before the clock starts in every mode (see the docstring)
    import pyarrow  # noqa: F401
    imports_s = time.perf_counter() - t
    import polars as pl

    import semframe as sf

    df = pl.DataFrame({"t": [f"row {i}" for i in range(rows)]})
    plan = df.lazy().semantic.classify("t", ["A", "B"], name="c")
    engine = sf.DeterministicEngine()
    t, cpu = time.perf_counter(), time.process_time()
    result = plan.run(engine=engine, cache=cache)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    m = result.metrics.row(0, named=True)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rows": rows, "engine_requests": engine.requests_seen,
                      "exact_cache_hits": m["exact_cache_hits"], "imports_s": imports_s}))


def measure(rows: int, cache: bool, cache_dir: Path) -> dict:
    env = {**os.environ, "SEMFRAME_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, __file__, "--child", str(rows), "1" if cache else "0"],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"off": [], "cold": [], "warm": []}
    for r in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="sf-throughput-"))
        try:
            runs["off"].append(measure(args.rows, False, work / "off"))
            runs["cold"].append(measure(args.rows, True, work / "on"))
            runs["warm"].append(measure(args.rows, True, work / "on"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{k} {v[-1]['rows'] / v[-1]['wall_s']:,.0f} rows/s" for k, v in runs.items()), flush=True)

    assert all(x["engine_requests"] == args.rows for x in runs["cold"]), "the cold run must ask every row"
    assert all(x["engine_requests"] == 0 for x in runs["warm"]), "the warm run must ask nothing"
    rate = {k: statistics.median(x["rows"] / x["wall_s"] for x in v) for k, v in runs.items()}
    cpu_rate = {k: statistics.median(x["rows"] / x["cpu_s"] for x in v) for k, v in runs.items()}
    spread = {k: (min(x["rows"] / x["wall_s"] for x in v), max(x["rows"] / x["wall_s"] for x in v))
              for k, v in runs.items()}
    label = {"off": "cache off (`cache=False`)", "cold": "cache on, cold (empty cache)",
             "warm": "cache on, warm (rerun, new process)"}
    lines = [
        "| run | rows/s (wall, median) | range | vs cache off | rows per CPU-second (median) | vs cache off |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in ("off", "cold", "warm"):
        lo, hi = spread[k]
        lines.append(f"| {label[k]} | {rate[k]:,.0f} | {lo:,.0f} - {hi:,.0f} | {rate[k] / rate['off']:.0%} "
                     f"| {cpu_rate[k]:,.0f} | {cpu_rate[k] / cpu_rate['off']:.0%} |")
    table = "\n".join(lines)
    imports = statistics.median(x["imports_s"] for x in runs["off"])
    print()
    print(table)

    if args.no_write:
        return
    import duckdb

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(f"""# Exact cache throughput

`benchmarks/cache_throughput.py`: {args.rows:,} distinct short rows (`"row <i>"`), `classify(["A", "B"])`
on `sf.DeterministicEngine()` (answers in microseconds: what is measured is semframe and its
cache), default `batch_size` (512). Each run is its own process (`SEMFRAME_CACHE_DIR` a fresh
temp dir, `OMP_NUM_THREADS=1`); only `run()` is timed, with duckdb and pyarrow imported before the
clock starts in all three (importing them takes {imports:.2f} s once per process, paid by the first
cached run). Median of {args.repeats} interleaved repeats (off, cold, warm, off, ...) on a shared
{os.cpu_count()}-core machine; the range shows the noise.

{table}

Wall-clock rows/s is what a user sees; rows per CPU-second (the process's CPU time, all
threads) is the same work measured without the waits other programs on a shared machine cause,
so it is the steadier of the two (a cold run also waits for the disk: one `fsync` per batch).

Goal (issue 10, item 16): cache on >= 50% of cache off. Before this change (a DuckDB open and an
`flock` per lookup and per insert, ~20 ms each, plus a table scan per lookup) the audit measured
6,875 rows/s on vs 37,444 off (18%).

What a cold batch of 512 rows costs now: no DuckDB statement for the lookup (the in-memory key
index says every key is absent), one `INSERT` from Arrow (~1 ms of DuckDB work plus the WAL's
`fsync`, ~2-5 ms on this disk), and one read of the new rows' ids. A warm batch: one read of
its rows by row-id ranges (~1 ms) and building the answers.

Python {platform.python_version()}, duckdb {duckdb.__version__}, {platform.machine()}.
""")
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3] == "1")
    else:
        main()
