"""The semantic cache before (a fixed 0.95) and after (a threshold calibrated per step), on SmolLM2.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.semantic_cache_calibrated
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.semantic_cache_calibrated --records 150 --headlines 200

Three workloads, each run with ``semantic_cache=0.95`` (before: the old default, a fixed threshold),
``semantic_cache=True`` (after: calibrated for ``accuracy >= 0.95`` at confidence 0.95) and
``semantic_cache=sf.Target(accuracy=0.9, confidence=0.9)`` (a looser target):

- **FEBRL dataset1**: the first ``--records`` person records (``semframe.datasets.febrl``), extract
  ``{surname, postcode}`` -- an extraction, where a near-duplicate record is often another person;
- **BBC headlines with near-duplicates**: ``--headlines`` distinct headlines
  (``semframe.datasets.bbc_news``, drawn with seed 0) and near-duplicates of half as many of them
  (the same headline lowercased, with a source tag, with its punctuation changed ...), shuffled;
  classify the topic (the corpus's 5);
- **the same BBC rows with a gold-topic engine**: a ``DeterministicEngine`` that gives each headline
  its corpus topic and a near-duplicate its original's -- an engine that does answer
  near-duplicates alike, to show what the calibration does when reuse is right (no model).

The engine of the first two is ``sf.VLLMEngine(deterministic=True)`` (SmolLM2-135M-Instruct in
float32 on CPU: the same request gets the same answer, so "the engine's own answer for a row" is
well defined).
It first answers every row itself (semantic cache off, exact cache off): those are the answers
a reused one is compared with. A few rows are asked again in a separate run to check that the
answers are reproducible. The before/after runs are then served by a replay of those answers
(a ``DeterministicEngine`` returning, for each request, the raw text the model gave for that row,
parsed as usual): the same answers the model gives, without asking it again, and the replay
counts the calls made to it -- the oracle calls. Embeddings: the configured default
(all-MiniLM-L6-v2). Each run has the exact cache off and the default batch size (512).

Columns: rows; hits (rows answered by the semantic cache); hits agreeing with the engine's own
answer for that row; the threshold (fixed, calibrated, or none certified); oracle calls.
Writes ``docs/results/semantic_cache_calibrated.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, log, machine_facts, markdown_table  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402

SCHEMA = {"surname": str, "postcode": str}
EXTRACT = "Extract the person's surname and the postcode from the record."
CLASSIFY = "What is the topic of this BBC News headline?"
RECHECK = 40  # rows per workload asked of the model a second time (reproducibility check)


def near_duplicate(title: str, rng: random.Random) -> str:
    """The same headline as another feed might carry it."""
    kind = rng.randrange(5)
    if kind == 0:
        return title.lower()
    if kind == 1:
        return rng.choice(["BBC: ", "UPDATE: ", "News: "]) + title
    if kind == 2:
        return title + rng.choice([" - BBC News", " (report)", " | BBC"])
    if kind == 3:
        return title.replace("'", "").replace(",", "").rstrip(".!?") + "."
    return title.upper() if len(title) < 30 else title.replace(" ", "  ", 1).strip() + "!"


def workloads(records: int, headlines: int) -> list[dict[str, Any]]:
    import polars as pl

    from semframe.datasets import bbc_news, febrl

    people = febrl("dataset1").select("text").head(records)
    news = bbc_news()
    topics = sorted(news["topic"].unique().to_list())
    titles = news.select("title").unique(maintain_order=True).sample(fraction=1.0, shuffle=True, seed=0)
    base = titles["title"].head(headlines).to_list()
    rng = random.Random(0)
    copied = rng.sample(base, headlines // 2)
    near = [near_duplicate(t, rng) for t in copied]
    topic_of: dict[str, str] = {}
    for title, topic in news.select("title", "topic").iter_rows():
        topic_of.setdefault(title, topic)
    gold = {t: topic_of[t] for t in base} | {n: topic_of[t] for n, t in zip(near, copied) if n not in set(base)}
    rows = base + [t for t in near if t not in set(base)]
    rng.shuffle(rows)
    bbc = pl.DataFrame({"title": rows})

    def classify(lf: Any, sc: Any) -> Any:
        return lf.semantic.classify("title", topics, instruction=CLASSIFY, name="topic", semantic_cache=sc)

    return [
        {"name": f"FEBRL dataset1, first {records} records: extract surname + postcode", "key": "febrl",
         "frame": people, "column": "text", "out": "facts",
         "plan": lambda lf, sc: lf.semantic.extract("text", SCHEMA, instruction=EXTRACT, name="facts",
                                                    semantic_cache=sc)},
        {"name": f"BBC headlines, {headlines} + {len(rows) - headlines} near-duplicates: classify topic",
         "key": "bbc", "frame": bbc, "column": "title", "out": "topic", "plan": classify},
        {"name": "the same BBC rows, answered by a gold-topic engine (a DeterministicEngine giving each headline "
                 "its corpus topic, a near-duplicate its original's): an engine that answers near-duplicates alike",
         "key": "bbc-gold", "frame": bbc, "column": "title", "out": "topic", "plan": classify, "gold": gold},
    ]


def own_answers(w: dict[str, Any], engine: Any, checks: dict[str, Any]) -> tuple[dict[str, str], list[Any]]:
    """The engine's own answer for every row (and its raw text by row text), with the cache and
    the semantic cache off; some rows are asked again to check that the answers are reproducible."""
    df, col, out = w["frame"], w["column"], w["out"]
    t = time.perf_counter()
    run = w["plan"](df.lazy(), None).run(engine, cache=False, progress=False)
    own_s = time.perf_counter() - t
    lineage = run.with_row_ids().join(run.lineage.select("row_id", "raw_output"), on="row_id")
    raw = dict(zip(lineage[col].to_list(), lineage["raw_output"].to_list()))
    own = run.df[out].to_list()
    log(f"{w['key']}: the engine answered {df.height} rows in {own_s:.0f} s ({run.engine_requests} requests)")
    pick = sorted(random.Random(1).sample(range(df.height), min(RECHECK, df.height)))
    again = w["plan"](df[pick].lazy(), None).run(engine, cache=False, progress=False).df[out].to_list()
    changed = sum(a != own[i] for a, i in zip(again, pick))
    checks[w["key"]] = {"rechecked": len(pick), "changed": changed, "engine_seconds": round(own_s, 1),
                        "engine_requests": run.engine_requests, "null_answers": sum(v is None for v in own)}
    log(f"{w['key']}: {changed} of {len(pick)} answers changed when asked again")
    return raw, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300, help="FEBRL dataset1 records")
    parser.add_argument("--headlines", type=int, default=400, help="distinct BBC headlines")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    facts = machine_facts()

    import semframe as sf
    from semframe.engines.vllm import VLLMEngine

    settings = [("before: fixed 0.95", 0.95), ("after: calibrated (semantic_cache=True)", True),
                ("calibrated, Target(accuracy=0.9, confidence=0.9)", sf.Target(accuracy=0.9, confidence=0.9))]
    engine = VLLMEngine(deterministic=True)
    results: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    t_all = time.perf_counter()
    for w in workloads(args.records, args.headlines):
        df, col, out = w["frame"], w["column"], w["out"]
        if "gold" in w:  # the engine's answer is the gold one, by construction
            raw = w["gold"]
            own = [raw[t] for t in df[col].to_list()]
        else:
            raw, own = own_answers(w, engine, checks)

        for label, setting in settings:
            replay = sf.DeterministicEngine(responder=lambda r, raw=raw: raw[r.prompt_parts()[1]],
                                            keep_batches=False)
            t = time.perf_counter()
            run = w["plan"](df.lazy(), setting).run(replay, cache=False, progress=False)
            secs = time.perf_counter() - t
            got = run.df[out].to_list()
            src = run.lineage.sort("row_id")["source"].to_list()
            hits = [i for i, s in enumerate(src) if s == "semantic_cache"]
            agree = sum(got[i] == own[i] for i in hits)
            notes = run.step_metrics[0].notes.get("semantic_cache", {})
            threshold = notes.get("threshold")
            results.append({
                "workload": w["key"], "name": w["name"], "setting": label, "rows": df.height, "hits": len(hits),
                "hits_agreeing": agree, "threshold": threshold, "mode": notes.get("mode"),
                "certified": notes.get("certified"), "oracle_calls": replay.requests_seen,
                "column_agreement": sum(a == b for a, b in zip(got, own)) / df.height, "seconds": round(secs, 1),
                "calibration": {k: v for k, v in notes.items() if k != "summary"},
                "summary": notes.get("summary"),
                "disagreeing_examples": [{"row": df[col][i], "reused": got[i], "own": own[i]}
                                         for i in hits if got[i] != own[i]][:5],
            })
            log(f"{w['key']} / {label}: {len(hits)} hits, {agree} agree, threshold {threshold}, "
                f"{replay.requests_seen} oracle calls")
    engine.close()
    facts["load_average_at_end"] = os.getloadavg()[0]

    def shown(r: dict[str, Any]) -> str:
        if r["threshold"] is None:
            return "none certified"
        return f"{r['threshold']:.4g}" + (" (fixed)" if r["mode"] == "fixed" else " (calibrated)")

    table = markdown_table(
        ["workload", "semantic cache", "rows", "hits", "hits agreeing with the engine's own answer", "threshold",
         "oracle calls"],
        [[r["workload"], r["setting"], r["rows"], r["hits"],
          f"{r['hits_agreeing']} of {r['hits']}" if r["hits"] else "-", shown(r), r["oracle_calls"]]
         for r in results])
    print(table)
    lines = [f"- {r['workload']} / {r['setting']}: {r['summary']}" for r in results if r["mode"] == "calibrated"]
    recheck = "; ".join(f"{k}: {v['changed']} of {v['rechecked']} answers changed when asked again"
                        for k, v in checks.items())
    command = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.semantic_cache_calibrated" + (
        "" if (args.records, args.headlines) == (300, 400)
        else f" --records {args.records} --headlines {args.headlines}")
    env = environment_block(facts, {"Engine": "sf.VLLMEngine(deterministic=True): SmolLM2-135M-Instruct, float32",
                                    "Embedder": "all-MiniLM-L6-v2 (the default)"})
    names = "\n".join(f"- `{w}`: {n}" for w, n in dict((r["workload"], r["name"]) for r in results).items())
    md = (f"# Semantic cache: a fixed 0.95 vs a threshold calibrated per step\n\nCommand: `{command}`\n\n{env}\n\n"
          f"Workloads:\n\n{names}\n\n"
          "The engine answered every row itself first (no semantic cache, no exact cache; for `bbc-gold` the "
          "gold-topic engine's answers are known); a hit *agrees* when the reused answer equals the engine's own "
          "answer for that row. The runs below are served by a replay of those answers (the raw text the engine "
          "gave for each row, parsed as usual), which counts the oracle calls. Reproducibility of SmolLM2's "
          f"answers: {recheck}.\n\n{table}\n\nWhat each calibration found:\n\n" + "\n".join(lines)
          + "\n\nPer-run details (calibration counts, disagreeing examples) are in "
          "`semantic_cache_calibrated.json`.\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "semantic_cache_calibrated.md").write_text(md)
    (RESULTS / "semantic_cache_calibrated.json").write_text(json.dumps(
        {"facts": facts, "checks": checks, "runs": results, "seconds": round(time.perf_counter() - t_all, 1)},
        indent=1, default=str))
    log(f"wrote {RESULTS / 'semantic_cache_calibrated.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
