"""Exact nearest neighbours (execution/vectors.py): the same answer as a full sort, ties by position,
numpy and FAISS alike."""

from __future__ import annotations

import numpy as np
import pytest

from semframe.execution.vectors import top_k


def _reference(q: np.ndarray, c: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    sims = q @ c.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(c.shape[0]), sims.shape), -sims), axis=1)
    return order[:, :min(k, c.shape[0] - exclude_self)]


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_full_sort_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 30)), int(rng.integers(1, 50))
    # small integer vectors: many exact ties, the hard case
    q = rng.integers(0, 3, (n, 4)).astype(np.float32)
    c = rng.integers(0, 3, (m, 4)).astype(np.float32)
    k = int(rng.integers(1, 60))
    idx, sim = top_k(q, c, k)
    assert (idx == _reference(q, c, k)).all()
    assert np.allclose(sim, np.take_along_axis(q @ c.T, idx, axis=1))


@pytest.mark.parametrize("seed", range(10))
def test_exclude_self(seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 2, (int(rng.integers(2, 30)), 3)).astype(np.float32)
    idx, _ = top_k(v, v, 3, exclude_self=True)
    assert not (idx == np.arange(len(v))[:, None]).any()
    assert (idx == _reference(v, v, 3, exclude_self=True)).all()


def test_faiss_gives_the_same_neighbours():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for exclude in (False, True):
        a, sa = top_k(v[:50], v, 5, backend="numpy", exclude_self=False)
        b, sb = top_k(v[:50], v, 5, backend="faiss", exclude_self=False)
        assert (a == b).all() and np.allclose(sa, sb, atol=1e-5)
        a, _ = top_k(v, v, 5, backend="numpy", exclude_self=exclude)
        b, _ = top_k(v, v, 5, backend="faiss", exclude_self=exclude)
        assert (a == b).all()


def test_empty_and_small_corpora():
    q = np.ones((3, 2), dtype=np.float32)
    idx, sim = top_k(q, np.zeros((0, 2), dtype=np.float32), 4)
    assert idx.shape == (3, 0) and sim.shape == (3, 0)
    idx, _ = top_k(q, np.eye(2, dtype=np.float32), 10)
    assert idx.shape == (3, 2)
