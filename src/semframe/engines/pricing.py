"""Per-token prices of API engines: the :class:`TokenPrice` type and the table of named prices.

An engine billed by the token declares its prices (``engine.pricing``, e.g.
``sf.OpenAIEngine(..., prices="openai/gpt-4o-mini")``); the accounting prices its tokens with
them. These live with the engines so that an engine can name a price without importing the
accounting layer; :mod:`semframe.accounting.prices` re-exports both (``sf.accounting.TOKEN_PRICES``
is this very table) and adds ``register_price`` / ``unregister_price``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenPrice:
    """Per-token prices of one API model, in USD per million tokens.

    ``cached_input`` is what the provider charges for prompt tokens served from its prompt
    cache (the part of the prompt shared with recent requests).

    ``batch_discount`` is the share taken off every price when the same requests go through the
    provider's Batch API (answers within 24 hours instead of at once): ``0.5`` for OpenAI's
    (half price on input and output). None: not known for this model (a batch is then priced
    like live calls, see :meth:`cost`). See docs/engines.md, "Batch files".

    >>> p = TokenPrice("acme/m", input=1.0, cached_input=0.5, output=4.0, batch_discount=0.5)
    >>> p.cost(prompt_tokens=1_000_000, output_tokens=1_000_000)
    5.0
    >>> p.cost(prompt_tokens=1_000_000, output_tokens=1_000_000, batch=True)
    2.5
    """

    model: str
    input: float
    cached_input: float
    output: float
    source: str = "user"
    as_of: str = ""
    batch_discount: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{self.model}: {name} price must be >= 0 USD per million tokens, got {value!r}")
        d = self.batch_discount
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1):
            raise ValueError(f"{self.model}: batch_discount must be a share between 0 and 1 (0.5 = half price) "
                             f"or None, got {d!r}")

    def cost(self, *, prompt_tokens: float, output_tokens: float, cached_prompt_tokens: float = 0,
             batch: bool = False) -> float:
        """USD for the tokens; ``cached_prompt_tokens`` is the part of ``prompt_tokens`` served from cache.

        ``batch=True``: the tokens went through the provider's Batch API, with ``batch_discount``
        off (no discount where it is None).
        """
        fresh = max(prompt_tokens - cached_prompt_tokens, 0)
        usd = (fresh * self.input + cached_prompt_tokens * self.cached_input + output_tokens * self.output) / 1e6
        if batch and self.batch_discount:
            usd *= 1.0 - self.batch_discount
        return usd


_GH = ("GitHub Docs per-token model price table, github/docs data/tables/copilot/models-and-pricing.yml "
       "(commit 024f6b0f), which lists the providers' per-token prices")
_OAI = "OpenAI API pricing page (https://developers.openai.com/api/docs/pricing), standard tier"
#: OpenAI's Batch API bills inputs and outputs at half the standard price (its pricing page lists a
#: "Batch" tier at 50%); the other providers' batch terms are not recorded here.
_OAI_BATCH = 0.5

#: Per-token API prices by ``provider/model``. Editable defaults; see :func:`semframe.accounting.prices.register_price`.
TOKEN_PRICES: dict[str, TokenPrice] = {
    p.model: p
    for p in (
        TokenPrice("openai/gpt-4o-mini", 0.15, 0.075, 0.60, _OAI, "2026-11-23", _OAI_BATCH),
        TokenPrice("openai/gpt-4.1-mini", 0.40, 0.10, 1.60, _OAI, "2026-11-23", _OAI_BATCH),
        TokenPrice("openai/gpt-5-mini", 0.25, 0.025, 2.00, _GH, "2026-11-23", _OAI_BATCH),
        TokenPrice("anthropic/claude-haiku-4.5", 1.00, 0.10, 5.00, _GH, "2026-11-23"),
        TokenPrice("google/gemini-3.5-flash", 1.50, 0.15, 9.00, _GH, "2026-11-23"),
    )
}
