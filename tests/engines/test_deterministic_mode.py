"""``VLLMEngine(deterministic=True)``: same question, same answer.

On CPU the engine runs float32 (``dtype="float32"``); on a GPU build it starts vLLM with its
batch-invariant kernels (``VLLM_BATCH_INVARIANT=1``). Either way the mode is in the fingerprint,
so answers of the two modes never mix in the exact cache, and engines of the two modes never share
one running vLLM. The first tests never start vLLM (a fake model folder); the last one (marked
``vllm``) runs the tiny model.
"""

from __future__ import annotations

import pytest

from semframe.engines.base import Message, Request
from semframe.errors import EngineError
from semframe.plan.spec import ChoiceSpec, JsonSpec

from .test_lazy_engine import engine, fake_model, needs_vllm_installed

pytestmark = needs_vllm_installed


@pytest.fixture
def model_dir(tmp_path):
    return fake_model(tmp_path / "m" / "my-model")


def test_the_mode_is_in_the_fingerprint_and_the_default_is_unchanged(model_dir):
    plain, det = engine(model_dir), engine(model_dir, deterministic=True)
    try:
        assert plain.fingerprint() != det.fingerprint()
        assert "deterministic" not in plain.fingerprint_facts()  # the default's fingerprint is as before
        facts = det.fingerprint_facts()
        if det.device == "cpu":
            assert facts["deterministic"] == "float32" and facts["dtype"] == "float32"
        else:
            assert facts["deterministic"] == "batch_invariant"
        assert plain.fingerprint() == engine(model_dir, deterministic=False).fingerprint()
    finally:
        plain.close()
        det.close()


def test_the_two_modes_never_share_a_vllm(model_dir):
    plain, det = engine(model_dir), engine(model_dir, deterministic=True)
    try:
        assert plain._core is not det._core
    finally:
        plain.close()
        det.close()


def test_cpu_runs_float32(model_dir):
    import semframe.engines.vllm as mod

    if mod._runtime().device != "cpu":
        pytest.skip("a CPU build's behaviour")
    det = engine(model_dir, deterministic=True)
    try:
        assert det._options["dtype"] == "float32" and det._core.env == {}
    finally:
        det.close()
    with pytest.raises(EngineError, match="float32"):
        engine(model_dir, deterministic=True, dtype="bfloat16")
    engine(model_dir, deterministic=True, dtype="float32").close()  # saying it twice is fine
    with pytest.raises(EngineError, match="True or False"):
        engine(model_dir, deterministic="yes")


def test_gpu_uses_vllms_batch_invariant_mode(model_dir, monkeypatch):
    import semframe.engines.vllm as mod

    real = mod._runtime()
    monkeypatch.setattr(mod, "_runtime", lambda: mod._Runtime({**real.facts, "gpus": ["NVIDIA H100"]}, "cuda"))
    det, plain = engine(model_dir, deterministic=True), engine(model_dir)
    try:
        assert det._core.env == {"VLLM_BATCH_INVARIANT": "1"} and plain._core.env == {}
        assert det._options["dtype"] == "auto"  # the model's dtype: the kernels make it invariant
        assert det._core is not plain._core
        assert det.fingerprint_facts()["deterministic"] == "batch_invariant"
        assert det.fingerprint() != plain.fingerprint()
    finally:
        det.close()
        plain.close()


@pytest.mark.vllm
def test_float32_answers_the_same_question_the_same_way(tiny_model_dir):
    """The same batch twice: the second finds every prompt in the prefix cache, and no answer changes."""
    from semframe.engines.vllm import VLLMEngine

    det = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=32 << 20, max_model_len=512, deterministic=True)
    try:
        spec = JsonSpec.from_schema({"name": str, "ok": bool})
        requests = [Request((Message("system", "Extract the name from the record."),
                             Message("user", f"record {i}: person number {i * 7} lives at {i} Main Street")),
                            spec, 24) for i in range(24)]
        requests += [Request((Message("user", f"Question {i}?"),), ChoiceSpec(("A", "B")), 3) for i in range(8)]
        first = det.generate(requests)
        second = det.generate(requests)
        assert det.dtype == "float32"
        assert sum(c.cached_prompt_tokens for c in second) > sum(c.cached_prompt_tokens for c in first)
        assert [c.text for c in first] == [c.text for c in second]
    finally:
        det.close()


def test_a_gpu_process_runs_one_batch_invariant_mode(monkeypatch):
    import semframe.engines.vllm as mod

    monkeypatch.setattr(mod, "_process_batch_invariant", None)
    mod._claim_batch_invariance(True)
    mod._claim_batch_invariance(True)  # the same mode again is fine
    with pytest.raises(EngineError, match="multiprocess=True"):
        mod._claim_batch_invariance(False)
