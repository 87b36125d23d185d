"""Process-wide defaults: plain data, read at the start of each run.

This module imports nothing of semframe: it is the leaf every layer may read. ``sf.configure``
(:func:`semframe.configure`) validates and sets these values; each run copies what it needs into
its own :class:`~semframe.execution.context.RunOptions` when it starts, so changing a setting
never changes a run already under way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("semframe")
# A library logs; the application decides where logs go (``logging.basicConfig(level="INFO")``).
logger.addHandler(logging.NullHandler())


@dataclass
class Settings:
    engine: Any = None  # an Engine or an engine name, or None for the default local vLLM engine
    engines: dict[str, Any] = field(default_factory=dict)  # name -> Engine, or a function that makes one
    batch_size: int = 512
    cache: bool = True
    cache_dir: Path | None = None
    lineage: bool = True
    progress: bool | None = None  # None: show when attached to a terminal or notebook
    dedupe: bool = True  # ask each distinct request once per run
    prompt_layout: str = "shared_first"  # or "inline"
    machine: str | None = None  # a key of semframe.accounting.MACHINE_PRICES; None: by the engine's device
    hourly_price: float | None = None  # USD per hour of the machine; overrides the machine's price
    embedding_model: Any = None  # a sentence-transformers folder or name, or an EmbeddingEngine; None: the default


settings = Settings()


def cache_dir() -> Path:
    """The directory for caches and converted models."""
    if settings.cache_dir is not None:
        return settings.cache_dir
    env = os.environ.get("SEMFRAME_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semframe"
