import subprocess
import sys

HEAVY = ["vllm", "torch", "transformers", "sentence_transformers", "duckdb"]


def test_import_semframe_imports_no_heavy_library():
    code = (
        "import sys, semframe, polars as pl\n"
        "pl.DataFrame({'a': ['x']}).semantic.classify('a', ['p', 'q'], engine=semframe.DeterministicEngine(), cache=False)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_public_api():
    import semframe as sf

    for name in ["configure", "DeterministicEngine", "Engine", "SemLazyFrame", "PlanError", "last_run", "RunResult"]:
        assert hasattr(sf, name)
