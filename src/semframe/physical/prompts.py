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

from semframe.engines.base import Message, Request, requests_sharing
from semframe.plan.spec import JsonSpec, OutputSpec

_KIND_WORDS = {"str": "string", "int": "integer", "float": "number", "bool": "true or false"}


def field_words(spec: JsonSpec) -> str:
    """The fields of a JSON spec in words, for the answer-format line of a prompt."""
    parts = []
    for name, ft in spec.fields:
        words = f"list of {_KIND_WORDS[ft.item]}s" if ft.kind == "list" else _KIND_WORDS[ft.kind]
        if ft.nullable:
            words += " or null"
        parts.append(f'"{name}" ({words})')
    return ", ".join(parts)


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
