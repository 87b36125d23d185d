"""Which engine a run (or a step) uses, by object or by name.

An engine may be given as an object (``sf.VLLMEngine(...)``, ``sf.DeterministicEngine()``) or as
a name:

- a name registered with ``sf.configure(engines={"small": ..., "big": ...})`` (an engine, or a
  function of no arguments that makes one: it is called, once, the first time a step needs it);
- ``"deterministic"``: the instant test engine (one per process);
- ``"vllm"`` or ``"default"``: the default local vLLM engine;
- a model folder or a ``.gguf`` file path: a ``VLLMEngine`` on it (one per path and process);
- an ``http(s)://`` URL of an OpenAI-compatible server: an ``OpenAIEngine`` on it with the
  server's only model (one per URL and process; for more options, or a server with several
  models, make ``sf.OpenAIEngine(url, model=...)`` yourself).

Engine resolution lives with the engines (not in ``config``), so nothing outside this package
names an engine implementation.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

from semframe import config
from semframe.engines.base import Engine
from semframe.errors import PlanError

logger = logging.getLogger("semframe")

_lock = threading.RLock()
_by_name: dict[str, Engine] = {}  # engines made from names (and registered factories), per process


def _check(engine: Any) -> Engine:
    if not isinstance(engine, Engine):
        raise PlanError(f"engine must be a semframe Engine (e.g. sf.VLLMEngine(), sf.DeterministicEngine()) "
                        f"or an engine name ({describe_names()}), got {type(engine).__name__} {engine!r}")
    return engine


def describe_names() -> str:
    """The engine names that resolve, for error messages."""
    registered = sorted(config.settings.engines)
    names = [*(repr(n) for n in registered), "'deterministic'", "'vllm'", "a model folder path",
             "an OpenAI-compatible server URL"]
    return ", ".join(names)


def check_engine(engine: Any, where: str = "engine") -> Any:
    """Check an engine argument without starting anything: an Engine, or a name that resolves."""
    if engine is None or isinstance(engine, Engine):
        return engine
    if not isinstance(engine, str):
        return _check(engine)
    if engine in config.settings.engines or engine in ("deterministic", "vllm", "default"):
        return engine
    if engine.startswith(("http://", "https://")):
        return engine  # an OpenAI-compatible server: reached only when a step needs it
    path = Path(engine).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return engine
    raise PlanError(f"{where}: unknown engine {engine!r}; engine names are {describe_names()} "
                    "(register one with sf.configure(engines={'name': engine}))")


def engine_by_name(name: str) -> Engine:
    """The engine a name stands for (made on first use, then shared in this process)."""
    check_engine(name)
    registered, key = _registered(name)
    if isinstance(registered, Engine):
        return registered
    with _lock:
        engine = _by_name.get(key)
        if engine is None or getattr(engine, "closed", False):
            if registered is not None:  # a factory
                engine = _check(registered())
            elif name == "deterministic":
                from semframe.engines.testing import DeterministicEngine

                engine = DeterministicEngine()
            elif name in ("vllm", "default"):
                from semframe.engines.vllm import default_engine

                return default_engine()
            elif name.startswith(("http://", "https://")):
                engine = _server_engine(name)
            else:
                from semframe.engines.vllm import VLLMEngine

                engine = VLLMEngine(str(Path(name).expanduser()))
            _by_name[key] = engine
        return engine


def _server_engine(url: str) -> Engine:
    """``OpenAIEngine`` on the server at ``url``, with the server's only model (asked of it now:
    an error names the models when it serves several, or says the server cannot be reached)."""
    from semframe.engines.openai import OpenAIEngine

    engine = OpenAIEngine(base_url=url)
    try:
        engine.model  # noqa: B018 - resolves the server's only model, or raises listing them
    except BaseException:
        engine.close()
        raise
    return engine


def resolve_engine(engine: Any = None) -> Engine:
    """The engine for a run: the argument, else the configured one, else the default vLLM engine."""
    ref = engine if engine is not None else config.settings.engine
    if isinstance(ref, str):
        return engine_by_name(ref)
    if ref is not None:
        return _check(ref)
    from semframe.engines.vllm import default_engine

    logger.info("no engine configured: using the default local vLLM engine")
    return default_engine()


def existing_engine(engine: Any = None) -> Engine | None:
    """The engine a run would use, but only if it already exists: never starts or makes one.

    The argument, else the configured engine, else the default vLLM engine if this process has
    already started it, else None. A name stands for the engine it has already made, if any.
    """
    ref = engine if engine is not None else config.settings.engine
    if isinstance(ref, str):
        return _existing_by_name(check_engine(ref))
    if ref is not None:
        return _check(ref)
    return _running_default()


def _running_default() -> Engine | None:
    vllm_mod = sys.modules.get("semframe.engines.vllm")  # not imported: no default engine exists
    return None if vllm_mod is None else vllm_mod.running_default_engine()


def _registered(name: str) -> tuple[Any, str]:
    """What ``sf.configure(engines=...)`` registered under ``name`` (or None), and where the
    engine made from the name is kept."""
    registered = config.settings.engines.get(name)
    # Keyed by the factory too: registering a new one for the same name makes a new engine.
    return registered, (f"registered:{name}:{id(registered)}" if registered is not None else name)


def _existing_by_name(name: str) -> Engine | None:
    registered, key = _registered(name)
    if isinstance(registered, Engine):
        return registered
    if name in ("vllm", "default"):
        return _running_default()
    return _by_name.get(key)
