"""``sf.configure``: set the process-wide defaults, checking each value.

>>> import semframe as sf
>>> sf.configure(engine=sf.DeterministicEngine(), batch_size=256)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from semframe.accounting.prices import MACHINE_PRICES
from semframe.config import Settings, settings
from semframe.engines.base import Engine
from semframe.execution.context import RunOptions

_UNSET: Any = object()


def configure(*, engine: Any = _UNSET, engines: dict[str, Any] | None = _UNSET, batch_size: int = _UNSET,
              cache: bool = _UNSET,
              cache_dir: str | os.PathLike | None = _UNSET, lineage: bool = _UNSET,
              progress: bool | None = _UNSET, dedupe: bool = _UNSET, prompt_layout: str = _UNSET,
              machine: str | None = _UNSET, hourly_price: float | None = _UNSET,
              embedding_model: Any = _UNSET) -> Settings:
    """Set process-wide defaults; every argument left out keeps its current value.

    Parameters
    ----------
    engine
        The engine every run uses unless ``collect(engine=...)`` or a step's ``engine=`` says
        otherwise: an engine object or a name (see ``engines``). ``None`` restores the default:
        a local vLLM engine on the default model, started on first use.
    engines
        Engines by name, for steps and runs to name: ``{"small": sf.VLLMEngine(...),
        "big": lambda: sf.VLLMEngine(...)}`` (an engine, or a function of no arguments that makes
        one the first time a step needs it). Replaces the registered names; ``{}`` clears them.
        Built-in names: ``"deterministic"``, ``"vllm"``, and any model folder path.
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
    dedupe
        Ask the engine each distinct request once per run (greedy steps).
    prompt_layout
        ``"shared_first"`` (the shared instruction first, so the engine's prefix cache reuses
        it) or ``"inline"`` (the row's text first).
    machine
        Which machine price a local run is charged at: a key of
        ``sf.accounting.MACHINE_PRICES`` (``"cpu-2vcpu"``, ``"gpu-h100"``, or one added with
        ``sf.register_machine_price``). None picks by the engine's device.
    hourly_price
        USD per hour of the machine, overriding the machine's listed price (None: the listed one).
    embedding_model
        The embedding model of the semantic cache and the embedding operators: a
        sentence-transformers folder or name, or an embedding engine (``sf.HashingEmbedder()``,
        ``sf.OpenAIEmbedder(...)``); None: the packaged all-MiniLM-L6-v2.
    """
    if engines is not _UNSET:
        if engines is None:
            engines = {}
        if not isinstance(engines, dict):
            raise TypeError(f"engines must be a dict of name -> engine, got {type(engines).__name__}")
        for name, value in engines.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"engine names must be non-empty strings, got {name!r}")
            if not (isinstance(value, Engine) or callable(value)):
                raise TypeError(f"engines[{name!r}] must be an Engine or a function that makes one, "
                                f"got {type(value).__name__}")
        settings.engines = dict(engines)
    if engine is not _UNSET:
        if engine is not None and not isinstance(engine, (Engine, str)):
            raise TypeError(f"engine must be a semframe Engine, an engine name or None, got {type(engine).__name__}")
        if isinstance(engine, str):
            from semframe.engines.registry import check_engine

            check_engine(engine, "sf.configure(engine=...)")
        settings.engine = engine
    run_values = {k: v for k, v in dict(batch_size=batch_size, cache=cache, lineage=lineage, progress=progress,
                                        dedupe=dedupe, prompt_layout=prompt_layout).items() if v is not _UNSET}
    if run_values:
        RunOptions.resolve(settings, **run_values)  # raises ValueError naming a bad value
        for key, value in run_values.items():
            setattr(settings, key, value)
    if cache_dir is not _UNSET:
        settings.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
    if machine is not _UNSET:
        if machine is not None and machine not in MACHINE_PRICES:
            known = ", ".join(repr(k) for k in MACHINE_PRICES)
            raise ValueError(f"unknown machine {machine!r}; known machines are {known} "
                             "(add one with sf.register_machine_price(name, hourly_usd))")
        settings.machine = machine
    if hourly_price is not _UNSET:
        if hourly_price is not None and (isinstance(hourly_price, bool) or not isinstance(hourly_price, (int, float))
                                         or hourly_price < 0):
            raise ValueError(f"hourly_price must be a non-negative number of USD per hour, got {hourly_price!r}")
        settings.hourly_price = None if hourly_price is None else float(hourly_price)
    if embedding_model is not _UNSET:
        from semframe.engines.embedding import EmbeddingEngine

        if embedding_model is not None and not isinstance(embedding_model, (str, EmbeddingEngine)):
            raise ValueError(f"embedding_model must be a model folder or name or an embedding engine "
                             f"(sf.HashingEmbedder() ...), got {embedding_model!r}")
        settings.embedding_model = embedding_model
    return settings
