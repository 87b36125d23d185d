"""A semantic step as a pipeline task: what an Airflow, Dagster or Prefect task calls.

``classify_step`` labels a file's titles and writes the output, its lineage and its metrics next
to each other. It runs the ``semframe`` command line in this process (the same code as
``semframe classify ...``; docs/cli.md), so the step behaves exactly as it does from a shell:
batches stream through with flat memory, a rerun of a finished step asks the engine nothing, and
the outcome is one of the documented exit codes. The task fails (raises) unless the step is done:

- exit 3, a budget stop: the rows done are in ``OUTPUT.partial``; rerun with a larger budget and
  only the rest is asked (every answer so far is cached);
- exit 4, too many failed rows: the output is written, the lineage says which rows failed and why;
- exit 2, a usage or plan error (nothing was asked); 1, any other failure.

In Airflow (an excerpt)::

    from airflow.decorators import task

    @task
    def classify_titles(ds=None):
        return classify_step(f"/data/{ds}/titles.parquet", f"/data/{ds}/labelled.parquet", max_cost=2.0)

In Dagster, the same function is the body of an ``@op``; in Prefect, of a ``@task``. The task's
return value is the metrics (rows, engine calls, tokens, cost, per step), for the next task or a
dashboard.

Run it as a script to try it on made-up titles (the deterministic engine answers instantly)::

    python examples/pipeline_step.py                      # made-up input, --engine deterministic
    python examples/pipeline_step.py titles.parquet labelled.parquet --engine vllm --max-cost 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from semframe import cli


class StepFailed(RuntimeError):
    """The step did not finish: ``exit_code`` says why, ``metrics`` what it did (see the module doc)."""

    def __init__(self, message: str, exit_code: int, metrics: dict[str, Any] | None):
        super().__init__(message)
        self.exit_code = exit_code
        self.metrics = metrics


def classify_step(input_path: str, output_path: str, *, column: str = "title", labels: str = "YES,NO",
                  instruction: str = "Is it about European history?", name: str = "european",
                  engine: str | None = None, max_cost: float | None = None, max_failed_rows: int | None = 100,
                  lineage: bool = True) -> dict[str, Any]:
    """Classify ``column`` of ``input_path`` into ``output_path``; return the run's metrics.

    Writes ``<output>.lineage.parquet`` (one row per answer: how it was answered, the raw answer,
    why it failed) and ``<output>.metrics.json`` beside the output. Raises :class:`StepFailed` for
    any exit code but 0.
    """
    out = Path(output_path)
    metrics_path = out.with_name(out.name + ".metrics.json")
    argv = ["classify", input_path, "--column", column, "--labels", labels, "--instruction", instruction,
            "--name", name, "-o", output_path, "--metrics", str(metrics_path), "--log-format", "json"]
    if lineage:
        argv += ["--lineage", str(out.with_name(out.name + ".lineage.parquet"))]
    if engine is not None:
        argv += ["--engine", engine]
    if max_cost is not None:
        argv += ["--max-cost", str(max_cost)]
    if max_failed_rows is not None:
        argv += ["--max-failed-rows", str(max_failed_rows)]
    code = cli.main(argv)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if code != cli.EXIT_OK:
        reason = {cli.EXIT_USAGE: "usage or plan error", cli.EXIT_BUDGET: "stopped by the budget",
                  cli.EXIT_FAILED_ROWS: "too many failed rows"}.get(code, "failed")
        detail = f"; the rows done are in {metrics['partial_output']}" if metrics and metrics.get("partial_output") else ""
        raise StepFailed(f"classify step: {reason} (exit {code}){detail}", code, metrics)
    return metrics  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the classify step (made-up input without arguments).")
    parser.add_argument("input", nargs="?")
    parser.add_argument("output", nargs="?")
    parser.add_argument("--engine", default=None, help="default: deterministic for the made-up input, else the "
                                                        "configured engine")
    parser.add_argument("--max-cost", type=float)
    args = parser.parse_args(argv)
    engine = args.engine
    if args.input is None:
        import polars as pl

        folder = Path(tempfile.mkdtemp(prefix="semframe-step-"))
        args.input, args.output = str(folder / "titles.parquet"), str(folder / "labelled.parquet")
        pl.DataFrame({"title": ["Battle of Waterloo", "Banana bread", "Treaty of Versailles", None,
                                "Battle of Waterloo", "Fall of Rome"]}).write_parquet(args.input)
        engine = engine or "deterministic"
    if args.output is None:
        parser.error("give both INPUT and OUTPUT (or neither, for the made-up input)")
    try:
        metrics = classify_step(args.input, args.output, engine=engine, max_cost=args.max_cost)
    except StepFailed as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    print(f"{metrics['rows_written']} rows -> {args.output}; {metrics['engine_requests']} engine requests, "
          f"{sum(metrics['answers_reused'].values())} answers reused, ${metrics['cost_usd']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
