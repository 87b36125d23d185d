"""How long a fully cached rerun of the quickstart takes in a new process, and whether it starts vLLM.

The quickstart's plan (``examples/quickstart.py``, ``build_plan``) runs on the default engine in
a fresh cache directory: one process fills the cache, then ``--repeats`` new processes each run
the same plan again, every answer coming from the exact cache. For each rerun process it records
the wall time of the whole process (interpreter start to exit), the time of the imports
(semframe, polars, the data set), the time of ``plan.run()`` and whether ``vllm`` and ``torch``
were imported (``'vllm' in sys.modules``). It prints a table and writes
``docs/results/cached_rerun.md``.

    python benchmarks/cached_rerun.py                       # this tree, 3 reruns
    python benchmarks/cached_rerun.py --before /tmp/old/src # also an older tree, same run

``--before`` names another ``src`` folder (say, a checkout of an earlier commit) that is measured
the same way, in the same run, for a before/after table. The converted default model is shared
with the real cache (linked into each temporary cache directory), so no run pays for the
conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "cached_rerun.md"

WORKER = r"""
import json, sys, time
t0 = time.perf_counter()
import polars as pl
import semframe as sf
sys.path.insert(0, {examples!r})
from quickstart import build_plan
plan = build_plan({rows})
t1 = time.perf_counter()
run = plan.run()
t2 = time.perf_counter()
sources = run.lineage["source"].value_counts().sort("source").rows()
print("RESULT " + json.dumps({{
    "import_s": t1 - t0, "run_s": t2 - t1, "engine_requests": run.engine_requests,
    "sources": dict(sources), "vllm_imported": "vllm" in sys.modules, "torch_imported": "torch" in sys.modules,
    "transformers_imported": "transformers" in sys.modules,
}}))
"""


def real_models_dir() -> Path:
    root = os.environ.get("SEMFRAME_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "semframe") / "models"


def run_worker(src: Path, cache: Path, rows: int, threads: str) -> dict:
    env = dict(os.environ, SEMFRAME_CACHE_DIR=str(cache), PYTHONPATH=str(src), OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    code = WORKER.format(examples=str(ROOT / "examples"), rows=rows)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["wall_s"] = wall
    result["stdout_lines"] = len([ln for ln in proc.stdout.splitlines() if not ln.startswith("RESULT ")])
    result["stderr_lines"] = len([ln for ln in proc.stderr.splitlines() if ln.strip()])
    return result


def measure(label: str, src: Path, rows: int, repeats: int, threads: str) -> dict:
    models = real_models_dir()
    with tempfile.TemporaryDirectory(prefix="semframe-rerun-") as tmp:
        cache = Path(tmp)
        if models.is_dir():
            (cache / "models").symlink_to(models, target_is_directory=True)
        print(f"[{label}] filling the cache ...", file=sys.stderr, flush=True)
        fill = run_worker(src, cache, rows, threads)
        reruns = []
        for i in range(repeats):
            r = run_worker(src, cache, rows, threads)
            print(f"[{label}] rerun {i + 1}: {r['wall_s']:.2f} s wall, run {r['run_s']:.2f} s, "
                  f"vllm imported: {r['vllm_imported']}", file=sys.stderr, flush=True)
            reruns.append(r)
    return {"label": label, "src": str(src), "fill": fill, "reruns": reruns}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(results: list[dict]) -> str:
    lines = ["| tree | first run, wall (s) | rerun wall, median (s) | rerun imports (s) | rerun `plan.run()` (s) "
             "| answers from the exact cache | engine requests | vllm imported | torch imported |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        rr = res["reruns"]
        sources = rr[-1]["sources"]
        cached = sources.get("exact_cache", 0)
        total = sum(v for k, v in sources.items() if k != "skipped")
        each = ", ".join(f"{r['wall_s']:.2f}" for r in rr)
        lines.append(
            f"| {res['label']} | {res['fill']['wall_s']:.1f} | {median([r['wall_s'] for r in rr]):.2f} "
            f"({each}) | {median([r['import_s'] for r in rr]):.2f} "
            f"| {median([r['run_s'] for r in rr]):.2f} | {cached}/{total} | {rr[-1]['engine_requests']} "
            f"| {'yes' if any(r['vllm_imported'] for r in rr) else 'no'} "
            f"| {'yes' if any(r['torch_imported'] for r in rr) else 'no'} |")
    return "\n".join(lines)


def python_startup(threads: str) -> float:
    """Wall time of a bare interpreter plus ``import semframe, polars`` (the floor of any rerun)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import polars, semframe"], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=threads))
        times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="headlines the quickstart reads (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="rerun processes per tree (default 3)")
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the workers (default 1)")
    parser.add_argument("--before", type=Path, default=None, help="another src/ folder to measure first")
    parser.add_argument("--before-label", default="before", help="its name in the table")
    parser.add_argument("--label", default="this tree", help="this tree's name in the table")
    parser.add_argument("--out", type=Path, default=OUT, help=f"markdown file to write (default {OUT})")
    args = parser.parse_args()

    results = []
    if args.before is not None:
        results.append(measure(args.before_label, args.before.resolve(), args.rows, args.repeats, args.threads))
    results.append(measure(args.label, ROOT / "src", args.rows, args.repeats, args.threads))
    floor = python_startup(args.threads)
    body = table(results)
    print(body)
    print(f"python -c 'import polars, semframe': {floor:.2f} s")
    facts = (f"{os.cpu_count()} CPU cores, Python "
             f"{platform.python_version()}, OMP_NUM_THREADS={args.threads}; {time.strftime('%Y-%m-%d')}")
    text = f"""# A fully cached rerun of the quickstart

Measured by `python benchmarks/cached_rerun.py{' --before ' + str(args.before) if args.before else ''}`
({facts}). The quickstart's plan (`examples/quickstart.py`, {args.rows} headlines: filter, then classify,
extract and map on the first 8) runs on the default engine in a fresh cache directory; one process fills
the cache, then {args.repeats} new processes run the same plan again, every answer coming from the exact cache.
"wall" is the whole process, interpreter start to exit; "imports" is semframe, polars and the data set;
the floor, a bare `python -c 'import polars, semframe'`, took {floor:.2f} s here.

{body}

"vllm imported" is `'vllm' in sys.modules` at the end of the rerun process. Before semframe computed the
engine's fingerprint from the model folder and the options, the fingerprint (part of every cache key) needed
a started vLLM, so even a rerun with every answer in the cache imported vllm and torch and started the engine;
now the engine is created but vLLM starts only at the first answer the caches do not have, which in a fully
cached rerun never comes.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
