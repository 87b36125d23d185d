"""Near-duplicate text built honestly from the BBC News corpus (shared by the cache benchmarks).

A row's text is an article's *lead*: its headline and first sentence. A *near-duplicate* of a
lead is the same story rendered differently, the way one story reaches a table twice (another
feed, another scraper): changed case and punctuation, the headline dropped or moved after the
sentence, the first two sentences instead of one, or a source tag added. Near-duplicates keep the
story's topic, so a correct classifier gives them the same answer; distinct articles are other
stories (sometimes on the same subject), which is where a too-low threshold reuses wrongly.
"""

from __future__ import annotations

import random
import re

import polars as pl

_SENT = re.compile(r"(?<=[.!?])\s+")


def articles() -> pl.DataFrame:
    """The 2,127 distinct BBC articles (the corpus's exact duplicates removed) with their leads."""
    from semframe.datasets import bbc_news

    df = bbc_news().unique(subset=["title", "body"], keep="first", maintain_order=True)
    sents = [_SENT.split(b.replace("\n", " ").strip()) for b in df["body"]]
    return df.with_columns(
        pl.Series("first", [s[0] for s in sents]),
        pl.Series("second", [s[1] if len(s) > 1 else "" for s in sents]),
    ).with_columns((pl.col("title") + ". " + pl.col("first")).alias("lead"))


def variant(row: dict, rng: random.Random) -> str:
    """One near-duplicate rendering of ``row``'s lead (see module docs)."""
    title, first, second = row["title"], row["first"], row["second"]
    kind = rng.randrange(5)
    if kind == 0:
        return (title + " - " + first).lower().rstrip(".")
    if kind == 1:
        return first + " (" + title + ")"
    if kind == 2:
        return title + ". " + first + (" " + second if second else "")
    if kind == 3:
        return rng.choice(["UPDATE: ", "BBC: ", "Breaking: "]) + title + ". " + first
    return first


def column(n: int, dup_pct: float, para_pct: float, seed: int = 0) -> pl.DataFrame:
    """``n`` rows: ``dup_pct``% exact repeats and ``para_pct``% near-duplicates of other rows.

    Columns ``text`` and ``topic`` (the gold label).
    """
    rng = random.Random(seed)
    arts = articles().sample(fraction=1.0, shuffle=True, seed=seed).to_dicts()
    n_dup, n_para = int(n * dup_pct / 100), int(n * para_pct / 100)
    n_base = n - n_dup - n_para
    if n_base > len(arts):
        raise ValueError(f"at most {len(arts)} distinct articles")
    base = arts[:n_base]
    rows = [(a["lead"], a["topic"]) for a in base]
    rows += [(a["lead"], a["topic"]) for a in (rng.choice(base) for _ in range(n_dup))]
    rows += [(variant(a, rng), a["topic"]) for a in (rng.choice(base) for _ in range(n_para))]
    rng.shuffle(rows)
    return pl.DataFrame(rows, schema=["text", "topic"], orient="row")
