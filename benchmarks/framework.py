"""The framework's own overhead (no LLM): a classify on the test engine, old core vs new core.

``sf.DeterministicEngine()`` answers instantly, so a run's time is semframe's own per-row work
(plan, rendering, request keys, dedup, lineage, cache bookkeeping). Targets (from the issue):
>= 50k rows/s for a classify over 1M short distinct rows with lineage off, and no slower than
before with lineage on. Also reported: peak RSS, and 100k rows with the exact cache on vs off.

    .venv/bin/python -m benchmarks.framework                       # current tree only
    .venv/bin/python -m benchmarks.framework --baseline HEAD       # HEAD (old) vs working tree (new)
    .venv/bin/python -m benchmarks.framework --baseline HEAD --quick   # smoke: 100k/20k rows, 1 repeat

Default: 2 repetitions per configuration and side. One side takes ~110 s per repetition on the
project's 2-core box (1M rows: ~27 s lineage off, ~35 s on; 100k cache on: ~16 s with its warm
rerun), so 3 repetitions x 2 sides would pass 10 minutes; 2 x 2 is ~7-8 minutes.

Every measurement runs in a fresh process (``--worker``, same file), so its peak RSS
(``ru_maxrss``) is its own, with OMP_NUM_THREADS=1; POLARS_MAX_THREADS is passed through and
recorded. With ``--baseline REF`` a git worktree of REF is made (or reused) at
``/tmp/semframe-baseline-<sha>`` and each configuration runs with ``PYTHONPATH=<worktree>/src``
(old) and ``PYTHONPATH=<this tree>/src`` (new) with the same venv python, alternating old/new
per repetition; the worker reports ``semframe.__file__`` and the driver checks it. A side that
fails is reported as ``failed: <error>`` and the run goes on.

Writes docs/results/framework.md and docs/results/framework.json (not for ``--quick``
unless ``--out`` is given). The driver imports only the standard library: a broken core under
test cannot break it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MARK = "FRAMEWORK_RESULT "
THREADS = os.environ.get("SEMFRAME_BENCH_THREADS", "1")
WORKER_TIMEOUT_S = 900

# ------------------------------------------------------------------------------------- worker


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process: build the frame, run the classify once, timed."""
    import polars as pl

    import semframe as sf

    n, lineage, cache = int(args["rows"]), bool(args["lineage"]), bool(args["cache"])
    out: dict[str, Any] = {
        "semframe_file": sf.__file__,
        "polars": pl.__version__,
        "python": platform.python_version(),
        "polars_threads": pl.thread_pool_size() if hasattr(pl, "thread_pool_size") else None,
        "rows": n, "lineage": lineage, "cache": cache,
    }

    def plan(frame):
        return frame.lazy().semantic.classify("t", ["A", "B"], name="c")

    # Warm up on other texts (no cache hits for the timed run): first-call imports and setup
    # (the cache store's files, polars' first plans) stay out of the timing.
    warm = pl.DataFrame({"t": [f"warm-up text {i}" for i in range(1000)]})
    plan(warm).run(engine=sf.DeterministicEngine(), lineage=lineage, cache=cache)
    del warm

    df = pl.DataFrame({"t": [f"short text {i}" for i in range(n)]})
    out["peak_mib_before_run"] = round(_peak_mib(), 1)
    lazy = plan(df)
    engine = sf.DeterministicEngine()
    cpu, wall = time.process_time(), time.perf_counter()
    result = lazy.run(engine=engine, lineage=lineage, cache=cache)
    out["seconds"] = time.perf_counter() - wall
    out["cpu_seconds"] = time.process_time() - cpu
    out["peak_mib"] = round(_peak_mib(), 1)
    out["rows_per_s"] = n / out["seconds"]
    t = time.perf_counter()
    frame = result.df
    out["df_seconds"] = time.perf_counter() - t  # reading .df, outside the timing above
    out["rows_out"] = frame.height
    out["c_nulls"] = frame.get_column("c").null_count() if "c" in frame.columns else None
    out["engine_requests"] = getattr(result, "engine_requests", None)
    lin = getattr(result, "lineage", None)
    out["lineage_rows"] = getattr(lin, "height", None)
    if cache:
        # A second run in the same cache dir: every answer from the exact cache.
        del result, frame, lin
        cpu, wall = time.process_time(), time.perf_counter()
        again = plan(df).run(engine=sf.DeterministicEngine(), lineage=lineage, cache=cache)
        out["warm_seconds"] = time.perf_counter() - wall
        out["warm_cpu_seconds"] = time.process_time() - cpu
        out["warm_engine_requests"] = getattr(again, "engine_requests", None)
        out["peak_mib_after_warm"] = round(_peak_mib(), 1)
    return out


# ------------------------------------------------------------------------------------- driver


def log(msg: str) -> None:
    print(f"[framework {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def baseline_worktree(ref: str) -> tuple[Path, str]:
    """A detached worktree of ``ref`` under /tmp (made once, reused after)."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = Path(tempfile.gettempdir()) / f"semframe-baseline-{sha[:12]}"
    if path.exists():
        try:
            have = git("rev-parse", "HEAD", cwd=path)
        except subprocess.CalledProcessError as err:
            raise SystemExit(f"{path} exists but is not a git worktree; remove it or pick another ref") from err
        if have != sha:
            raise SystemExit(f"{path} is at {have[:12]}, not {sha[:12]}; remove it (git worktree remove)")
        log(f"reusing baseline worktree {path}")
    else:
        log(f"creating baseline worktree {path} at {sha[:12]} ({ref})")
        git("worktree", "add", "--detach", str(path), sha)
    if not (path / "src" / "semframe" / "__init__.py").exists():
        raise SystemExit(f"{path}/src/semframe is missing")
    return path, sha


def first_error_line(stderr: str, rc: int) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    # A traceback's message is its last line; prefer it over the "Traceback ..." header.
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "[framework")) and ln != "Traceback (most recent call last):":
            return ln[:200]
    return f"exit status {rc}"


def measure(side: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Run one worker process; its JSON, or {"error": ...}."""
    cache_dir = tempfile.mkdtemp(prefix="semframe-bench-cache-")
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, PYTHONUNBUFFERED="1",
        SEMFRAME_CACHE_DIR=cache_dir,  # a fresh cache per measurement, never the user's
        PYTHONPATH=os.pathsep.join([str(side["src"]), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    spec = {"rows": config["rows"], "lineage": config["lineage"], "cache": config["cache"]}
    cmd = [side["python"], "-m", "benchmarks.framework", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {WORKER_TIMEOUT_S} s"}
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        return {"error": first_error_line(proc.stderr, proc.returncode)}
    res = json.loads(lines[-1][len(MARK):])
    expected = Path(side["src"]).resolve() / "semframe"
    if Path(res["semframe_file"]).resolve().parent != expected:
        return {"error": f"imported {res['semframe_file']}, not {expected}", **res}
    if res.get("rows_out") != config["rows"]:
        return {"error": f"{res.get('rows_out')} rows out of {config['rows']}", **res}
    return res


def lscpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"failed": runs[0]["error"] if runs else "not run"}
    med = statistics.median
    out = {
        "n": len(ok),
        "seconds": med(r["seconds"] for r in ok),
        "cpu_seconds": med(r["cpu_seconds"] for r in ok),
        "rows_per_s": med(r["rows_per_s"] for r in ok),
        "peak_mib": med(r["peak_mib"] for r in ok),
        "engine_requests": ok[0].get("engine_requests"),
    }
    if "warm_seconds" in ok[0]:
        out["warm_rows_per_s"] = med(r["rows"] / r["warm_seconds"] for r in ok)
    if len(ok) < len(runs):
        out["some_failed"] = next(r["error"] for r in runs if "error" in r)
    return out


def fmt_rate(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    if "failed" in s:
        return "failed: " + s["failed"].replace("|", "\\|")
    return f"{s['rows_per_s']:,.0f}"


def fmt_mib(s: dict[str, Any] | None) -> str:
    return f"{s['peak_mib']:,.0f}" if s and "failed" not in s else "-"


def ratio(new: dict | None, old: dict | None, key: str, invert: bool = False) -> str:
    if not new or not old or "failed" in new or "failed" in old:
        return "-"
    r = old[key] / new[key] if invert else new[key] / old[key]
    return f"{r:.2f}x"


def table(configs: list[dict], summary: dict[str, dict[str, dict]], sides: list[str]) -> str:
    head = ["config", "rows", "lineage", "cache", "old rows/s", "new rows/s", "ratio new/old",
            "ratio (CPU time)", "old peak MiB", "new peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 6) + "|"]
    for c in configs:
        s = summary[c["name"]]
        old, new = s.get("old"), s.get("new")
        lines.append("| " + " | ".join([
            c["name"], f"{c['rows']:,}", "on" if c["lineage"] else "off", "on" if c["cache"] else "off",
            fmt_rate(old), fmt_rate(new), ratio(new, old, "rows_per_s"),
            ratio(new, old, "cpu_seconds", invert=True), fmt_mib(old), fmt_mib(new)]) + " |")
    return "\n".join(lines)


def target_lines(configs: list[dict], summary: dict, big: int) -> list[str]:
    out = []
    off = next((c for c in configs if c["name"] == "classify, lineage off"), None)
    on = next((c for c in configs if c["name"] == "classify, lineage on"), None)
    if off:
        new = summary[off["name"]].get("new", {})
        got = "failed" if "failed" in new else f"{new['rows_per_s']:,.0f} rows/s"
        met = "" if "failed" in new else (" - met" if new["rows_per_s"] >= 50_000 else " - not met")
        out.append(f"- >= 50k rows/s, {big:,} distinct rows, lineage off (new tree): {got}{met}")
    if on and "old" in summary[on["name"]]:
        r = ratio(summary[on["name"]]["new"], summary[on["name"]]["old"], "rows_per_s")
        rc = ratio(summary[on["name"]]["new"], summary[on["name"]]["old"], "cpu_seconds", invert=True)
        out.append(f"- lineage on no slower than the baseline: new/old = {r} (wall), {rc} (CPU time)")
    return out


def write_md(path: Path, facts: dict, tbl: str, targets: list[str], summary: dict, configs: list[dict]) -> None:
    warm = []
    for c in configs:
        for side in ("old", "new"):
            s = summary[c["name"]].get(side)
            if s and "warm_rows_per_s" in s:
                warm.append(f"{side} {s['warm_rows_per_s']:,.0f} rows/s")
    same = facts.get("baseline_sha") and facts["new_dirty_files"] == 0 and facts["baseline_sha"] == facts["head_sha"]
    text = f"""# Framework overhead (test engine, no LLM)

What semframe itself costs per row: a classify on `sf.DeterministicEngine()` (answers instantly),
measured with `benchmarks/framework.py`:

```
{facts['command']}
```

- Date: {facts['date']}; total runtime {facts['runtime_s']:.0f} s.
- Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB; load average
  {facts['load_start']:.2f} at start, {facts['load_end']:.2f} at the end (shared with other jobs).
- Python {facts['python']}, polars {facts['polars']}; every measurement in a fresh process with
  OMP_NUM_THREADS={THREADS}, POLARS_MAX_THREADS={facts['polars_max_threads_env'] or 'unset'}
  (polars thread pool: {facts['polars_threads']}).
- Old: {facts['old_label']}. New: {facts['new_label']}.
- {facts['repeat']} repetition(s) per configuration and side, old and new alternated (order swapped
  every repetition); medians shown. Frame: `pl.DataFrame({{"t": [f"short text {{i}}" for i in range(n)]}})`,
  all rows distinct; timed: the `.run(engine=..., lineage=..., cache=...)` call only, after a
  1,000-row warm-up run on other texts. Cache on: a fresh `SEMFRAME_CACHE_DIR` per measurement
  (a cold cache: every answer is written).

{tbl}

Targets:

{chr(10).join(targets) if targets else '- (none computed)'}

Cache on, second run in the same cache dir (all answers from the cache): {', '.join(warm) or '-'}.

Peak MiB is the worker process's `ru_maxrss` (it includes the input frame and the warm-up).
Noise: on a shared 2-core box wall time swings with other jobs' load (tens of percent between
repetitions are common); the CPU-time ratio (`time.process_time` of the run call) is steadier and
is the better figure for small differences. Ratios within ~10% of 1.0 are not a difference.
{"This run compared HEAD with an unchanged tree: both sides are the same code, so its ratios show the noise alone." if same else ""}
Raw numbers: `docs/results/framework.json`.
"""
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of the lineage off/on runs (1,000,000)")
    parser.add_argument("--cache-rows", type=int, default=None, help="rows of the cache off/on runs (100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per configuration and side (2)")
    parser.add_argument("--baseline", metavar="REF", help="git ref to compare against (old side)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100k/20k rows, 1 repetition")
    parser.add_argument("--out", help="results path prefix (default docs/results/framework; "
                                      "--quick writes nothing unless given)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(MARK + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    big = args.rows or (100_000 if args.quick else 1_000_000)
    small = args.cache_rows or (20_000 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 2)
    out_prefix = Path(args.out) if args.out else (None if args.quick else RESULTS / "framework")
    python = str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable

    configs = [
        {"name": "classify, lineage off", "rows": big, "lineage": False, "cache": False},
        {"name": "classify, lineage on", "rows": big, "lineage": True, "cache": False},
        {"name": "classify, cache off", "rows": small, "lineage": True, "cache": False},
        {"name": "classify, cache on", "rows": small, "lineage": True, "cache": True},
    ]
    head_sha = git("rev-parse", "HEAD")
    dirty = [ln for ln in git("status", "--porcelain", "--", "src").splitlines() if ln.strip()]
    sides: dict[str, dict[str, Any]] = {}
    facts: dict[str, Any] = {"baseline_ref": args.baseline, "baseline_sha": None, "head_sha": head_sha,
                             "new_dirty_files": len(dirty)}
    if args.baseline:
        wt, sha = baseline_worktree(args.baseline)
        sides["old"] = {"src": wt / "src", "python": python}
        facts["baseline_sha"] = sha
        facts["old_label"] = f"`{args.baseline}` = {sha[:12]} (worktree {wt})"
    else:
        facts["old_label"] = "not measured (no --baseline)"
    sides["new"] = {"src": ROOT / "src", "python": python}
    facts["new_label"] = (f"working tree {ROOT} at {head_sha[:12]}"
                          + (f" with {len(dirty)} changed file(s) under src/" if dirty else " (no changes under src/)"))

    names = list(sides)
    log(f"{len(configs)} configs x {repeat} repetition(s) x {len(names)} side(s); rows {big:,} / {small:,}")
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    raw: dict[str, dict[str, list]] = {c["name"]: {s: [] for s in names} for c in configs}
    for rep in range(repeat):
        order = names if rep % 2 == 0 else names[::-1]
        for c in configs:
            for side in order:
                runs = raw[c["name"]][side]
                if runs and all("error" in r for r in runs):
                    continue  # failed before: do not spend the time again
                res = measure(sides[side], c)
                res["repetition"] = rep
                runs.append(res)
                msg = (f"failed: {res['error']}" if "error" in res else
                       f"{res['rows_per_s']:,.0f} rows/s, {res['seconds']:.2f} s wall, "
                       f"{res['cpu_seconds']:.2f} s CPU, peak {res['peak_mib']:,.0f} MiB")
                log(f"rep {rep + 1}/{repeat} {side:3} {c['name']} ({c['rows']:,}): {msg}")
    runtime = time.perf_counter() - start

    summary = {c["name"]: {s: summarize(raw[c["name"]][s]) for s in names} for c in configs}
    tbl = table(configs, summary, names)
    targets = target_lines(configs, summary, big)
    print(tbl)
    print()
    print("\n".join(targets))
    print(f"\nruntime {runtime:.0f} s")

    any_ok = next((r for c in raw.values() for runs in c.values() for r in runs if "polars" in r), {})
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    shown = ["--baseline", args.baseline] if args.baseline else []
    if args.quick:
        shown.append("--quick")
    for flag, val in (("--rows", args.rows), ("--cache-rows", args.cache_rows)):
        if val is not None:
            shown += [flag, str(val)]
    shown += ["--repeat", str(repeat)]  # always: defaults may change
    facts.update(
        command=".venv/bin/python -m benchmarks.framework " + " ".join(shlex.quote(a) for a in shown),
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=lscpu_model(), cores=os.cpu_count(), memory_gib=mem,
        python=any_ok.get("python", platform.python_version()), polars=any_ok.get("polars", "?"),
        polars_threads=any_ok.get("polars_threads"),
        polars_max_threads_env=os.environ.get("POLARS_MAX_THREADS"),
        omp_num_threads=THREADS, repeat=repeat, rows=big, cache_rows=small,
        runtime_s=runtime, load_start=load_start, load_end=os.getloadavg()[0],
    )
    if out_prefix is not None:
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        md, js = out_prefix.with_suffix(".md"), out_prefix.with_suffix(".json")
        write_md(md, facts, tbl, targets, summary, configs)
        js.write_text(json.dumps({"facts": facts, "configs": configs, "summary": summary, "runs": raw},
                                 indent=1, default=str) + "\n", encoding="utf-8")
        log(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
