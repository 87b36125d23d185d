"""Engine fixtures: a tiny random-weight model built in seconds, and shared vLLM engines.

``tiny_model_dir`` is a real Llama-architecture model (see ``tiny_model.py``): vLLM loads it like
any model, so engine tests exercise the real code paths without a download. Its answers are
random, which is what the tests want: constrained decoding must hold whatever the model prefers.

Every engine here also runs the engine contract (``test_contract.py``): it names each engine by
its fixture and a ``throwaway_*`` fixture giving a fresh engine of the same class that a test may
close. The session engines are shared by many tests; no test may close them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import semframe as sf

from .tiny_model import build_tiny_model


def _need_vllm() -> None:
    pytest.importorskip("vllm", reason='vLLM is not installed (pip install "semframe[cpu]")')


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama model folder (safetensors, tokenizer, chat template)."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_vllm_engine(tiny_model_dir: Path):
    """One VLLMEngine on the tiny model, shared by the whole session (started once, ~5-10 s)."""
    _need_vllm()
    from semframe.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=64 << 20)
    yield engine
    engine.close()


@pytest.fixture
def throwaway_tiny_vllm_engine(tiny_model_dir: Path):
    """A second, unshared VLLMEngine on the tiny model, for tests that close an engine.

    Cheap once the session engine has loaded vLLM (under a second to start, with a small KV cache
    and context); in-process engines may be open side by side, and closing this one leaves the
    others working.
    """
    _need_vllm()
    from semframe.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=32 << 20, max_model_len=256)
    yield engine
    engine.close()


@pytest.fixture
def deterministic_engine() -> sf.DeterministicEngine:
    """The in-memory test engine, fresh for each test."""
    return sf.DeterministicEngine()


@pytest.fixture
def throwaway_deterministic_engine() -> sf.DeterministicEngine:
    """Another DeterministicEngine, for tests that close an engine."""
    return sf.DeterministicEngine()


@pytest.fixture(scope="session")
def smollm2_model_dir() -> Path:
    """The default model (SmolLM2-135M-Instruct) converted to safetensors.

    Converted once per machine into the real semframe cache (``$SEMFRAME_CACHE_DIR`` as set
    outside the tests, else ``~/.cache/semframe``), like the library does; ~25 s the first time.
    """
    from semframe import config
    from semframe.engines import models

    try:
        gguf = models.default_gguf_path()
    except Exception as exc:  # EngineError naming the fix
        pytest.skip(str(exc))
    saved = config.settings.cache_dir
    root = os.environ.get("SEMFRAME_CACHE_DIR")
    config.settings.cache_dir = Path(root).expanduser() if root else Path.home() / ".cache" / "semframe"
    try:
        return models.convert_gguf(gguf)
    finally:
        config.settings.cache_dir = saved


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_model_dir: Path):
    """One VLLMEngine on SmolLM2-135M-Instruct, shared by the session."""
    _need_vllm()
    from semframe.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(smollm2_model_dir), kv_cache_memory_bytes=256 << 20)
    yield engine
    engine.close()


# -- OpenAI-compatible servers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_openai_server():
    """A fake OpenAI-compatible server on 127.0.0.1 (``fault_server.py``) answering like the
    deterministic engine, without faults; it stops by itself after 30 minutes at most."""
    from .fault_server import FaultServer

    with FaultServer(lifetime_s=1800) as server:
        yield server


@pytest.fixture(scope="session")
def openai_engine(fake_openai_server):
    """An OpenAIEngine on the fake server, shared by the session."""
    engine = sf.OpenAIEngine(fake_openai_server.url, api_key="sk-contract-test-key", max_concurrency=8)
    yield engine
    engine.close()


@pytest.fixture
def throwaway_openai_engine(fake_openai_server):
    """Another OpenAIEngine on the same fake server, for tests that close an engine."""
    engine = sf.OpenAIEngine(fake_openai_server.url, max_concurrency=2)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``vllm serve`` of the tiny model on 127.0.0.1 (started once per session, stopped at its end):
    ``(base_url, model folder)``. Started as the benchmarks start theirs (``benchmarks/_common.py``:
    the CPU build's metadata shim, ``VLLM_TARGET_DEVICE=cpu``), served as ``tiny``."""
    _need_vllm()
    from benchmarks._common import VLLMServer, WorkerError

    options = {"max_model_len": 1024, "kv_cache_memory_bytes": 64 << 20, "block_size": 32, "enforce_eager": True,
               "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True}}
    server = VLLMServer(str(tiny_model_dir), options, tmp_path_factory.mktemp("vllm-serve"), names=("tiny",))
    try:
        server.start(timeout=300)
    except WorkerError as exc:
        pytest.fail(f"vllm serve of the tiny model did not start: {exc}")
    try:
        yield f"{server.url}/v1", tiny_model_dir
    finally:
        server.stop()
