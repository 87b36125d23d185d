"""Turn a semantic step and one row's rendered text into chat messages.

Two layouts (chosen per step by the optimizer's ``shape_prompts`` rule):

- ``"shared_first"``: a system message with everything shared by every row (the instruction
  and the answer format), then a user message with the row's text. Every request of a step
  starts with the same tokens, so vLLM's automatic prefix cache computes them once.
- ``"inline"``: one user message, the row's text first and the instruction after it: what a
  hand-written loop typically sends, and where no two requests share a prefix beyond the chat
  template's header.
"""

from __future__ import annotations

from semframe.engines.base import Message, Request
from semframe.plan.nodes import SemanticStep, SemClassify, SemExtract, SemFilter, SemMap
from semframe.plan.spec import JsonSpec

_KIND_WORDS = {"str": "string", "int": "integer", "float": "number", "bool": "true or false"}


def _field_words(spec: JsonSpec) -> str:
    parts = []
    for name, ft in spec.fields:
        words = f"list of {_KIND_WORDS[ft.item]}s" if ft.kind == "list" else _KIND_WORDS[ft.kind]
        if ft.nullable:
            words += " or null"
        parts.append(f'"{name}" ({words})')
    return ", ".join(parts)


def shared_text(step: SemanticStep) -> str:
    """The part of the prompt that is the same for every row of ``step``."""
    if isinstance(step, SemClassify):
        lead = step.instruction or "Classify the text."
        fmt = "Answer with exactly one of: " + ", ".join(step.spec.labels) + "."
    elif isinstance(step, SemFilter):
        lead = step.instruction or "Answer the question about the text."
        fmt = "Answer with exactly one word: YES or NO."
    elif isinstance(step, SemExtract):
        lead = step.instruction or "Extract the following fields from the text."
        fmt = f"Reply with a JSON object with the fields {_field_words(step.spec)}."
    elif isinstance(step, SemMap):
        return step.instruction or ""
    else:  # pragma: no cover - every operator is listed above
        raise TypeError(f"no prompt layout for {type(step).__name__}")
    return f"{lead}\n{fmt}"


def build_messages(step: SemanticStep, text: str, shared: str | None = None) -> tuple[Message, ...]:
    """The chat messages for one row; ``shared`` may pass a precomputed :func:`shared_text`."""
    shared = shared_text(step) if shared is None else shared
    if not shared:
        return (Message("user", text),)
    if step.layout == "shared_first":
        return (Message("system", shared), Message("user", text))
    return (Message("user", f"{text}\n\n{shared}"),)


def build_request(step: SemanticStep, text: str, shared: str | None = None) -> Request:
    return Request(
        messages=build_messages(step, text, shared),
        spec=step.spec,
        max_tokens=step.effective_max_tokens,
        temperature=step.temperature,
    )
