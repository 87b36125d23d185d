"""Shared prefixes padded to a KV block boundary (``VLLMEngine(align_prefix=True)``, the default).

vLLM's prefix cache reuses whole blocks only: the row's text must start on a block boundary for
every shared token to be reused. These tests need only the tokenizer (no engine start).
"""

from __future__ import annotations

import pytest

from semframe.engines.base import Message

pytestmark = pytest.mark.vllm

SYSTEMS = [
    "Is the title related to the history of Europe?\nAnswer with exactly one word: YES or NO.",
    "Classify the text.\nAnswer with exactly one of: positive, negative, neutral.",
    "x",
]


def _row_start(engine, system: str) -> int:
    """Where the row's content starts: the common prefix of two prompts that differ only there."""
    a = engine.render([Message("system", system), Message("user", "alpha beta")])
    b = engine.render([Message("system", system), Message("user", "zulu yankee")])
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.fixture
def unaligned(tiny_model_dir):
    from semframe.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=64 << 20, align_prefix=False)
    yield engine
    engine.close()


def test_row_starts_on_a_block_boundary(tiny_vllm_engine, unaligned):
    block = tiny_vllm_engine._block
    starts = [_row_start(tiny_vllm_engine, s) for s in SYSTEMS]
    plain = [_row_start(unaligned, s) for s in SYSTEMS]
    assert all(s % block == 0 for s in starts), starts
    assert any(p % block for p in plain), plain  # the test would prove nothing otherwise
    for s, p in zip(starts, plain):
        assert p <= s < p + block  # padded by less than one block


def test_padding_is_only_pad_tokens_after_the_instruction(tiny_vllm_engine, unaligned):
    msgs = [Message("system", SYSTEMS[0]), Message("user", "alpha beta")]
    padded, plain = tiny_vllm_engine.render(msgs), unaligned.render(msgs)
    extra = len(padded) - len(plain)
    assert 0 <= extra < tiny_vllm_engine._block
    # removing the pad tokens gives the plain prompt back
    from semframe.engines.vllm import pad_token

    pad = pad_token(tiny_vllm_engine._tokenizer)
    i = next(k for k in range(len(plain)) if padded[k] != plain[k]) if extra else len(plain)
    assert padded[i:i + extra] == [pad] * extra
    assert padded[:i] + padded[i + extra:] == plain


def test_one_message_prompts_are_not_padded(tiny_vllm_engine, unaligned):
    msgs = [Message("user", "Is this about Europe? alpha beta")]
    assert tiny_vllm_engine.render(msgs) == unaligned.render(msgs)


def test_alignment_is_part_of_the_fingerprint(tiny_vllm_engine, unaligned):
    assert tiny_vllm_engine.fingerprint() != unaligned.fingerprint()


def test_align_prefix_must_be_a_bool(tiny_model_dir):
    from semframe.engines.vllm import VLLMEngine
    from semframe.errors import EngineError

    with pytest.raises(EngineError, match="align_prefix"):
        VLLMEngine(str(tiny_model_dir), align_prefix="yes")
