"""Progress display, logging, and that importing semframe stays light."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import types

import polars as pl

import semframe as sf
from semframe.accounting import MACHINE_PRICES
from semframe.execution.progress import Progress, progress_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_setting_and_terminal():
    assert progress_mode(None, io.StringIO()) is None  # not a TTY: silent
    assert progress_mode(None, _Tty()) == "terminal"
    assert progress_mode(True, io.StringIO()) == "terminal"
    assert progress_mode(False, _Tty()) is None


def test_terminal_line_updates_in_place():
    out = _Tty()
    p = Progress("terminal", total_rows=200, machine=MACHINE_PRICES["cpu-2vcpu"], stream=out, delay=0, every=0)
    done = sf.DeterministicEngine().generate([])  # nothing; then a fake batch of two completions
    assert done == []
    comp = types.SimpleNamespace(prompt_tokens=10, output_tokens=2, latency_s=0.5)
    p.rows(100)
    p.engine_batch([comp, comp])
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "100/200 rows (50%)" in text and "2 engine calls" in text and "$0.0000 so far" in text


def test_quick_runs_show_nothing_and_silent_mode_tracks():
    out = _Tty()
    p = Progress("terminal", total_rows=10, stream=out, delay=60)
    p.rows(10)
    p.close()
    assert out.getvalue() == ""
    q = Progress(None)
    q.rows(5)
    assert q.rows_done == 5


def test_run_with_progress_writes_to_stderr(capsys, monkeypatch):
    import functools

    import semframe.physical.executor as run_mod

    monkeypatch.setattr(run_mod, "Progress", functools.partial(Progress, delay=0.0))
    df = pl.DataFrame({"t": [f"x{i}" for i in range(50)]})
    df.lazy().semantic.classify("t", ["a", "b"]).collect(engine=sf.DeterministicEngine(), progress=True,
                                                         batch_size=10, cache=False)
    err = capsys.readouterr().err
    assert "50/50 rows (100%)" in err and "50 engine calls" in err


def test_notebook_mode_updates_one_display(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.data))

    def display(obj, display_id=False):
        shown.append(("display", obj.data))
        return Handle()

    class ZMQInteractiveShell:
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: ZMQInteractiveShell()
    disp = types.ModuleType("IPython.display")
    disp.display = display
    disp.HTML = lambda s: types.SimpleNamespace(data=s)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", disp)
    assert progress_mode(None, io.StringIO()) == "notebook"
    p = Progress("notebook", total_rows=4, delay=0, every=0)
    p.rows(2)
    p.rows(2)
    p.close()
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    # One HTML table (a row and a bar per step), no widget library.
    assert "4/4 rows" in shown[-1][1] and shown[-1][1].startswith("<div class='semframe-progress'")


def test_runs_log_what_they_do(caplog):
    caplog.set_level(logging.INFO, logger="semframe")
    pl.DataFrame({"t": ["a"]}).semantic.classify("t", ["a", "b"], engine=sf.DeterministicEngine())
    text = caplog.text
    assert "run: 1 semantic step(s) on engine deterministic" in text
    assert "exact cache" in text and "run done" in text


def test_import_stays_light():
    code = ("import sys, semframe\n"
            "heavy = [m for m in ('tqdm', 'IPython', 'torch', 'vllm', 'duckdb', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
