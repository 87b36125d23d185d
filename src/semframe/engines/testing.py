"""A deterministic in-memory engine for tests, docs and dry runs.

It answers instantly and reproducibly (the answer depends only on the request), stops at each
request's ``max_tokens`` as a real engine does, respects every
output spec the way a constrained engine would, and records each batch it was asked, so tests
can assert exactly which requests reached the engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from semframe.engines.base import Engine, RawCompletion, Request
from semframe.errors import OutputError
from semframe.plan.spec import ChoiceSpec, FieldType, JsonSpec, TextSpec

#: The output specs the engine can answer without a responder.
_SUPPORTED_SPECS = (ChoiceSpec, JsonSpec, TextSpec)


def _unsupported(spec: object) -> str:
    return f"the deterministic engine does not support output spec {type(spec).__name__}"


def _digest(request: Request) -> int:
    return int(hashlib.sha256(request.key.encode()).hexdigest()[:12], 16)


def _fake_value(ft: FieldType, seed: int) -> Any:
    """A value of type ``ft`` that fits its bounds, chosen by ``seed`` (never null: a real model
    answers where it can). Structs fill every field; lists hold 1-3 items where their bounds allow."""
    kind = ft.kind
    if kind == "struct":
        return {name: _fake_value(sub, seed + i) for i, (name, sub) in enumerate(ft.fields)}
    if kind == "list":
        lo, hi = ft.length_bounds
        n = min(max(1 + seed % 3, lo), hi)
        item = ft.item
        if item.kind in ("str", "int", "float", "bool"):  # one value repeated, as it always was
            return [_fake_value(item, seed)] * n
        return [_fake_value(item, seed + j) for j in range(n)]
    if kind == "enum":
        return ft.values[seed % len(ft.values)]
    if kind == "str":
        lo, hi = ft.length_bounds
        text = f"v{seed % 997}"
        return (text + "x" * max(0, lo - len(text)))[:hi]
    if kind == "int":
        lo, hi = ft.int_bounds
        value = seed % 2000
        return value if lo <= value <= hi else lo + seed % (hi - lo + 1)
    if kind == "float":
        return _fake_float(ft, seed)
    return seed % 2 == 0


def _fake_float(ft: FieldType, seed: int) -> float:
    value = (seed % 1000) / 10
    if ft.minimum is None and ft.maximum is None and ft.exclusive_minimum is None and ft.exclusive_maximum is None:
        return value
    lows = [b for b in (ft.minimum, ft.exclusive_minimum) if b is not None]
    highs = [b for b in (ft.maximum, ft.exclusive_maximum) if b is not None]
    lo, hi = (max(lows) if lows else None), (min(highs) if highs else None)
    if lo is not None and hi is not None:
        candidates = [lo + (hi - lo) * ((seed % 999) + 1) / 1000, (lo + hi) / 2, lo, hi]
    elif lo is not None:
        candidates = [lo + value + 0.5, lo + 1.0, lo]
    else:
        candidates = [hi - value - 0.5, hi - 1.0, hi]  # type: ignore[operator]
    for candidate in candidates:
        try:
            ft.coerce(float(candidate), "x")
            return float(candidate)
        except OutputError:
            continue
    return float(candidates[-1])  # bounds that leave (almost) nothing: the parse will say so


class DeterministicEngine(Engine):
    """An engine whose answers are a pure function of the request.

    Parameters
    ----------
    responder
        Optional ``request -> text`` function. When given, its text is the raw answer (and is
        parsed against the spec like any engine's, so it can return malformed answers to test
        error handling). Without it: a choice picks a label by a hash of the request, JSON
        fills every field with a value of its type, and text echoes the last message; a
        request with any other output spec gets an error for its row (the batch still runs).

        A choice's answer comes with label probabilities, as :class:`~semframe.VLLMEngine`'s
        one-step answers do: without a responder, a distribution drawn from the same hash whose
        largest share (always above 1/2) is the chosen label's; with a responder, 1.0 on the
        label its text parses to (none if it parses to no label).
    model
        The model name it reports (part of its fingerprint).
    keep_batches
        Keep every batch it was asked in :attr:`batches` (default; tests read them). ``False``
        keeps only the count (``requests_seen``), for runs of millions of rows.
    context_window
        The most tokens (prompt, counted as :meth:`count_tokens` counts the messages, plus
        ``max_tokens``) a request may take, as :attr:`Engine.context_window` reports it; a request
        over it gets an error for its row, as vLLM's would. None (default): no limit.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> engine = sf.DeterministicEngine(responder=lambda r: "YES")
    >>> df = pl.DataFrame({"title": ["a", "b", "a"]})
    >>> df.semantic.classify("title", ["YES", "NO"], engine=engine)["classify"].to_list()
    ['YES', 'YES', 'YES']
    >>> engine.requests_seen   # "a" was asked once
    2
    """

    name = "deterministic"
    constrained_decoding = True

    def __init__(self, responder: Callable[[Request], str] | None = None, *, model: str = "deterministic-v1",
                 keep_batches: bool = True, context_window: int | None = None):
        super().__init__()
        self.context_window = context_window
        self._responder = responder
        self._model = model
        self._keep = keep_batches
        self._seen = 0
        #: Every batch handed to the engine, in order (empty with ``keep_batches=False``, which
        #: keeps the engine's memory flat for very large runs; ``requests_seen`` still counts).
        self.batches: list[list[Request]] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def requests_seen(self) -> int:
        return self._seen

    def fingerprint(self) -> str:
        # A responder is code that decides answers: engines with different responders must not
        # share cached answers. Its bytecode and constants name it; its id keeps closures apart.
        who = ""
        if self._responder is not None:
            code = getattr(self._responder, "__code__", None)
            body = repr((code.co_code, code.co_consts)) if code is not None else repr(self._responder)
            who = f":{body}:{id(self._responder)}"
        return hashlib.sha256(f"{self.name}:{self._model}{who}".encode()).hexdigest()

    def answer(self, request: Request) -> str:
        if self._responder is not None:
            return self._responder(request)
        seed = _digest(request)
        spec = request.spec
        if isinstance(spec, ChoiceSpec):
            return spec.labels[seed % len(spec.labels)]
        if isinstance(spec, JsonSpec):
            return json.dumps({name: _fake_value(ft, seed + i) for i, (name, ft) in enumerate(spec.fields)},
                              ensure_ascii=False)
        if isinstance(spec, TextSpec):
            words = request.messages[-1].content.split()
            return "echo: " + " ".join(words[: max(1, request.max_tokens - 1)])
        raise TypeError(_unsupported(spec))

    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:
        self._seen += len(requests)
        if self._keep:
            self.batches.append(list(requests))
        return [self._answer_one(req) for req in requests]

    def _answer_one(self, request: Request) -> RawCompletion:
        count = self.count_tokens
        prompt_tokens = 0
        for m in request.messages:
            prompt_tokens += count(m.content)
        if self._responder is None and not isinstance(request.spec, _SUPPORTED_SPECS):
            # Like vLLM: a request the engine cannot serve fails its own row, not the batch.
            return RawCompletion(
                None, "error", prompt_tokens=prompt_tokens, error=_unsupported(request.spec)
            )
        window = self.context_window
        if window is not None and prompt_tokens + request.max_tokens > window:
            return RawCompletion(None, "error", error=f"prompt has {prompt_tokens} tokens, and with max_tokens="
                                 f"{request.max_tokens} that is over the context window {window}")
        text, finish = self._within_max_tokens(self.answer(request), request.max_tokens)
        probabilities = None
        if isinstance(request.spec, ChoiceSpec) and finish == "stop":
            probabilities = self._probabilities(request, text)
        return RawCompletion(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            output_tokens=self.count_tokens(text),
            probabilities=probabilities,
        )

    def _probabilities(self, request: Request, text: str) -> dict[str, float] | None:
        """Label probabilities for a choice answer (see the class docstring)."""
        labels = request.spec.labels  # type: ignore[attr-defined]
        try:
            chosen = request.spec.parse(text)
        except OutputError:
            return None
        if self._responder is not None:
            return {label: float(label == chosen) for label in labels}
        seed = _digest(request)
        # The chosen label takes 1/2 to 1 of the mass; the others share the rest by hashed weights.
        top = 0.5 + (seed % 1000) / 2000
        weights = {label: 1 + (seed >> (3 * i)) % 7 for i, label in enumerate(labels) if label != chosen}
        total = sum(weights.values())
        return {label: top if label == chosen else (1 - top) * weights[label] / total for label in labels}

    def _within_max_tokens(self, text: str, max_tokens: int) -> tuple[str, str]:
        """Cut an answer at ``max_tokens`` as a real engine stops there (finish reason "length")."""
        if self.count_tokens(text) <= max_tokens:
            return text, "stop"
        text = text[: 4 * max_tokens]  # the base count is ~4 characters a token
        while text and self.count_tokens(text) > max_tokens:
            text = text[:-1]
        return text, "length"
