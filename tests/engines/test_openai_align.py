"""Prefix alignment over HTTP: ``OpenAIEngine(align_prefix=True)`` against a real ``vllm serve``.

vLLM's prefix cache reuses whole KV blocks only. The engine reads the server's block size from
its ``/metrics`` (``vllm:cache_config_info``) and pads each prompt's first message with ``" ."``
tokens (the count from the server's ``/tokenize``) so the row's text starts on a block boundary,
exactly as the in-process engine's ``align_prefix`` does; servers that report no block get the
prompts as built.
"""

from __future__ import annotations

import pytest

import semframe as sf
from semframe.engines.base import Message, Request
from semframe.plan.spec import ChoiceSpec

from .fake_vllm import FakeVLLM, render


SYSTEM = "Read the title of a wikipedia article below. Is the title related to the history of Europe?"
TITLES = ["Battle of Waterloo", "Banana bread", "Treaty of Versailles", "A quiet pond"]


def _requests() -> list[Request]:
    return [Request((Message("system", SYSTEM), Message("user", t)), ChoiceSpec(("YES", "NO")), 4) for t in TITLES]


@pytest.mark.vllm
def test_prompts_are_padded_to_the_servers_blocks_as_in_process(vllm_server, tiny_vllm_engine):
    url, _ = vllm_server
    reset = sf.OpenAIEngine(url, "tiny")
    with sf.OpenAIEngine(url, "tiny", max_concurrency=1) as engine, \
            sf.OpenAIEngine(url, "tiny", max_concurrency=1, align_prefix=False) as plain:
        assert engine.prefix_block == 32  # the server's --block-size, read from /metrics
        assert engine.fingerprint_facts()["align_prefix"] == 32
        assert plain.prefix_block is None and "align_prefix" not in plain.fingerprint_facts()
        assert engine.fingerprint() != plain.fingerprint()  # padded prompts may answer differently
        requests = _requests()
        aligned = engine.generate(requests)
        unaligned = plain.generate(requests)
    reset.close()
    local = [tiny_vllm_engine.render(r.messages) for r in requests]  # in process, aligned to 32 as well
    starts = {len(ids) - len(tiny_vllm_engine.render((Message("system", SYSTEM), Message("user", "")))) for ids in local}
    assert all(c.ok for c in aligned + unaligned), [c.error for c in aligned + unaligned]
    # The server saw a prompt as long as the in-process engine's padded one (its pad is " ." text,
    # two tokens each in the tiny vocabulary; in process the pad is the "." token) ...
    assert [c.prompt_tokens for c in aligned] == [len(ids) for ids in local]
    assert all(c.prompt_tokens > u.prompt_tokens for c, u in zip(aligned, unaligned))
    # ... and, one request at a time, reused every token of the shared prefix after the first.
    assert starts  # the rows' own tokens follow a block-aligned shared prefix
    for c in aligned[1:]:
        assert c.cached_prompt_tokens % 32 == 0 and c.cached_prompt_tokens >= 32
    assert max(c.cached_prompt_tokens for c in aligned[1:]) > max(u.cached_prompt_tokens for u in unaligned[1:])


def test_servers_without_block_sizes_get_prompts_as_built(fake_openai_server):
    with sf.OpenAIEngine(fake_openai_server.url, structured="vllm") as engine:  # no /metrics, no /tokenize
        assert engine.prefix_block is None
        done = engine.generate(_requests()[:2])
        assert all(c.ok for c in done)
    sent = fake_openai_server.bodies[-1]["messages"][0]["content"]
    assert sent == SYSTEM  # nothing appended
    with pytest.raises(sf.EngineError, match="align_prefix"):
        sf.OpenAIEngine(fake_openai_server.url, align_prefix="yes")  # type: ignore[arg-type]


@pytest.fixture
def fake_vllm():
    server = FakeVLLM(block=16)
    yield server
    server.close()


def _fake_engine(server: FakeVLLM) -> sf.OpenAIEngine:
    return sf.OpenAIEngine(server.url, "tiny", structured="vllm", label_decoding="grammar", max_concurrency=4)


def test_the_row_starts_on_a_block_boundary(fake_vllm):
    with _fake_engine(fake_vllm) as engine:
        assert engine.prefix_block == 16
        (done,) = engine.generate(_requests()[:1])
    sent = fake_vllm.bodies[-1]["messages"]
    head = render([*sent[:-1], {"role": sent[-1]["role"], "content": ""}])[:-2]  # up to the row's content
    assert sent[0]["content"].startswith(SYSTEM) and sent[0]["content"].endswith(" .")
    assert len(head) % 16 == 0 and done.prompt_tokens == len(render(sent))


def test_one_request_is_sent_the_same_way_in_every_batch(fake_vllm):
    # More distinct instructions than the engine aligns: those past the limit always go as built.
    requests = [Request((Message("system", f"Instruction number {i}."), Message("user", "row")),
                        ChoiceSpec(("YES", "NO")), 4) for i in range(80)]
    with _fake_engine(fake_vllm) as engine:
        engine.generate(requests)
        first = sorted(b["messages"][0]["content"] for b in fake_vllm.bodies[-80:])
        engine.generate(requests)
        second = sorted(b["messages"][0]["content"] for b in fake_vllm.bodies[-80:])
    assert first == second
    assert sum(c.endswith(" .") for c in first) == 64  # openai._MAX_ALIGNED_PREFIXES


def test_a_passing_metrics_error_does_not_change_the_fingerprint(fake_vllm):
    with _fake_engine(fake_vllm) as engine:
        before = engine.fingerprint()
    fake_vllm.metrics_fail = 1  # the server answers /metrics 503 once (e.g. warming up)
    with _fake_engine(fake_vllm) as engine:
        assert engine.fingerprint() == before and engine.prefix_block == 16
