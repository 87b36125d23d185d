"""Justify the semantic cache's default threshold on real text (BBC News, near-duplicates).

The cache holds the leads of half the distinct articles. Queries are (a) one near-duplicate of
every cached article (see ``cache_data.variant``) -- reuse is wanted -- and (b) the leads of the
other half, distinct stories -- reuse is wrong unless the answer happens to be the same. For
each threshold it reports how many near-duplicates were answered from the cache (the saving),
how many distinct stories were (false reuse), and for all reuses how often the reused answer
is right, taking a perfect topic classifier's answer (the gold topic) as the engine's.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cache_threshold.py

Writes the table to stdout (copied into docs/results/cache.md).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cache_data import articles, variant  # noqa: E402

from semframe.cache.embed import Embedder  # noqa: E402

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98)


def main() -> None:
    arts = articles().sample(fraction=1.0, shuffle=True, seed=0).to_dicts()
    half = len(arts) // 2
    cached, others = arts[:half], arts[half:]
    rng = random.Random(0)
    near = [variant(a, rng) for a in cached]
    emb = Embedder()
    t = time.perf_counter()
    cache_vecs = emb.encode([a["lead"] for a in cached])
    near_vecs = emb.encode(near)
    other_vecs = emb.encode([a["lead"] for a in others])
    n_texts = len(cached) + len(near) + len(others)
    print(f"embedded {n_texts} texts in {time.perf_counter() - t:.1f} s with {emb.model_id}\n")
    topics = np.array([a["topic"] for a in cached])
    near_best = (near_vecs @ cache_vecs.T)
    near_sim, near_src = near_best.max(1), near_best.argmax(1)
    near_own = near_src == np.arange(len(cached))  # matched its own article
    other_best = other_vecs @ cache_vecs.T
    other_sim, other_src = other_best.max(1), other_best.argmax(1)
    other_topic_ok = topics[other_src] == np.array([a["topic"] for a in others])
    print(f"{len(near)} near-duplicate queries, {len(others)} distinct-story queries, {len(cached)} cached\n")
    print("| threshold | near-dups reused | distinct stories reused | reused answers right (gold topic) |")
    print("|---|---|---|---|")
    for th in THRESHOLDS:
        nh, oh = near_sim >= th, other_sim >= th
        near_right = (topics[near_src[nh]] == topics[np.arange(len(cached))[nh]]).sum()
        right = near_right + other_topic_ok[oh].sum()
        hits = nh.sum() + oh.sum()
        acc = f"{right / hits:.1%} ({right}/{hits})" if hits else "n/a"
        print(f"| {th:.2f} | {nh.mean():.1%} ({nh.sum()}; own article {near_own[nh].mean():.1%}) | "
              f"{oh.mean():.2%} ({oh.sum()}) | {acc} |")
    print("\nNear-duplicate similarity to its own article, by kind of edit (quantiles 5/50/95%):")
    rng = random.Random(0)
    kinds = [rng.randrange(5) for _ in cached]  # the same draws variant() made, in order
    names = ["lowercase, punctuation", "headline moved after", "two sentences", "source tag", "headline dropped"]
    own_sim = (near_vecs * cache_vecs).sum(1)
    for k, name in enumerate(names):
        s = own_sim[np.array(kinds) == k]
        if len(s):
            q = np.quantile(s, [0.05, 0.5, 0.95])
            print(f"- {name}: n={len(s)}, {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}")
    q = np.quantile(other_sim, [0.5, 0.95, 0.99, 1.0])
    print(f"- distinct stories' best match: median {q[0]:.3f}, 95% {q[1]:.3f}, 99% {q[2]:.3f}, max {q[3]:.3f}")


if __name__ == "__main__":
    main()
