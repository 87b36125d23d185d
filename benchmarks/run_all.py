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
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, THREADS, log, machine_facts, median  # noqa: E402
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
    "titles": ("SmolLM2-135M answers near chance on this question, so agreement measures "
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


def _run_label(facts: dict) -> str:
    return (f"{facts['date']}, commit `{facts['semframe_commit']}`"
            + (" with uncommitted `src/` changes" if facts.get("semframe_src_uncommitted") else ""))


def render_section(name: str, result: WorkloadResult, repeats: int, *, run_facts: dict | None = None,
                   newer: dict[str, str] | None = None, older: dict[str, str] | None = None,
                   per_repetition: bool = True) -> str:
    """The markdown section of one workload: what ran, the table, and the notes.

    On a page that keeps several runs, ``run_facts`` names the run the section's numbers come
    from, ``newer`` the contenders a later run replaced (contender -> that run's label) and
    ``older`` those shown only in an earlier run's section of the same workload;
    ``per_repetition`` lists semframe's ratio to raw vLLM in each repetition.
    """
    title, _ = WORKLOADS[name]
    rows = summarize(result)
    info, lim = result.spec_info, result.limits
    lines = [f"### {title}" + (f" (run of {run_facts['date']})" if run_facts and newer is not None else ""), "",
             (f"Numbers from the run of {_run_label(run_facts)}. " if run_facts else "")
             + f"{info['rows']} rows, {lim['distinct_requests']} distinct requests; model "
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
        if words:
            extra.append("- Wall time relative to semframe in the same repetition (median): " + ", ".join(words) + ".")
        per = _per_repetition(result, "semframe", "raw_vllm") if per_repetition else []
        if per:
            extra.append("- semframe / raw vLLM wall time, repetition by repetition: "
                         + ", ".join(f"{x:.3f}" for x in per) + f"; median {median(per):.3f}.")
        cpu = _per_repetition(result, "semframe", "raw_vllm", "cpu_s") if per_repetition else []
        if cpu:
            each = {c: median([r["cpu_s"] for r in result.runs[c]]) for c in ("semframe", "raw_vllm")}
            extra.append("- CPU time of the contender's process during the run (all its threads; other work on "
                         "the machine slows the wall time more than this): median "
                         + ", ".join(f"{c} {v:.1f} s" for c, v in each.items())
                         + "; semframe / raw vLLM repetition by repetition: "
                         + ", ".join(f"{x:.3f}" for x in cpu) + f"; median {median(cpu):.3f}.")
    if newer:
        by_run: dict[str, list[str]] = {}
        for c, label in newer.items():
            by_run.setdefault(label, []).append(c)
        for label, cs in by_run.items():
            extra.append(f"- Superseded: {', '.join(cs)} {'was' if len(cs) == 1 else 'were'} run again in the run of "
                         f"{label} (above); the rows here are this earlier run's, kept because the other "
                         "contenders' ratios are taken against them.")
    if older:
        by_run = {}
        for c, label in older.items():
            by_run.setdefault(label, []).append(c)
        for label, cs in by_run.items():
            extra.append(f"- Not rerun here: {', '.join(cs)}; their numbers are from the earlier run of {label} "
                         "(below), against that run's semframe.")
    decoding = next((r.get("decoding") for r in result.runs.get("raw_vllm", [])[-1:]), None)
    if decoding:
        extra.append("- Choice decoding, the same in semframe's engine and in raw vLLM: "
                     + ("one step, one token restricted to the labels' tokens (semframe's label table), with "
                        "their log-probabilities." if decoding == "one_token" else
                        "the structured-output choice grammar, token by token."))
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


def _per_repetition(result: WorkloadResult, a: str, b: str, key: str = "wall_s") -> list[float]:
    """``a``'s wall time (or ``key``) over ``b``'s, for each repetition both ran and measured it."""
    b_by = {r["repeat"]: r[key] for r in result.runs.get(b, []) if r.get(key)}
    return [r[key] / b_by[r["repeat"]] for r in result.runs.get(a, []) if r.get(key) and r["repeat"] in b_by]


def load_runs(path: Path) -> list[dict]:
    """The runs a saved results file holds, newest first (an older file holds one run)."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    return list(saved["runs"]) if "runs" in saved else [saved]


def merge_runs(new: dict, older: list[dict]) -> list[dict]:
    """The new run first, then each earlier run's workload sections that it does not replace.

    A section is replaced when newer runs reran every contender it shows; otherwise it stays
    whole (its ratios are taken against its own semframe and raw vLLM), marked as superseded
    where a newer run reran some of its contenders.
    """
    runs = [new]
    for old in older:
        kept = {}
        for name, w in old["workloads"].items():
            rerun = {c for r in runs for c in r["workloads"].get(name, {}).get("runs", {})}
            if not any(name in r["workloads"] for r in runs) or not set(w["runs"]) <= rerun:
                kept[name] = w
        if kept:
            runs.append({**old, "workloads": kept})
    return runs


def render_runs(runs: list[dict], full: bool, live: dict[str, WorkloadResult] | None = None) -> str:
    """The page of one size: each run's header and sections, newest first.

    ``live`` holds the newest run's results with their answers (saved runs keep agreement only).
    """
    lines = [f"## Results: the seed workloads ({'full' if full else 'default'} sizes)", ""]
    many = len(runs) > 1
    for i, run in enumerate(runs):
        facts = run["facts"]
        if i == 0:
            lines += [f"`{run['command']}`, {run['minutes']:.0f} minutes in all.", ""]
        else:
            lines += [f"**Earlier run**, kept for the workloads and contenders the run{'s' if i > 1 else ''} above "
                      f"did not rerun: `{run['command']}`, {run['minutes']:.0f} minutes in all.", ""]
        lines += [environment_block(facts), ""]
        for name, data in run["workloads"].items():
            res = live[name] if i == 0 and live and name in live else WorkloadResult(**data)
            newer: dict[str, str] | None = None
            older: dict[str, str] = {}
            if many:
                if i > 0:  # contenders of this section that a later run reran (the latest one named)
                    newer = {}
                    for c in res.runs:  # in this section's order
                        later = [r for r in runs[:i] if c in r["workloads"].get(name, {}).get("runs", {})]
                        if later:
                            newer[c] = _run_label(later[0]["facts"])
                for r in runs[i + 1:]:  # contenders shown only in an earlier run's section
                    for c in r["workloads"].get(name, {}).get("runs", {}):
                        if c not in res.runs and c not in older:
                            older[c] = _run_label(r["facts"])
            lines.append(render_section(name, res, run["repeats"], run_facts=facts if many else None,
                                        newer=newer, older=older or None, per_repetition=i == 0))
    return "\n".join(lines)


def write_report(facts: dict, results: dict[str, WorkloadResult], repeats: int, command: str,
                 minutes: float, write: bool, full: bool = False, merge: bool = True) -> str:
    """Render this run, with the earlier runs' sections it does not replace, and save both."""
    stem = "workloads-full" if full else "workloads"
    run = {"facts": facts, "threads": THREADS, "repeats": repeats, "command": command, "minutes": minutes,
           "full": full, "workloads": {k: strip_answers(v) for k, v in results.items()}}  # answers would make it large
    runs = merge_runs(run, load_runs(RESULTS / f"{stem}.json") if merge else [])
    text = render_runs(runs, full, live=results)
    if write:
        save_runs(stem, runs, text)
    return text


def save_runs(stem: str, runs: list[dict], text: str) -> None:
    path = write_piece(f"{stem}.md", text)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"runs": runs}, indent=1, default=str))
    log(f"wrote {path}, docs/results/{stem}.json and docs/benchmarks.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the issue's sizes (long: an hour or more on 2 cores)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of " + ", ".join(WORKLOADS))
    p.add_argument("--contenders", default=None, help="comma-separated subset of " + ", ".join(CONTENDERS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, default=None, help="override every workload's row count (smoke tests)")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    p.add_argument("--no-merge", action="store_true",
                   help="write this run alone, dropping the earlier runs' sections it does not replace")
    p.add_argument("--rerender", type=Path, default=None,
                   help="re-render docs from a saved docs/results/workloads*.json instead of running")
    args = p.parse_args(argv)

    if args.rerender:
        runs = load_runs(args.rerender)
        full = bool(runs[0].get("full", False))
        text = render_runs(runs, full)
        if not args.no_write:
            save_runs("workloads-full" if full else "workloads", runs, text)
        print(text)
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
    facts["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    command = "python -m benchmarks.run_all" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_report(facts, results, args.repeats, command, (time.perf_counter() - started) / 60,
                 write=not args.no_write and not args.rows, full=args.full, merge=not args.no_merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
