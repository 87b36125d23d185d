"""VLLMEngine on a tiny random-weight model (fast) and on SmolLM2-135M-Instruct (smoke tests).

All tiny-model tests share one session-scoped engine; the whole file runs in about a minute on
2 CPU cores. Without vllm installed every test here is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from semframe.engines.base import Message, Request
from semframe.errors import EngineError
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

from semframe.engines.vllm import VLLMEngine

from .tiny_model import TINY_MAX_LEN, build_tiny_model

pytestmark = pytest.mark.vllm

YES_NO = ChoiceSpec(("YES", "NO"))


def _tighten(schema):
    if isinstance(schema, dict):
        schema = {k: _tighten(v) for k, v in schema.items()}
        if "maxLength" in schema:
            schema["maxLength"] = 8
        if "maxItems" in schema:
            schema["maxItems"] = 3
    elif isinstance(schema, list):
        schema = [_tighten(v) for v in schema]
    return schema


@dataclass(frozen=True)
class ShortJson(JsonSpec):
    """A JsonSpec whose answers always fit in ``TINY_MAX_LEN // 2`` tokens.

    Under semframe's own bounds (200 characters a string, 16 items a list) a random model may
    rightly run out of tokens before the JSON closes. Here a string has at most 8 characters
    (at most 6 tokens each, spelled as a \\u escape) and a list at most 3 items, and integers
    at most 16 digits: a few hundred tokens at worst, so constrained decoding always finishes.
    """

    def json_schema(self):
        return _tighten(super().json_schema())


PERSON = ShortJson.from_schema({"name": str, "age": int, "tags": list[str]})


def ask(text: str, spec=YES_NO, max_tokens: int | None = None, **kw) -> Request:
    return Request(
        (Message("system", "Answer the question about the text."), Message("user", text)),
        spec,
        max_tokens or spec.default_max_tokens(),
        **kw,
    )


def test_import_semframe_does_not_import_vllm():
    code = "import sys, semframe, semframe.engines; print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_choice_json_and_text_all_parse(tiny_vllm_engine):
    requests = [
        ask("Is Paris in France?"),
        ask("Describe the person.", PERSON, max_tokens=TINY_MAX_LEN // 2),
        ask("Say something.", TextSpec(), max_tokens=12),
    ]
    choice, person, text = tiny_vllm_engine.generate(requests)
    assert choice.ok and choice.value in ("YES", "NO") and choice.finish_reason == "stop"
    assert person.ok and person.finish_reason == "stop", person.error  # short bounds: completes
    assert set(person.value) == {"name", "age", "tags"} and len(person.value["name"]) <= 8
    assert text.ok and isinstance(text.value, str) and text.output_tokens <= 12


def test_json_is_always_valid(tiny_vllm_engine):
    # Sampled (temperature 1) from a random model, with room to finish: every answer is valid.
    spec = ShortJson.from_schema({"title": str, "year": int, "places": list[str]})
    requests = [ask(f"Facts about item {i}.", spec, max_tokens=TINY_MAX_LEN // 2, temperature=1.0)
                for i in range(50)]
    done = tiny_vllm_engine.generate(requests)
    assert [c.error for c in done] == [None] * 50, [c.text for c in done if not c.ok][:3]
    assert {c.finish_reason for c in done} == {"stop"}
    assert [json.loads(c.text) for c in done] == [c.value for c in done]
    assert all(isinstance(c.value["year"], int) for c in done)
    assert all(isinstance(c.value["places"], list) for c in done)


def test_json_without_room_to_finish_is_a_null_with_a_reason(tiny_vllm_engine):
    spec = JsonSpec.from_schema({"title": str, "year": int, "places": list[str]})
    requests = [ask(f"Facts about item {i}.", spec, max_tokens=3, temperature=1.0)
                for i in range(10)]
    done = tiny_vllm_engine.generate(requests)
    assert {c.finish_reason for c in done} == {"length"}  # {"title": needs more than 3 tokens
    assert all(c.value is None and "cut off at max_tokens=3" in c.error for c in done)


def test_hundreds_of_requests_in_one_batch(tiny_vllm_engine):
    requests = [ask(f"Is item number {i} about Europe?") for i in range(300)]
    calls = tiny_vllm_engine.usage.calls
    done = tiny_vllm_engine.generate(requests)
    assert len(done) == 300
    assert all(c.ok and c.value in ("YES", "NO") for c in done)
    assert tiny_vllm_engine.usage.calls == calls + 1


def test_usage_counts_are_real(tiny_vllm_engine):
    request = ask("Is the sky blue today?")
    before = tiny_vllm_engine.usage.prompt_tokens
    first, again = tiny_vllm_engine.generate([request, request])
    expected = len(tiny_vllm_engine.render(request.messages))
    assert first.prompt_tokens == again.prompt_tokens == expected > 10
    assert first.output_tokens >= 1
    assert tiny_vllm_engine.usage.prompt_tokens == before + 2 * expected
    # The shared system prompt fills at least one 32-token block: later requests reuse it.
    more = tiny_vllm_engine.generate([ask(f"Question {i} about a long enough text?") for i in range(4)])
    assert any(c.cached_prompt_tokens >= 32 for c in more)


def test_empty_batch(tiny_vllm_engine):
    calls = tiny_vllm_engine.usage.calls
    assert tiny_vllm_engine.generate([]) == []
    assert tiny_vllm_engine.usage.calls == calls


def test_over_long_prompt_fails_its_row_only(tiny_vllm_engine):
    long_text = "The quick brown fox jumps over the lazy dog. " * 200
    done = tiny_vllm_engine.generate([ask("Short?"), ask(long_text), ask("Also short?")])
    assert done[0].ok and done[2].ok
    bad = done[1]
    assert bad.value is None and bad.finish_reason == "error"
    assert f"over max_model_len {TINY_MAX_LEN}" in bad.error
    assert "truncate_prompt=True" in bad.error
    # A prompt that fits but leaves no room for max_tokens is refused the same way.
    ids = tiny_vllm_engine.render(ask("x").messages)
    room = TINY_MAX_LEN - len(ids)
    (tight,) = tiny_vllm_engine.generate([ask("x", TextSpec(), max_tokens=room + 1)])
    assert tight.finish_reason == "error" and "with max_tokens" in tight.error


def test_a_request_vllm_rejects_fails_its_row_only(tiny_vllm_engine):
    bad = Request((Message("user", "hi"),), TextSpec(), 4, top_p=0.0)  # vLLM wants 0 < top_p
    done = tiny_vllm_engine.generate([ask("Fine?"), bad, ask("Fine too?")])
    assert done[0].ok and done[2].ok
    assert done[1].finish_reason == "error" and "top_p" in done[1].error


def test_count_tokens_uses_the_tokenizer(tiny_vllm_engine):
    assert tiny_vllm_engine.count_tokens("") == 0
    text = "The Battle of Waterloo was fought in 1815 near Brussels."
    n = tiny_vllm_engine.count_tokens(text)
    assert 1 <= n < len(text)


def test_render_applies_the_chat_template(tiny_vllm_engine):
    ids = tiny_vllm_engine.render([Message("user", "hello")])
    text = tiny_vllm_engine._tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")


def test_second_engine_fingerprint_truncation_and_close(tiny_vllm_engine, tmp_path):
    """A second engine in the same process: other weights, truncation on; then closed twice."""
    other_dir = build_tiny_model(tmp_path / "tiny-llama", seed=1)
    other = VLLMEngine(str(other_dir), kv_cache_memory_bytes=32 << 20, max_model_len=256,
                       truncate_prompt=True)
    try:
        assert other.max_model_len == 256
        assert tiny_vllm_engine.generate([ask("Both alive?")])[0].ok
        assert other.fingerprint() != tiny_vllm_engine.fingerprint()
        assert len(other.fingerprint()) == 64
        long_text = "START " + "The quick brown fox jumps over the lazy dog. " * 100 + "Is it END?"
        request = ask(long_text, TextSpec(), max_tokens=8)
        (done,) = other.generate([request])
        assert done.ok and done.prompt_tokens <= 256 - 8
        kept = other._tokenizer.decode(other._fit(request, other.render(request.messages))[0])
        assert "START" in kept and "END?" in kept and "[...]" in kept
        assert kept.endswith("<|im_start|>assistant\n")
    finally:
        other.close()
    other.close()  # safe twice
    assert other.closed
    with pytest.raises(EngineError, match="closed"):
        other.generate([ask("Still there?")])
    # The shared engine is unaffected.
    assert tiny_vllm_engine.generate([ask("Still fine?")])[0].ok


def test_fingerprint_is_stable_for_the_same_folder(tiny_vllm_engine, tiny_model_dir):
    from semframe.engines.vllm import _weights_digest

    assert tiny_vllm_engine.fingerprint() == tiny_vllm_engine.fingerprint()
    assert _weights_digest(tiny_model_dir) == _weights_digest(Path(str(tiny_model_dir)))


def test_missing_folder_is_a_clear_error(tmp_path):
    from semframe.engines.models import resolve_model

    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="no config.json"):
        resolve_model(tmp_path / "empty")


# -- the default model ----------------------------------------------------------------------------


@pytest.mark.smollm2
def test_converted_smollm2_tokenizer(smollm2_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_model_dir)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1
    # No special token is prepended to plain text (older converters added <|im_start|>).
    assert tok("Hello")["input_ids"] == tok.encode("Hello", add_special_tokens=False)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[:3] == [1, 9690, 198]  # <|im_start|> "system" "\n"
    assert ids.count(1) == 3 and ids.count(2) == 2  # three turns opened, two closed
    assert tok.decode(ids) == text


@pytest.mark.smollm2
def test_smollm2_smoke(smollm2_engine):
    facts = JsonSpec.from_schema({"city": str, "country": str})
    requests = [
        ask("Is Paris the capital of France? Answer YES or NO."),
        ask("Is the Moon made of cheese? Answer YES or NO."),
        ask("Paris is the capital of France. Give the city and the country.", facts),
        ask("Berlin is the capital of Germany. Give the city and the country.", facts),
    ]
    done = smollm2_engine.generate(requests)
    assert [c.ok for c in done] == [True] * 4, [c.error for c in done]
    assert {done[0].value, done[1].value} <= {"YES", "NO"}
    assert set(done[2].value) == {"city", "country"}
    assert smollm2_engine.usage.output_tokens > 0


@pytest.mark.smollm2
def test_smollm2_json_valid_over_50_requests(smollm2_engine):
    spec = JsonSpec.from_schema({"name": str, "year": int, "topics": list[str]})
    requests = [ask(f"Headline {i}: Parliament debates the {1900 + i} budget in London.", spec)
                for i in range(50)]
    done = smollm2_engine.generate(requests)
    assert all(c.ok for c in done), [c.error for c in done if not c.ok][:3]
    assert all(json.loads(c.text) == c.value for c in done)



def test_vllm_is_told_not_to_report_usage_statistics():
    code = ("import os; os.environ.pop('VLLM_NO_USAGE_STATS', None); os.environ.pop('DO_NOT_TRACK', None)\n"
            "from semframe.engines.vllm import _import_vllm\n"
            "_import_vllm()\n"
            "print(os.environ['VLLM_NO_USAGE_STATS'], os.environ['DO_NOT_TRACK'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "1"]


def test_a_run_on_vllm_connects_to_nothing_outside_this_machine(tiny_model_dir):
    # sys.addaudithook sees every socket.connect and getaddrinfo of the process, vLLM's included.
    code = f"""
import sys, json
seen = []
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
        seen.append((event, repr(args[1] if event != "socket.getaddrinfo" else args[0])))
sys.addaudithook(hook)
import socket
socket.getaddrinfo("localhost", 0)  # proves the hook sees lookups
import polars as pl, semframe as sf
engine = sf.VLLMEngine({str(tiny_model_dir)!r}, kv_cache_memory_bytes=32 << 20)
out = pl.DataFrame({{"t": ["a", "b"]}}).semantic.classify("t", ["YES", "NO"], engine=engine, cache=False)
print("SEEN", json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.split("SEEN", 1)[1])
    assert seen and seen[0][0] == "socket.getaddrinfo"
    local = ("127.", "localhost", "::1", "'/", "0.0.0.0", "None", "''")
    outside = [s for s in seen if not any(mark in s[1] for mark in local)]
    assert outside == [], outside
