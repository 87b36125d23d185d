"""Nearest neighbours between two sets of unit vectors (cosine similarity = dot product).

Used by every operator that compares embeddings: a join's blocking, ``sim_join``, ``search``,
``dedup``'s candidate pairs. Two backends, one answer:

- exact search in blocks with numpy (``argpartition`` per block of queries), so memory is
  ``block x corpus`` floats however many queries there are -- the default up to
  :data:`FAISS_FROM` corpus vectors;
- above that, FAISS (``faiss-cpu``, the well-kept vector-search library, in the ``embeddings``
  extra) with an exact inner-product index (``IndexFlatIP``): the same neighbours, computed by
  its BLAS kernels and threads. An approximate index would change answers, so it is not used.

Ties are broken by the lower corpus position, so results do not depend on the backend.

Examples
--------
>>> import numpy as np
>>> corpus = np.eye(3, dtype=np.float32)
>>> queries = np.array([[0.9, 0.1, 0.0]], dtype=np.float32)
>>> idx, sim = top_k(queries, corpus, 2)
>>> idx.tolist()
[[0, 1]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: Corpus size from which FAISS is used (when installed).
FAISS_FROM = 200_000
#: Queries per numpy block.
BLOCK = 1024


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, *, exclude_self: bool = False,
          backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar corpus rows of each query row, most similar first.

    Parameters
    ----------
    queries, corpus
        Float32 matrices of unit rows (``n x d`` and ``m x d``).
    k
        Neighbours per query (at most ``m``; fewer columns come back when the corpus is smaller).
    exclude_self
        Queries and corpus are the same rows: never return a row as its own neighbour.
    backend
        ``"auto"`` (numpy below :data:`FAISS_FROM` corpus rows, else FAISS if installed),
        ``"numpy"`` or ``"faiss"``.

    Returns
    -------
    (indices, similarities)
        Two ``n x k'`` arrays (``k' = min(k, m - exclude_self)``): corpus positions (int64) and
        cosine similarities (float32).
    """
    import numpy as np

    n, m = len(queries), len(corpus)
    kk = max(0, min(k, m - (1 if exclude_self else 0)))
    if n == 0 or kk == 0:
        return np.zeros((n, kk), dtype=np.int64), np.zeros((n, kk), dtype=np.float32)
    if backend == "faiss" or (backend == "auto" and m >= FAISS_FROM and _has_faiss()):
        return _faiss_top_k(queries, corpus, kk, exclude_self)
    idx_out = np.empty((n, kk), dtype=np.int64)
    sim_out = np.empty((n, kk), dtype=np.float32)
    for start in range(0, n, BLOCK):
        sims = queries[start:start + BLOCK] @ corpus.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        idx_out[start:start + BLOCK], sim_out[start:start + BLOCK] = _best(sims, kk)
    return idx_out, sim_out


def _best(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest entries, largest first, ties by lower position."""
    import numpy as np

    if k >= sims.shape[1]:
        cand = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        return _ordered(sims, cand)
    cand = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    # argpartition may cut a tie at the k-th value arbitrarily: for the rows where more than k
    # positions reach it, take the first k of the whole row in (similarity desc, position asc)
    # order; only those rows are sorted whole (identical records make ties common).
    kth = np.take_along_axis(sims, cand, axis=1).min(axis=1, keepdims=True)
    tied = (sims >= kth).sum(axis=1) > k
    idx, vals = _ordered(sims, cand)
    if tied.any():
        rows = sims[tied]
        order = np.lexsort((np.broadcast_to(np.arange(rows.shape[1]), rows.shape), -rows), axis=1)[:, :k]
        idx[tied] = order
        vals[tied] = np.take_along_axis(rows, order, axis=1)
    return idx, vals


def _ordered(sims: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidate positions of each row in (similarity desc, position asc) order."""
    import numpy as np

    vals = np.take_along_axis(sims, cand, axis=1)
    order = np.lexsort((cand, -vals), axis=1)
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _faiss_top_k(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    extra = 1 if exclude_self else 0
    sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + extra)
    if exclude_self:
        own = idx == np.arange(len(queries))[:, None]
        keep = ~own
        # drop the query itself where it came back, else the last (k+1-th) neighbour
        keep[~own.any(axis=1), -1] = False
        idx = idx[keep].reshape(len(queries), k)
        sims = sims[keep].reshape(len(queries), k)
    # FAISS orders ties arbitrarily: order them by (similarity desc, position asc).
    order = np.lexsort((idx, -sims), axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int64), np.take_along_axis(sims, order, axis=1)
