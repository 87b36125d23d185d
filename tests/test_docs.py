"""Every Python block of README.md and docs/*.md runs, so no page can rot.

Blocks of one page run in order in one namespace (a later block may use an earlier one's
names), in a fresh temporary working directory, with the deterministic engine configured as the
default -- a block that names another engine (``sf.VLLMEngine(...)``) is run as written and
needs vLLM (marked ``vllm``). A block that is only an excerpt to read (an interface) is fenced as
```` ```python excerpt```` and not run.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import semframe as sf

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def _params():
    for page in PAGES:
        found = blocks(page)
        if not found:
            continue
        marks = [pytest.mark.vllm] if any("VLLMEngine(" in b for b in found) else []
        yield pytest.param(page, id=str(page.relative_to(ROOT)), marks=marks)


@pytest.mark.parametrize("page", list(_params()))
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sf.configure(engine=sf.DeterministicEngine())
    # A real module, so that dataclasses (and pickling) defined in a block work as in a script.
    module = types.ModuleType(f"semframe_docs_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for k, code in enumerate(blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {k}]", "exec"), module.__dict__)
        except Exception as exc:
            raise AssertionError(f"{page.name}, Python block {k} failed: {type(exc).__name__}: {exc}\n{code}") from exc
