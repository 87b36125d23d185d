"""``OpenAIEngine``: any OpenAI-compatible chat-completions server, over HTTP.

``vllm serve``, llama.cpp's ``llama-server``, Ollama, SGLang, a provider's API (OpenAI, Together,
...): anything that answers ``POST {base_url}/chat/completions`` the way OpenAI's API does. The
model is any name the server knows (there is no catalog); ``sf.OpenAIEngine("http://host:8000")``
without a model takes the server's only one.

Requests go out concurrently through :class:`~semframe.engines.concurrent.ConcurrentEngine`
(in-flight limit, rate limits, timeouts, retries with backoff and ``Retry-After``, one error per
failed row); the HTTP client is ``httpx``. Structured outputs are asked for the way the server
understands them (``structured=``):

- ``"vllm"``: vLLM's ``structured_outputs`` field -- ``{"choice": labels}`` for a choice,
  ``{"json": schema}`` for a JSON answer (the old ``guided_choice`` is silently ignored by
  current vLLM, so it is never sent);
- ``"openai"``: OpenAI's ``response_format`` of type ``json_schema`` (strict); a choice is asked as
  ``{"answer": <one of the labels>}`` and the label is read back out of it;
- ``"none"``: nothing is constrained; each answer is parsed and validated against its spec, and
  an answer that fails is asked again once with the validation error (the completion's ``note``
  and ``attempts`` record the re-ask; a second failure is the row's error, saying so);
- ``"auto"`` (default): ``"vllm"`` when the server's ``/v1/models`` says ``owned_by: vllm``,
  else ``"openai"``.

A choice's label probabilities (``Completion.probabilities``) come from the log-probabilities the
server reports for the answer's first token (``logprobs``, ``top_logprobs=20``): each reported
token that begins exactly one label adds its probability to that label, renormalised over the
labels -- the labels' share of the server's top 20 tokens at the position where the label is
picked (None where that position cannot be found, or the answer's own token begins no single
label). A server that refuses ``logprobs`` (HTTP 400) is asked again without, once, and never
asked for them again.

Usage is the server's (``prompt_tokens``, ``prompt_tokens_details.cached_tokens``,
``completion_tokens``). The fingerprint is computed once, lazily, from what the server says it
serves (its ``/v1/models`` entry: id, root, max_model_len, owned_by, and ``created`` except on
vLLM, where it is the time of the request), the base URL without credentials and the options
that change answers. The API key never appears in reprs, logs, errors, lineage, caches or
fingerprints.

Against a vLLM server with prefix caching (its ``/metrics`` report the cache's block size),
``align_prefix=True`` (default) pads the end of a prompt's first message with ``" ."`` tokens so
that the last message -- the row's text -- starts on a KV block boundary: vLLM's prefix cache
reuses whole blocks only, so every token of the shared instruction is then reused (the in-process
engine's ``align_prefix``; the pad count comes from the server's own ``/tokenize``, three calls per
distinct instruction, once).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from semframe.engines.base import Message, RawCompletion, Request
from semframe.engines.concurrent import ConcurrentEngine, FatalError, TransientError
from semframe.errors import EngineError, OutputError
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

logger = logging.getLogger("semframe")

STRUCTURED_MODES = ("auto", "vllm", "openai", "none")
LABEL_DECODING_MODES = ("auto", "one_token", "grammar")
#: HTTP statuses worth retrying besides 5xx: request timeout, conflict (OpenAI's advice), rate limit.
_RETRY_STATUSES = frozenset({408, 409, 429})
#: Prompt tokens over the heuristic estimate assumed before the server has reported any.
_FIRST_PROMPT_RATIO = 2.0
#: Log-probabilities asked for at each answer token of a choice (OpenAI's and vLLM's default maximum).
_TOP_LOGPROBS = 20
#: The text whose token pads a shared prefix to a block boundary (``align_prefix``).
_PAD_TEXT = " ."
#: Distinct shared prefixes an engine aligns (3-4 ``/tokenize`` calls each, once); prompts with
#: prefixes past that go as built, always (one request is never sent two ways). Plans share one
#: instruction per step: only prompts whose first message differs by row get that many.
_MAX_ALIGNED_PREFIXES = 64
#: Two last-message contents that share no first token: where their renderings part is where the
#: row's own tokens begin. (Not private-use characters: their byte tokens share a first byte.)
_PROBES = ("A", "Z")
_UNRESOLVED: Any = object()
#: What the re-ask says (the validation error follows).
_REASK = ("Your answer could not be used: {error}. Answer again with only {expected}, "
          "nothing else.")


class _Secret:
    """A credential: usable by the client, shown nowhere (repr, str, format give ``***``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a credential cannot be pickled")


def _split_url(base_url: str) -> tuple[str, tuple[str, str] | None]:
    """The base URL without user:password (and with ``/v1`` added to a bare host), and the credentials."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise EngineError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {base_url!r}")
    parts = urllib.parse.urlsplit(base_url)
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    path = parts.path.rstrip("/")
    if path == "":
        path = "/v1"
    # A query (e.g. Azure's api-version) is kept; a fragment never matters.
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, ""))
    return clean, auth


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIEngine(ConcurrentEngine):
    """An engine answering through an OpenAI-compatible chat-completions server.

    Parameters
    ----------
    base_url
        The server's API root, e.g. ``"http://127.0.0.1:8000/v1"`` (``/v1`` is added to a bare
        ``http://host:port``). Credentials in the URL (``https://user:pw@host``) are sent as
        basic auth and dropped everywhere else.
    model
        The model name the server knows. None: the server's only model (``/v1/models``); an
        error lists them when it serves several.
    api_key
        Sent as ``Authorization: Bearer ...``. None: ``$OPENAI_API_KEY`` if set, else no header
        (local servers need none).
    max_concurrency, requests_per_minute, tokens_per_minute, timeout_s, max_attempts
        See :class:`~semframe.engines.concurrent.ConcurrentEngine`.
    structured
        ``"auto"``, ``"vllm"``, ``"openai"`` or ``"none"``: how choice and JSON answers are
        constrained (see the module docstring).
    prices
        What the API charges: a :class:`~semframe.accounting.prices.TokenPrice`, the name of one
        in ``sf.accounting.TOKEN_PRICES`` (e.g. ``"openai/gpt-4o-mini"``), or a dict
        ``{"input": ..., "output": ..., "cached_input": ...}`` in USD per million tokens. Runs,
        estimates and budgets then cost tokens x these prices. None (default): a server you run
        yourself, priced by the machine-hour like a local engine (``sf.configure(machine=...)``).
    extra_body
        Fields added to every request body (e.g. ``{"seed": 0}``, ``{"top_k": 1}``); part of the
        fingerprint.
    headers
        Extra HTTP headers (never logged; not part of the fingerprint).
    label_decoding
        ``"auto"`` (default), ``"one_token"`` or ``"grammar"``: how a choice is decoded against a
        vLLM server. ``"one_token"``: where the labels each begin with a token of their own (the
        in-process engine's rule, ``build_label_table``, over the server's ``/tokenize``), one
        decode step restricted to those tokens (``max_tokens: 1``, ``allowed_token_ids``), the
        token mapped back to its label; other label sets use the grammar. ``"auto"``:
        ``"one_token"`` where ``structured`` is ``"vllm"`` and the server answers ``/tokenize``,
        else ``"grammar"`` (decided once, logged). Part of the fingerprint (``choice_decoding``).
    align_prefix
        True (default): against a vLLM server whose ``/metrics`` report prefix caching, pad each
        prompt's first message so the last one starts on a KV block boundary (see the module
        docstring); the block size is part of the fingerprint then. No effect on other servers.
        False: prompts as built.

    Examples
    --------
    >>> import semframe as sf
    >>> engine = sf.OpenAIEngine("http://127.0.0.1:8000", "my-model", api_key="sk-secret")
    >>> engine
    OpenAIEngine(base_url='http://127.0.0.1:8000/v1', model='my-model')
    >>> "sk-secret" in repr(vars(engine))
    False
    >>> engine.close()
    """

    name = "openai"
    device = "remote"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, *,
                 max_concurrency: int = 32, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, timeout_s: float = 120.0, max_attempts: int = 8,
                 structured: str = "auto", prices: Any = None, extra_body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 max_retry_after_s: float = 120.0, label_decoding: str = "auto",
                 align_prefix: bool = True) -> None:
        super().__init__(max_concurrency=max_concurrency, requests_per_minute=requests_per_minute,
                         tokens_per_minute=tokens_per_minute, timeout_s=timeout_s, max_attempts=max_attempts,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, max_retry_after_s=max_retry_after_s)
        if structured not in STRUCTURED_MODES:
            raise EngineError(f"structured must be one of {', '.join(map(repr, STRUCTURED_MODES))}, got {structured!r}")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise EngineError(f"model must be a non-empty string (or None: the server's only model), got {model!r}")
        self.base_url, auth = _split_url(base_url)
        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY") or None
        self._api_key = _Secret(api_key) if api_key else None
        # Credentials in the URL are basic auth, unless an API key is given (it wins).
        self._auth = (auth[0], _Secret(auth[1])) if auth else None
        self._url_secret = self._auth[1] if self._auth else None
        if self._api_key is not None:
            self._auth = None
        if label_decoding not in LABEL_DECODING_MODES:
            raise EngineError(f"label_decoding must be one of {', '.join(map(repr, LABEL_DECODING_MODES))}, "
                              f"got {label_decoding!r}")
        if not isinstance(align_prefix, bool):
            raise EngineError(f"align_prefix must be True or False, got {align_prefix!r}")
        self._align_prefix = align_prefix
        self._prefix_block: Any = _UNRESOLVED if align_prefix else None
        self._pads: dict[tuple[Any, ...], int] = {}  # shared prefix -> " ." to append (0: none needed or possible)
        self._model = model
        self._structured = structured
        self._label_decoding = label_decoding
        self._label_tables: dict[tuple[str, ...], Any] = {}
        self._tokenizer: _HTTPTokenizer | None = None
        self.pricing = _pricing(prices)
        self._extra_body = dict(extra_body or {})
        self._headers = {k: _Secret(v) for k, v in (headers or {}).items()}
        self._models: list[dict[str, Any]] | None = None  # the server's /v1/models, read once
        self._fingerprint: str | None = None
        self._max_ratio = 0.0  # the highest server prompt tokens / our estimate seen so far
        self._system_fingerprints: set[str] = set()
        self._client: Any = None
        self._logprobs = True  # asked for a choice's first token until the server refuses them

    # -- identity -------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model name sent to the server (asked of the server, once, if none was given)."""
        if self._model is None:
            self._model = self._only_model()
        return self._model

    @property
    def structured(self) -> str:
        """How structured outputs are asked for: ``"vllm"``, ``"openai"`` or ``"none"`` (resolved)."""
        if self._structured == "auto":
            entry = self._entry()
            self._structured = "vllm" if entry is not None and entry.get("owned_by") == "vllm" else "openai"
        return self._structured

    @property
    def label_decoding(self) -> str:
        """How a choice is decoded: ``"one_token"`` or ``"grammar"`` (``"auto"`` resolved once:
        one token where the server answers vLLM's ``/tokenize``, else the grammar)."""
        if self._label_decoding == "auto":
            ok = self.structured == "vllm" and self._http_tokenizer().available()
            self._label_decoding = "one_token" if ok else "grammar"
            logger.info("%s: choices decode %s", self.base_url,
                        "in one token where the labels allow (the server answers /tokenize)" if ok
                        else "through the grammar (the server has no vLLM /tokenize)")
        return self._label_decoding

    def _http_tokenizer(self) -> _HTTPTokenizer:
        if self._tokenizer is None:
            self._tokenizer = _HTTPTokenizer(self)
        return self._tokenizer

    def label_table(self, labels: Sequence[str]) -> Any:
        """The one-step table of a choice over ``labels`` from the server's own tokenizer, or None
        (the grammar path): the in-process engine's rule (``build_label_table``) over ``/tokenize``.
        Computed once per label set; None wherever the server cannot tokenize."""
        labels = tuple(labels)
        if labels not in self._label_tables:
            from semframe.engines.vllm import build_label_table

            try:
                table = build_label_table(self._http_tokenizer(), labels)
            except _NoTokenizer as exc:
                logger.info("%s: cannot tokenize the labels (%s): the grammar decides", self.base_url, exc)
                table = None
            if table is None:
                logger.info("%s: labels %s need the grammar (a shared first token)", self.base_url, list(labels))
            self._label_tables[labels] = table
        return self._label_tables[labels]

    def _one_step(self, request: Request) -> Any:
        """The label table to decode ``request`` with in one step, or None (grammar or no choice)."""
        spec = request.spec
        if not isinstance(spec, ChoiceSpec) or self.structured == "none" or self.label_decoding != "one_token":
            return None
        table = self.label_table(spec.labels)
        if table is None or request.max_tokens <= table.longest:
            return None
        return table

    def label_output_tokens(self, labels: Sequence[str], max_tokens: int | None = None) -> int | None:
        """1 where a choice over ``labels`` (with ``max_tokens``) is decoded in one step, else None."""
        if self.structured == "none" or self.label_decoding != "one_token":
            return None
        table = self.label_table(labels)
        if table is None or (max_tokens is not None and max_tokens <= table.longest):
            return None
        return 1

    @property
    def prefix_block(self) -> int | None:
        """The block size prompts are aligned to: the server's prefix-cache block where
        ``align_prefix`` is on and the server is a vLLM one reporting it, else None (resolved
        once, logged)."""
        if self._prefix_block is _UNRESOLVED:
            block = None
            if self.structured == "vllm" and self._http_tokenizer().available():
                block = self._http_tokenizer().prefix_block()
            self._prefix_block = block
            logger.info("%s: %s", self.base_url,
                        f"prompts aligned to the server's {block}-token prefix-cache blocks" if block
                        else "prompts not aligned (the server reports no prefix-cache block size)")
        return self._prefix_block

    def _prefix_key(self, messages: Sequence[Message]) -> tuple[Any, ...]:
        return (*((m.role, m.content) for m in messages[:-1]), messages[-1].role)

    def _align(self, requests: Sequence[Request]) -> None:
        """Work out the pad of each new shared prefix in ``requests`` (synchronous ``/tokenize``)."""
        block = self.prefix_block
        if not block:
            return
        for request in requests:
            messages = request.messages
            if len(messages) < 2:
                continue
            key = self._prefix_key(messages)
            if key in self._pads:
                continue
            if len(self._pads) >= _MAX_ALIGNED_PREFIXES:
                self._pads[key] = 0  # as built, now and later
                continue
            try:
                self._pads[key] = self._pad_for(messages, block)
            except _NoTokenizer as exc:
                logger.info("%s: cannot align a prompt (%s): sent as built", self.base_url, exc)
                self._pads[key] = 0

    def _pad_for(self, messages: Sequence[Message], block: int) -> int:
        """How many ``" ."`` to append to the first message so that the last message's content
        starts on a block boundary (0: none needed, or no count does it -- e.g. ``" ."`` is two
        tokens and an odd number is missing -- or the padded rendering is not the plain one plus
        the pads)."""
        tok = self._http_tokenizer()

        def render(last: str, units: int = 0) -> list[int]:
            chat = [{"role": m.role, "content": m.content} for m in messages[:-1]]
            chat[0]["content"] += _PAD_TEXT * units
            chat.append({"role": messages[-1].role, "content": last})
            return tok.apply_chat_template(chat, tokenize=True)

        a, b = render(_PROBES[0]), render(_PROBES[1])
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        pad = -shared % block
        if pad == 0:
            return 0
        per_unit = len(render(_PROBES[0], 1)) - len(a)  # tokens one " ." adds (1 for most BPE vocabularies)
        if per_unit <= 0 or pad % per_unit:
            return 0
        units = pad // per_unit
        padded = render(_PROBES[0], units) if units > 1 else render(_PROBES[0], 1)
        row = a[shared:]
        return units if len(padded) == len(a) + pad and padded[len(padded) - len(row):] == row else 0

    def _aligned(self, messages: Sequence[Message]) -> Sequence[Message]:
        """``messages`` with the first one padded where its shared prefix has a pad."""
        if len(messages) < 2 or not self._pads:
            return messages
        units = self._pads.get(self._prefix_key(messages))
        if not units:
            return messages
        first = messages[0]
        return (Message(first.role, first.content + _PAD_TEXT * units), *messages[1:])

    def _pad_bound(self, request: Request) -> int:
        """The most pad tokens ``request`` can get (for token estimates that must err high)."""
        if len(request.messages) < 2 or not self._align_prefix:
            return 0
        block = self.prefix_block  # asks the server once, as the structured mode does
        return block - 1 if block else 0

    @property
    def constrained_decoding(self) -> bool:  # type: ignore[override]
        return self.structured != "none"

    def server_models(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries (read once; [] where the server has no such endpoint)."""
        if self._models is None:
            self._models = self.run_async(self._aget_models)
        return self._models

    def _entry(self) -> dict[str, Any] | None:
        name = self.model
        return next((m for m in self.server_models() if m.get("id") == name), None)

    def _only_model(self) -> str:
        models = [m.get("id") for m in self.server_models() if m.get("id")]
        if len(models) == 1:
            return str(models[0])
        if not models:
            raise EngineError(f"the server at {self.base_url} lists no models at /models; "
                              "pass the model name: sf.OpenAIEngine(base_url, model='...')")
        raise EngineError(f"the server at {self.base_url} serves {len(models)} models ({', '.join(map(str, models))}); "
                          "pick one: sf.OpenAIEngine(base_url, model='...')")

    def fingerprint_facts(self) -> dict[str, Any]:
        """Everything the fingerprint digests (nothing secret)."""
        entry = self._entry()
        server = None
        if entry is not None:
            keys = ("id", "root", "parent", "owned_by", "max_model_len")
            server = {k: entry.get(k) for k in keys if entry.get(k) is not None}
            if entry.get("owned_by") != "vllm" and entry.get("created") is not None:
                server["created"] = entry["created"]  # vLLM's is the time of the request: left out
        return {"engine": self.name, "v": 1, "base_url": self.base_url, "model": self.model, "server": server,
                "structured": self.structured, "extra_body": self._extra_body,
                "choice_decoding": self.label_decoding,
                **({"align_prefix": self.prefix_block} if self.prefix_block else {})}

    def fingerprint(self) -> str:
        """A digest of the server's model and the options that change answers (computed once)."""
        if self._fingerprint is None:
            blob = json.dumps(self.fingerprint_facts(), sort_keys=True, default=str)
            self._fingerprint = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        model = self._model if self._model is not None else "<the server's only model>"
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={model!r})"

    # -- tokens and budgets ---------------------------------------------------------------------

    def _prompt_estimate(self, request: Request) -> int:
        # The heuristic over the contents plus a few tokens of chat template per message.
        return sum(self.count_tokens(m.content) + 4 for m in request.messages) + 3 + self._pad_bound(request)

    def count_prompt_tokens(self, request: Request) -> int:
        """An estimate of the prompt tokens the server will bill, meant to err high.

        The server's tokenizer is unknown here: the ~4-characters-a-token heuristic plus the chat
        template's few tokens per message, scaled by the largest ratio of the server's count to
        this estimate seen so far (x1.1), or by 2 before the server has reported any.
        """
        ratio = self._max_ratio * 1.1 if self._max_ratio else _FIRST_PROMPT_RATIO
        return math.ceil(self._prompt_estimate(request) * max(1.0, ratio))

    def token_bound(self, request: Request, prompt_tokens: int) -> tuple[int, int]:
        if self.structured != "none" or isinstance(request.spec, TextSpec):
            return prompt_tokens, request.max_tokens
        # A re-ask sends the prompt again with the first answer and the validation error.
        reask = prompt_tokens + request.max_tokens + self.count_tokens(_REASK) + 64
        return prompt_tokens + reask, 2 * request.max_tokens

    def estimate_request_tokens(self, request: Request) -> int:
        return self.count_prompt_tokens(request) + request.max_tokens

    # -- the HTTP calls ---------------------------------------------------------------------------

    def _http_headers(self) -> dict[str, str]:
        headers = {k: v.reveal() for k, v in self._headers.items()}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        return headers

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    def _secrets(self) -> list[str]:
        out = [v.reveal() for v in self._headers.values()]
        if self._api_key is not None:
            out.append(self._api_key.reveal())
        if self._url_secret is not None:
            out.append(self._url_secret.reveal())
        return [s for s in out if len(s) >= 4]

    async def _astart(self) -> None:
        self._http()

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            auth = (self._auth[0], self._auth[1].reveal()) if self._auth else None
            self._client = httpx.AsyncClient(
                base_url=self.base_url + "/",
                headers=self._http_headers(),
                auth=auth,
                timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                limits=httpx.Limits(max_connections=self.max_concurrency,
                                    max_keepalive_connections=self.max_concurrency),
                follow_redirects=False,
            )
        return self._client

    async def _aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _aget_models(self) -> list[dict[str, Any]]:
        import httpx

        last: Exception | None = None
        for attempt in range(3):
            try:
                resp = await self._http().get("models")
            except httpx.HTTPError as exc:
                last = exc
            else:
                if resp.status_code in (404, 405):
                    return []  # a server without /models: the fingerprint uses the name alone
                if resp.status_code == 200:
                    try:
                        data = resp.json().get("data") or []
                        return [m for m in data if isinstance(m, dict)]
                    except (ValueError, AttributeError) as exc:
                        last = exc
                elif resp.status_code in _RETRY_STATUSES or resp.status_code >= 500:
                    last = EngineError(f"HTTP {resp.status_code}")
                else:
                    raise EngineError(f"the server at {self.base_url} refused GET /models: HTTP {resp.status_code} "
                                      f"{self._redact(_error_text(resp))}")
            import asyncio

            await asyncio.sleep(0.2 * 2 ** attempt)
        raise EngineError(f"cannot reach the server at {self.base_url} (GET /models): "
                          f"{type(last).__name__}: {self._redact(str(last))}")

    def _body(self, request: Request, messages: Sequence[Message], constrain: bool,
              table: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        body["max_completion_tokens" if host.endswith("openai.com") else "max_tokens"] = request.max_tokens
        spec = request.spec
        mode = self.structured
        if table is not None:
            # One decode step among the labels' tokens; the token comes back as its id.
            allowed = table.allowed
            body["max_tokens"] = 1
            body["allowed_token_ids"] = allowed
            body["logprobs"] = True
            body["top_logprobs"] = min(len(allowed), _TOP_LOGPROBS)
            body["return_tokens_as_token_ids"] = True
            body.update(self._extra_body)
            return body
        if constrain and mode == "vllm":
            if isinstance(spec, ChoiceSpec):
                body["structured_outputs"] = {"choice": list(spec.labels)}
            elif isinstance(spec, JsonSpec):
                body["structured_outputs"] = {"json": spec.json_schema()}
        elif constrain and mode == "openai":
            if isinstance(spec, ChoiceSpec):
                schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": list(spec.labels)}},
                          "required": ["answer"], "additionalProperties": False}
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "choice", "schema": schema, "strict": True}}
            elif isinstance(spec, JsonSpec):
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "answer", "schema": spec.json_schema(),
                                                           "strict": True}}
        if isinstance(spec, ChoiceSpec) and self._logprobs and mode != "none":
            body["logprobs"] = True
            body["top_logprobs"] = _TOP_LOGPROBS
        body.update(self._extra_body)
        return body

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One POST /chat/completions; the parsed JSON of a 200, else a classified error."""
        import httpx

        try:
            resp = await self._http().post("chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise TransientError(f"no answer within timeout_s={self.timeout_s:g} ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:  # connect errors, resets, a connection closed mid-answer
            raise TransientError(f"connection failed: {type(exc).__name__}: {self._redact(str(exc))}") from None
        status = resp.status_code
        if status != 200:
            detail = self._redact(_error_text(resp))
            message = f"HTTP {status} from the server: {detail}" if detail else f"HTTP {status} from the server"
            if status in _RETRY_STATUSES or status >= 500:
                raise TransientError(message, retry_after=_retry_after(resp.headers), status=status)
            raise FatalError(message, status=status)
        try:
            data = resp.json()
        except ValueError as exc:
            raise TransientError(f"the server's answer is not valid JSON ({type(exc).__name__}: "
                                 f"{str(exc)[:80]}; {len(resp.content)} bytes)") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise TransientError(f"the server's answer has no choices: {self._redact(json.dumps(data)[:200])}")
        return data

    def _read(self, request: Request, data: dict[str, Any]) -> RawCompletion:
        choice = data["choices"][0] if isinstance(data["choices"][0], dict) else {}
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = int(details.get("cached_tokens") or 0)
        output = int(usage.get("completion_tokens") or 0)
        if prompt:
            self._max_ratio = max(self._max_ratio, prompt / self._prompt_estimate(request))
        fp = data.get("system_fingerprint")
        if isinstance(fp, str) and fp not in self._system_fingerprints:
            self._system_fingerprints.add(fp)
            if len(self._system_fingerprints) > 1:
                logger.warning("%s: the server's system_fingerprint changed (%s); answers may differ from "
                               "cached ones", self.base_url, ", ".join(sorted(self._system_fingerprints)))
        finish = choice.get("finish_reason") or "stop"
        text = message.get("content")
        if text is None:
            refusal = message.get("refusal")
            why = f"the model refused: {refusal}" if refusal else "the server's answer has no content"
            return RawCompletion(None, "error", prompt, cached, output, error=self._redact(str(why))[:300])
        if finish not in ("stop", "length"):
            return RawCompletion(text, "error", prompt, cached, output,
                                 error=f"the server finished the answer with reason {finish!r}")
        probabilities = None
        if isinstance(request.spec, ChoiceSpec) and finish == "stop":
            raw_text = text
            if self.structured == "openai":
                text = _label_of(text)
            probabilities = _label_probabilities(request.spec, raw_text, text, choice.get("logprobs"))
        return RawCompletion(text, finish, prompt, cached, output, probabilities=probabilities)

    def _read_one_step(self, request: Request, table: Any, data: dict[str, Any]) -> RawCompletion:
        """The label a one-step answer's token stands for, with the labels' probabilities (those of
        the allowed tokens among the server's top log-probabilities, renormalised over them)."""
        choice = data["choices"][0] if isinstance(data["choices"][0], dict) else {}
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        output = int(usage.get("completion_tokens") or 0)
        if prompt:
            self._max_ratio = max(self._max_ratio, prompt / self._prompt_estimate(request))
        content = (choice.get("logprobs") or {}).get("content") or []
        first = content[0] if content and isinstance(content[0], dict) else {}
        token = _token_id(first.get("token"))
        if token is None or token not in table.tokens:
            text = (choice.get("message") or {}).get("content")
            return RawCompletion(None, "error", prompt, cached, output,
                                 error=f"the server answered {str(text)[:40]!r} (token {first.get('token')!r}) "
                                       "outside the labels' tokens")
        label = table.labels[table.tokens[token]]
        logprobs: dict[int, float] = {}
        for entry in [first, *(first.get("top_logprobs") or [])]:
            tid = _token_id(entry.get("token")) if isinstance(entry, dict) else None
            lp = entry.get("logprob") if isinstance(entry, dict) else None
            if tid in table.tokens and isinstance(lp, (int, float)) and lp == lp:
                logprobs.setdefault(tid, float(lp))
        probabilities = None
        top = max(logprobs.values(), default=float("-inf"))
        if top != float("-inf"):
            mass = [0.0] * len(table.labels)
            for tid, lp in logprobs.items():
                mass[table.tokens[tid]] += math.exp(lp - top)
            total = sum(mass)
            probabilities = {name: m / total for name, m in zip(table.labels, mass)}
        return RawCompletion(label, "stop", prompt, cached, output or 1, probabilities=probabilities)

    async def _send(self, request: Request, messages: Sequence[Message], constrain: bool) -> RawCompletion:
        table = self._label_tables.get(tuple(request.spec.labels)) if (
            constrain and isinstance(request.spec, ChoiceSpec) and self._label_decoding == "one_token"
            and self.structured != "none") else None
        if table is not None and request.max_tokens <= table.longest:
            table = None
        if table is not None:
            return self._read_one_step(request, table, await self._post(self._body(request, messages, True, table)))
        body = self._body(request, messages, constrain)
        try:
            return self._read(request, await self._post(body))
        except FatalError as exc:
            if "logprobs" not in body or exc.status != 400 or "logprob" not in str(exc).lower():
                raise
        # The server refused logprobs (e.g. a reasoning model): ask again without, and never ask for them again.
        if self._logprobs:
            logger.info("%s refused logprobs: label probabilities are off for this engine", self.base_url)
        self._logprobs = False
        body.pop("logprobs", None)
        body.pop("top_logprobs", None)
        raw = self._read(request, await self._post(body))
        return replace(raw, attempts=raw.attempts + 1)

    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:
        # Resolved here, before the batch goes to the loop (each may ask the server once).
        self.model  # noqa: B018
        self.structured  # noqa: B018
        self.label_decoding  # noqa: B018
        for request in requests:  # the label tables, once per label set (synchronous /tokenize calls)
            self._one_step(request)
        self._align(requests)  # the pads of new shared prefixes (synchronous /tokenize calls)
        return super()._generate(requests)

    async def _acall(self, request: Request) -> RawCompletion:
        spec = request.spec
        if not isinstance(spec, (ChoiceSpec, JsonSpec, TextSpec)):
            return RawCompletion(None, "error", error=f"the OpenAI engine does not support output spec {type(spec).__name__}")
        raw = await self._send(request, self._aligned(request.messages), constrain=True)
        if self.structured != "none" or isinstance(spec, TextSpec) or raw.error is not None:
            return raw
        if raw.finish_reason == "length":  # unconstrained, it talked past max_tokens
            first_error = f"it was cut off at max_tokens={request.max_tokens}; answer shorter"
        else:
            try:
                spec.parse(raw.text)  # type: ignore[arg-type]
                return raw
            except OutputError as exc:
                first_error = str(exc)
        # One re-ask, carrying the validation error.
        messages = (*request.messages, Message("assistant", raw.text or ""),
                    Message("user", _REASK.format(error=first_error, expected=spec.describe())))
        again = await self._send(request, messages, constrain=False)
        p, c, o = (raw.prompt_tokens + again.prompt_tokens, raw.cached_prompt_tokens + again.cached_prompt_tokens,
                   raw.output_tokens + again.output_tokens)
        note = f"re-asked once: the first answer failed validation ({first_error})"
        if again.error is None and again.finish_reason == "stop":
            try:
                spec.parse(again.text)  # type: ignore[arg-type]
            except OutputError as exc:
                return RawCompletion(again.text, "stop", p, c, o, attempts=raw.attempts + again.attempts, note=note,
                                     error=f"invalid answer after one re-ask: {exc} (first answer: {first_error})")
        return RawCompletion(again.text, again.finish_reason, p, c, o, error=again.error,
                             attempts=raw.attempts + again.attempts, note=note)


class _NoTokenizer(Exception):
    """The server does not tokenize (no vLLM ``/tokenize``)."""


class _HTTPTokenizer:
    """The few tokenizer calls ``build_label_table`` makes, answered by the server's own tokenizer
    over vLLM's ``POST /tokenize`` and ``/detokenize`` (at the server root, beside ``/v1``); each
    answer is cached. Special ids are the ones the tokenizer adds around an empty prompt (BOS)
    and the chat template's tokens that are not plain text."""

    def __init__(self, engine: OpenAIEngine):
        self._engine = engine
        parts = urllib.parse.urlsplit(engine.base_url)
        path = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
        self._root = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))
        self._cache: dict[Any, Any] = {}
        self._ok: bool | None = None
        self._specials: list[int] | None = None

    def _call(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        key = (endpoint, json.dumps(payload, sort_keys=True))
        if key in self._cache:
            return self._cache[key]
        engine = self._engine
        try:  # on the engine's own client (its loop thread): one connection pool, one TLS context
            resp = engine.run_async(self._apost, endpoint, {"model": engine.model, **payload})
        except httpx.HTTPError as exc:
            raise _NoTokenizer(f"POST /{endpoint}: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise _NoTokenizer(f"POST /{endpoint}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise _NoTokenizer(f"POST /{endpoint}: not JSON") from None
        if not isinstance(data, dict):
            raise _NoTokenizer(f"POST /{endpoint}: unexpected answer")
        self._cache[key] = data
        return data

    async def _apost(self, endpoint: str, body: dict[str, Any]) -> Any:
        return await self._engine._http().post(f"{self._root}/{endpoint}", json=body,
                                               timeout=min(30.0, self._engine.timeout_s))

    def prefix_block(self) -> int | None:
        """The server's prefix-cache block size from vLLM's ``/metrics`` (``cache_config_info``),
        or None where prefix caching is off or the server does not say."""
        for attempt in range(3):  # a passing failure must not change the fingerprint for good
            try:
                resp = self._engine.run_async(self._aget, "metrics")
            except Exception as exc:  # noqa: BLE001 - retried, then: do not align
                logger.debug("GET /metrics failed: %s", type(exc).__name__)
            else:
                if resp.status_code == 200:
                    return _prefix_block_of(resp.text)
                if resp.status_code < 500 and resp.status_code not in _RETRY_STATUSES:
                    return None  # no such endpoint: not a vLLM server that says
            time.sleep(0.2 * 2 ** attempt)
        logger.warning("%s: GET /metrics failed 3 times: prompts are not aligned to prefix-cache blocks",
                       self._engine.base_url)
        return None

    async def _aget(self, endpoint: str) -> Any:
        return await self._engine._http().get(f"{self._root}/{endpoint}", timeout=min(30.0, self._engine.timeout_s))

    def available(self) -> bool:
        """Whether the server answers ``/tokenize`` with token ids (asked once)."""
        if self._ok is None:
            try:
                self._ok = isinstance(self.encode("Yes", add_special_tokens=False), list)
            except _NoTokenizer:
                self._ok = False
        return self._ok

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        tokens = self._call("tokenize", {"prompt": text, "add_special_tokens": add_special_tokens}).get("tokens")
        if not isinstance(tokens, list):
            raise _NoTokenizer("POST /tokenize: no tokens")
        return [int(t) for t in tokens]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        text = self._call("detokenize", {"tokens": [int(t) for t in ids]}).get("prompt")
        if not isinstance(text, str):
            raise _NoTokenizer("POST /detokenize: no text")
        return text

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True, chat_template: str | None = None) -> Any:
        payload: dict[str, Any] = {"messages": messages, "add_generation_prompt": add_generation_prompt}
        if chat_template is not None:
            payload["chat_template"] = chat_template
        tokens = self._call("tokenize", payload).get("tokens")
        if not isinstance(tokens, list):
            raise _NoTokenizer("POST /tokenize (chat): no tokens")
        return [int(t) for t in tokens] if tokenize else self.decode(tokens)

    @property
    def all_special_ids(self) -> list[int]:
        if self._specials is None:
            specials = set(self.encode("", add_special_tokens=True))
            chat = self.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True)
            for token in chat:  # a chat-template token that does not round-trip as text is special
                text = self.decode([token])
                if text and self.encode(text, add_special_tokens=False) != [token] and text.startswith("<"):
                    specials.add(token)
                elif text.startswith("<") and text.endswith(">") and len(text) > 2:
                    specials.add(token)
            self._specials = sorted(specials)
        return self._specials


def _prefix_block_of(metrics: str) -> int | None:
    """The prefix-cache block size in vLLM's Prometheus text, or None (prefix caching off, absent).

    Examples
    --------
    >>> _prefix_block_of('vllm:cache_config_info{block_size="32",enable_prefix_caching="True",hash_block_size="None"} 1.0')
    32
    >>> _prefix_block_of('vllm:cache_config_info{block_size="16",enable_prefix_caching="False"} 1.0') is None
    True
    """
    import re

    for line in metrics.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("enable_prefix_caching") != "True":
                return None
            for name in ("hash_block_size", "block_size"):
                if labels.get(name, "").isdigit() and int(labels[name]) > 0:
                    return int(labels[name])
            return None
    return None


def _token_id(token: Any) -> int | None:
    """The id in vLLM's ``token_id:123`` (``return_tokens_as_token_ids``), else None."""
    if isinstance(token, str) and token.startswith("token_id:"):
        try:
            return int(token[len("token_id:"):])
        except ValueError:
            return None
    return None


def _error_text(resp: Any) -> str:
    """The server's error message from a non-200 response, short."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300].strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or json.dumps(err)
        else:
            msg = str(err)
        return str(msg)[:300]
    return str(data)[:300]


def _label_of(text: str) -> str:
    """The label inside ``{"answer": "..."}`` (OpenAI-style choice), else the text as it came."""
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if isinstance(obj, dict) and isinstance(obj.get("answer"), str):
        return obj["answer"]
    return text


def _label_probabilities(spec: ChoiceSpec, raw_text: str, label_text: str, logprobs: Any) -> dict[str, float] | None:
    """Each label's share of the server's top tokens where the answer's label begins (see the module doc)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content or not isinstance(content, list):
        return None
    try:
        label = spec.parse(label_text)
    except OutputError:
        return None
    start = raw_text.find(label)
    if start < 0:
        return None
    pos = 0
    for item in content:
        if not isinstance(item, dict):
            return None
        token = str(item.get("token") or "")
        if pos + len(token) > start:
            break
        pos += len(token)
    else:
        return None
    candidates: dict[str, float] = {}
    for entry in item.get("top_logprobs") or []:
        if isinstance(entry, dict) and isinstance(entry.get("logprob"), (int, float)):
            candidates.setdefault(str(entry.get("token") or ""), float(entry["logprob"]))
    if isinstance(item.get("logprob"), (int, float)):
        candidates.setdefault(token, float(item["logprob"]))
    labels = spec.labels
    mass = [0.0] * len(labels)
    offset = start - pos  # the label may begin inside the token (after a quote, a space)
    for tok, lp in candidates.items():
        piece = tok[offset:].lstrip() if len(tok) > offset else ""
        if not piece or lp != lp:
            continue
        owners = [j for j, name in enumerate(labels) if name.startswith(piece) or piece == name]
        if len(owners) == 1:
            mass[owners[0]] += math.exp(lp)
    total = sum(mass)
    if total <= 0 or mass[labels.index(label)] <= 0:
        return None
    return {name: m / total for name, m in zip(labels, mass)}


def _pricing(prices: Any) -> Any:
    """A TokenPrice from the ``prices`` argument (None stays None)."""
    if prices is None:
        return None
    from semframe.engines.pricing import TOKEN_PRICES, TokenPrice

    if isinstance(prices, TokenPrice):
        return prices
    if isinstance(prices, str):
        if prices not in TOKEN_PRICES:
            raise EngineError(f"unknown price {prices!r}; known: {', '.join(sorted(TOKEN_PRICES))} "
                              "(add one with sf.register_price, or pass prices={'input': ..., 'output': ...})")
        return TOKEN_PRICES[prices]
    if isinstance(prices, dict):
        unknown = set(prices) - {"input", "output", "cached_input", "model", "source", "as_of"}
        if unknown or "input" not in prices or "output" not in prices:
            raise EngineError("prices must be a TokenPrice, a name in sf.accounting.TOKEN_PRICES or a dict with "
                              f"'input' and 'output' (and optionally 'cached_input') in USD per million tokens, got {prices!r}")
        return TokenPrice(str(prices.get("model", "api")), float(prices["input"]),
                          float(prices.get("cached_input", prices["input"])), float(prices["output"]),
                          str(prices.get("source", "OpenAIEngine(prices=...)")), str(prices.get("as_of", "")))
    raise EngineError(f"prices must be a TokenPrice, a price name or a dict, got {type(prices).__name__}")
