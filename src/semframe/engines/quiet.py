"""Keeping the engine's start-up chatter out of the user's output, and saying what is happening.

Starting vLLM prints 15-35 lines that are no use to someone running a data pipeline: vLLM's own
log (``WARNING ... libtcmalloc is not found``, 4x ``torch.set_num_threads``, the seed and eager
mode notes -- on **stdout** by default), Python warnings raised by vLLM and torch
(``torch.distributed.reduce_op`` FutureWarnings), torch's logging (``Triton not available``), C++
prints straight to file descriptor 2 (``NUMA binding``) and tqdm bars (``Loading safetensors
checkpoint shards``; in Jupyter, tqdm's ``IProgress not found`` warning). By default
(:func:`engine_logs_wanted` is False) all of it goes to the ``semframe.engine`` logger instead:

- vLLM's logger gets one handler that hands every record to ``semframe.engine`` (vLLM's INFO at
  DEBUG, its WARNING at INFO, its ERROR and above unchanged), and vLLM is told not to configure
  logging itself (``VLLM_CONFIGURE_LOGGING=0`` unless the user set it);
- while vLLM is imported and started (:func:`engine_output`), Python warnings are recorded, and
  file descriptors 1 and 2 and ``sys.stdout`` / ``sys.stderr`` are pointed at a buffer; when the
  start is over they are put back and what was caught is logged at INFO, line by line (and
  quoted in the error if the start failed).

``SEMFRAME_ENGINE_LOGS=1`` (or ``VLLMEngine(quiet=False)``) turns all this off: vLLM configures
its own logging again (on stderr, never stdout) and every line is printed as vLLM prints it.

Independently, :func:`notice` prints semframe's own short progress lines (``semframe: starting
the local vLLM engine ...``) on stderr when progress is shown (a terminal, a notebook, or
``sf.configure(progress=True)``), so a long wait is never silent; they are logged at INFO too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

from semframe import config

logger = logging.getLogger("semframe")
#: Where vLLM's, torch's and transformers' start-up output goes unless engine logs are on.
engine_logger = logging.getLogger("semframe.engine")

#: The switch that brings the engines' own output back (``1``, ``true``, ``yes`` or ``on``).
ENGINE_LOGS_ENV = "SEMFRAME_ENGINE_LOGS"
#: vLLM's switch for configuring its own logging, and whether the user set it before semframe did.
_CONFIGURE_ENV = "VLLM_CONFIGURE_LOGGING"
_USER_CONFIGURE = os.environ.get(_CONFIGURE_ENV)
#: One capture at a time: two engines starting in two threads must not swap the same fds.
_capture_lock = threading.RLock()


def engine_logs_wanted(quiet: bool | None = None) -> bool:
    """Whether the engine's own output should be shown as it is (``quiet=False`` or the env switch)."""
    if quiet is not None:
        return not quiet
    return os.environ.get(ENGINE_LOGS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- notices


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (checked without importing IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def notices_shown() -> bool:
    """Whether :func:`notice` prints: as the progress display decides (``sf.configure(progress=...)``;
    by default when stderr is a terminal or a notebook is running)."""
    setting = config.settings.progress
    if setting is not None:
        return bool(setting)
    return _in_notebook() or _isatty(sys.stderr)


def notice(message: str) -> None:
    """Tell the user what semframe is doing: logged at INFO, and printed on stderr when progress is shown."""
    logger.info(message)
    if not notices_shown():
        return
    err = sys.stderr
    # A progress line may be open on a terminal: start a fresh line rather than append to it.
    lead = "\r\x1b[K" if _isatty(err) else ""
    with contextlib.suppress(Exception):
        err.write(f"{lead}semframe: {message}\n")
        err.flush()


# ----------------------------------------------------------------------------- vLLM's logging


class _ToSemframe(logging.Handler):
    """Hands vLLM's log records to ``semframe.engine``, one level lower (errors stay errors)."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno
        if level < logging.ERROR:
            level = logging.DEBUG if level <= logging.INFO else logging.INFO
        if not engine_logger.isEnabledFor(level):
            return
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        engine_logger.log(level, "%s: %s", record.name, message)


_handler = _ToSemframe()


def prepare_vllm_logging(loud: bool) -> None:
    """Set up vLLM's logging before it is imported or started (see the module docstring).

    vLLM writes to stderr in both modes, never stdout (``VLLM_LOGGING_STREAM``, unless set).
    """
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if _USER_CONFIGURE is None:
        os.environ[_CONFIGURE_ENV] = "1" if loud else "0"
    vllm_logger = logging.getLogger("vllm")
    if loud:
        if _handler in vllm_logger.handlers:
            vllm_logger.removeHandler(_handler)
            vllm_logger.propagate = True
        return
    if os.environ.get(_CONFIGURE_ENV) == "1":
        return  # the user asked vLLM to configure its own logging: leave it alone
    for h in list(vllm_logger.handlers):  # a loud engine earlier in this process left vLLM's own
        vllm_logger.removeHandler(h)
    vllm_logger.addHandler(_handler)
    vllm_logger.propagate = False
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    vllm_logger.setLevel(level if isinstance(logging.getLevelName(level), int) else "INFO")


# ----------------------------------------------------------------------------- output capture


class _Gate(io.TextIOBase):
    """Stands in for ``sys.stdout`` / ``sys.stderr`` during a capture.

    While the capture is open, text goes to the capture buffer; afterwards it passes straight
    through to the stream it replaced, so a logging handler created during the capture (torch
    creates one when it is imported) keeps working and writes where it would have.
    """

    def __init__(self, real: TextIO, sink: io.StringIO):
        self._real = real
        self._sink: io.StringIO | None = sink

    def write(self, text: str) -> int:  # type: ignore[override]
        sink = self._sink
        if sink is not None:
            return sink.write(text)
        return self._real.write(text)

    def flush(self) -> None:
        if self._sink is None:
            self._real.flush()

    def isatty(self) -> bool:
        return _isatty(self._real)

    def fileno(self) -> int:
        return self._real.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def release(self) -> None:
        self._sink = None


class Captured:
    """What a capture caught so far (:meth:`text`)."""

    def __init__(self) -> None:
        self._file: Any = None
        self._buffer = io.StringIO()
        self.warnings: list[warnings.WarningMessage] = []

    def text(self) -> str:
        parts = [self._buffer.getvalue()]
        if self._file is not None:
            _flush_c_streams()
            self._file.flush()
            self._file.seek(0)
            parts.append(self._file.read().decode("utf-8", "replace"))
        parts += [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in self.warnings]
        return "\n".join(p.strip("\n") for p in parts if p.strip())

    def tail(self, lines: int = 15) -> str:
        kept = [ln for ln in self.text().splitlines() if ln.strip()]
        return "\n".join(kept[-lines:])


def _flush_c_streams() -> None:
    """Flush C stdio buffers (a C library's printf to a redirected stdout sits in one)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def _reroute_app_handlers(saved: dict[int, int], real_out: Any, real_err: Any) -> list[tuple[Any, Any, Any]]:
    """Point the application's own log handlers (on the root and ``semframe`` loggers) that write
    to the terminal's stdout/stderr at the saved descriptors for the capture, so what the
    application's logging shows during the start still shows, once, where it would have.

    Returns ``(handler, its stream, the stand-in)`` for putting them back.
    """
    done: list[tuple[Any, Any, Any]] = []
    writers: dict[int, Any] = {}
    for name in ("", "semframe"):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if not isinstance(handler, logging.StreamHandler) or stream not in (
                    real_out, real_err, sys.__stdout__, sys.__stderr__):
                continue
            try:
                fd = stream.fileno()
            except Exception:  # not backed by a descriptor (a notebook's stream): nothing to do
                continue
            if fd not in saved:
                continue
            if fd not in writers:
                writers[fd] = open(saved[fd], "w", buffering=1, closefd=False,  # noqa: SIM115
                                   encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace")
            done.append((handler, handler.setStream(writers[fd]), writers[fd]))
    return done


@contextlib.contextmanager
def engine_output(loud: bool) -> Iterator[Captured]:
    """Catch everything printed while an engine is imported or started (see the module docstring).

    ``loud``: catch nothing. Otherwise, on the way out, the caught lines are logged on
    ``semframe.engine`` at INFO; the yielded :class:`Captured` gives them to an error message.
    """
    captured = Captured()
    if loud:
        yield captured
        return
    with _capture_lock:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_streams()
        saved: dict[int, int] = {}
        try:
            captured._file = tempfile.TemporaryFile()
            for fd in (1, 2):
                saved[fd] = os.dup(fd)
                os.dup2(captured._file.fileno(), fd)
        except OSError:  # no usable descriptors (an embedded interpreter): Python level only
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            saved = {}
        real_out, real_err = sys.stdout, sys.stderr
        rerouted = _reroute_app_handlers(saved, real_out, real_err)
        gate_out, gate_err = _Gate(real_out, captured._buffer), _Gate(real_err, captured._buffer)
        sys.stdout, sys.stderr = gate_out, gate_err  # type: ignore[assignment]
        try:
            with warnings.catch_warnings(record=True) as caught:
                captured.warnings = caught  # filled as warnings are raised
                yield captured
        finally:
            with contextlib.suppress(Exception):
                gate_out.flush(), gate_err.flush()
            _flush_c_streams()
            for handler, stream, writer in rerouted:
                with contextlib.suppress(Exception):
                    writer.flush()
                handler.setStream(stream)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            # Put the streams back, unless someone else replaced them meanwhile; either way the
            # gates now pass through to the real streams.
            if sys.stdout is gate_out:
                sys.stdout = real_out
            if sys.stderr is gate_err:
                sys.stderr = real_err
            gate_out.release()
            gate_err.release()
            text = captured.text()
            if captured._file is not None:
                captured._file.close()
                captured._file = None
                captured._buffer = io.StringIO(text)  # keep the text for the caller
                captured.warnings = []
            for line in text.splitlines():
                if line.strip():
                    engine_logger.info("%s", line.rstrip())
