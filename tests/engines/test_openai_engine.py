"""OpenAIEngine and the concurrent engine base, against a fault-injecting fake server and a real
``vllm serve`` of the tiny model.

The fake (``fault_server.py``) listens on 127.0.0.1 only and stops by itself; its answers are a
pure function of the request body, so a run through faults must give exactly the clean run's
answers. Retry waits are shortened (``backoff_s``) to keep the file fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

import polars as pl
import pytest

import semframe as sf
from semframe.engines.base import Message, Request
from semframe.engines.concurrent import ConcurrentEngine, FatalError, TransientError
from semframe.engines.registry import check_engine, engine_by_name
from semframe.errors import EngineError
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

from .fault_server import FaultServer

SECRET = "sk-test-Zq8Hh2Vf0secret"
#: Fast retries: the fake's faults are injected, not real overload.
FAST = dict(backoff_s=0.02, max_backoff_s=0.1, timeout_s=5.0)


def batch(n: int = 12) -> list[Request]:
    """Choice, JSON and text requests in turn, sharing a system message (so some prompt is cached)."""
    kinds = [
        lambda i: Request((Message("system", "Answer about the title."), Message("user", f"Title {i}: Battle {i}")),
                          ChoiceSpec(("YES", "NO")), 5),
        lambda i: Request((Message("system", "Extract."), Message("user", f"Row {i}")),
                          JsonSpec.from_schema({"year": int, "place": str}), 48),
        lambda i: Request((Message("user", f"Say something about row {i} please"),), TextSpec(), 6),
    ]
    return [kinds[i % 3](i) for i in range(n)]


@pytest.fixture(scope="module")
def clean_answers(fake_openai_server):
    with sf.OpenAIEngine(fake_openai_server.url, **FAST) as engine:
        done = engine.generate(batch())
    assert all(c.ok for c in done), [c.error for c in done]
    return [c.value for c in done]


# -- faults: same answers as a clean run, no row lost, attempts reported -------------------------


@pytest.mark.parametrize("kind", ["429", "429_retry_after_ms", "500", "503", "timeout", "reset", "malformed",
                                  "truncated"])
def test_a_transient_fault_is_retried_to_the_clean_answer(kind, clean_answers):
    with FaultServer(fail_first=[kind], hang_s=3.0, lifetime_s=60) as server, \
            sf.OpenAIEngine(server.url, **{**FAST, "timeout_s": 0.5 if kind == "timeout" else 5.0}) as engine:
        done = engine.generate(batch())
    assert [c.value for c in done] == clean_answers
    assert all(c.ok for c in done), [c.error for c in done]
    assert [c.attempts for c in done] == [2] * len(done)  # each request: the fault, then its answer
    assert engine.usage.attempts == 2 * len(done) and engine.usage.errors == 0
    assert server.stats[kind] == len(done)


def test_a_random_mix_of_faults_loses_no_row(clean_answers):
    faults = {"429": 0.2, "500": 0.05, "503": 0.03, "reset": 0.03, "malformed": 0.03, "truncated": 0.03}
    requests = batch(60)
    with FaultServer(faults=faults, seed=7, lifetime_s=60) as server, sf.OpenAIEngine(server.url, **FAST) as engine:
        done = engine.generate(requests)
    assert all(c.ok for c in done), [c.error for c in done if not c.ok]
    assert [c.value for c in done[:12]] == clean_answers  # the same requests as the clean run
    faulted = sum(n for k, n in server.stats.items() if k not in ("ok", "GET /models"))
    assert faulted > 0 and engine.usage.attempts == len(requests) + faulted
    assert sum(c.attempts for c in done) == engine.usage.attempts


def test_retry_after_is_honoured():
    # The server asks for 1 s; the engine's own backoff would wait 0.02 s at most.
    req = batch(1)
    with FaultServer(fail_first=["429_retry_after"], lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, backoff_s=0.01, max_backoff_s=0.02) as engine:
        start = time.perf_counter()
        (comp,) = engine.generate(req)
        elapsed = time.perf_counter() - start
    assert comp.ok and comp.attempts == 2
    assert elapsed >= 1.0 and comp.latency_s >= 1.0


def test_retry_after_ms_is_honoured_over_a_long_backoff():
    # retry-after-ms: 50 ms, where the engine's backoff would have waited up to 20 s.
    with FaultServer(fail_first=["429_retry_after_ms", "429_retry_after_ms"], lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, backoff_s=20, max_backoff_s=20) as engine:
        start = time.perf_counter()
        (comp,) = engine.generate(batch(1))
    assert comp.ok and comp.attempts == 3 and time.perf_counter() - start < 5.0  # not 2 backoffs of up to 20 s


def test_a_fatal_error_fails_its_row_only_and_is_not_retried():
    with FaultServer(faults={"400": 0.4}, seed=3, lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, api_key=SECRET, **FAST) as engine:
        done = engine.generate(batch(20))
    bad = [c for c in done if not c.ok]
    assert 0 < len(bad) < len(done)  # no exception: the batch came back, its other rows answered
    for c in bad:
        assert c.value is None and c.attempts == 1
        assert "HTTP 400" in c.error and "not retried" in c.error
        assert SECRET not in c.error and "***" in c.error  # the server echoed the key; it is redacted
    assert server.stats["400"] == len(bad)


def test_a_fault_that_outlives_its_attempts_is_a_null_saying_so():
    with FaultServer(fail_first=["503"] * 5, lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, max_attempts=3, **FAST) as engine:
        done = engine.generate(batch(3))
    for c in done:
        assert not c.ok and c.value is None and c.attempts == 3
        assert "failed after 3 attempt(s)" in c.error and "HTTP 503" in c.error
    assert engine.usage.errors == 3 and engine.usage.attempts == 9


def test_a_slow_server_is_answered_concurrently(clean_answers):
    with FaultServer(faults={"slow": 1.0}, slow_s=0.4, lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, max_concurrency=12, **FAST) as engine:
        start = time.perf_counter()
        done = engine.generate(batch())
        elapsed = time.perf_counter() - start
    assert [c.value for c in done] == clean_answers
    assert elapsed < 12 * 0.4 * 0.75  # 12 slow requests in flight together, not one by one (4.8 s)
    assert all(c.latency_s >= 0.4 for c in done)  # each completion carries its own latency
    assert sum(c.charged_s for c in done) <= engine.usage.seconds + 1e-6


# -- limits ----------------------------------------------------------------------------------------


def test_max_concurrency_bounds_requests_in_flight():
    with FaultServer(faults={"slow": 1.0}, slow_s=0.25, lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, max_concurrency=2, **FAST) as engine:
        start = time.perf_counter()
        engine.generate(batch(6))
        assert time.perf_counter() - start >= 3 * 0.25 - 0.05  # 6 requests, 2 at a time


def test_requests_per_minute_is_a_rate_limit(fake_openai_server):
    with sf.OpenAIEngine(fake_openai_server.url, requests_per_minute=240, **FAST) as engine:  # 4 a second
        engine.generate(batch(1))  # warm: /models read, loop started
        start = time.perf_counter()
        done = engine.generate(batch(12))
        elapsed = time.perf_counter() - start
    assert all(c.ok for c in done)
    assert elapsed >= 1.5  # 12 requests at 4 a second, after a burst of at most 4


def test_tokens_per_minute_is_a_rate_limit(fake_openai_server):
    requests = batch(12)
    with sf.OpenAIEngine(fake_openai_server.url, tokens_per_minute=3000, **FAST) as engine:
        engine.generate(batch(1))
        per_request = engine.estimate_request_tokens(requests[1])
        start = time.perf_counter()
        engine.generate(requests)
        elapsed = time.perf_counter() - start
    total = sum(engine.estimate_request_tokens(r) for r in requests)
    # A bucket of 500 tokens refilled at 50 a second: what does not fit waits for the refill.
    assert per_request > 0 and elapsed >= (total - 500) / 50 * 0.8


# -- structured outputs ----------------------------------------------------------------------------


def _kind(body: dict) -> int:
    """Which of batch()'s three kinds a request body is (0 choice, 1 JSON, 2 text)."""
    first = body["messages"][0]["content"]
    return 0 if first.startswith("Answer about") else 1 if first.startswith("Extract") else 2


def test_vllm_structured_outputs_are_sent(fake_openai_server):
    with sf.OpenAIEngine(fake_openai_server.url, **FAST) as engine:
        fake_openai_server.reset_stats()
        done = engine.generate(batch(3))
        bodies = sorted(fake_openai_server.bodies, key=_kind)  # in the batch's order (they arrive in any)
    assert engine.structured == "vllm"  # the fake says owned_by: vllm
    assert bodies[0]["structured_outputs"] == {"choice": ["YES", "NO"]}
    assert bodies[0]["logprobs"] is True and bodies[0]["top_logprobs"] == 20
    assert bodies[1]["structured_outputs"]["json"]["required"] == ["year", "place"]
    assert "structured_outputs" not in bodies[2] and "guided_choice" not in json.dumps(bodies)
    assert done[0].value in ("YES", "NO") and set(done[0].probabilities) == {"YES", "NO"}
    assert isinstance(done[1].value["year"], int)


def test_openai_response_format_is_sent_and_the_label_read_back():
    with FaultServer(owned_by="openai", created=1700000000, lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, **FAST) as engine:
        done = engine.generate(batch(3))
        bodies = sorted(server.bodies, key=_kind)
    assert engine.structured == "openai"
    rf = bodies[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["YES", "NO"]
    assert json.loads(done[0].text)["answer"] == done[0].value if done[0].text.startswith("{") else True
    assert done[0].value in ("YES", "NO") and done[1].ok and isinstance(done[1].value["place"], str)
    assert "structured_outputs" not in bodies[1] and bodies[1]["response_format"]["json_schema"]["schema"]["type"] == "object"


def _reasked(body: dict) -> bool:
    return any("could not be used" in (m.get("content") or "") for m in body["messages"])


def test_an_unconstrained_server_gets_one_re_ask_with_the_validation_error():
    def responder(body: dict) -> str:
        return "YES" if _reasked(body) else "Yes!"

    with FaultServer(responder=responder, lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, structured="none", **FAST) as engine:
        (comp,) = engine.generate(batch(1))
        bodies = list(server.bodies)
    assert comp.ok and comp.value == "YES"
    assert comp.attempts == 2 and "re-asked once" in comp.note and "not one of" in comp.note
    assert "structured_outputs" not in bodies[0] and "response_format" not in bodies[0]
    reask = bodies[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": "Yes!"}
    assert "not one of ['YES', 'NO']" in reask[-1]["content"] and "one of YES, NO" in reask[-1]["content"]
    assert comp.prompt_tokens > 0 and engine.usage.attempts == 2


def test_an_unconstrained_answer_cut_off_is_re_asked_too():
    with FaultServer(responder=lambda b: "NO" if _reasked(b) else "I think the answer is no.", lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, structured="none", **FAST) as engine:
        (comp,) = engine.generate(batch(1))
    assert comp.ok and comp.value == "NO" and "cut off at max_tokens=5" in comp.note


def test_an_answer_invalid_after_the_re_ask_is_a_null_saying_so():
    with FaultServer(responder=lambda body: "maybe", lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, structured="none", **FAST) as engine:
        (comp,) = engine.generate(batch(1))
    assert not comp.ok and comp.value is None and comp.attempts == 2
    assert "after one re-ask" in comp.error and comp.note.startswith("re-asked once")
    assert server.stats["ok"] == 2


def test_the_re_ask_is_recorded_in_the_run():
    with FaultServer(responder=lambda b: "NO" if _reasked(b) else "nope", lifetime_s=30) as server, \
            sf.OpenAIEngine(server.url, structured="none", **FAST) as engine:
        df = pl.DataFrame({"t": ["a", "b"]})
        run = df.lazy().semantic.classify("t", ["YES", "NO"], name="c").run(engine, cache=False)
    assert run.df["c"].to_list() == ["NO", "NO"]
    assert engine.usage.attempts == 4  # two rows, each asked twice
    lineage = run.lineage
    assert lineage["attempts"].to_list() == [2, 2]
    assert all(n.startswith("re-asked once: the first answer failed validation") for n in lineage["note"])
    assert lineage["raw_output"].to_list() == ["NO", "NO"] and lineage["error"].null_count() == 2


def test_retries_show_in_lineage():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)] + ["row 0"]})
    with FaultServer(fail_first=["429", "500"], lifetime_s=30) as server, sf.OpenAIEngine(server.url, **FAST) as engine:
        run = df.lazy().semantic.classify("t", ["YES", "NO"], name="c").run(engine, cache=False)
    lineage = run.lineage
    assert lineage["attempts"].to_list() == [3] * 6 + [0]  # the duplicate row reused an answer
    assert run.df["c"].null_count() == 0 and lineage["note"].null_count() == 7


# -- usage, latency, fingerprint ---------------------------------------------------------------


def test_usage_comes_from_the_server_with_cached_prompt_tokens(fake_openai_server):
    with sf.OpenAIEngine(fake_openai_server.url, max_concurrency=1, **FAST) as engine:
        done = engine.generate(batch(6))
    assert all(c.prompt_tokens > 0 and c.output_tokens > 0 for c in done)
    assert done[3].cached_prompt_tokens > 0  # its system message was seen before
    assert engine.usage.prompt_tokens == sum(c.prompt_tokens for c in done)
    assert engine.usage.cached_prompt_tokens == sum(c.cached_prompt_tokens for c in done) > 0


def test_the_fingerprint_is_what_the_server_serves():
    def fp(**kw) -> str:
        engine_kw = kw.pop("engine", {})
        with FaultServer(lifetime_s=30, **kw) as server, sf.OpenAIEngine(server.url, **engine_kw) as engine:
            return hashlib.sha256(json.dumps({**engine.fingerprint_facts(), "base_url": None}).encode()).hexdigest()

    base = fp()
    assert fp(root="/models/other") != base  # another model behind the same name
    assert fp(max_model_len=4096) != base
    assert fp(engine={"structured": "none"}) != base
    assert fp(engine={"extra_body": {"top_k": 1}}) != base
    assert fp(engine={"api_key": "sk-other"}) == base
    assert fp(owned_by="openai", created=1) != fp(owned_by="openai", created=2)  # an API's "created" dates the model


def test_vllms_created_is_left_out_of_the_fingerprint():
    with FaultServer(lifetime_s=30) as server:  # created = the time of each /models request, as vLLM's
        first, second = sf.OpenAIEngine(server.url), sf.OpenAIEngine(server.url)
        try:
            fp = first.fingerprint()
            time.sleep(1.05)
            assert second.fingerprint() == fp and len(fp) == 64 and int(fp, 16) >= 0
            assert first.server_models()[0]["created"] != second.server_models()[0]["created"]
        finally:
            first.close()
            second.close()


def test_the_fingerprint_is_computed_once_and_ignores_the_key_and_the_port_path(fake_openai_server):
    url = fake_openai_server.url
    a = sf.OpenAIEngine(url, api_key="one")
    b = sf.OpenAIEngine(url.replace("/v1", ""), api_key="two")  # /v1 is added to a bare host
    try:
        fake_openai_server.reset_stats()
        assert a.fingerprint() == b.fingerprint() == a.fingerprint()
        assert fake_openai_server.stats["GET /models"] == 2  # once per engine
        assert a.fingerprint() != sf.OpenAIEngine(url, model="other-model").fingerprint()
    finally:
        a.close()
        b.close()


# -- models and the registry -----------------------------------------------------------------------


def test_the_servers_only_model_is_taken(fake_openai_server):
    with sf.OpenAIEngine(fake_openai_server.url) as engine:
        assert engine.model == "fake-model"


def test_a_server_with_several_models_needs_a_name():
    with FaultServer(models=["small", "big"], lifetime_s=30) as server:
        with pytest.raises(EngineError, match=r"serves 2 models \(small, big\)"):
            sf.OpenAIEngine(server.url).model  # noqa: B018
        with sf.OpenAIEngine(server.url, model="big") as engine:
            assert engine.generate(batch(1))[0].ok
            assert server.bodies[-1]["model"] == "big"
        with pytest.raises(EngineError, match="small, big"):
            engine_by_name(server.url)


def test_a_url_is_an_engine_name(fake_openai_server):
    url = fake_openai_server.url
    assert check_engine(url) == url  # accepted without connecting
    df = pl.DataFrame({"t": ["x", "y", "x"]})
    out = df.lazy().semantic.classify("t", ["YES", "NO"], name="c", engine=url).collect(cache=False)
    assert out["c"].to_list()[0] == out["c"].to_list()[2] and set(out["c"]) <= {"YES", "NO"}
    engine = engine_by_name(url)
    assert isinstance(engine, sf.OpenAIEngine) and engine is engine_by_name(url)


def test_an_unreachable_server_is_a_clear_error():
    with sf.OpenAIEngine("http://127.0.0.1:9/v1", timeout_s=1) as engine:
        with pytest.raises(EngineError, match="cannot reach the server at http://127.0.0.1:9/v1"):
            engine.fingerprint()


# -- secrets -----------------------------------------------------------------------------------


def test_the_api_key_reaches_the_server_and_nothing_else(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    sf.configure(cache_dir=tmp_path / "cache")
    with FaultServer(faults={"400": 0.3}, seed=5, lifetime_s=30) as server:
        url = server.url.replace("http://", "http://user:pw-Secret-77@")
        with sf.OpenAIEngine(url, api_key="", **FAST) as basic:  # no key: the URL's credentials, as basic auth
            assert basic.generate(batch(1)) and server.auth_headers[-1].startswith("Basic ")
            assert "pw-Secret-77" not in repr(basic) + basic.base_url + json.dumps(basic.fingerprint_facts())
        server.auth_headers.clear()
        engine = sf.OpenAIEngine(url, **FAST)  # the key from the environment (it wins over the URL's)
        df = pl.DataFrame({"t": [f"row {i}" for i in range(12)]})
        run = df.lazy().semantic.classify("t", ["YES", "NO"], name="c").run(engine)
        texts = [repr(engine), str(engine), repr(vars(engine)), engine.fingerprint(),
                 json.dumps(engine.fingerprint_facts()), str(run.lineage.to_dicts()), str(run.cost),
                 str(run.metrics.to_dicts()), caplog.text, str(engine.usage),
                 *(c.error or "" for c in engine.generate(batch(6)))]
        engine.close()
        assert server.auth_headers and all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    assert run.lineage["error"].drop_nulls().len() > 0  # some rows failed with the echoing 400
    for text in texts:
        assert SECRET not in text and "pw-Secret-77" not in text
    cached = b"".join(p.read_bytes() for p in Path(tmp_path / "cache").rglob("*") if p.is_file())
    assert cached and SECRET.encode() not in cached and b"pw-Secret-77" not in cached
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(engine._api_key)


# -- the synchronous face ------------------------------------------------------------------------


def test_generate_works_inside_a_running_event_loop(fake_openai_server):
    # Jupyter runs its own loop in the calling thread: generate() must still work there.
    with sf.OpenAIEngine(fake_openai_server.url) as engine:
        async def cell():
            return engine.generate(batch(3))

        done = asyncio.run(cell())
    assert all(c.ok for c in done)


def test_close_stops_the_loop_thread_and_a_closed_engine_refuses(fake_openai_server):
    engine = sf.OpenAIEngine(fake_openai_server.url)
    engine.generate(batch(1))
    thread = engine._holder["loop"].thread
    assert thread.is_alive() and thread.daemon
    engine.close()
    engine.close()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(EngineError, match="closed"):
        engine.generate(batch(1))


class _Flaky(ConcurrentEngine):
    """The concurrent base with a hand-written call: fails per an attempt plan, then echoes."""

    name = "flaky"

    def __init__(self, plan: list[BaseException | None], **kw):
        super().__init__(**kw)
        self.plan = plan
        self.calls = 0

    @property
    def model(self) -> str:
        return "flaky"

    def fingerprint(self) -> str:
        return "f" * 64

    async def _acall(self, request):
        from semframe.engines.base import RawCompletion

        self.calls += 1
        failure = self.plan[self.calls - 1] if self.calls <= len(self.plan) else None
        if failure is not None:
            raise failure
        await asyncio.sleep(0)
        return RawCompletion(request.messages[-1].content, prompt_tokens=1, output_tokens=1)


@pytest.mark.parametrize("failure, transient", [
    (TransientError("HTTP 429", retry_after=0.0), True), (ConnectionResetError("reset"), True),
    (TimeoutError(), True), (FatalError("HTTP 404 not found", status=404), False),
    (ValueError("a bug in the call"), False),
])
def test_the_base_classifies_failures(failure, transient):
    with _Flaky([failure], backoff_s=0.01, max_backoff_s=0.01) as engine:
        (comp,) = engine.generate([Request((Message("user", "hi"),), TextSpec(), 4)])
    if transient:
        assert comp.ok and comp.value == "hi" and comp.attempts == 2
    else:
        assert not comp.ok and comp.attempts == 1 and "not retried" in comp.error


def test_the_base_times_out_an_attempt():
    class Hanging(_Flaky):
        async def _acall(self, request):
            self.calls += 1
            if self.calls == 1:
                await asyncio.sleep(10)
            return await super()._acall(request)

    with Hanging([], timeout_s=0.2, backoff_s=0.01, max_backoff_s=0.01) as engine:
        start = time.perf_counter()
        (comp,) = engine.generate([Request((Message("user", "hi"),), TextSpec(), 4)])
    assert comp.ok and comp.attempts == 2 and time.perf_counter() - start < 5  # not the 10 s hang


# -- money: per-token prices, budgets --------------------------------------------------------------


PRICES = {"input": 1.0, "cached_input": 0.25, "output": 4.0}


def test_an_api_engine_costs_its_tokens_at_its_prices(fake_openai_server):
    sf.configure(hourly_price=36_000.0)  # a local cost would be visible
    with sf.OpenAIEngine(fake_openai_server.url, prices=PRICES) as engine:
        assert engine.pricing.input == 1.0 and engine.pricing.cached_input == 0.25
        df = pl.DataFrame({"t": [f"title {i}" for i in range(10)] + ["title 0"]})
        run = df.lazy().semantic.classify("t", ["YES", "NO"]).run(engine, cache=False)
    c = run.cost
    expected = ((c.prompt_tokens - c.cached_prompt_tokens) * 1.0 + c.cached_prompt_tokens * 0.25
                + c.output_tokens * 4.0) / 1e6
    assert c.cached_prompt_tokens > 0 and c.token_usd == pytest.approx(expected)
    assert c.local_usd == 0.0 and c.total_usd == pytest.approx(expected)
    assert run.metrics["cost_usd"].sum() == pytest.approx(expected)
    assert c.saved_token_usd > 0  # the duplicate row was free: what it would have cost
    assert "BILLED BY TOKEN" in str(c)


def test_a_server_without_prices_is_priced_by_the_machine_hour(fake_openai_server):
    sf.configure(hourly_price=36_000.0)
    with sf.OpenAIEngine(fake_openai_server.url) as engine:
        assert engine.pricing is None
        run = pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.classify("t", ["YES", "NO"]).run(engine, cache=False)
    assert run.cost.token_usd == 0 and run.cost.local_usd == pytest.approx(run.engine_seconds * 10)


def test_a_named_price_and_a_bad_price():
    with sf.OpenAIEngine("http://127.0.0.1:9", "gpt-4o-mini", prices="openai/gpt-4o-mini") as engine:
        assert engine.pricing.model == "openai/gpt-4o-mini"
    with pytest.raises(EngineError, match="unknown price"):
        sf.OpenAIEngine("http://127.0.0.1:9", "m", prices="nobody/nothing")


def test_a_cost_budget_holds_with_many_requests_in_flight(fake_openai_server):
    df = pl.DataFrame({"t": [f"title number {i}" for i in range(100)]})
    with sf.OpenAIEngine(fake_openai_server.url, prices=PRICES, max_concurrency=32) as engine:
        fake_openai_server.reset_stats()
        with pytest.raises(sf.BudgetExceeded) as err:
            df.lazy().semantic.classify("t", ["YES", "NO"]).run(engine, cache=False, batch_size=32, max_cost=0.003)
        sent = len(fake_openai_server.bodies)
    run = err.value.result
    assert run.cost.token_usd <= 0.003 and err.value.spent_usd <= 0.003
    assert 0 < sent < 100 and sent % 32 == 0  # whole batches stopped before they were sent
    assert run.df.height == sent


def test_a_token_budget_holds_with_many_requests_in_flight(fake_openai_server):
    df = pl.DataFrame({"t": [f"title number {i}" for i in range(100)]})
    with sf.OpenAIEngine(fake_openai_server.url, max_concurrency=32) as engine:
        fake_openai_server.reset_stats()
        with pytest.raises(sf.BudgetExceeded) as err:
            df.lazy().semantic.classify("t", ["YES", "NO"]).run(engine, cache=False, batch_size=25, max_tokens=2000)
        sent = len(fake_openai_server.bodies)
    assert err.value.spent_tokens <= 2000 and 0 < sent < 100


def test_a_re_asking_engine_budgets_for_the_re_ask():
    with sf.OpenAIEngine("http://127.0.0.1:9", "m", structured="none") as engine:
        req = batch(1)[0]
        prompt, output = engine.token_bound(req, 100)
        assert prompt > 200 and output == 2 * req.max_tokens
    with sf.OpenAIEngine("http://127.0.0.1:9", "m", structured="vllm") as engine:
        assert engine.token_bound(req, 100) == (100, req.max_tokens)


# -- a real vllm serve -----------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_against_a_real_vllm_serve(vllm_server):
    url, model_dir = vllm_server
    with sf.OpenAIEngine(url, max_concurrency=16, timeout_s=120) as engine:
        assert engine.model == "tiny" and engine.structured == "vllm"
        facts = engine.fingerprint_facts()
        assert facts["server"]["root"] == str(model_dir) and facts["server"]["max_model_len"] > 0
        df = pl.DataFrame({"t": ["Battle of Waterloo", "Banana bread", "Treaty of Versailles", "Banana bread"]})
        run = (df.lazy().semantic.classify("t", ["YES", "NO"], name="c", probabilities=True)
               .semantic.extract("t", {"year": int, "war": bool}, name="x")
               .semantic.map("Say {t}", name="m", max_tokens=6)
               .run(engine, cache=False))
        assert run.lineage["error"].drop_nulls().len() == 0, run.lineage["error"].drop_nulls().to_list()
        assert set(run.df["c"]) <= {"YES", "NO"}
        assert all(isinstance(x["year"], int) for x in run.df["x"].to_list())
        probs = run.df["c_probabilities"].to_list() if "c_probabilities" in run.df.columns else []
        assert probs and all(p is None or abs(sum(p.values()) - 1) < 1e-6 for p in probs)
        assert any(p is not None for p in probs)  # from the server's logprobs of the label's token
        m = run.metrics
        assert m["prompt_tokens"].sum() > 0 and m["output_tokens"].sum() > 0
        assert engine.usage.attempts == engine.usage.requests
