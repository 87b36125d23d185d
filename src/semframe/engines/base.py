"""The engine interface: a list of requests in, one completion per request out, in order.

Engines implement only :meth:`Engine._generate` (the call itself). The public
:meth:`Engine.generate` owns the bookkeeping every engine needs the same way: parsing each answer
against its output spec, turning a bad answer into a null with a reason, timing, and counting
usage. That keeps the contract identical for the test engine and for vLLM.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from semframe.errors import EngineError, OutputError
from semframe.plan.spec import OutputSpec, TextSpec


_NONE = object()


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class Request:
    """One question for the engine: chat messages, the output spec and the sampling settings.

    Requests hash by value, so identical requests collapse in sets and dicts; :attr:`key` is a
    stable digest of everything that can change the answer except the model (the cache adds the
    model's fingerprint).
    """

    messages: tuple[Message, ...]
    spec: OutputSpec
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": [[m.role, m.content] for m in self.messages],
            "spec": self.spec.to_dict(),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    @cached_property  # computed once: the runner, the caches and lineage all use it
    def key(self) -> str:
        """SHA-256 of everything but the last message's text (digested once per distinct value,
        as every row of a step shares it), then that text: the same inputs as hashing the whole
        request, at a fraction of the cost per row."""
        *head, last = self.messages
        static = _static_digest(tuple(head), last.role, self.spec, self.max_tokens, self.temperature, self.top_p)
        return hashlib.sha256(static + last.content.encode("utf-8", "surrogatepass")).hexdigest()

    @cached_property
    def prompt_text(self) -> str:
        """The messages as plain text (for display and token estimates)."""
        prefix, text = self.prompt_parts()
        return prefix + text

    def prompt_parts(self) -> tuple[str, str]:
        """:attr:`prompt_text` as (everything before the last message's text, that text).

        The first part is the same object for every request sharing it, so keeping many
        prompts costs one copy of it.
        """
        *head, last = self.messages
        return _prompt_prefix(tuple(head), last.role), last.content


def requests_sharing(head: tuple[Message, ...], role: str, texts: Sequence[str | None], spec: OutputSpec,
                     max_tokens: int, temperature: float = 0.0, top_p: float = 1.0) -> list[Request | None]:
    """Requests that differ only in their last message's text (None where the text is None).

    The same requests as building each one, with the shared part digested once for all of them.
    """
    static = _static_digest(head, role, spec, max_tokens, temperature, top_p)
    sha = hashlib.sha256
    out: list[Request | None] = []
    append = out.append
    for text in texts:
        if text is None:
            append(None)
            continue
        req = Request((*head, Message(role, text)), spec, max_tokens, temperature, top_p)
        req.__dict__["key"] = sha(static + text.encode("utf-8", "surrogatepass")).hexdigest()  # as .key computes it
        append(req)
    return out


@lru_cache(maxsize=1024)
def _prompt_prefix(head: tuple[Message, ...], last_role: str) -> str:
    return "".join(f"[{m.role}]\n{m.content}\n\n" for m in head) + f"[{last_role}]\n"


@lru_cache(maxsize=1024)
def _static_digest(head: tuple[Message, ...], last_role: str, spec: OutputSpec, max_tokens: int,
                   temperature: float, top_p: float) -> bytes:
    """The digest of a request without its last message's text (32 bytes: a fixed-length prefix)."""
    blob = json.dumps({"v": 2, "messages": [[m.role, m.content] for m in head], "last_role": last_role,
                       "spec": spec.to_dict(), "max_tokens": max_tokens, "temperature": temperature,
                       "top_p": top_p}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class RawCompletion:
    """What an engine's ``_generate`` returns for one request, before parsing."""

    text: str | None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    #: For a choice: label -> probability (the engine's distribution over the labels at the
    #: answer's first position, summing to 1), where the engine knows it; else None.
    probabilities: dict[str, float] | None = None
    #: The request's own latency (an engine that sends requests one by one, e.g. over HTTP,
    #: measures it from the first send to the answer, over all attempts); None: the request's
    #: share of the batch's time (a batch engine answers all its requests together).
    latency_s: float | None = None
    #: Calls the engine made for this request (retries and a re-ask included); 1 for one call.
    attempts: int = 1
    #: What the engine did beyond one plain call, for lineage (e.g. "re-asked once: ..."); None.
    note: str | None = None


@dataclass(frozen=True)
class Completion:
    """The engine's answer to one request.

    ``value`` is the parsed answer (a label, a dict, a string) or None; when it is None because
    something went wrong, ``error`` says what. ``finish_reason`` is the engine's ("stop",
    "length") or "error".

    ``probabilities`` (a choice only, where the engine can tell): each label's probability, in
    the spec's label order, summing to 1 -- for :class:`~semframe.engines.vllm.VLLMEngine` the
    model's distribution over the labels at the one position where it picks the label (see
    docs/engines.md, "Labels in one decode step"). None for other specs, for an answer with an
    error, and where the engine does not know them (a grammar-decoded choice); the persistent
    cache stores them and gives them back after checking them. Not part of equality: two
    completions with the same answer compare equal.

    ``latency_s`` is the request's own latency: for an engine that answers requests one by one
    (:class:`~semframe.engines.concurrent.ConcurrentEngine`, e.g. over HTTP) the time from its
    first send to its answer, retries included -- with many requests in flight these add up to
    more than the batch took; for a batch engine its equal share of the batch's time.
    ``engine_s`` is its share of the engine's wall time, what machine-hour costs and budgets
    count (the completions of a batch add up to the batch's time; None where it equals
    ``latency_s``): read it as :attr:`charged_s`. ``attempts`` counts the calls made for it
    (retries and a re-ask included) and ``note`` says what happened beyond one plain call.
    """

    text: str | None
    value: Any
    finish_reason: str
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    probabilities: dict[str, float] | None = field(default=None, compare=False)
    engine_s: float | None = field(default=None, compare=False)
    attempts: int = field(default=1, compare=False)
    note: str | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def charged_s(self) -> float:
        """This answer's share of the engine's wall time (what machine-hour costs count)."""
        return self.latency_s if self.engine_s is None else self.engine_s


@dataclass
class EngineUsage:
    """Running totals of what an engine has been asked and has produced."""

    calls: int = 0  # generate() calls (batches)
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    errors: int = 0
    seconds: float = 0.0
    #: Calls made for the requests (retries and re-asks included): ``attempts - requests`` extra.
    attempts: int = 0


def finish(request: Request, raw: RawCompletion, latency_s: float) -> Completion:
    """Parse one raw completion against its request's output spec.

    ``latency_s`` is the request's share of the batch's time; where the engine measured the
    request's own latency (``raw.latency_s``), that is the completion's latency and the share
    its ``engine_s``.
    """
    p, c, o = raw.prompt_tokens, raw.cached_prompt_tokens, raw.output_tokens
    extra: dict[str, Any] = {}
    if raw.latency_s is not None:
        extra["engine_s"] = latency_s
        latency_s = raw.latency_s
    if raw.attempts != 1:
        extra["attempts"] = raw.attempts
    if raw.note is not None:
        extra["note"] = raw.note
    text = raw.text
    if raw.error is not None or text is None:
        return Completion(text, None, "error", p, c, o, latency_s, raw.error or "engine returned no text", **extra)
    if raw.finish_reason == "length" and not isinstance(request.spec, TextSpec):
        return Completion(text, None, raw.finish_reason, p, c, o, latency_s,
                          f"answer cut off at max_tokens={request.max_tokens} before it was complete", **extra)
    try:
        value = request.spec.parse(text)
    except OutputError as exc:
        return Completion(text, None, raw.finish_reason, p, c, o, latency_s, str(exc), **extra)
    return Completion(text, value, raw.finish_reason, p, c, o, latency_s, probabilities=raw.probabilities, **extra)


#: Guards every engine's ``usage`` totals (updated once per batch: one lock is plenty).
_USAGE_LOCK = threading.Lock()


class Engine(ABC):
    """Base class of engines.

    Subclasses set :attr:`name`, implement :attr:`model`, :meth:`_generate` and
    :meth:`fingerprint`, and may override :meth:`count_tokens` and :meth:`close`. The contract
    every engine must keep is tested by ``tests/engines/test_contract.py``.
    """

    #: Short name shown in the run log, e.g. "vllm" or "deterministic".
    name: str = "engine"
    #: Whether the engine enforces the output spec while decoding (choice / JSON schema); every
    #: answer is checked against its spec either way.
    constrained_decoding: bool = False
    #: Per-token prices (a :class:`~semframe.accounting.prices.TokenPrice`) of an engine that is
    #: billed by the token (an API); None: the engine runs on a machine priced by the hour
    #: (``sf.configure(machine=...)``), as every local engine does.
    pricing: Any = None
    #: The most tokens (prompt plus answer) one request may take; None: unknown (an operator that
    #: packs rows into requests, such as ``semantic.aggregate``, then assumes a default).
    context_window: int | None = None
    #: Whether the engine answers a batch without the calling process's CPU (a remote server:
    #: its own thread only waits on the network), so that the executor may send the next batch
    #: of a step while it attaches this one's answers (see ``AnswerResolver.submit``). Also
    #: whether :meth:`generate` may be called from a thread other than the one that made it.
    pipelined: bool = False

    def __init__(self) -> None:
        self.usage = EngineUsage()

    @property
    @abstractmethod
    def model(self) -> str:
        """A human-readable model name (path or id)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of everything about the model and engine that can change an answer.

        Part of the exact-cache key: two engines with the same fingerprint must give the same
        answer distribution for the same request.
        """

    @abstractmethod
    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:
        """Answer every request, in order. Errors for single requests go in RawCompletion.error."""

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Answer ``requests`` in one batch; one :class:`Completion` per request, in input order."""
        requests = list(requests)
        if not requests:
            return []
        start = time.perf_counter()
        raws = self._generate(requests)
        elapsed = time.perf_counter() - start
        if not isinstance(raws, (list, tuple)):
            raise EngineError(f"{type(self).__name__}._generate must return a list of RawCompletion, "
                              f"got {type(raws).__name__}")
        if len(raws) != len(requests):
            raise EngineError(
                f"{type(self).__name__}._generate returned {len(raws)} results for "
                f"{len(requests)} requests"
            )
        bad = next((r for r in raws if not isinstance(r, RawCompletion)), _NONE)
        if bad is not _NONE:
            raise EngineError(f"{type(self).__name__}._generate must return RawCompletion objects, "
                              f"got {type(bad).__name__} {bad!r:.80}")
        # A batch is answered together; each request is charged an equal share of its time.
        share = elapsed / len(requests)
        done = [finish(req, raw, share) for req, raw in zip(requests, raws)]
        with _USAGE_LOCK:  # a pipelined engine may be answering on two threads at once
            self._count(done, elapsed)
        return done

    def _count(self, done: Sequence[Completion], elapsed: float) -> None:
        u = self.usage
        u.calls += 1
        u.requests += len(done)
        u.seconds += elapsed
        for c in done:
            u.prompt_tokens += c.prompt_tokens
            u.cached_prompt_tokens += c.cached_prompt_tokens
            u.output_tokens += c.output_tokens
            u.errors += c.error is not None
            u.attempts += c.attempts

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this engine's tokenizer; the base guess is ~4 characters a token."""
        return max(1, (len(text) + 3) // 4)

    def label_output_tokens(self, labels: Sequence[str], max_tokens: int | None = None) -> int | None:
        """The output tokens every answer to a choice over ``labels`` takes, where the engine
        knows it exactly without answering (e.g. one, for labels decoded in one step); None
        (default): it does not, and estimates count the labels' tokens. Never starts a model."""
        return None

    def token_bound(self, request: Request, prompt_tokens: int) -> tuple[int, int]:
        """The most (prompt, output) tokens answering ``request`` can bill, given its prompt's count.

        Budgets check a batch with it before it is sent. One call: the prompt and ``max_tokens``;
        an engine that may call more than once per request (a re-ask) says so here.
        """
        return prompt_tokens, request.max_tokens

    def close(self) -> None:
        """Release the engine's resources. Safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
