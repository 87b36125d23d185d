"""Caches: never ask the engine the same question twice.

- :class:`ExactCache` -- a persistent answer per (engine fingerprint, request), in a DuckDB file
  under the cache directory (``semframe.config.cache_dir()``, ``$SEMFRAME_CACHE_DIR``,
  ``sf.configure(cache_dir=...)``); on by default, off with ``cache=False``.
- :class:`SegmentCache` -- the exact cache's interface over a shared directory of immutable answer
  segments, for workers on several machines (``sf.RayExecutor(shared_cache=...)``).
- :class:`SemanticCache` -- reuse an answer for a near-duplicate input text (opt-in per step with
  ``semantic_cache=True`` or a threshold).
- :func:`audit_semantic_cache` -- re-ask the engine for a sample of semantic reuses and report
  how often the answers agree.
- :func:`clear_cache` -- delete every cached answer and embedding.

Nothing heavy is imported here: DuckDB opens on first use; NumPy, faiss and
sentence-transformers only when a semantic cache is used.

Examples
--------
>>> import tempfile, semframe.cache as sfc
>>> cache = sfc.open_exact_cache(tempfile.mkdtemp())
>>> cache.count()
0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semframe.cache.exact import ExactCache
from semframe.cache.segments import SegmentCache
from semframe.cache.store import AnswerStore, CacheError

if TYPE_CHECKING:
    from semframe.cache.audit import AuditReport, audit_semantic_cache
    from semframe.cache.embed import Embedder
    from semframe.cache.semantic import SemanticCache

#: Sub-directory of the cache directory that holds the answer store.
ANSWERS_DIR = "answers"

__all__ = [
    "ANSWERS_DIR",
    "AnswerStore",
    "AuditReport",
    "CacheError",
    "Embedder",
    "ExactCache",
    "SegmentCache",
    "SemanticCache",
    "answers_dir",
    "audit_semantic_cache",
    "clear_cache",
    "open_exact_cache",
]


def answers_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the answer store lives: ``<cache_dir>/answers`` (default: the configured cache dir)."""
    if cache_dir is None:
        from semframe.config import cache_dir as configured

        cache_dir = configured()
    return Path(cache_dir).expanduser() / ANSWERS_DIR


def open_exact_cache(cache_dir: str | os.PathLike | None = None, *, model: str = "") -> ExactCache:
    """The persistent exact cache under ``cache_dir`` (default: the configured cache dir)."""
    return ExactCache(AnswerStore(answers_dir(cache_dir)), model=model)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> None:
    """Delete every cached answer and embedding under ``cache_dir`` (default: the configured one).

    Equivalent to deleting ``<cache_dir>/answers/``; safe while other processes use the cache
    (they wait for the lock and then start from an empty cache).

    Examples
    --------
    >>> import tempfile, semframe.cache as sfc
    >>> d = tempfile.mkdtemp()
    >>> sfc.clear_cache(d)
    >>> sfc.open_exact_cache(d).count()
    0
    """
    AnswerStore(answers_dir(cache_dir)).clear()


def __getattr__(name: str) -> Any:
    if name in ("audit_semantic_cache", "AuditReport"):
        from semframe.cache import audit

        return getattr(audit, name)
    if name == "Embedder":
        from semframe.cache.embed import Embedder

        return Embedder
    if name == "SemanticCache":
        from semframe.cache.semantic import SemanticCache

        return SemanticCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
