"""Which engine a run uses: the one passed in, else the configured one, else the default vLLM engine.

Engine resolution lives with the engines (not in ``config``), so nothing outside this package
names an engine implementation.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from semframe import config
from semframe.engines.base import Engine
from semframe.errors import PlanError

logger = logging.getLogger("semframe")


def _check(engine: Any) -> Engine:
    if not isinstance(engine, Engine):
        raise PlanError(f"engine must be a semframe Engine (e.g. sf.VLLMEngine(), sf.DeterministicEngine()), "
                        f"got {type(engine).__name__} {engine!r}")
    return engine


def resolve_engine(engine: Any = None) -> Engine:
    """The engine for a run: the argument, else the configured one, else the default vLLM engine."""
    if engine is not None:
        return _check(engine)
    if config.settings.engine is not None:
        return _check(config.settings.engine)
    from semframe.engines.vllm import default_engine

    logger.info("no engine configured: using the default local vLLM engine")
    return default_engine()


def existing_engine(engine: Any = None) -> Engine | None:
    """The engine a run would use, but only if it already exists: never starts one.

    The argument, else the configured engine, else the default vLLM engine if this process has
    already started it, else None.
    """
    if engine is not None:
        return _check(engine)
    if config.settings.engine is not None:
        return config.settings.engine
    vllm_mod = sys.modules.get("semframe.engines.vllm")  # not imported: no default engine exists
    return None if vllm_mod is None else vllm_mod.running_default_engine()
