"""Two in-process vLLM engines in one process on CPU: a model per step, measured.

A plan whose steps name different engines (``classify(..., engine="fast")``,
``filter(..., engine="exact")``) runs each step on its own engine; two ``VLLMEngine`` objects
with different start-up options are two ``vllm.LLM`` instances in the same Python process (in-process
engine core). This script starts SmolLM2-135M twice -- ``sf.VLLMEngine()`` (bf16) and
``sf.VLLMEngine(deterministic=True)`` (float32, reproducible), the pair a cascade uses -- and
reports what fits: each engine's start-up time and the process's resident memory after each,
then one plan with a step on each engine against the same two steps run on one engine, over
the same distinct BBC headlines, with the exact cache off.

    python -m benchmarks.two_engines [--rows 200]

Writes ``docs/results/two_engines.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, THREADS, log, machine_facts, markdown_table  # noqa: E402
from benchmarks._protocol import peak_rss_mib  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402

INSTRUCTION = "Is the news headline below about sport?"
FILTER = "The headline is about money or business."


def rss_mib() -> float:
    """Resident memory of this process now, in MiB (``VmRSS``; the peak: ``peak_rss_mib``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(rows: int) -> dict[str, Any]:
    import polars as pl

    import semframe as sf
    from semframe.datasets import bbc_news

    titles = bbc_news()["title"].unique(maintain_order=True).to_list()[: 2 * rows]
    out: dict[str, Any] = {"rss_mib": {"before": rss_mib()}, "start_s": {}}
    engines = {"fast": sf.VLLMEngine(), "exact": sf.VLLMEngine(deterministic=True)}
    for name, engine in engines.items():
        t = time.perf_counter()
        engine._start()
        out["start_s"][name] = time.perf_counter() - t
        out["rss_mib"][f"after {name}"] = rss_mib()
    out["dtype"] = {name: e.dtype for name, e in engines.items()}
    sf.configure(engines=engines, progress=False)

    def plan(frame: pl.DataFrame, first: str, second: str) -> Any:
        return (frame.lazy().semantic.classify("title", ["YES", "NO"], instruction=INSTRUCTION, name="sport",
                                               engine=first)
                .semantic.filter("{title}", instruction=FILTER, engine=second))

    warm = pl.DataFrame({"title": titles[-8:]})
    for name in engines:
        plan(warm, name, name).collect(cache=False)
    runs: dict[str, Any] = {}
    halves = [pl.DataFrame({"title": titles[:rows]}), pl.DataFrame({"title": titles[rows:2 * rows]})]
    # Each layout runs on both halves, in alternating order, so the machine's load falls alike.
    layouts = {"fast + exact": ("fast", "exact"), "fast only": ("fast", "fast"), "exact only": ("exact", "exact")}
    for k, half in enumerate(halves):
        order = list(layouts) if k % 2 == 0 else list(layouts)[::-1]
        for label in order:
            first, second = layouts[label]
            t = time.perf_counter()
            result = plan(half, first, second).run(cache=False)
            seconds = time.perf_counter() - t
            r = runs.setdefault(label, {"seconds": 0.0, "rows_out": 0, "requests": {}})
            r["seconds"] += seconds
            r["rows_out"] += result.df.height
            for m in result.step_metrics:
                key = f"step {m.step} ({m.operator})"
                r["requests"][key] = r["requests"].get(key, 0) + m.engine_requests
    out["runs"] = runs
    out["rows"] = 2 * rows
    out["rss_mib"]["peak"] = peak_rss_mib()
    for engine in engines.values():
        engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200, help="headlines per half (two halves are run)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.rows)), flush=True)
        return
    facts = machine_facts()
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    log(f"two engines in one process, {2 * args.rows} headlines ...")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.two_engines", "--worker", "--rows", str(args.rows)],
                          env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"worker failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    r = json.loads(line.removeprefix("RESULT "))
    total = time.perf_counter() - t
    facts["load_average_at_end"] = os.getloadavg()[0]
    mem = r["rss_mib"]
    mem_rows = [["process before any engine", f"{mem['before']:,.0f}"],
                ["after `VLLMEngine()` (bf16) started", f"{mem['after fast']:,.0f}"],
                ["after `VLLMEngine(deterministic=True)` (float32) started", f"{mem['after exact']:,.0f}"],
                ["peak over the run", f"{mem['peak']:,.0f}"]]
    run_rows = [[label, f"{v['seconds']:.1f}", v["rows_out"],
                 ", ".join(f"{k}: {n}" for k, n in v["requests"].items())] for label, v in r["runs"].items()]
    ratio = r["runs"]["fast + exact"]["seconds"] / r["runs"]["fast only"]["seconds"]
    table_mem = markdown_table(["", "resident MiB"], mem_rows)
    table_runs = markdown_table(["engines (step 0, step 1)", "wall s", "rows out", "engine requests"], run_rows)
    print(table_mem)
    print(table_runs)
    (RESULTS / "two_engines.json").write_text(json.dumps({"machine": facts, **r, "total_s": total}, indent=2))
    if args.no_write:
        return
    md = [
        "## Results: two in-process vLLM engines in one process",
        "",
        "`python -m benchmarks.two_engines` (`benchmarks/two_engines.py`): SmolLM2-135M-Instruct twice in one "
        "process -- `sf.VLLMEngine()` (bf16) and `sf.VLLMEngine(deterministic=True)` (float32), registered as "
        "`fast` and `exact` -- each with the default 1 GiB of KV cache; a plan with a classify step and a "
        f"filter step over {r['rows']} distinct BBC headlines (two halves, layouts taking turns), exact cache off.",
        "",
        f"Start-up: `fast` {r['start_s']['fast']:.1f} s, `exact` {r['start_s']['exact']:.1f} s "
        f"(dtypes {r['dtype']['fast']} / {r['dtype']['exact']}).",
        "",
        table_mem,
        "",
        table_runs,
        "",
        f"One plan on both engines / the same plan on the bf16 engine alone: **{ratio:.2f}x** (the float32 "
        "engine is the slower one; the mixed plan's time is each step's time on its own engine).",
        "",
        "## Environment",
        "",
        environment_block(facts, {"Total benchmark time": f"{total:.0f} s"}),
        "",
    ]
    (RESULTS / "two_engines.md").write_text("\n".join(md))
    log(f"wrote {RESULTS / 'two_engines.md'} ({total:.0f} s)")


if __name__ == "__main__":
    main()
