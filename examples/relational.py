"""The relational semantic operators on real BBC News headlines: join, aggregate, top-k, dedup.

    bash scripts/setup.sh && .venv/bin/python examples/relational.py              # SmolLM2, ~2-4 min on 2 cores
    .venv/bin/python examples/relational.py --engine deterministic                # instant, canned answers

Each step prints what it did and what it cost (engine requests, the algorithm the planner chose),
then a few rows. Run it twice: the second run answers everything from the exact cache and
starts no engine. SmolLM2-135M is near chance on these judgments: watch the machinery (algorithms,
calls, lineage), not the quality of the answers.
"""

from __future__ import annotations

import argparse

import polars as pl

import semframe as sf
from semframe.datasets import bbc_news

SECTIONS = pl.DataFrame({
    "section": ["business", "entertainment", "politics", "sport", "tech"],
    "about": ["companies, markets and the economy", "film, music and television",
              "government, parliament and elections", "football, tennis and other sports",
              "computers, phones and the internet"],
})


def headlines(rows: int) -> pl.DataFrame:
    """``rows`` headlines spread over the five topics, plus a few exact repeats (for dedup)."""
    df = bbc_news().sort("id")
    per_topic = max(1, rows // 5)
    picked = pl.concat([g.head(per_topic) for _, g in df.group_by("topic", maintain_order=True)])
    return pl.concat([picked, picked.head(3)]).select("id", "topic", "title")


def steps_line(run: sf.RunResult) -> str:
    m = run.metrics
    return (f"{int(m['engine_requests'].sum())} engine requests, {int(m['exact_cache_hits'].sum())} from the cache, "
            f"{run.seconds:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=25, help="headlines (spread over the five topics)")
    p.add_argument("--engine", choices=["default", "deterministic"], default="default")
    args = p.parse_args()
    engine = sf.DeterministicEngine() if args.engine == "deterministic" else None
    df = headlines(args.rows)
    print(f"{df.height} headlines, {df['topic'].n_unique()} topics\n")

    # 1. Join: which section is each headline about? The right side is small, so the planner lists
    #    the sections in the shared instruction and asks once per headline (join as classification).
    plan = df.lazy().semantic.join(SECTIONS, "Is the headline {left.title} about {right.section} ({right.about})?")
    print(plan.explain().splitlines()[1])
    run = plan.run(engine)
    print(f"join: {run.df.height} (headline, section) pairs; {steps_line(run)}")
    print(run.df.select("title", "section").head(5), "\n")

    # 2. Aggregate: one line per topic, the headlines packed by tokens into the context window.
    run = df.lazy().semantic.aggregate("In one line, what are these headlines about?", "title", by="topic",
                                       name="gist", max_tokens=32).run(engine)
    print(f"aggregate: {run.df.height} topics; {steps_line(run)}")
    print(run.df.head(5), "\n")

    # 3. Top-k: the three most surprising headlines, by pairwise comparisons in batched rounds.
    run = df.lazy().semantic.topk(3, "Which headline is more surprising: {a} or {b}?", column="title").run(engine)
    print(f"topk: {steps_line(run)}")
    print(run.df.select("rank", "title"), "\n")

    # 4. Dedup: embedding blocking (character n-grams), the model checks each candidate pair,
    #    transitive closure into entity ids. The three repeated headlines share an id.
    run = df.lazy().semantic.dedup("title", candidates=2, embedder=sf.HashingEmbedder()).run(engine)
    repeated = run.df.filter(pl.col("entity").is_duplicated())
    print(f"dedup: {run.df['entity'].n_unique()} entities in {run.df.height} rows; {steps_line(run)}")
    print(repeated.select("entity", "title").sort("entity").head(6))
    print("\nRun it again: every answer comes from the exact cache.")


if __name__ == "__main__":
    main()
