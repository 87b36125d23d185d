"""A progress display for long runs: rows done / total, engine calls, tokens/s, cost so far.

It updates as batches finish: in a terminal, one line on stderr rewritten in place; in Jupyter,
one HTML line updated through a display handle (no widget library needed). It stays silent
when told to (``progress=False``), and by default (``progress=None``) when stderr is not a
terminal and no notebook is running, so logs and CI output stay clean. Nothing is shown for a
run that finishes within ``delay`` seconds.
"""

from __future__ import annotations

import html
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from semframe.accounting.prices import MachinePrice


def in_notebook() -> bool:
    """True inside a Jupyter kernel (checked without importing IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_mode(setting: bool | None, stream: TextIO | None = None) -> str | None:
    """``"notebook"``, ``"terminal"`` or None (silent) for a ``progress`` setting."""
    if setting is False:
        return None
    if in_notebook():
        return "notebook"
    stream = stream if stream is not None else sys.stderr
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if setting is True or is_tty:
        return "terminal"
    return None


@dataclass
class Progress:
    """Tracks and shows how far a run has got.

    Parameters
    ----------
    mode
        ``"terminal"``, ``"notebook"`` or None (track silently).
    total_rows
        Rows that will reach the first semantic step, when known before the run.
    machine
        Prices the "cost so far" (engine seconds x hourly price).
    stream
        Where terminal output goes (stderr by default).
    delay
        Show nothing until the run has taken this long (seconds).
    every
        The least time between two refreshes (seconds).

    Examples
    --------
    >>> import io
    >>> from semframe.accounting.prices import MACHINE_PRICES
    >>> out = io.StringIO()
    >>> p = Progress("terminal", total_rows=10, machine=MACHINE_PRICES["cpu-2vcpu"], stream=out, delay=0, every=0)
    >>> p.rows(5); p.close()
    >>> "5/10 rows" in out.getvalue()
    True
    """

    mode: str | None
    total_rows: int | None = None
    machine: MachinePrice | None = None
    stream: TextIO | None = None
    delay: float = 0.5
    every: float = 0.1
    rows_done: int = 0
    calls: int = 0
    tokens: int = 0
    engine_seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter)
    _last: float = 0.0
    _shown: bool = False
    _handle: Any = None

    def rows(self, n: int) -> None:
        """``n`` more input rows have gone through the first semantic step."""
        self.rows_done += n
        self._refresh()

    def engine_batch(self, completions: list[Any]) -> None:
        """An engine batch finished."""
        self.calls += len(completions)
        for c in completions:
            self.tokens += c.prompt_tokens + c.output_tokens
            self.engine_seconds += c.latency_s
        self._refresh()

    def after_engine_batch(self, step: Any, completions: list[Any]) -> None:
        """The answer resolver's observer hook: an engine batch of ``step`` finished."""
        self.engine_batch(completions)

    def line(self) -> str:
        """The status line."""
        elapsed = time.perf_counter() - self._start
        if self.total_rows:
            pct = 100.0 * self.rows_done / self.total_rows
            done = f"{self.rows_done:,}/{self.total_rows:,} rows ({pct:.0f}%)"
        else:
            done = f"{self.rows_done:,} rows"
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        cost = self.machine.cost(self.engine_seconds) if self.machine is not None else 0.0
        return (f"semframe: {done} | {self.calls:,} engine calls | {rate:,.0f} tok/s | "
                f"${cost:.4f} so far | {elapsed:.1f} s")

    def close(self) -> None:
        """Show the final state (if anything was shown) and end the line."""
        if self._shown:
            self._draw(final=True)
            if self.mode == "terminal":
                self._out.write("\n")
                self._out.flush()

    # ------------------------------------------------------------------ drawing

    @property
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _refresh(self) -> None:
        if self.mode is None:
            return
        now = time.perf_counter()
        if now - self._start < self.delay or (self._shown and now - self._last < self.every):
            return
        self._last = now
        self._draw()

    def _draw(self, final: bool = False) -> None:
        self._shown = True
        text = self.line()
        if self.mode == "terminal":
            self._out.write("\r" + text)
            self._out.flush()
            return
        from IPython.display import HTML, display  # only reached inside a notebook

        body = HTML(f"<pre style='margin:0'>{html.escape(text)}</pre>")
        if self._handle is None:
            self._handle = display(body, display_id=True)
        else:
            self._handle.update(body)
