"""Turn a semantic step and one row's rendered text into chat messages.

Two layouts, a planning option (``run(prompt_layout=...)``, ``sf.configure(prompt_layout=...)``):

- ``"shared_first"`` (the default): a system message with everything shared by every row (the
  instruction and the answer format), then a user message with the row's text. Every request
  of a step starts with the same tokens, so vLLM's automatic prefix cache computes them once.
- ``"inline"``: one user message, the row's text first and the instruction after it: what a
  hand-written loop typically sends, and where no two requests share a prefix beyond the chat
  template's header.

Each operator says what its shared text is (:meth:`RowOperator.shared_text`); this module only
lays it out.
"""

from __future__ import annotations

import json

from semframe.engines.base import Message, Request, requests_sharing
from semframe.plan.spec import FieldType, JsonSpec, OutputSpec

_KIND_WORDS = {"str": "string", "int": "integer", "float": "number", "bool": "true or false"}


def _type_words(ft: FieldType) -> str:
    """One field's type in words: ``integer``, ``list of strings``, ``one of "a", "b"``,
    ``object with "name" (string), ...``."""
    kind = ft.kind
    if kind in _KIND_WORDS:
        return _KIND_WORDS[kind] + _bounds_words(ft)
    if kind == "enum":
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in ft.values)
    if kind == "struct":
        return "object with " + _fields_words(ft.fields)
    item = ft.item
    assert item is not None
    if ft.min_length or ft.max_length is not None:
        lo, hi = ft.length_bounds
        count = f" ({lo} to {hi} items)" if lo else f" (at most {hi} items)"
    else:
        count = ""
    if item.kind in _KIND_WORDS and not item.nullable and not item.description and not _bounds_words(item):
        return f"list of {_KIND_WORDS[item.kind]}s{count}"  # as it always read: keeps prompts (and cache keys)
    if item.kind == "struct" and not item.nullable and not item.description:
        return f"list of objects{count}, each with " + _fields_words(item.fields)
    return f"list{count}, each item {_field_words(item)}"


def _bounds_words(ft: FieldType) -> str:
    """The bounds a schema declares itself (semframe's own limits are left to the JSON schema)."""
    if ft.kind in ("int", "float"):
        lo = ft.minimum if ft.minimum is not None else ft.exclusive_minimum
        hi = ft.maximum if ft.maximum is not None else ft.exclusive_maximum
        lo_op = ">=" if ft.minimum is not None else ">"
        hi_op = "<=" if ft.maximum is not None else "<"
        parts = ([f"{lo_op} {lo}"] if lo is not None else []) + ([f"{hi_op} {hi}"] if hi is not None else [])
        return f" {' and '.join(parts)}" if parts else ""
    if ft.kind == "str" and (ft.min_length or ft.max_length is not None):
        lo, hi = ft.length_bounds
        return f" of {lo} to {hi} characters" if lo else f" of at most {hi} characters"
    return ""


def _field_words(ft: FieldType) -> str:
    words = _type_words(ft)
    if ft.nullable:
        # "or null" after a nested description would read as part of its last field
        words = f"null or {words}" if ft.kind == "struct" or ", each" in words else f"{words} or null"
    if ft.description:
        words += "; " + " ".join(ft.description.split())
    return words


def _fields_words(fields: tuple[tuple[str, FieldType], ...]) -> str:
    return ", ".join(f"{json.dumps(name, ensure_ascii=False)} ({_field_words(ft)})" for name, ft in fields)


def field_words(spec: JsonSpec) -> str:
    """The fields of a JSON spec in words, for the answer-format line of a prompt.

    Each field is its key (the key the model must write: a pydantic alias where there is one),
    its type, ``or null`` where it is Optional, and its description after a semicolon; nested
    objects and lists of objects name their own fields the same way.

    >>> from typing import Literal, Optional
    >>> field_words(JsonSpec.from_schema({"year": int, "tags": list[str], "tone": Optional[Literal["calm", "angry"]]}))
    '"year" (integer), "tags" (list of strings), "tone" (one of "calm", "angry" or null)'
    >>> field_words(JsonSpec.from_schema({"people": [{"name": str}]}))
    '"people" (list of objects, each with "name" (string))'
    """
    return _fields_words(spec.fields)


class RequestBuilder:
    """Builds one step's requests: the shared text laid out once, each row's text added.

    Examples
    --------
    >>> from semframe.plan.spec import ChoiceSpec
    >>> b = RequestBuilder("Answer YES or NO.", ChoiceSpec(("YES", "NO")), 5, 0.0, "shared_first")
    >>> [m.role for m in b.build("Battle of Waterloo").messages]
    ['system', 'user']
    >>> b = RequestBuilder("Answer YES or NO.", ChoiceSpec(("YES", "NO")), 5, 0.0, "inline")
    >>> b.build("Battle of Waterloo").messages[0].content
    'Battle of Waterloo\\n\\nAnswer YES or NO.'
    """

    def __init__(self, shared: str, spec: OutputSpec, max_tokens: int, temperature: float, layout: str):
        self.shared = shared
        self.spec = spec
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.layout = layout
        self._system = (Message("system", shared),)

    def messages(self, text: str) -> tuple[Message, ...]:
        if not self.shared:
            return (Message("user", text),)
        if self.layout == "shared_first":
            return (*self._system, Message("user", text))
        return (Message("user", f"{text}\n\n{self.shared}"),)

    def build(self, text: str) -> Request:
        return Request(self.messages(text), self.spec, self.max_tokens, self.temperature)

    def build_all(self, texts: list[str | None]) -> list[Request | None]:
        """One request per text (None where the text is None)."""
        spec, mt, temp = self.spec, self.max_tokens, self.temperature
        if not self.shared:
            return requests_sharing((), "user", texts, spec, mt, temp)
        if self.layout == "shared_first":
            return requests_sharing(self._system, "user", texts, spec, mt, temp)
        suffix = f"\n\n{self.shared}"
        return requests_sharing((), "user", [None if t is None else t + suffix for t in texts], spec, mt, temp)
