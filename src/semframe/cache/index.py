"""Nearest-neighbour search over unit vectors, for the semantic cache.

Up to ``exact_limit`` vectors the search is exact (one matrix product with NumPy). Past that,
brute force stops being fast (measured on 2 cores at 1M x 384: ~13 ms per query, 6.5 s for a
batch of 512), so the index becomes an inverted-file index from faiss (``IndexIVFFlat``, inner
product): k-means cells over the vectors, and each query scans only the ``nprobe`` closest cells.
The semantic cache asks only "is there a vector above a high similarity threshold?", and such
near-duplicates fall in the same or a neighbouring cell, which is the case IVF gets right; it
builds in seconds where an HNSW graph of 1M vectors takes many minutes on 2 cores. See
``benchmarks/cache_index.py`` and ``docs/results/cache.md`` for the measurements.

Examples
--------
>>> import numpy as np
>>> index = VectorIndex(2)
>>> index.add(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
>>> sims, ids = index.search(np.array([[0.6, 0.8]], dtype=np.float32))
>>> ids.tolist(), [round(float(s), 2) for s in sims]
([1], [0.8])
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np


class VectorIndex:
    """Best-match search by inner product; ids are insertion positions (0, 1, 2, ...).

    Parameters
    ----------
    dim
        Vector length.
    exact_limit
        Above this many vectors, switch to an approximate faiss IVF index (when faiss is
        installed; otherwise stay exact).
    nprobe
        Cells scanned per query by the approximate index.

    Examples
    --------
    >>> index = VectorIndex(3)
    >>> len(index), index.search(np.ones((1, 3), dtype=np.float32))[1].tolist()
    (0, [-1])
    """

    def __init__(self, dim: int, *, exact_limit: int = 50_000, nprobe: int = 32):
        self.dim = dim
        self.exact_limit = exact_limit
        self.nprobe = nprobe
        self._chunks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self._ivf: Any = None
        self._built_at = 0
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def kind(self) -> str:
        """``"exact"`` or ``"ivf"``."""
        return "ivf" if self._ivf is not None else "exact"

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors (rows); they get the next ids."""
        vectors = _rows(vectors, self.dim)
        if not len(vectors):
            return
        self._n += len(vectors)
        self._chunks.append(vectors)
        self._matrix = None
        if self._ivf is not None:
            self._ivf.add(vectors)
            if self._n > 4 * self._built_at:  # cells trained on far fewer vectors: retrain
                self._build_ivf()
        elif self._n > self.exact_limit and importlib.util.find_spec("faiss") is not None:
            self._build_ivf()

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query row, the best similarity and its id (``-inf``, ``-1`` when empty)."""
        queries = _rows(queries, self.dim)
        if self._n == 0 or not len(queries):
            return np.full(len(queries), -np.inf, dtype=np.float32), np.full(len(queries), -1, dtype=np.int64)
        if self._ivf is not None:
            sims, ids = self._ivf.search(queries, 1)
            return sims[:, 0].astype(np.float32), ids[:, 0].astype(np.int64)
        matrix = self._dense()
        best_sims = np.empty(len(queries), dtype=np.float32)
        best_ids = np.empty(len(queries), dtype=np.int64)
        for start in range(0, len(queries), 256):  # bounds the temporary (256 x n) matrix
            scores = queries[start:start + 256] @ matrix.T
            ids = scores.argmax(axis=1)
            best_ids[start:start + 256] = ids
            best_sims[start:start + 256] = scores[np.arange(len(ids)), ids]
        return best_sims, best_ids

    def _dense(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = [self._matrix]
        return self._matrix

    def _build_ivf(self) -> None:
        import faiss

        data = self._dense()
        nlist = max(64, int(math.sqrt(len(data))))  # ~1000 cells at 1M vectors
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = data if len(data) <= 40 * nlist else data[rng.choice(len(data), 40 * nlist, replace=False)]
        ivf.train(sample)
        ivf.add(data)
        ivf.nprobe = self.nprobe
        self._quantizer = quantizer  # the IVF index does not own its quantizer
        self._ivf = ivf
        self._built_at = len(data)


def _rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or (arr.size and arr.shape[1] != dim):
        raise ValueError(f"expected vectors of shape (n, {dim}), got {arr.shape}")
    return arr
