"""The Ray executor's driver memory against rows: is the driver's peak RSS flat at 1M rows?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ray_memory                # 100k and 1M rows
    .venv/bin/python -m benchmarks.ray_memory --rows 20000 100000 --no-write    # a quick look

One classify over short distinct texts, answered by 2 actors of ``sf.DeterministicEngine``
(``keep_batches=False``: instant answers, no history), lineage on, exact cache off, on a local
Ray cluster (loopback only, 2 CPUs) started by each measurement's own process. Four ways:

- ``data-whole, collect``: ``RayExecutor(mode="data", window_rows=None)`` -- the step is one
  Ray Data execution over all its distinct requests; an in-memory frame in, the result out;
- ``data, collect`` / ``data, sink``: ``mode="data"`` with the default ``window_rows=100_000``
  -- one Ray Data execution per window of 100k rows; ``sink``: a Parquet file scanned in and
  written out batch by batch;
- ``pool, collect`` / ``pool, sink``: ``RayExecutor(mode="pool")`` -- the local operators on the
  driver, each engine batch answered by the actor pool.

Each measurement runs in a fresh process; the number is that process's (the driver's) peak RSS,
``ru_maxrss`` -- the actors and Ray's own processes are other processes and not counted. The
baseline is the RSS after ``ray.init`` and the input (before the run). ``batch_size=2000`` in
every mode (the pool mode sends one engine batch per 2000 rows). Target (issue 15): the peak at
1M rows flat, read as the local executor's target, <= 1.5x the peak at 100k rows
(benchmarks/memory.py). Writes docs/results/ray_memory.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "ray_memory.md"
MARK = "RAY_MEMORY_RESULT "
MODES = (("data-whole", "collect"), ("data", "collect"), ("data", "sink"), ("pool", "collect"), ("pool", "sink"))
BATCH = 2000


def _engine_factory():
    """What each actor builds (a closure: sent by value)."""
    def make():
        import semframe as sf

        return sf.DeterministicEngine(keep_batches=False)

    return make


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, io: str, rows: int) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (before ray is imported)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import polars as pl
    import ray

    import semframe as sf
    from semframe.physical.sinks import SINKS

    tmp = Path(tempfile.mkdtemp(prefix="sf-raymem-"))
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "ray"), configure_logging=False,
             log_to_driver=False)
    df = pl.DataFrame({"t": [f"short text {i}" for i in range(rows)]})
    executor = (sf.RayExecutor(num_actors=2, mode="data", window_rows=None) if mode == "data-whole"
                else sf.RayExecutor(num_actors=2, mode=mode))
    if io == "collect":
        plan = df.lazy().semantic.classify("t", ["A", "B"], name="c")
    else:
        src = tmp / "in.parquet"
        df.write_parquet(src)
        del df
        plan = pl.scan_parquet(src).semantic.classify("t", ["A", "B"], name="c")
    base = _rss_mib()
    start = time.perf_counter()
    if io == "collect":
        result = plan.run(_engine_factory(), cache=False, batch_size=BATCH, progress=False, executor=executor)
        out_rows = result.df.height
    else:  # the frontend's sink_parquet has no executor= yet: the executor takes the sink itself
        sink = SINKS["sink_parquet"](tmp / "out.parquet", plan.collect_schema())
        result = executor.run(plan._plan_node, engine=_engine_factory(), sink=sink, cache=False,
                              batch_size=BATCH, progress=False)
        out_rows = result.rows_written
    seconds = time.perf_counter() - start
    lineage_rows = result.scan_lineage().select(pl.len()).collect().item()  # read lazily
    peak = _rss_mib()
    requests = result.metrics["engine_requests"].item()
    ray.shutdown()
    return {"mode": mode, "io": io, "rows": rows, "out_rows": out_rows, "lineage_rows": lineage_rows,
            "engine_requests": requests, "seconds": seconds, "peak_mib": peak, "baseline_mib": base}


def measure(mode: str, io: str, rows: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.ray_memory", "--worker", mode, io, str(rows)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARK)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"worker {mode} {io} {rows} failed: {out.stderr[-3000:]}")
    result = json.loads(line[len(MARK):])
    print(f"[bench] {mode}, {io}, {rows:,} rows: peak {result['peak_mib']:,.0f} MiB, "
          f"{result['seconds']:.1f} s", file=sys.stderr, flush=True)
    return result


def table(results: list[dict], sizes: list[int]) -> tuple[str, list[str]]:
    small, large = min(sizes), max(sizes)
    lines = ["| mode | in/out | rows | peak RSS MiB | baseline MiB | growth MiB | x peak at smallest | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for mode, io in MODES:
        by_rows = {r["rows"]: r for r in results if (r["mode"], r["io"]) == (mode, io)}
        if not by_rows:
            continue
        for n in sizes:
            r = by_rows[n]
            lines.append(f"| {mode} | {io} | {n:,} | {r['peak_mib']:,.0f} | {r['baseline_mib']:,.0f} | "
                         f"{r['peak_mib'] - r['baseline_mib']:,.0f} | "
                         f"{r['peak_mib'] / by_rows[small]['peak_mib']:.2f}x | {r['seconds']:.1f} |")
        ratio = by_rows[large]["peak_mib"] / by_rows[small]["peak_mib"]
        verdicts.append(f"- {mode}, {io}: peak at {large:,} rows = {ratio:.2f}x the peak at {small:,} "
                        f"(target <= 1.5x): {'flat (met)' if ratio <= 1.5 else 'NOT flat'}")
    return "\n".join(lines), verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--modes", nargs="+", default=[f"{m}-{io}" for m, io in MODES],
                   help="which of data-whole-collect data-collect data-sink pool-collect pool-sink")
    p.add_argument("--worker", nargs=3, metavar=("MODE", "IO", "ROWS"), help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        print(MARK + json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))), flush=True)
        return 0
    from benchmarks._common import machine_facts

    chosen = [tuple(m.rsplit("-", 1)) for m in args.modes]
    results = [measure(mode, io, n) for mode, io in MODES if (mode, io) in chosen for n in args.rows]
    for r in results:
        assert r["out_rows"] == r["rows"] == r["lineage_rows"] == r["engine_requests"], r
    text, verdicts = table(results, args.rows)
    print(text)
    print("\n".join(verdicts))
    if args.no_write:
        return 0
    facts = machine_facts()
    OUT.write_text("\n".join([
        "# Ray executor: the driver's memory against rows", "",
        "`OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ray_memory --rows "
        + " ".join(str(n) for n in args.rows) + "`", "",
        "One classify over short distinct texts, 2 actors of `sf.DeterministicEngine(keep_batches=False)`, "
        f"lineage on, exact cache off, `batch_size={BATCH}`, a local Ray cluster of 2 CPUs per measurement. "
        "Each measurement in a fresh process; the number is the driver's peak RSS (`ru_maxrss`; the actors "
        "and Ray's processes are not counted); baseline: after `ray.init` and the input, before the run. "
        "Every run answered every row (rows out = lineage rows = engine requests).", "",
        text, "", *verdicts, "",
        "Why: with `window_rows=None` the **data** mode gathers the step's whole input on the driver, renders "
        "and builds every request, keeps one per distinct key, ships them as Arrow blocks and holds every "
        "pickled outcome until the step's output is built -- memory that grows with the rows. With windows "
        "(the default, 100k rows) it does that for one window at a time, one Ray Data execution (and one "
        "actor pool start) per window. The **pool** mode runs the "
        "local operators, which stream: one batch of rows in memory at a time, lineage spilled to Parquet "
        "every 50k cells, the memo and the pool engine's token counts bounded (100k entries), the sink "
        "writing each batch as it comes -- so the driver's memory is the local executor's "
        "(docs/results/memory.md).", "",
        f"Machine: {json.dumps(facts)}", ""]))
    OUT.with_suffix(".json").write_text(json.dumps({"rows": args.rows, "batch_size": BATCH, "results": results,
                                                    "machine": facts}, indent=2))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
