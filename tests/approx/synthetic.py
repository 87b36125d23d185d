"""Synthetic headlines with gold topics for the approximation tests (shared by the modules)."""

from __future__ import annotations

import random

import polars as pl

TOPICS = ["sport", "tech", "money"]
WORDS = {"sport": ["match", "goal", "team", "cup", "league", "coach"],
         "tech": ["phone", "chip", "software", "web", "robot", "laptop"],
         "money": ["shares", "bank", "profit", "market", "deal", "loan"]}


def headlines(n: int, mixed: float = 0.3, seed: int = 0) -> pl.DataFrame:
    """Headlines of clear words, and a share of mixed ones whose topic no word gives away."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        if rng.random() < mixed:
            words = [rng.choice(WORDS[t]) for t in TOPICS for _ in range(2)]
            rng.shuffle(words)
        else:
            words = rng.choices(WORDS[topic], k=3)
        rows.append({"title": f"{' '.join(words)} number {i}", "gold": topic})
    return pl.DataFrame(rows)
