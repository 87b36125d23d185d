"""Nearest-neighbour search of the semantic cache at 1M entries: brute force vs the IVF index.

Vectors are 384-dimensional unit vectors (the embedding model's size), random -- the worst case
for an inverted-file index, which profits from clustered data as real embeddings are. Queries
are 512 near-duplicates of stored vectors (cosine ~0.95, what the cache must find) and 512
unrelated vectors (which it must not match).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cache_index.py [N]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from semframe.cache.index import VectorIndex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    d, q = 384, 512
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((n, d), dtype=np.float32))
    targets = rng.choice(n, q, replace=False)
    near = unit(data[targets] + 0.018 * rng.standard_normal((q, d), dtype=np.float32))
    far = unit(rng.standard_normal((q, d), dtype=np.float32))
    print(f"{n:,} vectors x {d}; near-duplicate queries at cosine {np.mean((near * data[targets]).sum(1)):.3f}")

    exact = VectorIndex(d, exact_limit=n + 1)
    exact.add(data)
    t = time.perf_counter()
    e_sims, e_ids = exact.search(near)
    brute = time.perf_counter() - t
    print(f"brute force (NumPy): {brute:.2f} s per {q} queries = {1000 * brute / q:.2f} ms/query")
    del exact

    t = time.perf_counter()
    ivf = VectorIndex(d)
    ivf.add(data)
    build = time.perf_counter() - t
    t = time.perf_counter()
    sims, ids = ivf.search(near)
    search = time.perf_counter() - t
    f_sims, _ = ivf.search(far)
    recall = float((ids == targets).mean())
    print(f"IVF ({ivf.kind}, nprobe={ivf.nprobe}): build {build:.1f} s; search {search:.2f} s per {q} "
          f"queries = {1000 * search / q:.2f} ms/query ({brute / search:.0f}x faster)")
    print(f"near-duplicates found: {recall:.1%} (brute force: {(e_ids == targets).mean():.1%}); "
          f"unrelated queries' best similarity: max {f_sims.max():.3f}")


if __name__ == "__main__":
    main()
