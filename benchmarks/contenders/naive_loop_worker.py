"""The naive loop: N concurrent clients, one HTTP request per row, to a local ``vllm serve``.

This is what teams write against a real-time API: a thread pool (4 clients by default), one
chat-completion request per row (no deduplication, no caching), the same chat messages, sampling
and structured-output choice that semframe sends. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _protocol import peak_rss_mib, serve  # noqa: E402


class State:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        url = urlparse(spec["server"]["url"])
        self.host, self.port = url.hostname, url.port
        self.clients = int(spec.get("naive_clients", 4))
        self.local = threading.local()

    def connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        return conn

    def ask(self, messages: list[list[str]]) -> dict[str, Any]:
        spec = self.spec
        body: dict[str, Any] = {
            "model": spec["server"]["model"],
            "messages": [{"role": r, "content": c} for r, c in messages],
            "max_tokens": spec["max_tokens"],
            "temperature": 0.0,
        }
        if spec["kind"] == "classify":
            body["structured_outputs"] = {"choice": spec["labels"]}
        start = time.perf_counter()
        conn = self.connection()
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        latency = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"server answered {resp.status}: {data}")
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return {
            "text": data["choices"][0]["message"]["content"],
            "latency_s": latency,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_prompt_tokens": details.get("cached_tokens") or 0,
            "output_tokens": usage.get("completion_tokens", 0),
        }


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    requests = state.spec["requests"]
    n = cmd.get("rows") or len(requests)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=state.clients) as pool:
        results = list(pool.map(state.ask, requests[:n]))
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "rows": n,
        "engine_requests": n,
        "engine_calls": n,
        "prompt_tokens": sum(r["prompt_tokens"] for r in results),
        "cached_prompt_tokens": sum(r["cached_prompt_tokens"] for r in results),
        "output_tokens": sum(r["output_tokens"] for r in results),
        "latencies_s": [r["latency_s"] for r in results],
        "answers": [r["text"] for r in results],
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    serve(setup, run)
