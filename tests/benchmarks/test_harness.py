"""The benchmark harness runs: the protocol, the naive loop against a fake server, the summary
and the tables (fast), and a tiny end-to-end run of semframe against raw vLLM (slow, needs vLLM
and the packaged SmolLM2 model)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks._common import Worker, markdown_table, percentile
from benchmarks.harness import WorkloadResult, summarize
from benchmarks.report import contender_table


class _FakeChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that answers the first allowed choice."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.seen.append(body)
        choice = body.get("structured_outputs", {}).get("choice", ["?"])[0]
        reply = {"choices": [{"message": {"content": choice}}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 4}}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_naive_loop_worker_speaks_the_protocol(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = {"kind": "classify", "labels": ["YES", "NO"], "max_tokens": 5, "rows": [{"title": "a"}] * 6,
            "requests": [[["system", "Is it?"], ["user", f"row {i}"]] for i in range(6)],
            "server": {"url": f"http://127.0.0.1:{server.server_port}", "model": "m", "alias": "gpt-4o-mini"}}
    w = Worker("naive_loop", "naive_loop_worker.py", spec, tmp_path)
    try:
        assert w.start()["ready"]
        res = w.run()
        part = w.run(rows=2)
    finally:
        w.stop()
        server.shutdown()
    assert res["rows"] == 6 and res["answers"] == ["YES"] * 6
    assert res["prompt_tokens"] == 60 and res["cached_prompt_tokens"] == 24 and len(res["latencies_s"]) == 6
    assert part["rows"] == 2
    sent = _FakeChat.seen[0]
    assert sent["structured_outputs"] == {"choice": ["YES", "NO"]} and sent["max_tokens"] == 5
    assert sent["messages"][0] == {"role": "system", "content": "Is it?"}


def test_summary_takes_ratios_within_a_repetition():
    def run(rep, wall, answers, **kw):
        return {"repeat": rep, "wall_s": wall, "rows": 4, "answers": answers, "prompt_tokens": 100,
                "cached_prompt_tokens": 40, "output_tokens": 8, "engine_requests": 4, **kw}

    result = WorkloadResult("titles", {"kind": "classify"}, {"minimum_prompt_tokens": 50})
    result.runs["raw_vllm"] = [run(0, 1.0, ["YES", "NO", "NO", "YES"]), run(1, 2.0, ["YES", "NO", "NO", "YES"])]
    result.runs["semframe"] = [run(0, 1.5, ["YES", "NO", "NO", "YES"]), run(1, 2.2, ["YES", "NO", "YES", "YES"])]
    result.runs["naive_loop"] = [run(0, 3.0, ["yes", "NO", "NO", "YES"], latencies_s=[0.1, 0.2, 0.3, 0.5],
                                     server={"prompt_tokens": 120, "cached_prompt_tokens": 20,
                                             "output_tokens": 8, "requests": 4})]
    rows = {r["contender"]: r for r in summarize(result)}
    assert rows["semframe"]["vs_raw_vllm"] == pytest.approx((1.5 + 1.1) / 2)
    assert rows["semframe"]["computed_over_minimum"] == pytest.approx(60 / 50)
    assert rows["semframe"]["agreement_with_raw"] == 0.75  # its last run differs on one row
    naive = rows["naive_loop"]
    assert naive["tokens_from"] == "server" and naive["prompt_tokens"] == 120 and naive["computed_prompt_tokens"] == 100
    assert naive["agreement_with_raw"] == 1.0  # labels compare case-insensitively
    assert naive["latency_p90_p10_s"] == pytest.approx(percentile([0.1, 0.2, 0.3, 0.5], 90) - 0.13)
    table = contender_table(list(rows.values()))
    assert table.count("\n") == 4 and "| semframe |" in table


def test_markdown_table_formats_numbers():
    assert markdown_table(["a", "b"], [[1234, 0.5], [None, "x"]]).splitlines()[2:] == ["| 1,234 | 0.50 |", "| – | x |"]


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.smollm2
@needs_vllm
def test_titles_end_to_end_semframe_against_raw_vllm():
    from benchmarks.harness import run_workload
    from benchmarks.workloads import DEFAULT

    sizes = dataclasses.replace(DEFAULT, titles=4)
    result = run_workload("titles", sizes, ["semframe", "raw_vllm"], repeats=1)
    assert not result.failed, result.failed
    rows = {r["contender"]: r for r in summarize(result)}
    assert set(rows) == {"semframe", "raw_vllm"}
    for r in rows.values():
        assert r["engine_requests"] == 4 and r["prompt_tokens"] > 0 and r["wall_s"] > 0
    assert rows["semframe"]["prompt_tokens"] == rows["raw_vllm"]["prompt_tokens"]  # the very same prompts
    assert result.limits["minimum_prompt_tokens"] < result.limits["distinct_prompt_tokens"]


def test_a_partial_rerun_keeps_the_earlier_runs_other_numbers():
    from benchmarks.run_all import merge_runs, render_runs

    def section(contenders, wall):
        return {"workload": "titles", "spec_info": {"kind": "classify", "rows": 4, "model": "/m/SmolLM2",
                                                   "max_tokens": 5},
                "limits": {"distinct_requests": 4, "minimum_prompt_tokens": 50, "distinct_prompt_tokens": 80,
                           "shared_prefix_tokens": 10},
                "runs": {c: [{"repeat": 0, "wall_s": wall * (1 + k), "rows": 4, "prompt_tokens": 80,
                              "agreement_with_raw": 1.0}] for k, c in enumerate(contenders)},
                "startup_s": {}, "failed": {}, "server_rss_mib": None}

    def run(date, workloads):
        return {"facts": {"date": date, "semframe_commit": date[:3], "cpu": "cpu", "cores": 2, "memory_gib": 1,
                          "os": "os", "threads": "1", "python": "3", "versions": {}},
                "repeats": 1, "command": f"cmd {date}", "minutes": 1.0, "full": True, "workloads": workloads}

    old = run("old", {"titles": section(["semframe", "raw_vllm", "lotus"], 10.0),
                      "long_context": section(["semframe", "raw_vllm"], 5.0)})
    new = run("new", {"titles": section(["raw_vllm", "semframe"], 1.0)})
    runs = merge_runs(new, [old])
    assert [list(r["workloads"]) for r in runs] == [["titles"], ["titles", "long_context"]]
    text = render_runs(runs, full=True)
    assert text.index("cmd new") < text.index("cmd old")
    assert "Not rerun here: lotus; their numbers are from the earlier run of old" in text
    assert "Superseded: semframe, raw_vllm were run again in the run of new" in text
    assert "semframe / raw vLLM wall time, repetition by repetition: 2.000; median 2.000." in text
    # a rerun of everything an earlier section shows replaces it, and an emptied run goes
    full = run("newer", {"titles": section(["semframe", "raw_vllm", "lotus"], 1.0),
                         "long_context": section(["semframe", "raw_vllm"], 1.0)})
    assert [r["facts"]["date"] for r in merge_runs(full, runs)] == ["newer"]
