"""One-step labels over HTTP: ``OpenAIEngine(label_decoding=...)`` against a real ``vllm serve``.

A choice whose labels each begin with a token of their own is answered in one decode step
(``max_tokens: 1``, ``allowed_token_ids``), the table built from the server's own tokenizer over
vLLM's ``/tokenize``; labels sharing a first token, and servers without ``/tokenize``, use the grammar.
"""

from __future__ import annotations

import pytest

import semframe as sf
from semframe.engines.base import Message, Request
from semframe.plan.spec import ChoiceSpec

pytestmark = pytest.mark.vllm

TITLES = ["Battle of Waterloo", "Banana bread", "Treaty of Versailles", "A quiet pond", "Moon landing", "Tax law"]


def _requests(labels: tuple[str, ...], n: int = len(TITLES)) -> list[Request]:
    return [Request((Message("system", "Answer about the title."), Message("user", f"Title: {t}")),
                    ChoiceSpec(labels), 8) for t in TITLES[:n]]


@pytest.fixture(scope="module")
def one_step_engine(vllm_server):
    url, _ = vllm_server
    engine = sf.OpenAIEngine(url, "tiny", max_concurrency=8, timeout_s=120)
    yield engine
    engine.close()


def test_one_token_labels_match_the_in_process_engine(one_step_engine, tiny_vllm_engine):
    engine = one_step_engine
    assert engine.label_decoding == "one_token"  # "auto": the server answers /tokenize
    assert engine.fingerprint_facts()["choice_decoding"] == "one_token"
    for labels in (("YES", "NO"), ("red", "green", "blue")):
        table = engine.label_table(labels)
        local = tiny_vllm_engine.label_table(labels)
        assert table is not None and local is not None
        assert table.tokens == local.tokens and table.longest == local.longest  # the same tokenizer rule
        assert engine.label_output_tokens(labels) == 1
        requests = _requests(labels)
        done = engine.generate(requests)
        assert all(c.ok for c in done), [c.error for c in done]
        assert all(c.value in labels and c.output_tokens == 1 for c in done)
        for c in done:
            assert c.probabilities is not None and set(c.probabilities) == set(labels)
            assert abs(sum(c.probabilities.values()) - 1) < 1e-6
            assert all(p >= 0 for p in c.probabilities.values())
        local_done = tiny_vllm_engine.generate(requests)
        assert [c.value for c in done] == [c.value for c in local_done]


def test_labels_sharing_a_first_token_use_the_grammar(one_step_engine, tiny_vllm_engine):
    labels = ("positive", "positively")  # the first spells the start of the second
    assert one_step_engine.label_table(labels) is None and tiny_vllm_engine.label_table(labels) is None
    assert one_step_engine.label_output_tokens(labels) is None
    done = one_step_engine.generate(_requests(labels, 3))
    assert all(c.ok and c.value in labels for c in done), [c.error for c in done]


def test_grammar_mode_and_a_server_without_tokenize(vllm_server, fake_openai_server):
    url, _ = vllm_server
    with sf.OpenAIEngine(url, "tiny", label_decoding="grammar") as engine:
        assert engine.label_output_tokens(("YES", "NO")) is None
        assert engine.fingerprint_facts()["choice_decoding"] == "grammar"
        (c,) = engine.generate(_requests(("YES", "NO"), 1))
        assert c.ok and c.value in ("YES", "NO") and c.output_tokens > 1  # the label, then end of sequence
    with sf.OpenAIEngine(fake_openai_server.url, structured="vllm") as engine:  # no /tokenize
        assert engine.label_decoding == "grammar"
        assert engine.label_output_tokens(("YES", "NO")) is None
        done = engine.generate(_requests(("YES", "NO"), 2))
        assert all(c.ok and c.value in ("YES", "NO") for c in done), [c.error for c in done]
    with pytest.raises(sf.EngineError if hasattr(sf, "EngineError") else Exception):
        sf.OpenAIEngine(url, "tiny", label_decoding="fast")
