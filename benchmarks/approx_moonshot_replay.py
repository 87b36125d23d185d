"""The moonshot's calibration over many seeds, replayed on the oracle's recorded answers.

    .venv/bin/python -m benchmarks.approx_moonshot --exhaustive --answers /tmp/moonshot.parquet   # once (~40 min)
    .venv/bin/python -m benchmarks.approx_moonshot_replay /tmp/moonshot.parquet --seeds 10

One end-to-end moonshot run (``benchmarks/approx_moonshot.py``) draws one calibration sample; whether
its threshold certifies, and how many cells the proxy then answers, varies from draw to draw. This
replays the very same step -- the same 100,000-row table, ``Target(accuracy=0.9, confidence=0.95,
sample=S, seed=s)``, the learned proxy on ``HashingEmbedder(dimension=4096)`` -- for seeds
``0..K-1``, with a :class:`semframe.DeterministicEngine` that answers each prompt with what the real
oracle (SmolLM2 float32, reproducible: the same answers run to run) answered in an exhaustive run.
Everything but the engine's seconds is the real operator: the sample, the proxy, the certification,
the oracle calls it would make. Per seed: certified threshold, cells the proxy answers, oracle calls,
the realised agreement of the proxy cells with the oracle, and the projected end-to-end time
(``engine start + step overhead + audit + oracle calls / oracle rate``, all measured in the end-to-end
run's ``docs/results/approx_moonshot.json``). Writes ``docs/results/approx_moonshot_replay.md`` and
``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, log, machine_facts, markdown_table, write_results  # noqa: E402
from benchmarks.approx_moonshot import INSTRUCTION, LIMIT_S, table_of  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("answers", type=Path, help="the oracle-only answers (approx_moonshot --exhaustive --answers)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sample", type=int, default=6000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--name", default="approx_moonshot_replay")
    args = parser.parse_args(argv)
    facts = machine_facts()

    import polars as pl

    import semframe as sf

    known = dict(pl.read_parquet(args.answers).select("text", "topic").iter_rows())
    data = table_of(args.rows).select("text", "gold")
    topics = sorted(data["gold"].unique().to_list())
    missing = [t for t in data["text"].unique() if t not in known]
    if missing:
        raise SystemExit(f"{len(missing)} texts have no recorded answer in {args.answers}")
    truth = data["text"].replace_strict(known)
    measured = json.loads((RESULTS / "approx_moonshot.json").read_text())
    rate = measured["oracle_rows_per_s"]
    # What the end-to-end run spent besides the oracle's seconds: engine start, the step's
    # rendering, embedding, training, certification and lineage, and the audit.
    overhead = (measured["engine_seconds_start"] + measured["step_seconds"] - measured["oracle_engine_seconds"]
                + measured["audit_seconds"])
    log(f"{data.height:,} rows, {len(known):,} recorded answers; oracle {rate:.1f} prompts/s, overhead {overhead:.0f} s")

    def answer(request: Any) -> str:
        return known[request.prompt_text.rsplit("\n", 1)[-1].strip()]

    rows = []
    for seed in range(args.seeds):
        engine = sf.DeterministicEngine(responder=answer)
        start = time.perf_counter()
        result = data.lazy().semantic.classify(
            "text", topics, instruction=INSTRUCTION, name="topic",
            approx=sf.Target(accuracy=0.9, confidence=0.95, sample=args.sample, seed=seed),
            proxy=sf.HashingEmbedder(dimension=4096)).run(engine, cache=False, progress=False)
        seconds = time.perf_counter() - start
        notes = result.step_metrics[0].notes["approx"]
        calls = int(result.step_metrics[0].engine_requests)
        is_proxy = result.lineage.sort("row_id")["source"] == "proxy"
        agree = (result.df["topic"] == truth).filter(is_proxy)
        projected = overhead + calls / rate
        rows.append({"seed": seed, "threshold": notes.get("threshold"), "proxy_answers": int(notes["proxy_answers"]),
                     "oracle_calls": calls, "proxy_agreement": float(agree.mean()) if agree.len() else None,
                     "column_agreement": float((result.df["topic"] == truth).mean()),
                     "projected_seconds": projected, "replay_seconds": seconds})
        log(f"seed {seed}: {rows[-1]}")

    certified = [r for r in rows if r["threshold"] is not None]
    met = [r for r in certified if r["proxy_agreement"] >= 0.9]
    within = [r for r in rows if r["projected_seconds"] <= LIMIT_S]
    summary = {
        "seeds": len(rows), "certified": len(certified), "met_target": len(met), "within_15_min": len(within),
        "proxy_answers_median": statistics.median(r["proxy_answers"] for r in rows),
        "oracle_calls_median": statistics.median(r["oracle_calls"] for r in rows),
        "projected_minutes_median": statistics.median(r["projected_seconds"] for r in rows) / 60,
        "exhaustive_minutes": len(known) / rate / 60,
        "distinct": data["text"].n_unique(), "oracle_rate": rate, "overhead_seconds": overhead,
    }

    def f(x: Any, spec: str) -> str:
        return "none" if x is None else format(x, spec)

    table = markdown_table(
        ["seed", "certified threshold", "cells by the proxy", "oracle calls", "agreement of proxy cells",
         "column agreement", "projected end to end"],
        [[r["seed"], f(r["threshold"], ".4g"), f"{r['proxy_answers']:,}", f"{r['oracle_calls']:,}",
          f(r["proxy_agreement"], ".4f"), f"{r['column_agreement']:.4f}",
          f"{r['projected_seconds'] / 60:.1f} min"] for r in rows])
    md = (f"# The moonshot's calibration over {len(rows)} seeds (replayed on recorded oracle answers)\n\n"
          f"Command: `.venv/bin/python -m benchmarks.approx_moonshot_replay {args.answers} --seeds {args.seeds}"
          f"{'' if args.sample == 6000 else f' --sample {args.sample}'}`\n\n"
          f"{environment_block(facts, {'Oracle answers': f'{args.answers.name}: SmolLM2-135M-Instruct float32, exhaustive run'})}\n\n"
          f"{data.height:,} rows ({summary['distinct']:,} distinct texts), `Target(accuracy=0.9, confidence=0.95, "
          f"sample={args.sample}, seed=s)`, learned proxy on `HashingEmbedder(dimension=4096)`; the oracle's answers "
          f"replayed by a DeterministicEngine. Projected end to end = {overhead:.0f} s (engine start, the step's "
          f"own work and the audit, measured) + oracle calls / {rate:.1f} prompts/s (measured); target 15 min.\n\n{table}\n\n"
          f"- certified in {len(certified)} of {len(rows)} seeds; the proxy cells met accuracy >= 0.9 in "
          f"{len(met)} of the {len(certified)} certified (the promise: in >= 95% of draws)\n"
          f"- projected within 15 minutes in {len(within)} of {len(rows)}; median "
          f"{summary['projected_minutes_median']:.1f} min, median {summary['oracle_calls_median']:,.0f} oracle calls "
          f"and {summary['proxy_answers_median']:,.0f} proxy cells\n")
    print(md)
    write_results(args.name, md, {"facts": facts, "summary": summary, "seeds": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
