"""Per-token prices of API engines: the :class:`TokenPrice` type and the table of named prices.

An engine billed by the token declares its prices (``engine.pricing``, e.g.
``sf.OpenAIEngine(..., prices="openai/gpt-4o-mini")``); the accounting prices its tokens with
them. These live with the engines so that an engine can name a price without importing the
accounting layer; :mod:`semframe.accounting.prices` re-exports both (``sf.accounting.TOKEN_PRICES``
is this very table) and adds ``register_price`` / ``unregister_price``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenPrice:
    """Per-token prices of one API model, in USD per million tokens.

    ``cached_input`` is what the provider charges for prompt tokens served from its prompt
    cache (the part of the prompt shared with recent requests).
    """

    model: str
    input: float
    cached_input: float
    output: float
    source: str = "user"
    as_of: str = ""

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{self.model}: {name} price must be >= 0 USD per million tokens, got {value!r}")

    def cost(self, *, prompt_tokens: float, output_tokens: float, cached_prompt_tokens: float = 0) -> float:
        """USD for the tokens; ``cached_prompt_tokens`` is the part of ``prompt_tokens`` served from cache."""
        fresh = max(prompt_tokens - cached_prompt_tokens, 0)
        return (fresh * self.input + cached_prompt_tokens * self.cached_input + output_tokens * self.output) / 1e6


_GH = ("GitHub Docs per-token model price table, github/docs data/tables/copilot/models-and-pricing.yml "
       "(commit 024f6b0f), which lists the providers' per-token prices")
_OAI = "OpenAI API pricing page (https://developers.openai.com/api/docs/pricing), standard tier"

#: Per-token API prices by ``provider/model``. Editable defaults; see :func:`semframe.accounting.prices.register_price`.
TOKEN_PRICES: dict[str, TokenPrice] = {
    p.model: p
    for p in (
        TokenPrice("openai/gpt-4o-mini", 0.15, 0.075, 0.60, _OAI, "2026-11-23"),
        TokenPrice("openai/gpt-4.1-mini", 0.40, 0.10, 1.60, _OAI, "2026-11-23"),
        TokenPrice("openai/gpt-5-mini", 0.25, 0.025, 2.00, _GH, "2026-11-23"),
        TokenPrice("anthropic/claude-haiku-4.5", 1.00, 0.10, 5.00, _GH, "2026-11-23"),
        TokenPrice("google/gemini-3.5-flash", 1.50, 0.15, 9.00, _GH, "2026-11-23"),
    )
}
