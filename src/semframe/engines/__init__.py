"""Engines: the Engine interface and its implementations.

``VLLMEngine`` is looked up lazily so that importing semframe never imports vllm or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semframe.engines.base import (
    Completion,
    Engine,
    EngineUsage,
    Message,
    RawCompletion,
    Request,
)
from semframe.engines.testing import DeterministicEngine

if TYPE_CHECKING:
    from semframe.engines.vllm import VLLMEngine

__all__ = [
    "Completion",
    "DeterministicEngine",
    "Engine",
    "EngineUsage",
    "Message",
    "RawCompletion",
    "Request",
    "VLLMEngine",
]


def __getattr__(name: str) -> Any:
    if name == "VLLMEngine":
        from semframe.engines.vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
