"""A real semantic pipeline: BBC News headlines through filter, classify, extract and map.

Runs on the default local model (SmolLM2-135M-Instruct, on the CPU build of vLLM) with no
network access. The first run converts the packaged model once (~20 s); later runs reuse it.

    bash scripts/setup.sh && .venv/bin/python examples/quickstart.py [--rows N]

SmolLM2-135M is tiny: it runs anywhere in seconds, but its judgments are near chance. The point
here is the machinery — the plan, the optimizer, constrained outputs that always parse, caching
and lineage — not the quality of a 135M model. Pass ``--model /path/to/model`` for a real one.
"""

from __future__ import annotations

import argparse
from typing import Optional

import polars as pl

import semframe as sf
from semframe.datasets import bbc_news

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="headlines to read (default 40)")
    parser.add_argument("--model", default=None, help="model folder, GGUF file or HF id (default: SmolLM2-135M)")
    args = parser.parse_args()

    headlines = bbc_news().sample(n=args.rows, seed=7).select("id", "topic", "title")
    pl.Config.set_fmt_str_lengths(60)
    pl.Config.set_tbl_width_chars(160)

    plan = (
        headlines.lazy()
        .semantic.filter("Is this news headline about money, companies or the economy? {title}")
        .semantic.classify("title", TOPICS, instruction="Which topic is this news headline about?",
                           name="predicted")
        .semantic.extract("title", {"organisation": Optional[str], "country": Optional[str]},
                          instruction="Name the organisation and the country the headline mentions, "
                                      "or null.", name="facts")
        .semantic.map("Rewrite this headline in at most five words: {title}", name="short", max_tokens=16)
        .select("id", "topic", "title", "predicted", "facts", "short")
        .head(8)
    )
    print(plan.explain())

    engine = sf.VLLMEngine(model=args.model) if args.model else None
    run = plan.run(engine=engine)

    print("\nResult")
    print(run.df)
    print("\nPer-step metrics")
    print(run.metrics.select("step", "operator", "column", "rows_in", "rows_out", "engine_requests",
                             "dedup_hits", "exact_cache_hits", "prompt_tokens", "output_tokens", "seconds"))
    first = run.row_ids[0] if run.df.height else None
    if first is not None:
        print(f"\nWhere the first row's answers came from (input row {first}):")
        trace = (run.lineage.filter(pl.col("row_id") == first)
                 .select("step", "operator", "column", "model", "source", "raw_output", "error",
                         "prompt_tokens", "output_tokens"))
        print(trace)
    print(f"\nDone in {run.seconds:.1f} s. Run it again: every answer now comes from the exact cache.")


if __name__ == "__main__":
    main()
