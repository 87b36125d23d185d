"""examples/quickstart.py on the real default engine: its output is clean, and what it says is true.

It runs twice in subprocesses, as README tells a newcomer to run it (stdout and stderr piped),
in a fresh cache directory (the converted default model linked in, so the test does not convert
it again): the first run computes every answer, the second must take them all from the exact
cache without starting vLLM, as the first run's closing line promises.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.smollm2, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
#: The cache dir outside the tests (the autouse fixture points SEMFRAME_CACHE_DIR elsewhere).
REAL_CACHE = os.environ.get("SEMFRAME_CACHE_DIR")
#: Lines vLLM, torch and transformers print when they are not kept quiet.
ENGINE_NOISE = re.compile(
    r"\(MainProcess|\bWARNING\b|\bINFO\b|Warning:|FutureWarning|DeprecationWarning|libtcmalloc|"
    r"set_num_threads|Triton|NUMA|Loading safetensors|it/s\]|IProgress|^\[W\d|^W\d{4} ", re.M)
#: The last line says how the run ended and what a rerun does; the wrapper adds a line on stderr.
WRAPPER = ("import runpy, sys; sys.argv = ['quickstart.py']; "
           f"runpy.run_path({str(QUICKSTART)!r}, run_name='__main__'); "
           "print('VLLM_IMPORTED', 'vllm' in sys.modules, file=sys.stderr)")


@pytest.fixture(scope="module")
def models_dir() -> Path:
    """The real converted-models folder (converted here once if needed)."""
    pytest.importorskip("vllm")
    from semframe import config
    from semframe.engines import models

    try:
        gguf = models.default_gguf_path()
    except Exception as exc:  # EngineError naming the fix
        pytest.skip(str(exc))
    saved = config.settings.cache_dir
    config.settings.cache_dir = Path(REAL_CACHE).expanduser() if REAL_CACHE else Path.home() / ".cache" / "semframe"
    try:
        return models.convert_gguf(gguf).parent
    finally:
        config.settings.cache_dir = saved


@pytest.fixture(scope="module")
def runs(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess]:
    cache = tmp_path_factory.mktemp("quickstart-cache")
    (cache / "models").symlink_to(models_dir, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_LOGGING", "VLLM_CONFIGURE"))}
    env.pop("SEMFRAME_ENGINE_LOGS", None)
    env.update(SEMFRAME_CACHE_DIR=str(cache), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               HF_HUB_OFFLINE="1", COLUMNS="200")
    done = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", WRAPPER], capture_output=True, text=True, timeout=900,
                             env=env, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-4000:]
        done.append(out)
    return done


def table_header(stdout: str, title: str) -> str:
    """The column-name line of the table printed after ``title``."""
    after = stdout.split(title, 1)[1].splitlines()
    return next(line for line in after if line.startswith("│"))


def test_only_the_users_output_and_no_engine_lines(runs):
    for out in runs:
        assert not ENGINE_NOISE.search(out.stdout), ENGINE_NOISE.search(out.stdout)
        # Piped, so no progress either: stderr holds only the wrapper's own line.
        assert out.stderr.strip().splitlines()[-1].startswith("VLLM_IMPORTED")
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]


def test_the_tables_show_the_columns_the_text_talks_about(runs):
    stdout = runs[0].stdout
    metrics = table_header(stdout, "Per-step metrics")
    for column in ("rows_in", "rows_out", "engine_requests", "dedup_hits", "exact_cache_hits"):
        assert f" {column} " in metrics
    trace = table_header(stdout, "Where the first row's answers came from")
    assert " source " in trace and " raw_output " in trace and " error " in trace
    assert " … " not in stdout  # no column hidden by polars' display limit
    assert "Model: SmolLM2-135M-Instruct" in stdout
    assert "/models/" not in stdout  # the short name, not the cache path


def test_answers_with_newlines_do_not_break_the_table(runs):
    """A newline inside an answer is shown as ⏎: no table line is blank in every cell (what a
    "\n\n" in a map answer printed), and each of the 8 rows starts with its id."""
    for out in runs:
        for title in ("Result", "Where the first row's answers came from"):
            table = out.stdout.split(title, 1)[1].split("└", 1)[0]
            lines = [line for line in table.splitlines() if line.startswith("│")]
            blank = [line for line in lines if not line.replace("│", "").replace("┆", "").strip()]
            assert blank == [], title
        result = out.stdout.split("Result", 1)[1].split("└", 1)[0]
        ids = [line.split("┆")[0].strip("│ ") for line in result.splitlines() if line.startswith("│")][3:]
        assert sum(bool(re.fullmatch(r"[a-z]+/\d{3}", i)) for i in ids) == 8, ids


def test_nulls_are_explained_and_the_closing_claims_hold(runs):
    first, second = (out.stdout for out in runs)
    nulls = first.split("Null answers", 1)[1].split("Per-step metrics", 1)[0]
    assert nulls.strip(), "the quickstart says something about null answers"
    assert "answer cut off at max_tokens" not in nulls  # bounded strings: extraction always completes
    last = first.strip().splitlines()[-1]
    assert "The engine computed" in last and "exact cache stored them" in last, last
    # The rerun: all answers from the cache, vLLM never imported -- as promised.
    last = second.strip().splitlines()[-1]
    assert "No answer needed the engine" in last and "vLLM was not started" in last, last
    assert runs[1].stderr.strip().splitlines()[-1] == "VLLM_IMPORTED False"
    assert runs[0].stderr.strip().splitlines()[-1] == "VLLM_IMPORTED True"
    metrics = second.split("Per-step metrics", 1)[1].split("Where the first row", 1)[0]
    engine_requests = [line.split("┆")[5].strip() for line in metrics.splitlines() if re.match(r"│ \d ", line)]
    assert engine_requests == ["0"] * 4, engine_requests
