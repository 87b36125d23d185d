"""Run the seed workloads with every contender, print the tables, write docs/benchmarks.md.

    .venv/bin/python -m benchmarks.run_all                 # default sizes (minutes)
    .venv/bin/python -m benchmarks.run_all --full          # the issue's sizes
    .venv/bin/python -m benchmarks.run_all --workloads titles --contenders semframe,raw_vllm

Peers (LOTUS, fenic) run from their own venvs (``bash benchmarks/setup_peers.sh``); a peer that is
not installed, or fails, is reported as such in the tables' notes, and the rest still runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, THREADS, log, machine_facts  # noqa: E402
from benchmarks.harness import CONTENDERS, WorkloadResult, run_workload, strip_answers, summarize  # noqa: E402
from benchmarks.report import contender_table, environment_block, write_piece  # noqa: E402
from benchmarks.workloads import DEFAULT, FULL  # noqa: E402

WORKLOADS = {
    "titles": ("1. Small prompt: YES/NO over distinct titles",
               ["semframe", "raw_vllm", "naive_loop", "lotus", "fenic"]),
    "summaries": ("2. Medium prompt: summaries of ~1000-token articles",
                  ["semframe", "raw_vllm", "naive_loop", "lotus", "fenic"]),
    "long_context": ("3. Large context: many questions against one long shared context",
                     ["semframe", "raw_vllm", "naive_loop"]),
    "repetitive": ("4. Repetitive column: titles with exact duplicates and light paraphrases",
                   ["semframe", "semframe+semantic_cache", "semframe_rerun_exact_cache", "raw_vllm", "naive_loop",
                    "lotus", "fenic"]),
}

NOTES = {
    "titles": ("SmolLM2-135M answers near chance on this question (DESIGN.md), so agreement measures "
               "sameness of output, not quality. fenic's answers differ because its prompt differs (its own "
               "system prompt and layout, no label constraint)."),
    "summaries": ("Free-text answers run to `max_tokens` on this small model, so output tokens dominate; "
                  "agreement is exact-text equality, which batch composition easily changes."),
    "long_context": ("The model is a 4-layer, 256-wide Llama with random weights (vLLM `load_format=\"dummy\"`), "
                     "SmolLM2's tokenizer and a 32k context, because SmolLM2-135M allows 8k: a throughput "
                     "measurement, the answers are noise. semframe puts the context in the shared system "
                     "message (`map(\"{question}\", instruction=context)`), so the prefix cache computes it once; "
                     "the naive loop sends the same messages. The peers are not run on this workload: LOTUS's "
                     "`sem_map` puts each row's data (`Context: ...`) before the instruction, so a context given as "
                     "the instruction would not be a shared prefix; fenic renders one template per row and would "
                     "share the context only if the user writes it first. Not measured here."),
    "repetitive": ("30% of rows repeat another row exactly, 20% are light paraphrases (casing, punctuation, a "
                   "`Headline:` prefix). raw vLLM gets the distinct prompts only (its ceiling); semframe "
                   "deduplicates exact repeats itself; `semframe+semantic_cache` also answers near-duplicates "
                   "from the in-run semantic cache (all-MiniLM-L6-v2 embeddings, similarity ≥ 0.95; embedding "
                   "time is inside its wall time); `semframe_rerun_exact_cache` is the same plan run again with the "
                   "persistent exact cache on (filled by one untimed run first): a rerun asks the engine nothing. "
                   "The naive loop and LOTUS send every row; fenic deduplicates exact repeats too (see its "
                   "engine requests, counted by the server)."),
}


def render_section(name: str, result: WorkloadResult, repeats: int) -> str:
    """The markdown section of one workload: what ran, the table, and the notes."""
    title, _ = WORKLOADS[name]
    rows = summarize(result)
    info, lim = result.spec_info, result.limits
    lines = [f"### {title}", "",
             f"{info['rows']} rows, {lim['distinct_requests']} distinct requests; model "
             f"`{Path(info['model']).name}`; `max_tokens={info['max_tokens']}`"
             + (f"; context {info['context_tokens']:,} tokens" if info.get("context_tokens") else "")
             + f". Minimum prompt tokens: {lim['minimum_prompt_tokens']:,} "
             f"({lim['distinct_prompt_tokens']:,} in the distinct prompts, {lim['shared_prefix_tokens']} shared "
             f"prefix tokens). Repetitions: {repeats}.", "", contender_table(rows), ""]
    extra = [f"- **{c}** did not run: {why}" for c, why in result.failed.items()]
    by_name = {r["contender"]: r for r in rows}
    if "semframe" in by_name:
        words = [f"{r['contender']} {r['vs_semframe']:.2f}x" for r in rows
                 if r["contender"] != "semframe" and r.get("vs_semframe") is not None]
        extra.append("- Wall time relative to semframe in the same repetition (median): " + ", ".join(words) + ".")
    starts = ", ".join(f"{k} {v:.0f} s" for k, v in result.startup_s.items())
    extra.append(f"- Start-up (not in the wall times): {starts}.")
    mem = [f"{r['contender']} {r['peak_rss_mib']:,.0f} MiB" for r in rows if r.get("peak_rss_mib")]
    if result.server_rss_mib:
        mem.append(f"vllm serve {result.server_rss_mib:,.0f} MiB (at the end, server + engine)")
    extra.append("- Peak memory per process: " + ", ".join(mem) + ".")
    costs = [f"{r['contender']} ${r['cost_usd']:.6f}" for r in rows if r.get("cost_usd") is not None]
    if costs:
        extra.append("- Local cost as semframe reports it (engine time at its configured machine price): "
                     + ", ".join(costs) + ".")
    if name == "repetitive":
        hits = [f"{r['contender']}: {r['dedup_hits']} dedup, {r['semantic_cache_hits']} semantic-cache hits"
                for r in rows if r.get("dedup_hits") is not None]
        if hits:
            extra.append("- Rows answered without the engine: " + "; ".join(hits) + ".")
    if NOTES[name]:
        extra.append("- " + NOTES[name])
    return "\n".join(lines + extra) + "\n"


def write_report(facts: dict, results: dict[str, WorkloadResult], repeats: int, command: str,
                 minutes: float, write: bool, full: bool = False) -> str:
    sections = [render_section(name, res, repeats) for name, res in results.items()]
    header = [f"## Results: the seed workloads ({'full' if full else 'default'} sizes)", "",
              f"`{command}`, {minutes:.0f} minutes in all.", "", environment_block(facts), ""]
    text = "\n".join(header) + "\n" + "\n".join(sections)
    if write:
        stem = "workloads-full" if full else "workloads"
        path = write_piece(f"{stem}.md", text)
        saved = {k: strip_answers(v) for k, v in results.items()}  # answers would make it large
        (RESULTS / f"{stem}.json").write_text(json.dumps({
            "facts": facts, "threads": THREADS, "repeats": repeats, "command": command, "minutes": minutes,
            "full": full, "workloads": saved}, indent=1, default=str))
        log(f"wrote {path}, docs/results/{stem}.json and docs/benchmarks.md")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the issue's sizes (long: an hour or more on 2 cores)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of " + ", ".join(WORKLOADS))
    p.add_argument("--contenders", default=None, help="comma-separated subset of " + ", ".join(CONTENDERS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, default=None, help="override every workload's row count (smoke tests)")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    p.add_argument("--rerender", type=Path, default=None,
                   help="re-render docs from a saved docs/results/workloads.json instead of running")
    args = p.parse_args(argv)

    if args.rerender:
        saved = json.loads(args.rerender.read_text())
        results = {k: WorkloadResult(**v) for k, v in saved["workloads"].items()}
        print(write_report(saved["facts"], results, saved["repeats"], saved["command"], saved["minutes"],
                           write=not args.no_write, full=saved.get("full", False)))
        return 0

    sizes = FULL if args.full else DEFAULT
    if args.rows:
        sizes = dataclasses.replace(sizes, titles=args.rows, summaries=min(args.rows, sizes.summaries),
                                    questions=min(args.rows, sizes.questions), repetitive=args.rows)
    wanted = args.contenders.split(",") if args.contenders else None
    facts = machine_facts()
    started = time.perf_counter()
    results: dict[str, WorkloadResult] = {}
    for name in args.workloads.split(","):
        contenders = WORKLOADS[name][1]
        if wanted is not None:
            contenders = [c for c in contenders if c in wanted]
        results[name] = run_workload(name, sizes, contenders, args.repeats)
        print("\n" + render_section(name, results[name], args.repeats), flush=True)
    command = "python -m benchmarks.run_all" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_report(facts, results, args.repeats, command, (time.perf_counter() - started) / 60,
                 write=not args.no_write and not args.rows, full=args.full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
