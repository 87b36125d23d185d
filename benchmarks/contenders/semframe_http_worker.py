"""semframe over HTTP: the workload's plan run on ``sf.OpenAIEngine`` against an OpenAI-compatible
server (``spec["server"]``: a ``vllm serve`` of the same model, or a fault-injecting proxy in
front of it).

The same plan and run options as ``semframe_worker.py``; only the engine differs. Spec options
(``spec["http"]``): ``url`` (overrides the server's), ``max_concurrency``, ``timeout_s``,
``backoff_s``. Each result adds the engine's attempts and errors during the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _protocol import serve  # noqa: E402

import semframe_worker  # noqa: E402


class State:
    def __init__(self, spec: dict[str, Any]):
        import semframe as sf

        self.spec = spec
        self.opts = spec.get("semframe", {})
        http = spec.get("http", {})
        sf.configure(progress=False)
        url = http.get("url") or spec["server"]["url"] + "/v1"
        self.engine = sf.OpenAIEngine(url, model=spec["server"]["model"],
                                      max_concurrency=int(http.get("max_concurrency", 64)),
                                      timeout_s=float(http.get("timeout_s", 600)),
                                      backoff_s=float(http.get("backoff_s", 0.5)))

    def close(self) -> None:
        self.engine.close()


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    usage = state.engine.usage
    attempts, requests, errors = usage.attempts, usage.requests, usage.errors
    out = semframe_worker.run(state, cmd)
    out["attempts"] = usage.attempts - attempts
    out["engine_requests_sent"] = usage.requests - requests
    out["engine_errors"] = usage.errors - errors
    out["rows_lost"] = sum(a is None for a in out["answers"])
    return out


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    serve(setup, run)
