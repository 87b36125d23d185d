"""Prices: what an hour of a machine costs, and what a token costs on named APIs.

Two tables, both editable defaults:

- :data:`MACHINE_PRICES`: the hourly on-demand price of the machine the local engine runs on.
  A local run costs ``engine seconds x hourly price / 3600``.
- :data:`TOKEN_PRICES`: USD per million tokens (input, cached input, output) for a few
  reference API models, to say what the same tokens would have cost as API calls.

Every entry names its source and the date it was read. Prices change: check them against the
provider before you rely on them, and register your own with :func:`register_machine_price`
and :func:`register_price`.

Examples
--------
>>> import semframe.accounting as acc
>>> acc.register_price("acme/tiny", input=0.10, output=0.40, cached_input=0.05)
TokenPrice(model='acme/tiny', input=0.1, cached_input=0.05, output=0.4, source='user', as_of='')
>>> round(acc.TOKEN_PRICES["acme/tiny"].cost(prompt_tokens=1_000_000, output_tokens=0), 2)
0.1
>>> del acc.TOKEN_PRICES["acme/tiny"]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

# The per-token price type and table live with the engines (an API engine declares its prices,
# ``engine.pricing``, and the engines layer may not import accounting); they are the same objects here.
from semframe.engines.pricing import TOKEN_PRICES, TokenPrice


@dataclass(frozen=True)
class MachinePrice:
    """The hourly price of one machine.

    Attributes
    ----------
    name
        Short key, e.g. ``"cpu-2vcpu"`` or ``"gpu-h100"``.
    hourly_usd
        On-demand price in USD per hour.
    kind
        ``"cpu"`` or ``"gpu"`` (picks the default throughput for estimates).
    source, as_of
        Where the price comes from and when it was read.
    """

    name: str
    hourly_usd: float
    kind: str = "cpu"
    source: str = "user"
    as_of: str = ""

    def __post_init__(self) -> None:
        if not self.hourly_usd >= 0:
            raise ValueError(f"hourly price of {self.name!r} must be >= 0 USD, got {self.hourly_usd!r}")
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"machine kind must be 'cpu' or 'gpu', got {self.kind!r}")

    def cost(self, seconds: float) -> float:
        """USD for ``seconds`` of this machine."""
        return seconds * self.hourly_usd / 3600.0


_AWS = "AWS EC2 on-demand pricing, us-east-1, Linux (https://aws.amazon.com/ec2/pricing/on-demand/)"
_GPU = ("Lambda on-demand list price per H100 SXM GPU (https://lambda.ai/pricing); inside the "
        "$2.49-3.99/h on-demand range reported for early 2026 by https://pricegpu.pages.dev/blog/h100-vs-a100-cloud-price")
#: Machine prices by name. Editable defaults; see :func:`register_machine_price`.
MACHINE_PRICES: dict[str, MachinePrice] = {
    "cpu-2vcpu": MachinePrice("cpu-2vcpu", 0.1008, "cpu", f"m7i.large (2 vCPU, 8 GiB), {_AWS}", "2026-11-23"),
    "gpu-h100": MachinePrice("gpu-h100", 2.99, "gpu", _GPU, "2026-11-23"),
}

def register_price(model: str, *, input: float, output: float, cached_input: float | None = None,
                   source: str = "user", as_of: str = "") -> TokenPrice:
    """Add or replace a per-token API price (USD per million tokens).

    Parameters
    ----------
    model
        A name such as ``"openai/gpt-4o-mini"``; it appears in cost reports and estimates.
    input, output
        USD per million prompt and output tokens.
    cached_input
        USD per million prompt tokens served from the provider's prompt cache (default: ``input``).
    source, as_of
        Where the price comes from and when it was read (shown in reports).

    Examples
    --------
    >>> import semframe as sf
    >>> sf.register_price("mycloud/llm-small", input=0.2, output=0.8).output
    0.8
    >>> sf.unregister_price("mycloud/llm-small")
    """
    price = TokenPrice(model, float(input), float(input if cached_input is None else cached_input),
                       float(output), source, as_of)
    TOKEN_PRICES[model] = price
    return price


def unregister_price(model: str) -> None:
    """Remove a per-token API price (no error if it is not there)."""
    TOKEN_PRICES.pop(model, None)


def register_machine_price(name: str, hourly_usd: float, *, kind: str = "cpu", source: str = "user",
                           as_of: str = "") -> MachinePrice:
    """Add or replace a machine's hourly price; select it with ``sf.configure(machine=name)``.

    Examples
    --------
    >>> import semframe as sf
    >>> sf.register_machine_price("my-a10", 0.75, kind="gpu").cost(3600)
    0.75
    >>> _ = sf.accounting.MACHINE_PRICES.pop("my-a10")
    """
    price = MachinePrice(name, float(hourly_usd), kind, source, as_of)
    MACHINE_PRICES[name] = price
    return price


def format_usd(x: float) -> str:
    """Dollars with enough digits to read: ``$12.35``, ``$0.0123``, ``$4.56e-06``.

    >>> format_usd(12.345), format_usd(0.0123), format_usd(0.00000456)
    ('$12.35', '$0.0123', '$4.56e-06')
    """
    if x == 0 or x >= 0.01:
        return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"
    return f"${x:.3g}"


def engine_on_gpu(engine: Any) -> bool:
    """Whether ``engine`` runs on a GPU, judged without importing anything heavy.

    An engine may say so itself with a ``device`` attribute (``"cuda"``, ``"gpu"``); otherwise a
    GPU is assumed when torch is already imported (an engine started it) and sees CUDA.
    """
    device = getattr(engine, "device", None)
    if isinstance(device, str):
        return device.split(":")[0].lower() in ("cuda", "gpu")
    if engine is None or getattr(engine, "name", "") == "deterministic":
        return False
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_available())
    except Exception:  # a half-initialised torch must not break accounting
        return False


def machine_price(engine: Any = None) -> MachinePrice:
    """The price that applies to a run on ``engine``.

    ``sf.configure(hourly_price=...)`` wins, then ``sf.configure(machine=...)``, then
    ``"gpu-h100"`` for an engine on a GPU and ``"cpu-2vcpu"`` otherwise.
    """
    from semframe import config

    settings = config.settings
    if settings.machine is not None:
        if settings.machine not in MACHINE_PRICES:
            known = ", ".join(repr(k) for k in MACHINE_PRICES)
            raise ValueError(
                f"unknown machine {settings.machine!r}; known machines are {known} "
                "(add one with sf.register_machine_price(name, hourly_usd))"
            )
        base = MACHINE_PRICES[settings.machine]
    else:
        base = MACHINE_PRICES["gpu-h100" if engine_on_gpu(engine) else "cpu-2vcpu"]
    if settings.hourly_price is not None:
        return MachinePrice(base.name, settings.hourly_price, base.kind, "sf.configure(hourly_price=...)", "")
    return base
