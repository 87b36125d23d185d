"""examples/relational.py runs (on the deterministic engine here; the SmolLM2 run is the README's),
and a second run answers everything from the exact cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "relational.py"


def _run() -> str:
    out = subprocess.run([sys.executable, str(EXAMPLE), "--engine", "deterministic", "--rows", "10"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_relational_example_runs_and_reruns_from_the_cache():
    first = _run()
    assert "algorithm=auto -> classify" in first  # a small right side: the join as classification
    for step in ("join:", "aggregate:", "topk:", "dedup:"):
        assert step in first
    assert "0 from the cache" in first
    second = _run()
    assert "0 engine requests" in second and " 0 from the cache" not in second
