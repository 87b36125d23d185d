"""The command line: verbs over files, plan files, exit codes, partial outputs, stdout, logs, docs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import polars as pl
import pytest

import semframe as sf
from semframe.cli import EXIT_BUDGET, EXIT_FAILED_ROWS, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path, monkeypatch, titles):
    monkeypatch.chdir(tmp_path)
    titles.write_parquet("titles.parquet")
    titles.write_csv("titles.csv")
    pl.DataFrame({"title": [f"headline number {i % 300}" for i in range(2000)]}).write_parquet("many.parquet")
    return tmp_path


def metrics(path: str = "m.json") -> dict:
    return json.loads(Path(path).read_text())


def counting(name: str, responder=None) -> list:
    """Register an engine under ``name`` that records each batch it is asked."""
    calls: list = []

    class Counting(sf.DeterministicEngine):
        def _generate(self, requests):
            calls.append(len(requests))
            return super()._generate(requests)

    sf.configure(engines={name: Counting(responder=responder)})
    return calls


def test_classify_parquet_with_lineage_and_metrics_then_a_rerun_asks_nothing(data):
    calls = counting("counted")
    argv = ["classify", "titles.parquet", "--column", "title", "--labels", "YES,NO", "--instruction", "War?",
            "--name", "war", "-o", "out.parquet", "--engine", "counted", "--lineage", "lineage.parquet",
            "--metrics", "m.json"]
    assert main(argv) == EXIT_OK
    out = pl.read_parquet("out.parquet")
    assert out.columns == ["title", "year", "body", "war"] and out.height == 6
    assert pl.read_parquet("lineage.parquet").height == 6
    m = metrics()
    assert m["status"] == "complete" and m["exit_code"] == 0 and m["rows_written"] == 6
    assert m["engine_requests"] == 5 and m["steps"][0]["dedup_hits"] == 1 and sum(calls) == 5
    assert main(argv) == EXIT_OK
    assert metrics()["engine_requests"] == 0 and sum(calls) == 5  # the rerun: every answer from the cache
    assert pl.read_parquet("out.parquet").equals(out)


def test_filter_extract_map_and_formats(data):
    Path("schema.json").write_text('{"place": "str", "year": "int?"}')
    assert main(["filter", "titles.csv", "--question", "Is {title} about a war?", "-o", "f.csv",
                 "--engine", "deterministic"]) == EXIT_OK
    assert pl.read_csv("f.csv").columns == ["title", "year", "body"]
    assert main(["extract", "titles.parquet", "-c", "title", "--schema", "schema.json", "--name", "facts",
                 "-o", "e.parquet", "--engine", "deterministic"]) == EXIT_OK
    assert pl.read_parquet("e.parquet").schema["facts"] == pl.Struct({"place": pl.String, "year": pl.Int64})
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert main(["extract", "titles.parquet", "-c", "title", "--schema", schema, "-o", "e.arrow",
                 "--engine", "deterministic"]) == EXIT_OK
    assert pl.read_ipc("e.arrow").schema["extract"] == pl.Struct({"n": pl.Int64})
    assert main(["map", "titles.parquet", "-t", "Summarize {title}", "--name", "gist", "-o", "m.ndjson",
                 "--engine", "deterministic", "--max-answer-tokens", "16"]) == EXIT_OK
    assert pl.read_ndjson("m.ndjson")["gist"][0] == "echo: Summarize Battle of Waterloo"


def test_extract_with_a_pydantic_model(data, monkeypatch):
    Path("models_for_cli.py").write_text("from pydantic import BaseModel\nclass Facts(BaseModel):\n    year: int\n")
    monkeypatch.syspath_prepend(str(data))
    assert main(["extract", "titles.parquet", "-c", "title", "--schema", "models_for_cli:Facts", "-o", "x.parquet",
                 "--engine", "deterministic"]) == EXIT_OK
    assert pl.read_parquet("x.parquet").schema["extract"] == pl.Struct({"year": pl.Int64})


def test_a_budget_stop_writes_the_partial_output_and_exits_3(data):
    calls = counting("counted")
    argv = ["map", "many.parquet", "-t", "Say {title}", "--name", "m", "-o", "out.parquet", "--engine", "counted",
            "--batch-size", "50", "--max-answer-tokens", "8", "--metrics", "m.json"]
    assert main([*argv, "--max-tokens", "2500"]) == EXIT_BUDGET
    assert not Path("out.parquet").exists()
    partial = pl.read_parquet("out.parquet.partial")
    m = metrics()
    assert m["status"] == "stopped_by_budget" and not m["complete"] and m["partial_output"] == "out.parquet.partial"
    assert 0 < partial.height == m["rows_written"] < 2000
    assert partial["m"].null_count() == 0
    asked = sum(calls)
    assert main(argv) == EXIT_OK  # rerun without the budget: the stop's answers come from the cache
    assert pl.read_parquet("out.parquet").height == 2000 and not Path("out.parquet.partial").exists()
    assert metrics()["steps"][0]["exact_cache_hits"] == asked
    assert sum(calls) == 300  # every distinct headline asked once over both runs


def test_more_failed_rows_than_allowed_exits_4_with_the_output_written(data):
    counting("wrong", responder=lambda r: "MAYBE")  # never one of the labels: every answer fails
    argv = ["classify", "titles.parquet", "-c", "title", "--labels", "YES,NO", "-o", "out.parquet",
            "--engine", "wrong", "--metrics", "m.json"]
    assert main([*argv, "--max-failed-rows", "2"]) == EXIT_FAILED_ROWS
    assert pl.read_parquet("out.parquet")["classify"].null_count() == 6
    assert metrics()["failed_rows"] == 6 and metrics()["status"] == "too_many_failed_rows"
    assert main([*argv, "--max-failed-rows", "6", "--no-cache"]) == EXIT_OK


@pytest.mark.parametrize("argv, message", [
    (["classify", "titles.parquet", "-c", "nope", "--labels", "A,B"], "'nope' is neither a column"),
    (["classify", "titles.parquet", "-c", "title", "--labels", "A"], "at least two labels"),
    (["classify", "missing.parquet", "-c", "title", "--labels", "A,B"], "does not exist"),
    (["classify", "titles.xlsx", "-c", "title", "--labels", "A,B"], "cannot tell the format"),
    (["classify", "titles.parquet", "-c", "title", "--labels", "A,B", "-o", "out.xyz"], "cannot tell the format"),
    (["classify", "titles.parquet", "-c", "title", "--labels", "A,B", "-o", "no/dir/o.csv"], "does not exist"),
    (["classify", "titles.parquet", "-c", "title", "--labels", "A,B", "--engine", "nosuch"], "unknown engine 'nosuch'"),
    (["extract", "titles.parquet", "-c", "title", "--schema", '{"a": "date"}'], "unknown type 'date'"),
    (["run", "missing.json"], "no plan file"),
    (["classify", "titles.parquet", "-c", "title"], ""),  # argparse: --labels is required
])
def test_usage_and_plan_errors_exit_2_before_any_engine_call(data, capsys, argv, message):
    calls = counting("counted")
    assert main([*argv, "--engine", "counted"] if "--engine" not in argv and argv[0] != "run" else argv) == EXIT_USAGE
    assert calls == []
    assert message in capsys.readouterr().err


def test_save_a_plan_then_run_it_on_another_input_and_explain_it(data, capsys):
    assert main(["classify", "titles.parquet", "-c", "title", "--labels", "YES,NO", "--save-plan", "plan.json"]) == 0
    assert json.loads(Path("plan.json").read_text())["format"] == "semframe.plan"
    pl.read_parquet("titles.parquet").head(2).write_csv("two.csv")
    assert main(["run", "plan.json", "--input", "two.csv", "-o", "two_out.csv", "--engine", "deterministic"]) == 0
    assert pl.read_csv("two_out.csv").height == 2
    capsys.readouterr()
    assert main(["explain", "plan.json", "--engine", "deterministic"]) == 0
    out = capsys.readouterr().out
    assert "SEMANTIC CLASSIFY -> classify" in out and "ESTIMATE" in out
    assert main(["explain", "map", "titles.parquet", "-t", "Say {title}", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PLAN") and "ESTIMATE" not in out


def test_a_plan_written_in_python_runs_from_the_command_line(data):
    plan = (sf.scan_parquet("titles.parquet").filter(pl.col("year") > 1000)
            .semantic.classify("title", ["YES", "NO"], name="war")
            .group_by("war").agg(pl.len().alias("n")).sort("war"))
    plan.serialize("plan.json")
    assert main(["run", "plan.json", "-o", "counts.parquet", "--engine", "deterministic"]) == 0
    expected = plan.collect(engine=sf.DeterministicEngine())
    assert pl.read_parquet("counts.parquet").equals(expected)


def test_cache_stats_and_clear(data, capsys):
    assert main(["classify", "titles.parquet", "-c", "title", "--labels", "A,B", "-o", "o.parquet",
                 "--engine", "deterministic"]) == 0
    capsys.readouterr()
    assert main(["cache", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answers"] == 5 and stats["by_engine"][0]["answers"] == 5
    assert main(["cache", "clear"]) == 0
    assert main(["cache", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == 0


def _cli(args: list[str], cwd: Path, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semframe", *args], cwd=cwd, input=stdin, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_stdin_to_stdout_carries_only_data_and_json_logs_go_to_stderr(data):
    csv = Path("titles.csv").read_bytes()
    done = _cli(["map", "-", "-t", "Say {title}", "--name", "m", "--engine", "deterministic", "--log-format", "json",
                 "--metrics", "m.json"], data, stdin=csv)
    assert done.returncode == 0, done.stderr
    out = pl.read_csv(done.stdout)  # stdout is exactly the CSV (the input's format)
    assert out.columns == ["title", "year", "body", "m"] and out.height == 6
    events = [json.loads(line) for line in done.stderr.decode().splitlines()]  # every stderr line is JSON
    assert events[-1]["event"] == "run_finished" and events[-1]["rows_written"] == 6
    assert metrics()["output"] == "-"
    parquet = _cli(["classify", "-", "-c", "title", "--labels", "A,B", "--format", "parquet", "--engine",
                    "deterministic", "--quiet"], data, stdin=Path("titles.parquet").read_bytes())
    assert parquet.returncode == 0 and parquet.stderr == b""
    import io

    assert pl.read_parquet(io.BytesIO(parquet.stdout)).height == 6


def test_the_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["semframe"] == "semframe.cli:main"
    assert _cli(["--version"], ROOT).stdout.decode().startswith("semframe ")


# --------------------------------------------------------------------------- the documented examples

BASH = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)
PYTHON = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
EXPECT = re.compile(r"#\s*exit (\d+)")


def _commands(page: Path) -> list[tuple[str, int]]:
    """Every command line of the page's bash blocks that calls semframe, with its documented exit code."""
    out = []
    for block in BASH.findall(page.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            if "semframe" not in line or line.lstrip().startswith("#") or "scripts/" in line:
                continue
            expected = EXPECT.search(line)
            out.append((line, int(expected.group(1)) if expected else 0))
    return out


@pytest.mark.parametrize("page", ["docs/cli.md", "README.md"])
def test_every_documented_command_runs(page, tmp_path, monkeypatch):
    """docs/cli.md's Python blocks make the example files; then each command runs (a plain command
    in this process, one with pipes or redirections in a real shell)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEMFRAME_ENGINE", "deterministic")
    sf.configure(engine=sf.DeterministicEngine())
    namespace = {"__name__": "cli_docs"}
    for code in PYTHON.findall((ROOT / "docs/cli.md").read_text(encoding="utf-8")):
        exec(compile(code, "docs/cli.md", "exec"), namespace)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "semframe"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m semframe \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    commands = _commands(ROOT / page)
    assert commands, f"{page} documents no semframe command"
    for line, expected in commands:
        words = shlex.split(line, comments=True)
        if words[0] == "semframe" and not any(ch in line.split("#")[0] for ch in "|<>&;$`"):
            code = main(words[1:])
        else:
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, timeout=120)
            code = done.returncode
            assert code == expected, f"{page}: {line!r} exited {code}:\n{done.stderr.decode()}"
        assert code == expected, f"{page}: {line!r} exited {code}"


def test_the_pipeline_step_example(data, capsys):
    import runpy

    example = runpy.run_path(str(ROOT / "examples" / "pipeline_step.py"), run_name="pipeline_step_example")
    assert example["main"]([]) == 0  # made-up input, deterministic engine
    assert "6 rows ->" in capsys.readouterr().out
    metrics = example["classify_step"]("titles.parquet", "labelled.parquet", engine="deterministic")
    assert metrics["status"] == "complete" and Path("labelled.parquet.lineage.parquet").exists()
    again = example["classify_step"]("titles.parquet", "labelled.parquet", engine="deterministic")
    assert again["engine_requests"] == 0
    with pytest.raises(example["StepFailed"]) as info:
        example["classify_step"]("titles.parquet", "labelled.parquet", column="nope", engine="deterministic")
    assert info.value.exit_code == EXIT_USAGE and info.value.metrics["status"] == "plan_error"
