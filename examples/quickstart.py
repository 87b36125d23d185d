"""A real semantic pipeline: BBC News headlines through filter, classify, extract and map.

Runs on the default local model (SmolLM2-135M-Instruct, on the CPU build of vLLM) with no
network access. The very first run converts the packaged model once (~25 s); each run that has
answers to compute starts vLLM (~20-40 s on a small CPU machine). Run it again and every answer
comes from the exact cache: vLLM is not even started, and it finishes in about a second.

    bash scripts/setup.sh && .venv/bin/python examples/quickstart.py [--rows N]

SmolLM2-135M is tiny: it runs anywhere in seconds, but its judgments are near chance. The point
here is the machinery — the plan, the optimizer, constrained outputs that always parse, caching
and lineage — not the quality of a 135M model. Pass ``--model /path/to/model`` for a real one.

Only the tables below go to stdout; semframe's progress lines (in a terminal) go to stderr, and
vLLM's own start-up log goes to the ``semframe.engine`` logger (``SEMFRAME_ENGINE_LOGS=1`` shows
it).
"""

from __future__ import annotations

import argparse
from typing import Optional

import polars as pl
from pydantic import BaseModel, Field

import semframe as sf
from semframe.datasets import bbc_news

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]
#: The columns the semantic steps write.
ANSWERS = ("predicted", "facts", "short")


class Facts(BaseModel):
    """What the extract step asks for.

    The strings are bounded: a small model that starts repeating itself (``"Sinop-S-S-S-S…"``)
    reaches the bound and the string is closed, instead of running the JSON answer out of its
    token allowance (which would make it a null). The bound also sets the step's ``max_tokens``.
    """

    organisation: Optional[str] = Field(None, max_length=40)
    country: Optional[str] = Field(None, max_length=40)


def build_plan(rows: int = 40) -> sf.SemLazyFrame:
    """The pipeline: filter -> first 8 -> classify -> extract -> map (nothing runs yet)."""
    headlines = bbc_news().sample(n=rows, seed=7).select("id", "topic", "title")
    return (
        headlines.lazy()
        .semantic.filter("Is this news headline about money, companies or the economy? {title}")
        .semantic.classify("title", TOPICS, instruction="Which topic is this news headline about?",
                           name="predicted")
        .semantic.extract("title", Facts,
                          instruction="Name the organisation and the country the headline mentions, "
                                      "or null.", name="facts")
        .semantic.map("Rewrite this headline in at most five words: {title}", name="short", max_tokens=16)
        .select("id", "topic", "title", "predicted", "facts", "short")
        .head(8)
    )


def one_line(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` for display: newlines in text shown as ``⏎`` so that every row stays one line."""
    return df.with_columns(pl.col(pl.String).str.replace_all("\r?\n", "⏎"))


def explain_nulls(run: sf.RunResult) -> None:
    """Say why each null answer in the result is null (from the run's lineage)."""
    shown = set(run.row_ids.to_list())
    failed = (run.lineage.filter(pl.col("column").is_in(ANSWERS) & pl.col("row_id").is_in(shown)
                                 & pl.col("error").is_not_null())
              .group_by("column", "error").agg(pl.len().alias("rows")).sort("column"))
    for column, error, rows in failed.iter_rows():
        print(f"  {rows} null {column!r} answer(s): {error}")
    facts = run.df["facts"].drop_nulls()
    empty = {name: facts.struct.field(name).null_count() for name in Facts.model_fields}
    if any(empty.values()):
        said = ", ".join(f"{n} {name}" for name, n in empty.items() if n)
        print(f"  null fields inside 'facts' ({said}) are the model's answer: the schema allows null")
    if failed.height == 0 and not any(empty.values()):
        print("  no null answers")


def closing_line(run: sf.RunResult, engine: sf.VLLMEngine) -> str:
    """What a rerun of this script will do, as this run's lineage says (no promise it cannot keep)."""
    answers = run.lineage.filter(pl.col("source") != "skipped")
    computed = answers.filter(pl.col("source") == "engine")
    failed = computed.filter(pl.col("error").is_not_null()).height
    if computed.height == 0:
        cached = answers.filter(pl.col("source") == "exact_cache").height
        reused = answers.height - cached
        return (f"No answer needed the engine: {cached} came from the exact cache"
                + (f" and {reused} were reused within the run" if reused else "")
                + ("." if engine.started else "; vLLM was not started."))
    if failed == 0:
        return (f"The engine computed {computed.height} answers and the exact cache stored them. Run it "
                "again: every answer then comes from the cache, without starting vLLM.")
    return (f"The engine computed {computed.height} answers; {failed} failed (see above) and are not "
            "stored. Run it again: the others come from the cache, the failed ones are asked again.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="headlines to read (default 40)")
    parser.add_argument("--model", default=None, help="model folder, GGUF file or HF id (default: SmolLM2-135M)")
    args = parser.parse_args()

    plan = build_plan(args.rows)
    print(plan.explain())

    # Creating the engine starts nothing: vLLM starts at the first answer not in the cache.
    engine = sf.VLLMEngine(args.model)
    run = plan.run(engine=engine)

    # Show every column these tables are about (polars hides columns past 8 by default).
    with pl.Config(tbl_cols=-1, tbl_width_chars=170, fmt_str_lengths=60, tbl_rows=20):
        print(f"\nModel: {engine.model_name} (vLLM on {engine.device})")
        print("\nResult (newlines in answers shown as ⏎)")
        print(one_line(run.df))
        print("\nNull answers")
        explain_nulls(run)
        print("\nPer-step metrics")
        print(run.metrics.select("step", "operator", "column", "rows_in", "rows_out", "engine_requests",
                                 "dedup_hits", "exact_cache_hits", "prompt_tokens", "output_tokens", "seconds"))
        first = run.row_ids[0] if run.df.height else None
        if first is not None:
            print(f"\nWhere the first row's answers came from (input row {first}):")
            trace = (run.lineage.filter(pl.col("row_id") == first)
                     .select("step", "operator", "column", "source", "raw_output", "error", "output_tokens"))
            print(one_line(trace))
    print(f"\nDone in {run.seconds:.1f} s. {closing_line(run, engine)}")


if __name__ == "__main__":
    main()
