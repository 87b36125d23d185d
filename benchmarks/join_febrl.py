"""semantic.join with embedding blocking on FEBRL dataset4a x dataset4b (5,000 x 5,000 records).

The two FEBRL files hold 5,000 true links (records of the same person, one in each file, the
second corrupted with typos). The engine is a deterministic one that answers from the gold links
(YES exactly when the two records are the same entity), so an exhaustive nested loop would find
all 5,000 by construction: the recall of the blocked join *is* its agreement with the exhaustive
algorithm, and what is measured is the work blocking saves and what it loses.

For ``candidates`` m in {1, 5, 10}: the true links found (recall), the pairs asked (against the
25,000,000 of a nested loop), the audit's recall estimate, the embedding time and the total time.
The texts (FEBRL's ``text`` column) are embedded once with the default embedder
(all-MiniLM-L6-v2): the runs share a temporary exact-cache store, which keeps embeddings by text,
and each run gets its own engine (a new responder: a new fingerprint), so no run reuses another's
answers. Then, side by side on the first ``--slice`` left rows, the nested loop and blocking
(m=10) with the same gold engine: agreement and calls. Then, if the default model is installed,
a small run on SmolLM2-135M-Instruct (``--smollm2-rows`` left rows x 5,000, m=5) for calls,
tokens and time only (the model is too weak to judge).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.join_febrl [--slice 20] [--smollm2-rows 50] [--no-smollm2] [--no-write]

Prints a table; writes ``docs/results/join_febrl.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import polars as pl  # noqa: E402

import semframe as sf  # noqa: E402
from benchmarks._common import RESULTS, log, machine_facts  # noqa: E402
from semframe import config  # noqa: E402
from semframe.datasets import febrl  # noqa: E402

TEMPLATE = "Record A: {left.text}\nRecord B: {right.text}\nAre A and B the same person?"
INSTRUCTION = "Two person records may describe the same person despite typos."
CANDIDATES = (1, 5, 10)
AUDIT = 1000


def gold_engine(left: pl.DataFrame, right: pl.DataFrame) -> sf.DeterministicEngine:
    """Answers YES exactly when the two records of a pair are one entity (read from the prompt)."""
    lmap: dict[str, set[int]] = {}
    rmap: dict[str, set[int]] = {}
    for text, entity in zip(left["text"], left["entity"]):
        lmap.setdefault(text, set()).add(entity)
    for text, entity in zip(right["text"], right["entity"]):
        rmap.setdefault(text, set()).add(entity)

    def respond(request) -> str:
        a, b, _ = request.messages[-1].content.split("\n")
        same = lmap.get(a.removeprefix("Record A: "), set()) & rmap.get(b.removeprefix("Record B: "), set())
        return "YES" if same else "NO"

    return sf.DeterministicEngine(responder=respond, keep_batches=False)


def links_found(out: pl.DataFrame) -> int:
    """Distinct true links (same entity on both sides) among the join's output pairs."""
    return out.filter(pl.col("entity") == pl.col("entity_right"))["entity"].n_unique()


def blocked_run(left: pl.DataFrame, right: pl.DataFrame, m: int) -> dict:
    engine = gold_engine(left, right)
    plan = left.lazy().semantic.join(right, TEMPLATE, instruction=INSTRUCTION, algorithm="blocking",
                                     candidates=m, audit=AUDIT)
    est = plan.estimate()
    cpu = time.process_time()
    run = plan.run(engine, lineage=False, progress=False)
    cpu_s = time.process_time() - cpu
    metrics = run.step_metrics[0]
    notes = metrics.notes
    asked = metrics.engine_requests + metrics.dedup_hits + metrics.exact_cache_hits
    return {
        "candidates": m, "links_found": links_found(run.df), "recall": links_found(run.df) / 5000,
        "output_pairs": run.df.height, "pairs_asked": asked, "engine_requests": metrics.engine_requests,
        "estimated_calls": est.calls[1], "share_of_all_pairs": asked / (left.height * right.height),
        "audit_pairs": notes["audit_pairs"], "audit_yes": notes["audit_yes"],
        "estimated_recall": notes["estimated_recall"], "recall_low_95": notes["recall_low_95"],
        "embedding_s": notes["embedding_seconds"], "embedding_cpu_s": notes["embedding_cpu_seconds"],
        "total_s": run.seconds, "total_cpu_s": cpu_s,
    }


def side_by_side(left: pl.DataFrame, right: pl.DataFrame, rows: int) -> dict:
    part = left.head(rows)
    out = {}
    for algorithm in ("nested_loop", "blocking"):
        engine = gold_engine(part, right)
        t = time.perf_counter()
        # The nested loop's 100,000 answers stay out of the cache; blocking uses it only for the
        # embeddings stored by the runs before (its engine is new: no answer is shared).
        run = part.lazy().semantic.join(right, TEMPLATE, instruction=INSTRUCTION, algorithm=algorithm,
                                        candidates=10, audit=100).run(engine, lineage=False, progress=False,
                                                                      cache=algorithm == "blocking")
        out[algorithm] = {"pairs": sorted(map(tuple, run.row_ids.struct.unnest().rows())),
                          "calls": engine.requests_seen, "seconds": time.perf_counter() - t}
    nested, blocked = set(out["nested_loop"]["pairs"]), set(out["blocking"]["pairs"])
    return {"left_rows": rows, "nested_loop_calls": out["nested_loop"]["calls"],
            "blocking_calls": out["blocking"]["calls"], "nested_loop_pairs": len(nested),
            "blocking_pairs": len(blocked), "agreeing_pairs": len(nested & blocked),
            "nested_loop_s": out["nested_loop"]["seconds"], "blocking_s": out["blocking"]["seconds"]}


def smollm2_run(left: pl.DataFrame, right: pl.DataFrame, rows: int, model_dir: Path) -> dict:
    from semframe.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(model_dir), kv_cache_memory_bytes=256 << 20)
    try:
        t = time.perf_counter()
        run = left.head(rows).lazy().semantic.join(right, TEMPLATE, instruction=INSTRUCTION, algorithm="blocking",
                                                   candidates=5, audit=20).run(engine, progress=False)
        m = run.step_metrics[0]
        return {"left_rows": rows, "right_rows": right.height, "candidates": 5, "audit": 20,
                "engine_requests": m.engine_requests, "prompt_tokens": m.prompt_tokens,
                "cached_prompt_tokens": m.cached_prompt_tokens, "output_tokens": m.output_tokens,
                "yes_pairs": run.df.height, "true_links_among_yes": int((run.df["entity"] == run.df["entity_right"]).sum()),
                "engine_s": m.engine_seconds, "embedding_s": m.notes["embedding_seconds"],
                "total_s": time.perf_counter() - t}
    finally:
        engine.close()


def render(facts: dict, runs: list[dict], sbs: dict, small: dict | None) -> str:
    lines = [
        "# semantic.join on FEBRL 4a x 4b: embedding blocking",
        "",
        f"`OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.join_febrl` on {facts['cpu']} "
        f"({facts['cores']} cores, {facts['threads']}, load {facts['load_average_at_start']:.1f} at start), "
        f"{facts['date']}, semframe {facts['semframe_commit']}"
        f"{' + uncommitted src' if facts['semframe_src_uncommitted'] else ''}.",
        "",
        "5,000 x 5,000 person records (25,000,000 pairs) with 5,000 true links; a deterministic engine "
        "answers from the gold links, so an exhaustive nested loop finds all 5,000: recall here is the "
        "agreement with the exhaustive algorithm. Texts: FEBRL's `text` column (one line per record), "
        f"embedded with all-MiniLM-L6-v2; audit = {AUDIT} pairs outside the blocks.",
        "",
        "| candidates m | links found | recall | pairs asked | share of 25M | audit YES | est. recall "
        "| recall ≥ (95%) | embedding s (CPU s) | total s (CPU s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        low = "n/a" if r["recall_low_95"] is None else f"{r['recall_low_95']:.3f}"
        est = "n/a" if r["estimated_recall"] is None else f"{r['estimated_recall']:.3f}"
        lines.append(f"| {r['candidates']} | {r['links_found']:,} | {r['recall']:.4f} | {r['pairs_asked']:,} | "
                     f"{100 * r['share_of_all_pairs']:.3f}% | {r['audit_yes']}/{r['audit_pairs']} | {est} | {low} | "
                     f"{r['embedding_s']:.1f} ({r['embedding_cpu_s']:.1f}) | {r['total_s']:.1f} ({r['total_cpu_s']:.1f}) |")
    lines += [
        "",
        "Wall seconds, with this process's CPU seconds in brackets (the machine is shared: the load "
        "average says how busy it was). The first run embeds the 10,000 texts (its embedding time); the "
        "later runs read the embeddings "
        "back from the exact-cache store by text digest. `pairs asked` = m x 5,000 + the audit, and "
        "equals `estimate()`'s calls. The audit's point estimate of recall assumes the YES rate it "
        "sees outside the blocks; with no YES in n audit pairs, the 95% bound is about 3.8/n of 25M "
        "pairs, i.e. it cannot prove a high recall at this size: raise `audit=` for a tighter bound.",
        "",
        f"## Side by side: nested loop vs blocking (m=10), first {sbs['left_rows']} left rows x 5,000",
        "",
        "| algorithm | calls | YES pairs | seconds |",
        "|---|---:|---:|---:|",
        f"| nested loop | {sbs['nested_loop_calls']:,} | {sbs['nested_loop_pairs']} | {sbs['nested_loop_s']:.1f} |",
        f"| blocking m=10 (+100 audit) | {sbs['blocking_calls']:,} | {sbs['blocking_pairs']} | {sbs['blocking_s']:.1f} |",
        "",
        f"Pairs in both: {sbs['agreeing_pairs']} (each with a fresh engine; the embeddings come from the "
        "store the runs above filled).",
    ]
    if small is not None:
        lines += [
            "",
            f"## SmolLM2-135M-Instruct (vLLM CPU), {small['left_rows']} left rows x {small['right_rows']:,}, "
            f"m={small['candidates']}, audit {small['audit']}",
            "",
            "| engine requests | prompt tokens | cached prompt tokens | output tokens | engine s | embedding s | total s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {small['engine_requests']:,} | {small['prompt_tokens']:,} | {small['cached_prompt_tokens']:,} | "
            f"{small['output_tokens']:,} | {small['engine_s']:.1f} | {small['embedding_s']:.1f} | {small['total_s']:.1f} |",
            "",
            f"Work only: the model said YES to {small['yes_pairs']} pairs, {small['true_links_among_yes']} of them "
            "true links (a 135M model is not a judge of person records).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", type=int, default=20, help="left rows of the nested-loop side by side")
    parser.add_argument("--smollm2-rows", type=int, default=50)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    facts = machine_facts()
    left, right = febrl("dataset4a"), febrl("dataset4b")
    model_dir = None
    if not args.no_smollm2:
        try:
            from semframe.engines import models

            model_dir = models.convert_gguf(models.default_gguf_path())  # in the real cache: converted once
        except Exception as exc:  # noqa: BLE001 - the model is optional here
            log(f"SmolLM2 not available ({exc}); skipping that part")
    with tempfile.TemporaryDirectory(prefix="join-febrl-") as tmp:
        config.settings.cache_dir = Path(tmp)
        runs = []
        for m in CANDIDATES:
            log(f"blocking, candidates={m}")
            runs.append(blocked_run(left, right, m))
            log(json.dumps(runs[-1]))
        log(f"side by side on {args.slice} left rows")
        sbs = side_by_side(left, right, args.slice)
        log(json.dumps(sbs))
        small = None
        if model_dir is not None:
            log(f"SmolLM2, {args.smollm2_rows} left rows")
            small = smollm2_run(left, right, args.smollm2_rows, model_dir)
            log(json.dumps(small))
    text = render(facts, runs, sbs, small)
    print(text)
    if not args.no_write:
        (RESULTS / "join_febrl.md").write_text(text)
        (RESULTS / "join_febrl.json").write_text(json.dumps({"machine": facts, "blocking": runs, "side_by_side": sbs,
                                                             "smollm2": small}, indent=2) + "\n")


if __name__ == "__main__":
    main()
