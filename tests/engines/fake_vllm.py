"""A tiny vLLM-like HTTP server for alignment tests: ``/v1/models`` (owned by vllm), ``/metrics``
(prefix caching on, a block size of its own), ``/tokenize`` (one token per character, ``" ."`` one
token, a simple chat template) and ``/v1/chat/completions`` (answers "YES"; ``prompt_tokens`` is
the rendered prompt's length). Loopback only; ``metrics_fail`` answers ``/metrics`` 503 that
many times first."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = re.compile(r" \.|.", re.S)
_VOCAB: dict[str, int] = {}


def ids(text: str) -> list[int]:
    return [_VOCAB.setdefault(t, 100 + len(_VOCAB)) for t in TOKEN.findall(text)]


def render(messages: list[dict[str, str]], generation_prompt: bool = True) -> list[int]:
    out = [1]
    for m in messages:
        out += [2, _VOCAB.setdefault("<" + m["role"] + ">", 50 + len(_VOCAB)), *ids(m["content"]), 3]
    return out + ([4] if generation_prompt else [])


class FakeVLLM:
    def __init__(self, block: int = 16):
        self.block, self.metrics_fail = block, 0
        self.bodies: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, raw: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/v1/models"):
                    entry = {"id": "tiny", "object": "model", "owned_by": "vllm", "root": "tiny", "max_model_len": 4096}
                    return self._send(200, json.dumps({"data": [entry]}).encode())
                if self.path.startswith("/metrics"):
                    if owner.metrics_fail > 0:
                        owner.metrics_fail -= 1
                        return self._send(503, b'{"error": "warming up"}')
                    line = f'vllm:cache_config_info{{block_size="{owner.block}",enable_prefix_caching="True"}} 1.0\n'
                    return self._send(200, line.encode(), "text/plain")
                self._send(404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.startswith("/tokenize"):
                    toks = (render(body["messages"], body.get("add_generation_prompt", True)) if "messages" in body
                            else ids(body["prompt"]))
                    return self._send(200, json.dumps({"tokens": toks, "count": len(toks)}).encode())
                if self.path.startswith("/v1/chat/completions"):
                    owner.bodies.append(body)
                    answer = {"choices": [{"message": {"content": "YES"}, "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": len(render(body["messages"])), "completion_tokens": 1}}
                    return self._send(200, json.dumps(answer).encode())
                self._send(404, b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
