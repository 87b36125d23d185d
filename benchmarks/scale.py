"""The scale run: workload 1 at growing row counts on the default model, semframe only.

    .venv/bin/python -m benchmarks.scale --rows 100000              # the issue's run (hours on 2 cores)
    .venv/bin/python -m benchmarks.scale --rows 1000,2000,4000      # the shape of the curve, in minutes

Rows are distinct: the 2,096 distinct BBC headlines, then the same headlines with a " (k)" suffix,
so every row is a real engine request (deduplication would otherwise make the run trivial). One
engine process runs the sizes in increasing order; after each it reports the wall time and the
process's peak resident memory so far (Linux VmHWM): if memory is flat, the peak does not move as
the row count grows. Writes ``docs/results/scale.md`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Worker, cleanup, log, machine_facts, markdown_table, workdir  # noqa: E402
from benchmarks.report import environment_block, write_piece  # noqa: E402
from benchmarks.workloads import TITLES_INSTRUCTION, all_distinct_titles, default_model, engine_options  # noqa: E402


def scaled_titles(n: int) -> list[str]:
    """``n`` distinct rows made from the distinct headlines (suffixed " (k)" after the first pass)."""
    base = all_distinct_titles()
    return [base[i % len(base)] + (f" ({i // len(base)})" if i >= len(base) else "") for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="100000", help="row count, or comma-separated increasing counts")
    p.add_argument("--batch-size", type=int, default=None, help="semframe batch size (default: semframe's)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    sizes = sorted(int(x) for x in args.rows.split(","))

    facts = machine_facts()
    sf_opts, raw = engine_options()
    spec = {"workload": "scale", "kind": "classify", "column": "title", "instruction": TITLES_INSTRUCTION,
            "labels": ["YES", "NO"], "max_tokens": None, "model": default_model(), "engine": sf_opts, "vllm": raw,
            "rows": [{"title": t} for t in scaled_titles(max(sizes))],
            "semframe": {"batch_size": args.batch_size}}
    tmp = workdir("scale")
    w = Worker("semframe-scale", "semframe_worker.py", spec, tmp)
    results = []
    try:
        ready = w.start()
        log(f"engine ready in {ready['startup_s']:.0f} s, peak memory {ready['peak_rss_mib']:.0f} MiB")
        w.run(rows=8)
        for n in sizes:
            res = w.run(rows=n)
            results.append((n, res))
            log(f"{n:>7} rows: {res['wall_s']:8.1f} s, {n / res['wall_s']:5.1f} rows/s, "
                f"peak memory {res['peak_rss_mib']:.0f} MiB")
    finally:
        w.stop()
        cleanup(tmp)

    first_n, first = results[0]
    last_n, last = results[-1]
    growth_time = (last["wall_s"] / last_n) / (first["wall_s"] / first_n) - 1
    growth_mem = last["peak_rss_mib"] / first["peak_rss_mib"] - 1
    rows = [[n, r["wall_s"], n / r["wall_s"], f"{(r['wall_s'] / n) / (first['wall_s'] / first_n):.2f}",
             r["engine_requests"], r["prompt_tokens"], r["output_tokens"], r["peak_rss_mib"]] for n, r in results]
    table = markdown_table(["rows", "wall s", "rows/s", "s per row vs smallest", "engine requests", "prompt tokens",
                            "output tokens", "peak memory MiB (so far)"], rows)
    text = "\n".join([
        "## Scale: workload 1 at growing row counts", "",
        f"`.venv/bin/python -m benchmarks.scale --rows {args.rows}`: semframe `classify` on SmolLM2-135M-Instruct, "
        "distinct rows, one engine process, sizes in increasing order (engine start-up "
        f"{ready['startup_s']:.0f} s, {ready['peak_rss_mib']:,.0f} MiB after start-up, not in the table).", "",
        environment_block(facts), "", table, "",
        "- Cost per row stays constant when *s per row vs smallest* stays near 1.00 (linear growth); peak memory "
        "is the process's high-water mark after each size, so a flat column means memory did not grow with rows.",
        f"- Measured: time per row changed by {growth_time:+.0%} and peak memory by "
        f"{results[-1][1]['peak_rss_mib'] - first['peak_rss_mib']:+,.0f} MiB ({growth_mem:+.0%}) from {first_n:,} "
        f"to {results[-1][0]:,} rows ({results[-1][0] / first_n:.0f}x the rows).",
    ])
    print("\n" + text)
    if not args.no_write:
        path = write_piece("scale.md", text)
        log(f"wrote {path} and docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
