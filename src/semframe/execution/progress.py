"""A progress display for long runs: every semantic step, and the run as a whole.

For each semantic step it keeps the rows done (out of the rows expected, when they can be known
before the step runs), the engine calls, the answers reused (in-run dedup, exact cache, semantic
cache), the tokens and the engine seconds; for the run, the same summed up, the tokens per
second and the cost so far. It updates as batches finish:

- in a terminal, one line on stderr rewritten in place (cut to the terminal's width), e.g.
  ``semframe: step 2/3 extract -> facts 120/500 rows (24%) | all steps 1,120/1,500 rows (75%) |
  640 engine calls, 300 reused | 12,345 tokens, 1,234 tok/s | $0.0012 so far | 8.9 s``;
- in Jupyter, one HTML table (a row and a bar per step) updated through a display handle (no
  widget library, no tqdm);
- silent when told to (``progress=False``), and by default (``progress=None``) when stderr is not
  a terminal and no notebook is running, so logs and CI output stay clean.

Nothing is shown for a run that finishes within ``delay`` seconds.

Who feeds it: the run (``physical/executor.py``) names the plan's steps up front
(:meth:`Progress.plan_steps`); each row operator announces itself when it starts
(:meth:`Progress.start_step`, with the rows it expects), reports each batch it finishes
(:meth:`Progress.rows`) and its end (:meth:`Progress.end_step`); the answer resolver calls
:meth:`Progress.after_engine_batch` for every engine batch (it is one of the run's observers).
Counting the rows a step expects never fails a run and never reads a file twice
(:meth:`Progress.count_once` keeps each count).
"""

from __future__ import annotations

import html
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from semframe.accounting.prices import MachinePrice, format_usd
from semframe.engines.quiet import _in_notebook


def in_notebook() -> bool:
    """True inside a Jupyter kernel (checked without importing IPython)."""
    return _in_notebook()


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
class StepProgress:
    """How far one semantic step has got."""

    index: int
    operator: str
    column: str | None = None
    total_rows: int | None = None
    rows_done: int = 0
    calls: int = 0
    tokens: int = 0
    engine_seconds: float = 0.0
    started: bool = False
    finished: bool = False
    #: The step's StepMetrics (the reused answers are read from it), once the step has started.
    metrics: Any = None

    @property
    def label(self) -> str:
        return self.operator + (f" -> {self.column}" if self.column else "")

    @property
    def reused(self) -> dict[str, int]:
        """Answers reused so far, by kind: ``dedup``, ``cached`` (exact cache), ``similar`` (semantic)."""
        m = self.metrics
        if m is None:
            return {"dedup": 0, "cached": 0, "similar": 0}
        return {"dedup": m.dedup_hits, "cached": m.exact_cache_hits, "similar": m.semantic_cache_hits}

    @property
    def fraction(self) -> float | None:
        if self.finished:
            return 1.0
        if self.total_rows:
            return min(1.0, self.rows_done / self.total_rows)
        if self.total_rows == 0:
            return 1.0 if self.started else 0.0
        return None

    def rows_text(self) -> str:
        if self.total_rows is not None:
            pct = 100.0 * (self.fraction or 0.0)
            return f"{self.rows_done:,}/{self.total_rows:,} rows ({pct:.0f}%)"
        return f"{self.rows_done:,} rows" + (" (done)" if self.finished else "")


@dataclass
class Progress:
    """Tracks and shows how far a run has got (see the module docstring).

    Parameters
    ----------
    mode
        ``"terminal"``, ``"notebook"`` or None (track silently).
    total_rows
        Rows the first semantic step (step 0) will see, when known before the run; a step's
        own count, given to :meth:`start_step`, takes precedence.
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
    >>> p = Progress(None)
    >>> p.plan_steps([(0, "classify", "topic"), (1, "map", "gist")])
    >>> p.start_step(0, "classify", "topic", total_rows=4); p.rows(4, step=0); p.end_step(0)
    >>> p.start_step(1, "map", "gist", total_rows=4); p.rows(1, step=1)
    >>> p.line()  # doctest: +ELLIPSIS
    'semframe: step 2/2 map -> gist 1/4 rows (25%) | all steps 5/8 rows (62%) | 0 engine calls, 0 reused | ...'
    """

    mode: str | None
    total_rows: int | None = None
    machine: MachinePrice | None = None
    stream: TextIO | None = None
    delay: float = 0.5
    every: float = 0.1
    steps: dict[int, StepProgress] = field(default_factory=dict)
    current: int | None = None
    _counts: dict[Any, int | None] = field(default_factory=dict, repr=False)
    _start: float = field(default_factory=time.perf_counter)
    _last: float = 0.0
    _shown: bool = False
    _width: int = 0
    _handle: Any = None

    # ------------------------------------------------------------------ what the run reports

    def plan_steps(self, steps: Iterable[tuple[int, str, str | None]]) -> None:
        """The plan's semantic steps ``(index, operator, column)``, before any runs."""
        for index, operator, column in steps:
            self._step(index, operator, column)

    def start_step(self, index: int, operator: str, column: str | None = None, total_rows: int | None = None,
                   metrics: Any = None) -> None:
        """Step ``index`` starts; it expects ``total_rows`` rows (None: unknown)."""
        s = self._step(index, operator, column)
        s.started = True
        if total_rows is not None:
            s.total_rows = total_rows
        if metrics is not None:
            s.metrics = metrics
        if self.current is None:
            self.current = index

    def rows(self, n: int, step: int = 0) -> None:
        """``n`` more input rows have gone through semantic step ``step``."""
        s = self._step(step)
        s.started = True
        s.rows_done += n
        self.current = step
        self._refresh()

    def end_step(self, index: int) -> None:
        """Step ``index`` has seen all its rows."""
        s = self._step(index)
        s.finished = True
        self.current = index
        self._refresh()

    def engine_batch(self, completions: Iterable[Any], step: int = 0) -> None:
        """An engine batch of ``step`` finished."""
        s = self._step(step)
        for c in completions:
            s.calls += 1
            s.tokens += c.prompt_tokens + c.output_tokens
            share = getattr(c, "engine_s", None)  # its share of the engine's time, where it differs
            s.engine_seconds += c.latency_s if share is None else share
        self.current = step
        self._refresh()

    def after_engine_batch(self, step: Any, completions: Iterable[Any], requests: Any = None) -> None:
        """The answer resolver's observer hook: an engine batch of ``step`` (a StepInfo) finished."""
        s = self._step(step.index, getattr(step, "operator", "step"), getattr(step, "column", None))
        if s.metrics is None:
            s.metrics = getattr(step, "metrics", None)
        self.engine_batch(completions, step.index)

    def count_once(self, key: Any, count: Callable[[], int | None]) -> int | None:
        """``count()`` the first time ``key`` is asked, the same number after (never raises)."""
        if key not in self._counts:
            try:
                self._counts[key] = count()
            except Exception:  # a count is a nicety: whatever goes wrong, there is no total
                self._counts[key] = None
        return self._counts[key]

    # ------------------------------------------------------------------ totals

    @property
    def rows_done(self) -> int:
        """Rows done, summed over the steps."""
        return sum(s.rows_done for s in self.steps.values())

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.steps.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.steps.values())

    @property
    def engine_seconds(self) -> float:
        return sum(s.engine_seconds for s in self.steps.values())

    @property
    def reused(self) -> int:
        return sum(sum(s.reused.values()) for s in self.steps.values())

    @property
    def cost(self) -> float:
        return sum(self.step_cost(s) for s in self.steps.values())

    def step_cost(self, s: Any) -> float:
        """A step's cost so far: its tokens at its engine's prices for an engine billed by the
        token, else its engine seconds at the machine's hourly price."""
        pricing = getattr(s.metrics, "pricing", None)
        if pricing is not None:
            return s.metrics.token_usd
        return self.machine.cost(s.engine_seconds) if self.machine is not None else 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def _step(self, index: int, operator: str = "step", column: str | None = None) -> StepProgress:
        s = self.steps.get(index)
        if s is None:
            s = self.steps[index] = StepProgress(index, operator, column)
            if index == 0 and self.total_rows is not None:
                s.total_rows = self.total_rows
        elif s.operator == "step" and operator != "step":
            s.operator, s.column = operator, column
        return s

    def _overall(self) -> str:
        steps = list(self.steps.values())
        done = sum(s.rows_done for s in steps)
        if steps and all(s.total_rows is not None for s in steps):
            total = sum(s.total_rows or 0 for s in steps)
            pct = 100.0 * min(1.0, done / total) if total else 100.0
            return f"all steps {done:,}/{total:,} rows ({pct:.0f}%)"
        finished = sum(s.finished for s in steps)
        return f"all steps {done:,} rows, {finished}/{len(steps)} steps done"

    # ------------------------------------------------------------------ the display

    def line(self) -> str:
        """The status line (what the terminal shows)."""
        elapsed = self.elapsed
        parts: list[str] = []
        ordered = sorted(self.steps)
        cur = self.steps.get(self.current) if self.current is not None else None
        if cur is None and ordered:
            cur = self.steps[ordered[0]]
        if cur is None:
            parts.append(f"{self.rows_done:,} rows")
        elif len(ordered) == 1:
            parts.append(f"{cur.label} {cur.rows_text()}")
        else:
            parts.append(f"step {ordered.index(cur.index) + 1}/{len(ordered)} {cur.label} {cur.rows_text()}")
            parts.append(self._overall())
        parts.append(f"{self.calls:,} engine calls, {self.reused:,} reused")
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        parts.append(f"{self.tokens:,} tokens, {rate:,.0f} tok/s")
        parts.append(f"${self.cost:.4f} so far")
        parts.append(f"{elapsed:.1f} s")
        return "semframe: " + " | ".join(parts)

    def html(self) -> str:
        """The notebook display: a header line and one row (with a bar) per step."""
        elapsed = self.elapsed
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        head = (f"semframe: {elapsed:.1f} s | {self.calls:,} engine calls | {self.reused:,} answers reused | "
                f"{self.tokens:,} tokens ({rate:,.0f} tok/s) | {format_usd(self.cost)} so far")
        td = "padding:1px 8px;text-align:left;white-space:nowrap"
        rows = []
        for index in sorted(self.steps):
            s = self.steps[index]
            frac = s.fraction
            width = 0 if frac is None else round(100 * frac)
            colour = "#3b7dd8" if not s.finished else "#4caf50"
            bar = (f"<div style='width:140px;height:9px;background:#e6e6e6;border-radius:3px'>"
                   f"<div style='width:{width}%;height:9px;background:{colour};border-radius:3px'></div></div>"
                   if frac is not None else "<span style='color:#888'>rows not known ahead</span>")
            r = s.reused
            reused = ", ".join(f"{v:,} {k}" for k, v in r.items() if v) or "0"
            state = "done" if s.finished else ("running" if index == self.current else
                                               ("started" if s.started else "waiting"))
            weight = "font-weight:bold;" if index == self.current and not s.finished else ""
            cost = self.step_cost(s)
            cells = [str(index), html.escape(s.label), s.rows_text(), bar, f"{s.calls:,}", reused,
                     f"{s.tokens:,}", format_usd(cost), state]
            rows.append(f"<tr style='{weight}'>" + "".join(f"<td style='{td}'>{c}</td>" for c in cells) + "</tr>")
        header = "".join(f"<th style='{td}'>{h}</th>" for h in
                         ("step", "operator", "rows", "", "engine calls", "reused", "tokens", "cost", ""))
        return (f"<div class='semframe-progress' style='font-family:monospace;font-size:12px'>"
                f"<div>{html.escape(head)}</div>"
                f"<table style='border-collapse:collapse;margin-top:2px'><tr>{header}</tr>{''.join(rows)}</table>"
                f"</div>")

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
        if self.mode == "terminal":
            text = self.line()
            out = self._out
            if getattr(out, "isatty", lambda: False)():
                cols = shutil.get_terminal_size((120, 24)).columns
                if len(text) >= cols:  # a wrapped line cannot be rewritten in place
                    text = text[: max(10, cols - 2)] + "…"
            pad = " " * max(0, self._width - len(text))  # clear what a longer line left behind
            self._width = len(text)
            out.write("\r" + text + pad)
            out.flush()
            return
        from IPython.display import HTML, display  # only reached inside a notebook

        body = HTML(self.html())
        if self._handle is None:
            self._handle = display(body, display_id=True)
        else:
            self._handle.update(body)
