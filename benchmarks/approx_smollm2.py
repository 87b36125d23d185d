"""Approximate classify and filter on a real model: SmolLM2 as the oracle, per proxy source.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.approx_smollm2                 # 1,000 headlines
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.approx_smollm2 --rows 300 --no-filter

Data: ``semframe.datasets.bbc_news()`` headlines (5 topics), ``--rows`` distinct headlines drawn
at random (seed 0; the full 2,096 distinct headlines take too long on this 2-core machine).
The oracle is SmolLM2-135M-Instruct in vLLM's reproducible mode, ``sf.VLLMEngine(deterministic=True)``
(float32 on CPU); the cascade's proxy engine is the same model in bf16, ``sf.VLLMEngine()``, which
is cheaper per row than the float32 oracle (measured below: its seconds per row). Both run in
this process, warmed up on 8 rows first; every run has the exact cache off.

Runs (each against the oracle-only run's column, which is what the guarantee is about):

1. ``oracle only``: ``classify(title, topics)`` with the oracle: the reference column and its cost;
   ``bf16 engine alone``: the same with the proxy engine (its cost per row, and how often it
   agrees with the oracle with no guarantee);
2. ``learned``: ``approx=sf.Target(accuracy=0.9, confidence=0.95)``, ``proxy=`` the default
   embedder (all-MiniLM-L6-v2; embedding time is part of the wall time); once more with
   ``accuracy=0.8``;
3. ``cascade``: ``proxy=`` the bf16 engine;
4. ``combined``: ``proxy=[embedder, bf16 engine]`` (a calibration part per source, 1 - confidence
   split in two);
5. with ``--filter`` (default): ``filter("Is this headline about sport?")`` oracle-only, and with
   ``approx=sf.Target(precision=0.9, recall=0.9, confidence=0.95)`` and the learned proxy.

Reported per run: oracle calls, calls saved against the oracle-only run, proxy-engine calls,
agreement of the column (and of the proxy-answered cells) with the oracle-only run, the
realised precision/recall for the filter, and wall time. Writes ``docs/results/approx_smollm2.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import log, machine_facts, markdown_table, write_results  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402

INSTRUCTION = "What is the topic of this BBC News headline?"
QUESTION = "Is this BBC News headline about sport?"
TARGET = {"accuracy": 0.9, "confidence": 0.95}
ROW_TARGET = {"precision": 0.9, "recall": 0.9, "confidence": 0.95}


def _timed(plan: Any, engine: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = plan.run(engine, cache=False, progress=False)
    return result, time.perf_counter() - start


def _classify_row(name: str, result: Any, seconds: float, reference: list[str], oracle_calls: int) -> dict[str, Any]:
    step = result.step_metrics[0]
    notes = step.notes.get("approx", {})
    values = result.df["topic"].to_list()
    sources = result.lineage.sort("row_id")["source"].to_list()
    agree = [a == b for a, b in zip(values, reference)]
    proxied = [ok for ok, s in zip(agree, sources) if s in ("proxy", "cascade")]
    calls = int(result.metrics["engine_requests"][0])
    return {
        "run": name, "oracle_calls": calls, "saved": oracle_calls - calls,
        "proxy_answers": int(result.metrics["proxy_answers"][0]),
        "by_source": {s: sources.count(s) for s in sorted(set(sources))},
        "proxy_engine_calls": step.notes.get("cascade", {}).get("engine_requests", 0),
        "agreement": sum(agree) / len(agree), "proxied_agreement": sum(proxied) / len(proxied) if proxied else None,
        "seconds": seconds, "certified": notes.get("certified"),
        "thresholds": [s.get("threshold") for s in notes.get("sources", [])],
        "summary": notes.get("summary"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--no-filter", dest="filter", action="store_false")
    parser.add_argument("--name", default="approx_smollm2")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    facts = machine_facts()

    import polars as pl

    import semframe as sf
    from semframe.datasets import bbc_news
    from semframe.engines.embedding import resolve_embedder

    data = bbc_news().select("title", pl.col("topic").alias("gold")).unique("title", keep="first", maintain_order=True)
    data = data.sample(min(args.rows, data.height), seed=0, shuffle=True)
    topics = sorted(data["gold"].unique().to_list())
    log(f"{data.height} distinct headlines, topics {topics}")

    oracle = sf.VLLMEngine(deterministic=True, kv_cache_memory_bytes=1 << 30)
    cheap = sf.VLLMEngine(kv_cache_memory_bytes=1 << 30)
    embedder = resolve_embedder(None)
    warm = data.tail(8).lazy().semantic.classify("title", topics, instruction=INSTRUCTION, name="topic")
    for engine in (oracle, cheap):
        warm.run(engine, cache=False, progress=False)
    embedder.embed(data.tail(8)["title"].to_list())

    def classify(**kw: Any) -> Any:
        return data.lazy().semantic.classify("title", topics, instruction=INSTRUCTION, name="topic", **kw)

    rows = []
    result, seconds = _timed(classify(), oracle)
    reference = result.df["topic"].to_list()
    calls = int(result.metrics["engine_requests"][0])
    rows.append(_classify_row("oracle only (float32)", result, seconds, reference, calls))
    log(f"oracle only: {calls} calls, {seconds:.1f} s")
    result, seconds = _timed(classify(), cheap)
    rows.append(_classify_row("bf16 engine alone (no guarantee)", result, seconds, reference, calls))
    log(f"bf16 alone: {seconds:.1f} s, agreement {rows[-1]['agreement']:.3f}")
    for name, proxy, target in (("learned (MiniLM + logistic regression)", embedder, TARGET),
                                ("learned, accuracy >= 0.8", embedder, {**TARGET, "accuracy": 0.8}),
                                ("cascade (bf16)", cheap, TARGET),
                                ("combined [learned, cascade]", [embedder, cheap], TARGET),
                                # the nearest answered neighbour embeds with the default embedder
                                # (sf.configure(embedding_model=...)); in a list it shares `embedder`
                                ("neighbour (nearest answered row)", "neighbour", TARGET),
                                ("combined [neighbour, learned, cascade]", ["neighbour", embedder, cheap], TARGET)):
        result, seconds = _timed(classify(approx=sf.Target(**target), proxy=proxy), oracle)
        rows.append(_classify_row(name, result, seconds, reference, calls))
        log(f"{name}: {rows[-1]['oracle_calls']} oracle calls, {seconds:.1f} s, agreement {rows[-1]['agreement']:.3f}")

    filters = []
    if args.filter:
        def keep(**kw: Any) -> Any:
            return data.lazy().semantic.filter("{title}", instruction=QUESTION, **kw)

        ref, seconds = _timed(keep(), oracle)
        ref_titles = set(ref.df["title"].to_list())
        ref_calls = int(ref.metrics["engine_requests"][0])
        filters.append({"run": "filter, oracle only", "oracle_calls": ref_calls, "saved": 0, "kept": ref.df.height,
                        "precision": 1.0, "recall": 1.0, "seconds": seconds, "proxy_answers": 0})
        for name, proxy in (("filter, precision+recall, learned", embedder),
                            ("filter, precision+recall, cascade", cheap)):
            result, seconds = _timed(keep(approx=sf.Target(**ROW_TARGET), proxy=proxy), oracle)
            kept = set(result.df["title"].to_list())
            notes = result.step_metrics[0].notes["approx"]
            hits = len(kept & ref_titles)
            filters.append({
                "run": name, "oracle_calls": int(result.metrics["engine_requests"][0]),
                "saved": ref_calls - int(result.metrics["engine_requests"][0]), "kept": len(kept),
                "precision": hits / len(kept) if kept else 1.0, "recall": hits / len(ref_titles) if ref_titles else 1.0,
                "seconds": seconds, "proxy_answers": int(result.metrics["proxy_answers"][0]),
                "precision_threshold": notes.get("precision_threshold"), "recall_threshold": notes.get("recall_threshold"),
                "kept_unchecked": notes.get("kept_unchecked", 0), "dropped_unchecked": notes.get("dropped_unchecked", 0),
                "summary": notes["summary"]})
            log(f"{name}: {filters[-1]}")
    oracle.close()
    cheap.close()

    def f3(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    table = markdown_table(
        ["run", "oracle calls", "saved", "proxy answers (by source)", "proxy-engine calls", "agreement with oracle-only",
         "agreement of proxy cells", "wall s", "certified thresholds"],
        [[r["run"], r["oracle_calls"], r["saved"],
          f"{r['proxy_answers']} ({', '.join(f'{k} {v}' for k, v in r['by_source'].items() if k in ('proxy', 'cascade'))})"
          if r["proxy_answers"] else 0,
          r["proxy_engine_calls"], f3(r["agreement"]), f3(r["proxied_agreement"]), f"{r['seconds']:.1f}",
          ", ".join("none" if t is None else f"{t:.4g}" for t in r["thresholds"]) or "-"] for r in rows])
    ftable = markdown_table(
        ["run", "oracle calls", "saved", "kept", "kept / dropped unchecked", "precision", "recall", "wall s",
         "thresholds (keep >=, drop <)"],
        [[r["run"], r["oracle_calls"], r["saved"], r["kept"],
          f"{r.get('kept_unchecked', 0)} / {r.get('dropped_unchecked', 0)}", f3(r["precision"]), f3(r["recall"]),
          f"{r['seconds']:.1f}",
          f"{r.get('precision_threshold')}, {r.get('recall_threshold')}" if "precision_threshold" in r else "-"]
         for r in filters]) if filters else ""
    print(table)
    print(ftable)
    md = (f"# Approximate steps on SmolLM2: calls saved per proxy source\n\n"
          f"Command: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.approx_smollm2"
          f"{'' if args.rows == 1000 else f' --rows {args.rows}'}{'' if args.filter else ' --no-filter'}`\n\n"
          f"{environment_block(facts, {'Oracle': 'VLLMEngine(deterministic=True): SmolLM2-135M-Instruct, float32', 'Proxy engine': 'VLLMEngine(): the same model, bf16', 'Embedder': embedder.label()})}\n\n"
          f"{data.height} distinct BBC headlines (seeded sample), 5 topics, exact cache off in every run. "
          f"Classify target `sf.Target(accuracy=0.9, confidence=0.95)` unless the run says otherwise; *saved* = the oracle-only run's "
          f"calls - the run's oracle calls; *agreement* = share of rows whose answer equals the oracle-only run's "
          f"(the guarantee is about the proxy cells: >= 0.9 with probability 0.95).\n\n{table}\n\n"
          + (f"Filter `{QUESTION}`, target `sf.Target(precision=0.9, recall=0.9, confidence=0.95)`; precision and "
             f"recall of the kept rows against the oracle-only filter's.\n\n{ftable}\n" if filters else ""))
    write_results(args.name, md, {"facts": facts, "classify": rows, "filter": filters})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
