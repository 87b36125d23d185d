"""Embedding engines: the base contract (unit float32 rows, batching, input order), the hashing
embedder, the OpenAI-compatible embedder against a small fault-injecting fake server on
127.0.0.1, the sentence-transformers embedder (real MiniLM, marked ``embeddings``), and the
store-cached path (``semframe.cache.embed``) every embedding user goes through."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

import semframe as sf
from semframe import config
from semframe.cache.embed import Embedder, default_embedder, embed_cached, text_digest
from semframe.engines.embedding import (
    EmbeddingEngine,
    HashingEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    folder_dimension,
    resolve_embedder,
    resolve_model_path,
)
from semframe.errors import EngineError

# --------------------------------------------------------------------------- a fake /v1/embeddings


class FakeEmbeddingServer:
    """``POST /v1/embeddings`` on 127.0.0.1 (ephemeral port, daemon thread), answering each text
    with its :class:`HashingEmbedder` (8 dims) vector times 3 (not unit: the client normalizes),
    in reversed ``index`` order (the client must sort). Bounded: it stops after ``lifetime_s`` or
    ``max_requests``. ``faults`` is a list of kinds served to the first requests, one each:
    ``"429"`` (with ``Retry-After: 0``), ``"500"``, ``"reset"``, ``"malformed"``, ``"short"``
    (one vector too few), ``"400"`` (fatal, echoing the Authorization header)."""

    def __init__(self, *, faults: list[str] | None = None, lifetime_s: float = 120.0, max_requests: int = 500):
        self.faults = list(faults or [])
        self.lifetime_s, self.max_requests = lifetime_s, max_requests
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.served: list[str] = []
        self._lock = threading.Lock()
        self._hasher = HashingEmbedder(dimension=8)

    def __enter__(self) -> FakeEmbeddingServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/embeddings":
                    self._send(404, b'{"error": "no route"}')
                    return
                body = json.loads(raw)
                with owner._lock:
                    owner.bodies.append(body)
                    owner.auth.append(self.headers.get("Authorization"))
                    kind = owner.faults.pop(0) if owner.faults else "ok"
                    owner.served.append(kind)
                    if len(owner.bodies) >= owner.max_requests:
                        threading.Thread(target=owner.server.shutdown, daemon=True).start()
                if kind == "429":
                    self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"})
                elif kind == "500":
                    self._send(500, b'{"error": {"message": "boom"}}')
                elif kind == "400":
                    self._send(400, json.dumps({"error": f"bad input (you sent {self.headers.get('Authorization')})"})
                               .encode())
                elif kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                elif kind == "malformed":
                    self._send(200, b"<html>oops</html>")
                else:
                    texts = body["input"]
                    vecs = owner._hasher.embed(texts) * 3.0
                    data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]
                    if kind == "short":
                        data = data[:-1]
                    data.reverse()
                    self._send(200, json.dumps({"object": "list", "data": data, "model": body.get("model")}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


# --------------------------------------------------------------------------- the base contract


class Doubling(EmbeddingEngine):
    """A toy engine: records its batches, returns unnormalized vectors."""

    name = "toy"

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.batches: list[list[str]] = []

    @property
    def model(self) -> str:
        return "toy"

    def fingerprint(self) -> str:
        return "toy-1"

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return np.array([[len(t), 1.0, 0.0] for t in texts]) * 2


def test_base_batches_normalizes_and_keeps_order():
    eng = Doubling(batch_size=2)
    v = eng.embed(["a", "bbb", "cc", ""])
    assert eng.batches == [["a", "bbb"], ["cc", ""]]
    assert v.dtype == np.float32 and v.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(v[1], np.array([3, 1, 0]) / np.sqrt(10), rtol=1e-6)
    assert eng.texts_embedded == 4 and eng.dimension == 3
    assert eng.embed([]).shape == (0, 3)  # the width is known once it has embedded


def test_base_refuses_non_texts():
    eng = Doubling()
    with pytest.raises(EngineError, match="list of texts"):
        eng.embed("one string")
    with pytest.raises(EngineError, match="must be a string"):
        eng.embed(["ok", None])
    with pytest.raises(EngineError, match="batch_size"):
        Doubling(batch_size=0)


def test_base_catches_a_wrong_shape_and_a_changed_width():
    class Bad(Doubling):
        def __init__(self):
            super().__init__()
            self.width = 3

        def _embed_batch(self, texts):
            return np.ones((len(texts), self.width))

    bad = Bad()
    bad.embed(["x"])
    bad.width = 4
    with pytest.raises(EngineError, match="4-dimensional vectors after 3"):
        bad.embed(["y"])

    class Short(Doubling):
        def _embed_batch(self, texts):
            return np.ones((len(texts) - 1, 3))

    with pytest.raises(EngineError, match="shape"):
        Short().embed(["a", "b"])


# --------------------------------------------------------------------------- hashing


def test_hashing_is_deterministic_unit_and_typo_tolerant():
    a = HashingEmbedder(dimension=512)
    b = HashingEmbedder(dimension=512)
    texts = ["John Smith, 42 Wattle St", "Jonh Smith, 42 Watle St", "Mary Jones, 7 Ocean Rd", "  JOHN   smith, 42 wattle st "]
    va, vb = a.embed(texts), b.embed(texts)
    np.testing.assert_array_equal(va, vb)
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1.0, rtol=1e-5)
    sims = va @ va.T
    assert sims[0, 1] > 0.6 > sims[0, 2]
    assert sims[0, 3] == pytest.approx(1.0, abs=1e-6)  # case and whitespace folded


def test_hashing_fingerprint_names_its_options():
    base = HashingEmbedder(dimension=64)
    assert base.fingerprint() != HashingEmbedder(dimension=128).fingerprint()
    assert base.fingerprint() != HashingEmbedder(dimension=64, ngram_range=(3, 3)).fingerprint()
    assert base.fingerprint() != HashingEmbedder(dimension=64, lowercase=False).fingerprint()
    assert base.known_dimension() == 64 and base.model_id == base.fingerprint()
    with pytest.raises(EngineError, match="dimension"):
        HashingEmbedder(dimension=1)
    with pytest.raises(EngineError, match="ngram_range"):
        HashingEmbedder(ngram_range=(3, 2))


def test_hashing_of_an_empty_text_is_a_zero_vector_not_nan():
    v = HashingEmbedder(dimension=16, ngram_range=(3, 4)).embed([""])
    assert np.isfinite(v).all()


# --------------------------------------------------------------------------- OpenAI-compatible


def test_openai_embedder_batches_sorts_and_normalizes():
    with FakeEmbeddingServer() as server:
        emb = OpenAIEmbedder(server.url, "fake-embed", api_key="sk-embed-secret", batch_size=3)
        texts = [f"text number {i}" for i in range(7)]
        got = emb.embed(texts)
        emb.close()
    want = HashingEmbedder(dimension=8).embed(texts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [len(b["input"]) for b in server.bodies] == [3, 3, 1]
    assert all(b["model"] == "fake-embed" and b["encoding_format"] == "float" for b in server.bodies)
    assert set(server.auth) == {"Bearer sk-embed-secret"}
    assert emb.requests == 3 and emb.attempts == 3 and emb.known_dimension() == 8


def test_openai_embedder_retries_transient_failures():
    with FakeEmbeddingServer(faults=["429", "500", "reset", "malformed", "short"]) as server:
        emb = OpenAIEmbedder(server.url, "fake-embed", backoff_s=0.01, max_backoff_s=0.02, max_attempts=6)
        got = emb.embed(["alpha", "beta"])
        emb.close()
    np.testing.assert_allclose(got, HashingEmbedder(dimension=8).embed(["alpha", "beta"]), rtol=1e-5, atol=1e-6)
    assert server.served == ["429", "500", "reset", "malformed", "short", "ok"]
    assert emb.attempts == 6 and emb.requests == 1


def test_openai_embedder_fails_fast_on_4xx_and_redacts_the_key():
    with FakeEmbeddingServer(faults=["400"]) as server:
        emb = OpenAIEmbedder(server.url, "fake-embed", api_key="sk-very-secret-key", backoff_s=0.01)
        with pytest.raises(EngineError) as info:
            emb.embed(["x"])
        emb.close()
    assert "HTTP 400" in str(info.value) and "sk-very-secret-key" not in str(info.value)
    assert server.served == ["400"]  # no retry


def test_openai_embedder_gives_up_after_max_attempts():
    with FakeEmbeddingServer(faults=["500"] * 10) as server:
        emb = OpenAIEmbedder(server.url, "fake-embed", backoff_s=0.01, max_backoff_s=0.01, max_attempts=3)
        with pytest.raises(EngineError, match="HTTP 500"):
            emb.embed(["x"])
        emb.close()
    assert len(server.bodies) == 3


def test_openai_embedder_cannot_reach_a_closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    emb = OpenAIEmbedder(f"http://127.0.0.1:{port}", "m", backoff_s=0.01, max_backoff_s=0.01, max_attempts=2,
                         timeout_s=2)
    start = time.perf_counter()
    with pytest.raises(EngineError, match="connection failed"):
        emb.embed(["x"])
    assert time.perf_counter() - start < 10


def test_openai_embedder_identity_and_options(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-env")
    with FakeEmbeddingServer() as server:
        emb = OpenAIEmbedder(server.url, "fake-embed", dimensions=8, extra_body={"truncate": True})
        assert emb.known_dimension() == 8
        emb.embed(["x"])
        emb.close()
    assert server.auth == ["Bearer sk-from-the-env"]
    assert server.bodies[0]["dimensions"] == 8 and server.bodies[0]["truncate"] is True
    assert "sk-from-the-env" not in repr(vars(emb)) and "sk-from-the-env" not in emb.fingerprint()
    same = OpenAIEmbedder(server.url, "fake-embed", dimensions=8, extra_body={"truncate": True})
    assert same.fingerprint() == emb.fingerprint()
    assert OpenAIEmbedder(server.url, "other").fingerprint() != emb.fingerprint()
    with pytest.raises(EngineError, match="base_url"):
        OpenAIEmbedder("localhost:8000", "m")
    with pytest.raises(EngineError, match="model"):
        OpenAIEmbedder("http://127.0.0.1:1", "")


def test_openai_embedder_in_a_plan():
    import polars as pl

    with FakeEmbeddingServer() as server:
        emb = OpenAIEmbedder(server.url, "fake-embed")
        df = pl.DataFrame({"t": ["a b", "c d", "a b"]})
        out = df.semantic.embed("t", embedder=emb)
        again = df.semantic.embed("t", embedder=emb)  # the answer store has them now
        emb.close()
    assert out.schema["embedding"] == pl.List(pl.Float32)  # width unknown before the first call
    assert len(server.bodies) == 1 and server.bodies[0]["input"] == ["a b", "c d"]
    assert out["embedding"].to_list() == again["embedding"].to_list()


# --------------------------------------------------------------------------- resolution and configure


def test_resolve_embedder_and_configure():
    h = HashingEmbedder()
    assert resolve_embedder(h) is h
    sf.configure(embedding_model=h)
    assert resolve_embedder(None) is h
    assert default_embedder().engine is h and default_embedder().model_id == h.fingerprint()
    sf.configure(embedding_model=None)
    assert isinstance(resolve_embedder(None), SentenceTransformerEmbedder)
    with pytest.raises(ValueError, match="embedding_model"):
        sf.configure(embedding_model=42)
    with pytest.raises(EngineError, match="embedder must be"):
        resolve_embedder(3.5)
    assert sf.HashingEmbedder is HashingEmbedder and sf.OpenAIEmbedder is OpenAIEmbedder
    assert sf.SentenceTransformerEmbedder is SentenceTransformerEmbedder


def test_the_default_model_is_described_without_loading_it():
    emb = SentenceTransformerEmbedder()
    assert emb.model == "all-MiniLM-L6-v2" and emb.known_dimension() == 384
    assert folder_dimension(resolve_model_path(None)) == 384
    # the fingerprint is the one the semantic cache has always used (stored vectors stay valid)
    assert emb.fingerprint() == Embedder().model_id
    assert emb.fingerprint().startswith("model-")


def test_embed_cached_reuses_the_store(tmp_path):
    from semframe.cache import open_exact_cache

    store = open_exact_cache(tmp_path).store
    eng = Doubling()
    first = embed_cached(eng, ["a", "bb", "a"], store)
    assert (first.embedded, first.cached, first.repeated) == (2, 0, 1)
    assert first.sources == ["engine", "engine", "dedup"] and first.first == [0, 1, 0]
    second = embed_cached(eng, ["bb", "ccc", "a"], store)
    assert (second.embedded, second.cached, second.repeated) == (1, 2, 0)
    assert second.sources == ["exact_cache", "engine", "exact_cache"]
    assert eng.batches == [["a", "bb"], ["ccc"]]
    np.testing.assert_allclose(second.vectors[0], first.vectors[1])
    # another engine's fingerprint does not see these vectors
    other = HashingEmbedder(dimension=3)
    assert embed_cached(other, ["a"], store).embedded == 1
    assert text_digest("a") == text_digest("a") != text_digest("b")


def test_the_old_embedder_interface_still_works():
    emb = Embedder(HashingEmbedder(dimension=32))
    assert emb.embed([]).shape == (0, 0)
    v = emb.embed(["x", "y", "x"])
    assert v.shape == (3, 32) and np.array_equal(v[0], v[2])
    np.testing.assert_array_equal(emb.encode(["x"]), v[:1])
    with pytest.raises(AttributeError):
        emb.path
    assert config.settings.embedding_model is None


# --------------------------------------------------------------------------- the real model


@pytest.mark.embeddings
def test_sentence_transformer_embedder_on_minilm():
    emb = SentenceTransformerEmbedder(batch_size=16)
    texts = ["a cat sat on the mat", "a cat sat on a mat", "quarterly earnings beat expectations"]
    v = emb.embed(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > 0.9 > 0.3 > v[0] @ v[2]
    # the same vectors as the semantic cache's embedder (one model, loaded once)
    np.testing.assert_allclose(default_embedder().embed(texts), v, atol=1e-5)
    assert emb.dimension == 384


def test_the_semantic_cache_embeds_with_the_configured_engine():
    import polars as pl

    h = HashingEmbedder(dimension=256)
    sf.configure(embedding_model=h)
    df = pl.DataFrame({"t": ["the battle of waterloo", "the battle of waterloo!", "banana bread"]})
    engine = sf.DeterministicEngine()
    run = df.lazy().semantic.classify("t", ["A", "B"], name="c", semantic_cache=0.9).run(engine)
    assert run.metrics["semantic_cache_hits"][0] == 1 and run.engine_requests == 2
    assert h.texts_embedded == 3  # the hashing engine embedded the rows, no model was loaded


def test_explain_with_an_estimate_of_an_embedding_plan():
    import polars as pl

    df = pl.DataFrame({"t": ["a", "b", "a"]})
    plan = df.lazy().semantic.embed("t", embedder=HashingEmbedder()).semantic.classify("t", ["A", "B"], name="c")
    text = plan.explain(estimate=True, engine=sf.DeterministicEngine())
    assert "embed -> embedding" in text and "SEMANTIC EMBED -> embedding (step 0)" in text
    est = plan.estimate(sf.DeterministicEngine())
    assert [s.calls_high for s in est.steps] == [0, 2]


@pytest.mark.vllm
@pytest.mark.embeddings
@pytest.mark.slow
def test_openai_embedder_on_vllm_serve_matches_the_in_process_model(tmp_path):
    """``vllm serve --runner pooling`` of the packaged MiniLM on 127.0.0.1 (~70 s to start on 2
    cores): the HTTP embedder's vectors are the in-process model's."""
    pytest.importorskip("vllm")
    from benchmarks._common import VLLMServer, WorkerError

    options = {"runner": "pooling", "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_model_len": 256}
    server = VLLMServer(resolve_model_path(None), options, tmp_path, names=("minilm",))
    try:
        server.start(timeout=400)
    except WorkerError as exc:
        pytest.fail(f"vllm serve of MiniLM did not start: {exc}")
    try:
        texts = ["a cat sat on the mat", "quarterly earnings beat expectations", "the striker scored twice"]
        with OpenAIEmbedder(server.url, "minilm", batch_size=2) as emb:
            remote = emb.embed(texts)
        local = SentenceTransformerEmbedder().embed(texts)
        assert remote.shape == (3, 384)
        np.testing.assert_allclose(np.sum(remote * local, axis=1), 1.0, atol=1e-3)
    finally:
        server.stop()
