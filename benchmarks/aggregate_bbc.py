"""semantic.aggregate per BBC News topic with SmolLM2: packing, levels, lineage, time per row.

    .venv/bin/python -m benchmarks.aggregate_bbc                       # titles, 1024-token window
    .venv/bin/python -m benchmarks.aggregate_bbc --text body300 --window 2048
    .venv/bin/python -m benchmarks.aggregate_bbc --sample 100 --no-write

One ``df.lazy().semantic.aggregate("Summarize the news of this topic", <text>, by="topic")``
over the 2,225 BBC articles (5 topics; ``--sample N``: the first N articles of each topic), on
the in-process vLLM engine with SmolLM2-135M-Instruct (``VLLMEngine(max_model_len=W)``), with an
empty exact cache, then the same plan again (a rerun: every level from the cache). Reported:

- requests per reduce level and the number of levels (from the lineage notes), engine batches;
- the largest prompt vLLM saw (its own token count, chat template included) against the room
  ``W - max_tokens``, and how many requests went over it (must be 0);
- how many articles the final answers' lineage names (must be every article with text);
- the estimate (before running) against the requests made, wall time and time per row.

SmolLM2 is too weak to judge the summaries; this measures the work and the guarantees. Writes
docs/results/aggregate_bbc.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import THREADS, log, machine_facts, markdown_table

ROOT = Path(__file__).resolve().parents[1]
TASK = "Summarize the news of this topic in one or two sentences."


def _level(note: str) -> int:
    return int(note.split("reduce level ")[1].split()[0])


def run(text: str, window: int, max_tokens: int, sample: int | None) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", THREADS)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import polars as pl

    import semframe as sf
    from semframe.datasets import bbc_news
    from semframe.engines.vllm import VLLMEngine

    df = bbc_news()
    if sample is not None:
        df = df.group_by("topic", maintain_order=True).head(sample).sort("id")
    if text == "body300":
        df = df.with_columns(pl.col("body").str.slice(0, 300).alias("text"))
    else:
        df = df.with_columns(pl.col("title").alias("text"))
    engine = VLLMEngine(max_model_len=window)  # resolves the converted model in the usual cache
    sf.configure(cache_dir=tempfile.mkdtemp(prefix="semframe-aggregate-bbc-"))  # answers: an empty cache
    # The step names its engine, so explain() knows the window (given: vLLM need not start) and,
    # the data being in memory, how many levels the packing needs.
    plan = sf.SemLazyFrame.from_data(df.select("id", "topic", "text")).semantic.aggregate(
        TASK, "text", by="topic", name="summary", max_tokens=max_tokens, engine=engine)
    explain = plan.explain()
    t0 = time.perf_counter()
    est = plan.estimate(engine).steps[0]
    estimate_s = time.perf_counter() - t0
    log(f"{df.height} rows; estimate {est.calls_low}-{est.calls_high} requests; starting vLLM ...")
    t0 = time.perf_counter()
    engine.max_model_len  # noqa: B018 - start vLLM now, so the run's time is the aggregate's
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = plan.run(engine)
    seconds = time.perf_counter() - t0
    lin = result.lineage
    metrics = result.metrics.row(0, named=True)
    levels = lin["note"].map_elements(_level, return_dtype=pl.Int64)
    per_level = [int((levels == k).sum()) for k in range(1, int(levels.max()) + 1)]
    finals = lin.filter(pl.col("note").str.contains("final"))
    covered = [i for p in finals["provenance"] for i in json.loads(p)]
    with_text = df.filter(pl.col("text").str.strip_chars() != "").height
    asked = lin.filter(pl.col("source") == "engine")
    room = window - max_tokens
    before = engine.usage.requests
    t0 = time.perf_counter()
    again = plan.run(engine)
    rerun_s = time.perf_counter() - t0
    out = {
        "text": text, "window": window, "max_tokens": max_tokens, "sample_per_topic": sample,
        "rows": df.height, "topics": result.df.height, "levels": len(per_level), "requests_per_level": per_level,
        "engine_batches": metrics["engine_batches"], "engine_requests": asked.height,
        "estimate_requests": [est.calls_low, est.calls_high], "estimate_exact": est.rows_exact,
        "estimate_s": estimate_s,
        "max_prompt_tokens": int(asked["prompt_tokens"].max()), "room": room,
        "over_window": int((asked["prompt_tokens"] + max_tokens > window).sum()),
        "errors": int(lin["error"].drop_nulls().len()),
        "articles_in_final_lineage": len(covered), "distinct_articles_in_final_lineage": len(set(covered)),
        "articles_with_text": with_text,
        "prompt_tokens": int(asked["prompt_tokens"].sum()), "output_tokens": int(asked["output_tokens"].sum()),
        "engine_start_s": start_s, "seconds": seconds, "ms_per_row": 1000 * seconds / df.height,
        "rerun_s": rerun_s, "rerun_engine_requests": engine.usage.requests - before,
        "rerun_same_answers": again.df.equals(result.df),
        "summaries": {k: (v or "")[:160] for k, v in result.df.iter_rows()},
        "explain": explain,
    }
    engine.close()
    return out


def markdown(r: dict[str, Any], facts: dict[str, Any]) -> str:
    from benchmarks.report import environment_block

    rows = [[k + 1, n] for k, n in enumerate(r["requests_per_level"])]
    summary = [
        ["articles (rows)", f"{r['rows']:,}" + (f" (first {r['sample_per_topic']} per topic)" if r["sample_per_topic"] else "")],
        ["text per row", "the headline" if r["text"] == "title" else "the first 300 characters of the body"],
        ["topics (groups)", r["topics"]],
        ["context window / max_tokens", f"{r['window']} / {r['max_tokens']} (room for prompts: {r['room']})"],
        ["levels", r["levels"]],
        ["engine requests / engine batches", f"{r['engine_requests']} / {r['engine_batches']}"],
        ["estimate before running (requests)", f"{r['estimate_requests'][0]}-{r['estimate_requests'][1]}"],
        ["largest prompt (vLLM's count) vs room", f"{r['max_prompt_tokens']} vs {r['room']}"],
        ["requests over the window", r["over_window"]],
        ["answers with an error", r["errors"]],
        ["articles in the final answers' lineage", f"{r['distinct_articles_in_final_lineage']:,} of "
                                                   f"{r['articles_with_text']:,} with text"],
        ["prompt / output tokens", f"{r['prompt_tokens']:,} / {r['output_tokens']:,}"],
        ["wall time (engine started before)", f"{r['seconds']:.1f} s ({r['ms_per_row']:.1f} ms per row)"],
        ["rerun", f"{r['rerun_s']:.2f} s, {r['rerun_engine_requests']} engine requests, same answers: "
                  f"{r['rerun_same_answers']}"],
    ]
    lines = [
        "# semantic.aggregate per BBC News topic (SmolLM2-135M)",
        "",
        "`.venv/bin/python -m benchmarks.aggregate_bbc"
        + (f" --text {r['text']}" if r["text"] != "title" else "")
        + (f" --window {r['window']}" if r["window"] != 1024 else "")
        + (f" --max-tokens {r['max_tokens']}" if r["max_tokens"] != 48 else "")
        + (f" --sample {r['sample_per_topic']}" if r["sample_per_topic"] else "") + "`",
        "",
        f"One aggregate, `by=\"topic\"`, task {TASK!r}, on the in-process vLLM engine "
        f"(`VLLMEngine(max_model_len={r['window']})`, SmolLM2-135M-Instruct, bf16), empty exact cache; "
        "then the same plan again.",
        "",
        environment_block(facts),
        "",
        markdown_table(["measure", "value"], summary),
        "",
        "Requests per reduce level (one engine batch each, over all five topics):",
        "",
        markdown_table(["level", "requests"], rows),
        "",
        "The plan as `explain()` shows it:",
        "",
        "```",
        r["explain"],
        "```",
        "",
        "What SmolLM2 wrote (first 160 characters; the model is too small to judge them):",
        "",
        markdown_table(["topic", "summary"], [[k, v.replace("|", "/").replace("\n", " ")]
                                              for k, v in r["summaries"].items()]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", choices=("title", "body300"), default="title")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--sample", type=int, default=None, help="articles per topic (default: all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    facts = machine_facts()
    r = run(args.text, args.window, args.max_tokens, args.sample)
    facts["load_average_at_end"] = os.getloadavg()[0]
    print(markdown(r, facts))
    if not args.no_write:
        out = ROOT / "docs" / "results"
        (out / "aggregate_bbc.md").write_text(markdown(r, facts))
        (out / "aggregate_bbc.json").write_text(json.dumps({"machine": facts, "result": r}, indent=2, default=str))
        log(f"wrote {out / 'aggregate_bbc.md'}")


if __name__ == "__main__":
    main()
