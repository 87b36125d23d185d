"""Same question, same answer: how many greedy answers change when the same plan runs twice.

    .venv/bin/python -m benchmarks.flip_rate                 # 300 FEBRL records, both modes
    .venv/bin/python -m benchmarks.flip_rate --records 150
    .venv/bin/python -m benchmarks.flip_rate --modes bf16-unaligned --paired 4 --add   # more, kept with the rest

SmolLM2-135M-Instruct (the default model) extracts ``{surname, postcode}`` from FEBRL ``dataset1``
person records (``semframe.datasets.febrl("dataset1")``, column ``text``). For each mode, one
process starts one engine and runs the same plan twice with the exact cache off (``cache=False``),
so the second run asks vLLM the very same prompts again -- and finds them in vLLM's prefix cache.
A *flip* is a record whose answer differs between the two runs. Modes:

- ``bf16``: ``VLLMEngine()``, the default (the model's bf16 weights);
- ``deterministic``: ``VLLMEngine(deterministic=True)`` (float32 on CPU);
- ``bf16-unaligned`` (not run by default; ``--modes bf16-unaligned --add`` adds it to the
  results): bf16 with ``align_prefix=False``, the engine's default before the shared prefix was
  padded to a KV block boundary;
- ``bf16-rebatched``, ``deterministic-rebatched`` (not run by default): the second run sends the
  rows in batches of 25 instead of one batch (``batch_size=25``), so batch composition differs too.

Each mode runs in its own subprocess, one after the other, with ``OMP_NUM_THREADS`` from
``SEMFRAME_BENCH_THREADS`` (default 1). Writes ``docs/results/flip_rate.md`` and ``.json``.
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, THREADS, log, machine_facts, markdown_table  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402

MODES = {"bf16": {}, "deterministic": {"deterministic": True},
         # The default before the shared prefix was padded to a KV block boundary (align_prefix).
         "bf16-unaligned": {"align_prefix": False},
         # Run 2 in batches of 25 rows instead of one batch: other batch compositions as well.
         "bf16-rebatched": {}, "deterministic-rebatched": {"deterministic": True}}
#: Run options of the second run, by mode (the first always runs with the defaults).
RUN2 = {"bf16-rebatched": {"batch_size": 25}, "deterministic-rebatched": {"batch_size": 25}}
DEFAULT_MODES = "bf16,deterministic"
SCHEMA = {"surname": str, "postcode": str}
INSTRUCTION = "Extract the person's surname and the postcode from the record."


def worker(mode: str, records: int) -> dict[str, Any]:
    """One mode: start the engine, run the plan twice (cache off), compare the answers."""
    import semframe as sf
    from semframe.datasets import febrl
    from semframe.engines.vllm import VLLMEngine

    data = febrl("dataset1").select("rec_id", "text")
    df, spare = data.head(records), data.slice(records, 8)
    # 2 GiB of KV cache (~90k tokens of SmolLM2) holds every prompt of the first run when the second
    # asks them again: the second run finds them in the prefix cache (what this benchmark is about).
    engine = VLLMEngine(kv_cache_memory_bytes=2 << 30, **MODES[mode])

    def extract(frame: Any) -> Any:
        return frame.lazy().semantic.extract("text", SCHEMA, instruction=INSTRUCTION, name="facts")

    plan = extract(df)
    t0 = time.perf_counter()
    engine._start()
    start_s = time.perf_counter() - t0
    # Untimed warm-up on 8 other records: the first structured batch builds the grammar backend's
    # tables; the shared instruction enters the prefix cache, as it would in any earlier run.
    extract(spare).collect(engine=engine, cache=False, progress=False)
    runs, shares = [], []
    for k in range(2):
        p0, c0 = engine.usage.prompt_tokens, engine.usage.cached_prompt_tokens
        t = time.perf_counter()
        out = plan.collect(engine=engine, cache=False, progress=False, **(RUN2.get(mode, {}) if k else {}))
        runs.append((time.perf_counter() - t, out["facts"].to_list()))
        shares.append((engine.usage.cached_prompt_tokens - c0) / max(1, engine.usage.prompt_tokens - p0))
    (s1, a1), (s2, a2) = runs
    flips = sum(x != y for x, y in zip(a1, a2))
    nulls = sum(x is None for x in a1)
    usage = engine.usage  # the warm-up included
    result = {"mode": mode, "records": len(a1), "flips": flips, "null_answers_run1": nulls,
              "run1_s": s1, "run2_s": s2, "start_s": start_s, "dtype": engine.dtype,
              "run1_prefix_cached_share": shares[0], "run2_prefix_cached_share": shares[1],
              "requests": usage.requests, "prompt_tokens": usage.prompt_tokens,
              "cached_prompt_tokens": usage.cached_prompt_tokens, "output_tokens": usage.output_tokens,
              "examples": [{"record": t, "run1": x, "run2": y}
                           for t, x, y in zip(df["text"].to_list(), a1, a2) if x != y][:3]}
    engine.close()
    return result


def paired(records: int, rounds: int) -> dict[str, Any]:
    """The time ratio, measured side by side: one process, one bf16 and one deterministic engine,
    ``rounds`` rounds of ``records`` new records each, the two engines taking turns (ABBA...), so
    that the load of a shared machine falls on both alike."""
    import semframe as sf  # noqa: F401 - registers .semantic
    from semframe.datasets import febrl
    from semframe.engines.vllm import VLLMEngine

    data = febrl("dataset1").select("text")
    engines = {mode: VLLMEngine(kv_cache_memory_bytes=1 << 30, **MODES[mode]) for mode in ("bf16", "deterministic")}
    warm = data.tail(8).lazy().semantic.extract("text", SCHEMA, instruction=INSTRUCTION, name="facts")
    for engine in engines.values():
        engine._start()
        warm.collect(engine=engine, cache=False, progress=False)
    seconds = {mode: 0.0 for mode in engines}
    for k in range(rounds):
        chunk = data.slice(k * records, records).lazy().semantic.extract("text", SCHEMA, instruction=INSTRUCTION,
                                                                         name="facts")
        order = list(engines) if k % 2 == 0 else list(engines)[::-1]
        for mode in order:
            t = time.perf_counter()
            chunk.collect(engine=engines[mode], cache=False, progress=False)
            seconds[mode] += time.perf_counter() - t
    for engine in engines.values():
        engine.close()
    return {"records_per_round": records, "rounds": rounds, "seconds": seconds,
            "ratio": seconds["deterministic"] / seconds["bf16"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--add", action="store_true",
                    help="keep the modes already in docs/results/flip_rate.json (same --records) and add these")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                    help="also measure the time ratio side by side: ROUNDS rounds of 50 new records, "
                         "both engines in one process taking turns")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/results alone")
    args = ap.parse_args()
    if args.worker == "paired":
        print("RESULT " + json.dumps(paired(50, args.paired)), flush=True)
        return
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.records)), flush=True)
        return
    facts = machine_facts()
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    results = []
    begin = time.perf_counter()
    for mode in [m for m in args.modes.split(",") if m]:
        log(f"{mode}: {args.records} records, two runs in one process ...")
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "benchmarks.flip_rate", "--worker", mode,
                               "--records", str(args.records)], env=env, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"{mode} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        r = json.loads(line.removeprefix("RESULT "))
        r["process_s"] = time.perf_counter() - t
        results.append(r)
        log(f"{mode}: {r['flips']} of {r['records']} answers changed; runs {r['run1_s']:.1f} s, {r['run2_s']:.1f} s")
    side_by_side = None
    if args.paired:
        log(f"time ratio side by side: {args.paired} rounds of 50 records ...")
        done = subprocess.run([sys.executable, "-m", "benchmarks.flip_rate", "--worker", "paired",
                               "--paired", str(args.paired)], env=env, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"paired failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        side_by_side = json.loads(line.removeprefix("RESULT "))
        log(f"side by side: deterministic / bf16 = {side_by_side['ratio']:.2f}x")
    total = time.perf_counter() - begin
    if args.add and (RESULTS / "flip_rate.json").is_file():
        before = json.loads((RESULTS / "flip_rate.json").read_text())
        if before.get("records") == args.records:
            new = {r["mode"] for r in results}
            results = [r for r in before["results"] if r["mode"] not in new] + results
            total += float(before.get("total_s") or 0.0)
            if side_by_side is None:
                side_by_side = before.get("side_by_side")
    facts["load_average_at_end"] = os.getloadavg()[0]
    by = {r["mode"]: r for r in results}
    ratio = None
    if "bf16" in by and "deterministic" in by:  # measured one after the other on a shared machine
        ratio = (by["deterministic"]["run1_s"] + by["deterministic"]["run2_s"]) / (by["bf16"]["run1_s"] + by["bf16"]["run2_s"])
    rows = [[r["mode"], r["dtype"], r["records"], r["flips"], f"{100 * r['flips'] / r['records']:.1f}%",
             r["null_answers_run1"], r["run1_s"], r["run2_s"],
             f"{100 * r['run1_prefix_cached_share']:.0f}% / {100 * r['run2_prefix_cached_share']:.0f}%",
             r["start_s"]] for r in results]
    table = markdown_table(["mode", "dtype", "records", "answers changed", "flip rate", "null answers (run 1)",
                            "run 1 s", "run 2 s", "prompt tokens from prefix cache (run 1 / run 2)", "engine start s"], rows)
    print(table)
    if ratio is not None:
        print(f"time ratio deterministic / bf16 (both runs): {ratio:.2f}x")
    if side_by_side:
        print(f"time ratio side by side: {side_by_side['ratio']:.2f}x")
    if args.no_write:
        return
    payload = {"benchmark": "flip_rate", "records": args.records, "machine": facts, "results": results,
               "time_ratio_deterministic_over_bf16": ratio, "side_by_side": side_by_side, "total_s": total}
    (RESULTS / "flip_rate.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    examples = [f"- {r['mode']}: `{e['record']}`: {e['run1']} -> {e['run2']}" for r in results for e in r["examples"]]
    md = [
        "# Same question, same answer: flip rate of greedy answers",
        "",
        "Generated by `.venv/bin/python -m benchmarks.flip_rate"
        + (f" --records {args.records}" if args.records != 300 else "") + "`"
        + (f" (modes {', '.join(r['mode'] for r in results)}; later ones added with `--modes ... --add`)"
           if args.add else "") + " (see its docstring).",
        "",
        f"SmolLM2-135M-Instruct extracts `{{surname, postcode}}` from {args.records} FEBRL `dataset1` records "
        "(column `text`). Each mode runs the same plan twice in one process with the exact cache off: "
        "the second run finds every prompt in vLLM's prefix cache. An answer *changed* when the two runs "
        "disagree on it.",
        "",
        table,
        "",
        f"Time ratio, deterministic / bf16 (both runs of the table, one mode after the other): **{ratio:.2f}x**. "
        "Each mode ran in its own process, one after another, on a shared machine whose load changed "
        "meanwhile: compare the table's times with care; the side-by-side ratio below (where measured) is "
        "the one to quote." if ratio is not None else "",
        "",
        (f"Time ratio side by side (`--paired {side_by_side['rounds']}`: one process, both engines taking turns on "
         f"{side_by_side['rounds']} rounds of {side_by_side['records_per_round']} new records, so the machine's load "
         f"falls on both alike): **{side_by_side['ratio']:.2f}x** "
         f"({side_by_side['seconds']['deterministic']:.1f} s vs {side_by_side['seconds']['bf16']:.1f} s)."
         if side_by_side else ""),
        "",
        "Examples of changed answers (run 1 -> run 2):" if examples else "No answer changed in any mode.",
        "",
        *examples,
        "",
        "## Environment",
        "",
        environment_block(facts, {"Total benchmark time": f"{total:.0f} s"}),
        "",
    ]
    (RESULTS / "flip_rate.md").write_text("\n".join(md))
    log(f"wrote {RESULTS / 'flip_rate.md'} and .json ({total:.0f} s)")


if __name__ == "__main__":
    main()
