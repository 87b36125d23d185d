"""A small fake OpenAI-compatible server that injects faults, for the HTTP engine's tests.

:class:`FaultServer` listens on 127.0.0.1 only, on an ephemeral port, in a daemon thread. It is
bounded: it shuts itself down after ``lifetime_s`` seconds or ``max_requests`` requests,
whichever comes first (and when the ``with`` block ends).

It answers ``GET /v1/models`` and ``POST /v1/chat/completions`` the way the deterministic engine
would: the answer is a pure function of the request body (a label picked by a hash for a choice,
a value of every schema field for a JSON schema, an echo of the last message for free text), cut
at ``max_tokens`` with ``finish_reason: "length"``, with usage (``prompt_tokens``, ``cached_tokens``
for a system message it has seen before, ``completion_tokens``) counted at ~4 characters a token.
It understands vLLM's ``structured_outputs`` and OpenAI's ``response_format`` json_schema.

Faults, chosen per request by a hash of (seed, body, how many times that body arrived), so a run
is reproducible whatever the order of arrival:

- ``fail_first=["429", "500"]``: the first arrival of every distinct body gets a 429, the second a
  500, later ones an answer (exact attempt counts for tests);
- ``faults={"429": 0.2, "500": 0.05}``: each arrival gets a fault with these probabilities.

Kinds: ``"429"`` (no Retry-After), ``"429_retry_after"`` (``Retry-After: 1``), ``"429_retry_after_ms"``
(``retry-after-ms: 50``), ``"500"``, ``"503"``, ``"400"`` (fatal), ``"timeout"`` (answers after
``hang_s``), ``"reset"`` (TCP reset after reading the request), ``"malformed"`` (200 with a body
that is not JSON), ``"truncated"`` (200 with half the JSON), ``"slow"`` (answers after ``slow_s``).

With ``upstream="http://127.0.0.1:PORT"`` it is a fault-injecting proxy: answers come from that
server instead (a real ``vllm serve``); its tokenizer endpoints (``/tokenize``, ``/detokenize``)
and ``/metrics`` are forwarded without faults, so the engine decodes and aligns as it would there.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("429", "429_retry_after", "429_retry_after_ms", "500", "503", "400", "timeout", "reset", "malformed",
         "truncated", "slow")


def tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _value(schema: dict[str, Any], seed: int) -> Any:
    """A value that fits ``schema`` (semframe's JSON schemas), chosen by ``seed``."""
    if "anyOf" in schema:
        return _value(next(s for s in schema["anyOf"] if s.get("type") != "null"), seed)
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {name: _value(sub, seed + i) for i, (name, sub) in enumerate(schema.get("properties", {}).items())}
    if kind == "array":
        n = max(schema.get("minItems", 0), min(1 + seed % 3, schema.get("maxItems", 3)))
        return [_value(schema.get("items", {"type": "string"}), seed + j) for j in range(n)]
    if kind == "string":
        text = f"v{seed % 997}"
        text += "x" * max(0, schema.get("minLength", 0) - len(text))
        return text[: schema.get("maxLength", len(text))]
    if kind == "integer":
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 10**6)
        return lo + seed % (min(hi, lo + 2000) - lo + 1)
    if kind == "number":
        return float(schema.get("minimum", 0)) + (seed % 100) / 10
    return seed % 2 == 0


def answer_text(body: dict[str, Any]) -> str:
    """The deterministic answer to a chat-completions body (before the max_tokens cut)."""
    messages = body.get("messages") or []
    seed = int(hashlib.sha256(json.dumps(
        [messages, body.get("max_tokens"), body.get("temperature"), body.get("top_p")],
        sort_keys=True).encode()).hexdigest()[:12], 16)
    so = body.get("structured_outputs") or {}
    rf = body.get("response_format") or {}
    if so.get("choice"):
        labels = so["choice"]
        return labels[seed % len(labels)]
    if so.get("json"):
        return json.dumps(_value(so["json"], seed), separators=(",", ":"))
    if rf.get("type") == "json_schema":
        schema = rf["json_schema"]["schema"]
        return json.dumps(_value(schema, seed), separators=(",", ":"))
    words = (messages[-1].get("content") or "").split() if messages else []
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
    return "echo: " + " ".join(words[: max(1, limit - 1)])


class FaultServer:
    """See the module docstring. Use as a context manager; ``url`` is its ``/v1`` base URL."""

    def __init__(self, *, faults: dict[str, float] | None = None, fail_first: list[str] | None = None,
                 seed: int = 0, models: list[str] | None = None, owned_by: str = "vllm",
                 root: str = "/models/fake", max_model_len: int = 2048, created: int | None = None,
                 responder: Callable[[dict[str, Any]], str] | None = None, upstream: str | None = None,
                 hang_s: float = 2.0, slow_s: float = 0.3, max_requests: int = 20_000, lifetime_s: float = 300.0):
        self.faults = dict(faults or {})
        unknown = (set(self.faults) | set(fail_first or ())) - {"ok"} - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.fail_first = list(fail_first or [])
        self.seed = seed
        self.models = models or ["fake-model"]
        self.owned_by, self.root, self.max_model_len, self.created = owned_by, root, max_model_len, created
        self.responder = responder
        self.upstream = upstream.rstrip("/") if upstream else None
        self.hang_s, self.slow_s = hang_s, slow_s
        self.max_requests, self.lifetime_s = max_requests, lifetime_s
        self.stats: Counter[str] = Counter()  # fault kind (or "ok") -> count
        self.bodies: list[dict[str, Any]] = []  # every chat body received, in arrival order
        self.auth_headers: list[str | None] = []
        self._arrivals: Counter[str] = Counter()
        self._seen_systems: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many clients connect at once: no SYN dropped by a short backlog

        server = Server(("127.0.0.1", 0), Handler)  # loopback only, ephemeral port
        server.daemon_threads = True
        self._server = server
        serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                 name="fault-server")
        watchdog = threading.Thread(target=self._watchdog, daemon=True, name="fault-server-watchdog")
        self._threads = [serve, watchdog]
        serve.start()
        watchdog.start()
        return self

    def _watchdog(self) -> None:
        self._stop.wait(self.lifetime_s)  # at most this long, whatever the tests do
        self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        server = self._server
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_stats(self) -> None:
        with self._lock:
            self.stats.clear()
            self.bodies.clear()
            self._arrivals.clear()

    # -- decisions ------------------------------------------------------------------------------

    def decide(self, raw: bytes) -> str:
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            n = self._arrivals[digest]
            self._arrivals[digest] += 1
            total = sum(self.stats.values())
        if total >= self.max_requests:
            self._shutdown()
            return "503"
        if n < len(self.fail_first):
            return self.fail_first[n]
        if self.faults:
            u = random.Random(f"{self.seed}:{digest}:{n}").random()
            acc = 0.0
            for kind in KINDS:
                acc += self.faults.get(kind, 0.0)
                if u < acc:
                    return kind
        return "ok"

    def count(self, kind: str) -> None:
        with self._lock:
            self.stats[kind] += 1

    def models_body(self) -> dict[str, Any]:
        created = int(time.time()) if self.created is None else self.created  # vLLM's: the time of the request
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": self.owned_by, "root": self.root,
             "parent": None, "max_model_len": self.max_model_len} for m in self.models]}

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.responder is not None:
            text = self.responder(body)
        else:
            text = answer_text(body)
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        finish = "stop"
        if tokens(text) > limit:
            text, finish = text[: 4 * limit], "length"
        messages = body.get("messages") or []
        prompt = sum(tokens(m.get("content") or "") + 4 for m in messages) + 3
        cached = 0
        if messages and messages[0].get("role") == "system":
            system = messages[0].get("content") or ""
            with self._lock:
                if system in self._seen_systems:
                    cached = tokens(system)
                self._seen_systems.add(system)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": _logprobs(body, text)}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "system_fingerprint": "fp-fake",
                "choices": [choice],
                "usage": {"prompt_tokens": prompt, "completion_tokens": tokens(text),
                          "total_tokens": prompt + tokens(text), "prompt_tokens_details": {"cached_tokens": cached}}}


def _labels(body: dict[str, Any]) -> list[str] | None:
    so = body.get("structured_outputs") or {}
    if so.get("choice"):
        return list(so["choice"])
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        prop = rf["json_schema"]["schema"].get("properties", {}).get("answer", {})
        return list(prop["enum"]) if "enum" in prop else None
    return None


def _logprobs(body: dict[str, Any], text: str) -> list[dict[str, Any]]:
    """Per-token log-probabilities of ``text`` (4-character tokens); at the label's first token the
    top alternatives are every label's first token, the answer's the likeliest."""
    chunks = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
    out = [{"token": c, "logprob": -0.05, "top_logprobs": [{"token": c, "logprob": -0.05}]} for c in chunks]
    labels = _labels(body)
    if labels:
        start = next((text.find(label) for label in labels if label in text), -1)
        at = start // 4 if start >= 0 else -1
        if 0 <= at < len(out) and start % 4 == 0:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            tops = []
            for i, label in enumerate(labels):
                token = label[:4]
                lp = -0.1 if text[start:].startswith(label) else -1.5 - (seed >> i) % 3
                tops.append({"token": token, "logprob": lp})
            out[at]["top_logprobs"] = tops
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: FaultServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server_owner
        if self.path.rstrip("/") == "/v1/models":
            owner.count("GET /models")
            if owner.upstream:
                status, payload = _forward(owner.upstream + "/v1/models", None)
                self._send(status, payload)
                return
            self._json(200, owner.models_body())
        elif owner.upstream and self.path.rstrip("/") == "/metrics":
            self._send(*_forward(owner.upstream + "/metrics", None), content_type="text/plain")
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server_owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if owner.upstream and self.path.rstrip("/") in ("/tokenize", "/detokenize"):
            self._send(*_forward(owner.upstream + self.path.rstrip("/"), raw))  # tokenizer calls: no faults
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON"}})
            return
        with owner._lock:
            owner.bodies.append(body)
            owner.auth_headers.append(self.headers.get("Authorization"))
        kind = owner.decide(raw)
        owner.count(kind)
        if kind == "429":
            self._json(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
        elif kind == "429_retry_after":
            self._json(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        elif kind == "429_retry_after_ms":
            self._json(429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "50"})
        elif kind in ("500", "503"):
            self._json(int(kind), {"error": {"message": "server error"}})
        elif kind == "400":
            # Echoes the credentials, as careless servers do: the engine must redact them.
            auth = self.headers.get("Authorization") or ""
            self._json(400, {"error": {"message": f"invalid request: bad parameter (you sent {auth!r})"}})
        elif kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif kind == "malformed":
            self._send(200, b"<html>upstream hiccup</html>", content_type="text/html")
        elif kind == "truncated":
            status, payload = self._answer(owner, body, raw)
            self._send(status, payload[: len(payload) // 2])
        else:
            if kind == "timeout":
                owner._stop.wait(owner.hang_s)  # past the client's timeout
            elif kind == "slow":
                owner._stop.wait(owner.slow_s)
            try:
                self._send(*self._answer(owner, body, raw))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout fault)

    def _answer(self, owner: FaultServer, body: dict[str, Any], raw: bytes) -> tuple[int, bytes]:
        if owner.upstream:
            return _forward(owner.upstream + "/v1/chat/completions", raw)
        return 200, json.dumps(owner.completion(body)).encode()


def _forward(url: str, raw: bytes | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=raw, method="POST" if raw is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
