"""Counting tokens before they are spent: prompts by a tokenizer, answers by their output spec.

Used by estimates (``explain()``) and by budget guards, so both count the same way.

- Prompt tokens: ``engine.count_prompt_tokens(request)`` when the engine has it, or the length
  of ``engine.render(messages)`` (the vLLM engine's chat-templated token ids) — both count the
  chat template exactly; otherwise the sum of ``engine.count_tokens`` over the messages'
  contents; without an engine object, the heuristic of about 4 characters per token.
- Output tokens: a range per output spec, from the shortest answer the spec allows to its
  ``max_tokens``. A choice's answer is its label's tokens -- unless the engine says how many it
  takes (``engine.label_output_tokens(labels, max_tokens)``: the vLLM engine decodes labels in
  one step, so 1 each), which is then exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from semframe.engines.base import Request
from semframe.plan.spec import ChoiceSpec, FieldType, JsonSpec, OutputSpec, TextSpec

TokenCounter = Callable[[str], int]


def heuristic_count_tokens(text: str) -> int:
    """About 4 characters per token (the usual English average for BPE tokenizers).

    >>> heuristic_count_tokens("Is the title about European history?")
    9
    """
    return max(1, (len(text) + 3) // 4)


def token_counter(engine: Any = None) -> TokenCounter:
    """``engine.count_tokens`` if there is an engine object, else :func:`heuristic_count_tokens`."""
    count = getattr(engine, "count_tokens", None)
    return count if callable(count) else heuristic_count_tokens


def request_prompt_tokens(request: Request, engine: Any = None) -> int:
    """The prompt tokens of one request, counted as the engine would (as closely as it lets us).

    >>> from semframe.engines.base import Message, Request
    >>> from semframe.plan.spec import TextSpec
    >>> request_prompt_tokens(Request((Message("user", "Summarize: the history of Rome."),), TextSpec(), 16))
    8
    """
    exact = getattr(engine, "count_prompt_tokens", None)
    if callable(exact):
        return int(exact(request))
    render = getattr(engine, "render", None)
    if callable(render):
        return len(render(request.messages))
    count = token_counter(engine)
    return sum(count(m.content) for m in request.messages)


@dataclass(frozen=True)
class TokenRange:
    """Tokens per answer: the fewest the spec allows, a typical count, and the most (``max_tokens``)."""

    low: float
    typical: float
    high: float


_TYPICAL_VALUE = {"str": "a typical short value", "int": 1234, "float": 12.5, "bool": True}
_EMPTY_VALUE = {"str": "", "int": 0, "float": 0, "bool": True}


def _sample(ft: FieldType, values: dict[str, Any]) -> Any:
    """A short (``_EMPTY_VALUE``) or typical (``_TYPICAL_VALUE``) answer to one field."""
    kind = ft.kind
    if kind == "struct":
        return {name: _sample(sub, values) for name, sub in ft.fields}
    if kind == "enum":
        if values is _EMPTY_VALUE:
            return min(ft.values, key=lambda v: len(json.dumps(v)))
        return ft.values[0]
    if kind == "list":
        item = _sample(ft.item, values)  # type: ignore[arg-type]
        return [] if values is _EMPTY_VALUE else [item, item]
    return values[kind]


def _json_answer(spec: JsonSpec, values: dict[str, Any]) -> str:
    obj = {name: _sample(ft, values) for name, ft in spec.fields}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def output_tokens(spec: OutputSpec, max_tokens: int, count: TokenCounter = heuristic_count_tokens,
                  engine: Any = None) -> TokenRange:
    """Tokens an answer to ``spec`` takes: (fewest, typical, at most ``max_tokens``).

    ``engine``: the engine that will answer; for a choice, where it reports how many tokens
    each answer takes (:meth:`~semframe.engines.base.Engine.label_output_tokens`), that count.

    >>> from semframe.plan.spec import ChoiceSpec
    >>> output_tokens(ChoiceSpec(("YES", "NO")), 5)
    TokenRange(low=1, typical=1.0, high=1)
    >>> output_tokens(ChoiceSpec(("business", "politics")), 8, lambda t: 3).typical
    3.0
    >>> class OneStep:  # an engine that decodes these labels in one step, as VLLMEngine does
    ...     def label_output_tokens(self, labels, max_tokens):
    ...         return 1
    >>> output_tokens(ChoiceSpec(("business", "politics")), 8, lambda t: 3, OneStep())
    TokenRange(low=1, typical=1.0, high=1)
    """
    if isinstance(spec, ChoiceSpec):
        per_label = getattr(engine, "label_output_tokens", None)
        fixed = per_label(spec.labels, max_tokens) if callable(per_label) else None
        if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed > 0:
            n = min(fixed, max_tokens)
            return TokenRange(n, float(n), n)
        sizes = [min(count(label), max_tokens) for label in spec.labels]
        return TokenRange(min(sizes), sum(sizes) / len(sizes), max(sizes))
    if isinstance(spec, JsonSpec):
        low = min(count(_json_answer(spec, _EMPTY_VALUE)), max_tokens)
        typical = min(count(_json_answer(spec, _TYPICAL_VALUE)), max_tokens)
        return TokenRange(low, max(typical, low), max_tokens)
    if isinstance(spec, TextSpec):
        return TokenRange(1, max(1.0, max_tokens / 4), max_tokens)
    return TokenRange(1, max_tokens / 2, max_tokens)
