"""Process-wide defaults: the engine, the batch size, the cache.

>>> import semframe as sf
>>> sf.configure(engine=sf.DeterministicEngine(), batch_size=256)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("semframe")
# A library logs; the application decides where logs go (``logging.basicConfig(level="INFO")``).
logger.addHandler(logging.NullHandler())

_UNSET: Any = object()


@dataclass
class Settings:
    engine: Any = None  # an Engine, or None for the default local vLLM engine
    batch_size: int = 512
    cache: bool = True
    cache_dir: Path | None = None
    lineage: bool = True
    progress: bool | None = None  # None: show when attached to a terminal or notebook
    machine: str | None = None  # a key of semframe.accounting.MACHINE_PRICES; None: by the engine's device
    hourly_price: float | None = None  # USD per hour of the machine; overrides the machine's price


settings = Settings()


def configure(*, engine: Any = _UNSET, batch_size: int = _UNSET, cache: bool = _UNSET,
              cache_dir: str | os.PathLike | None = _UNSET, lineage: bool = _UNSET,
              progress: bool | None = _UNSET, machine: str | None = _UNSET,
              hourly_price: float | None = _UNSET) -> Settings:
    """Set process-wide defaults; every argument left out keeps its current value.

    Parameters
    ----------
    engine
        The engine every run uses unless ``collect(engine=...)`` says otherwise. ``None``
        restores the default: a local vLLM engine on the default model, started on first use.
    batch_size
        Rows per engine batch.
    cache
        Use the persistent exact cache (``False`` turns it off for every run).
    cache_dir
        Where caches and converted models live (default ``$SEMFRAME_CACHE_DIR`` or
        ``~/.cache/semframe``).
    lineage
        Record per-cell lineage.
    progress
        Show a progress bar (None: only in a terminal or notebook).
    machine
        Which machine price a local run is charged at: a key of
        ``sf.accounting.MACHINE_PRICES`` (``"cpu-2vcpu"``, ``"gpu-h100"``, or one added with
        ``sf.register_machine_price``). None picks by the engine's device.
    hourly_price
        USD per hour of the machine, overriding the machine's listed price (None: the listed one).
    """
    from semframe.engines.base import Engine

    if engine is not _UNSET:
        if engine is not None and not isinstance(engine, Engine):
            raise TypeError(f"engine must be a semframe Engine or None, got {type(engine).__name__}")
        settings.engine = engine
    if batch_size is not _UNSET:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        settings.batch_size = batch_size
    if cache is not _UNSET:
        settings.cache = bool(cache)
    if cache_dir is not _UNSET:
        settings.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
    if lineage is not _UNSET:
        settings.lineage = bool(lineage)
    if progress is not _UNSET:
        settings.progress = progress
    if machine is not _UNSET:
        from semframe.accounting.prices import MACHINE_PRICES

        if machine is not None and machine not in MACHINE_PRICES:
            known = ", ".join(repr(k) for k in MACHINE_PRICES)
            raise ValueError(f"unknown machine {machine!r}; known machines are {known} "
                             "(add one with sf.register_machine_price(name, hourly_usd))")
        settings.machine = machine
    if hourly_price is not _UNSET:
        if hourly_price is not None and (not isinstance(hourly_price, (int, float)) or hourly_price < 0):
            raise ValueError(f"hourly_price must be a non-negative number of USD per hour, got {hourly_price!r}")
        settings.hourly_price = None if hourly_price is None else float(hourly_price)
    return settings


def cache_dir() -> Path:
    """The directory for caches and converted models."""
    if settings.cache_dir is not None:
        return settings.cache_dir
    env = os.environ.get("SEMFRAME_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semframe"


def resolve_engine(engine: Any = None):
    """The engine for a run: the argument, else the configured one, else the default vLLM engine."""
    if engine is not None:
        return engine
    if settings.engine is not None:
        return settings.engine
    from semframe.engines.vllm import default_engine

    logger.info("no engine configured: using the default local vLLM engine")
    return default_engine()


def existing_engine(engine: Any = None):
    """The engine a run would use, but only if it already exists: never starts one.

    The argument, else the configured engine, else the default vLLM engine if this process has
    already started it, else None.
    """
    if engine is not None:
        return engine
    if settings.engine is not None:
        return settings.engine
    import sys

    vllm_mod = sys.modules.get("semframe.engines.vllm")  # not imported: no default engine exists
    return None if vllm_mod is None else vllm_mod.running_default_engine()
