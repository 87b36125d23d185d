"""Engines: the Engine interface and its implementations.

``VLLMEngine`` and ``OpenAIEngine`` are looked up lazily so that importing semframe never imports
vllm, torch or httpx.
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
    from semframe.engines.openai import OpenAIEngine
    from semframe.engines.vllm import VLLMEngine

__all__ = [
    "Completion",
    "DeterministicEngine",
    "Engine",
    "EngineUsage",
    "Message",
    "OpenAIEngine",
    "RawCompletion",
    "Request",
    "VLLMEngine",
]


def __getattr__(name: str) -> Any:
    if name == "VLLMEngine":
        from semframe.engines.vllm import VLLMEngine

        return VLLMEngine
    if name == "OpenAIEngine":
        from semframe.engines.openai import OpenAIEngine

        return OpenAIEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
