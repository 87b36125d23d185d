"""Properties over random plans: the run, the unoptimized run, a reference interpreter and the
estimate must all tell the same story.

The reference interpreter (:func:`reference`) knows nothing of semframe's planner, optimizer or
executor: it applies each step of the plan, one at a time, eagerly, to a plain ``pl.DataFrame``.
A relational step is the very same polars call; a semantic step renders its template row by
row in plain Python and takes the answer from :func:`answer` (a pure function of the row's
rendered text, which is also what the engine's responder answers), so both sides must agree
on every cell. Row ids ride along in a struct column: the dtype selectors used here
(``cs.integer()``, ``cs.numeric()``, ``cs.string()``) cannot see it, and ``pl.all()`` carries it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import polars.selectors as cs
import pytest
from polars.testing import assert_frame_equal

import semframe as sf
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

# --------------------------------------------------------------------------- the estimate repro


def test_estimate_after_a_selector_filter_does_not_claim_a_wrong_exact_count():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)], "n": [5] * 6})
    plan = (df.lazy().semantic.classify("t", ["A", "B"], name="c")
              .filter(pl.all_horizontal(cs.integer() > 2))      # true for every row
              .semantic.map("Say {t}", name="m"))
    engine = sf.DeterministicEngine()
    run = plan.run(engine, cache=False)
    assert run.df.height == 6
    assert run.engine_requests == 12 and engine.requests_seen == 12
    assert run.metrics.select("step", "engine_requests").rows() == [(0, 6), (1, 6)]

    est = plan.estimate(sf.DeterministicEngine())
    first, second = est.steps
    assert first.rows_exact and first.calls_low == first.calls_high == 6
    # The filter reads columns through a selector, which may include the model's column: the
    # rows after it are not known exactly -- or, if they are, the count is the run's.
    assert (not second.rows_exact) or second.calls_low == second.calls_high == 6
    assert second.calls_low <= 6 <= second.calls_high
    assert second.rows_high == 6


# --------------------------------------------------------------------------- answers


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def answer(spec: Any, text: str) -> str:
    """The raw answer to a row's rendered text: valid for most rows, malformed for some."""
    h = _h(text)
    if isinstance(spec, ChoiceSpec):
        return "maybe" if h % 13 == 0 else spec.labels[h % len(spec.labels)]
    if isinstance(spec, JsonSpec):
        return "{" if h % 13 == 0 else json.dumps({"x": h % 100})
    assert isinstance(spec, TextSpec)
    return "echo " + text


def row_text(request) -> str:
    # Under either prompt layout the row's own text is the last message's first paragraph.
    return request.messages[-1].content.split("\n\n")[0]


def responder(request) -> str:
    return answer(request.spec, row_text(request))


# --------------------------------------------------------------------------- the reference interpreter

REF_ID = "__ref_id"  # a struct column: invisible to cs.numeric(), cs.integer(), cs.string()


def _parts(template: str) -> list[str]:
    """Literal text and column names, alternating (the templates here have no escaped braces)."""
    return re.split(r"\{([^{}]*)\}", template)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):  # a struct (an extract's answer) is inserted as compact JSON
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _render(template: str, row: dict[str, Any]) -> str | None:
    parts = _parts(template)
    names = parts[1::2]
    values = [row[c.strip()] for c in names]
    if any(v is None for v in values):
        return None  # null input: no question, null answer
    texts = [_as_text(v) for v in values]
    if all(not t.strip() for t in texts):
        return None  # blank input: likewise
    out = [parts[0]]
    for k, t in enumerate(texts):
        out += [t, parts[2 * k + 2]]
    return "".join(out)


def _value(spec: Any, text: str | None) -> Any:
    """What the row's cell holds: the parsed answer, or None for no question / a malformed answer."""
    if text is None:
        return None
    raw = answer(spec, text)
    if isinstance(spec, ChoiceSpec):
        return raw if raw in spec.labels else None
    if isinstance(spec, JsonSpec):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None
    return raw.strip()


def model_columns(x: Any, dtype: Any = None) -> list[str]:
    """The columns semantic steps wrote so far (``s<k>``), optionally of one dtype."""
    schema = x.schema
    return [c for c in schema if re.fullmatch(r"s\d+", c) and (dtype is None or schema[c] == dtype)]


@dataclass(frozen=True)
class Semantic:
    """A semantic step: the verb on a plan, and the same thing by hand in the reference.

    ``template`` is a column name or a ``{column}`` template, or a function of the frame giving
    one (to read a column an earlier semantic step wrote).
    """

    verb: str  # classify | filter | extract | map
    template: str | Callable[[Any], str]
    spec: Any
    dtype: Any = None

    def text(self, x: Any) -> str:
        return self.template(x) if callable(self.template) else self.template

    def on_plan(self, lf: sf.SemLazyFrame, name: str) -> sf.SemLazyFrame:
        v, template = lf.semantic, self.text(lf)
        if self.verb == "classify":
            return v.classify(template, list(self.spec.labels), name=name)
        if self.verb == "filter":
            return v.filter(template)
        if self.verb == "extract":
            return v.extract(template, {n: int for n, _ in self.spec.fields}, name=name)
        return v.map(template, name=name)

    def on_frame(self, df: pl.DataFrame, name: str) -> pl.DataFrame:
        template = self.text(df)
        if "{" not in template:
            template = "{" + template + "}"
        values = [_value(self.spec, _render(template, row)) for row in df.iter_rows(named=True)]
        if self.verb == "filter":
            return df.filter(pl.Series([v == "YES" for v in values], dtype=pl.Boolean))
        return df.with_columns(pl.Series(name, values, dtype=self.dtype))


@dataclass(frozen=True)
class Relational:
    """A relational step: the same polars call on a plan and on a DataFrame (``ref`` where the
    reference must say it differently, e.g. to keep its id column out of a whole-row comparison)."""

    fn: Callable[[Any, int], Any]
    ref: Callable[[pl.DataFrame, int], pl.DataFrame] | None = None

    def on_frame(self, df: pl.DataFrame, k: int) -> pl.DataFrame:
        return (self.ref or self.fn)(df, k)


def _last_model(x: Any, dtype: Any = None) -> str | None:
    cols = model_columns(x, dtype)
    return cols[-1] if cols else None


def _about_model(x: Any) -> str:
    col = _last_model(x)
    return "title" if col is None else "About {" + col + "}"


def _label_of_model(x: Any) -> str:
    col = _last_model(x, pl.String)
    return "title" if col is None else col


def _on_model(x: Any, k: int, fn: Callable[[Any, str], Any]) -> Any:
    col = _last_model(x)
    return x if col is None else fn(x, col)


def _data_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c != REF_ID]


YN = ChoiceSpec(("YES", "NO"))
ABC = ChoiceSpec(("A", "B", "C"))
X_INT = JsonSpec.from_schema({"x": int})
KEEP = pl.DataFrame({"title": ["a", "b", "Zed", "q"], "w": [1, 2, 3, 4]})

STEPS: dict[str, Semantic | Relational] = {
    # semantic
    "classify": Semantic("classify", "title", YN, pl.String),
    "classify_year": Semantic("classify", "{title} {year}", ABC, pl.String),
    "classify_model": Semantic("classify", _label_of_model, ABC, pl.String),  # reads a model's answer
    "sem_filter": Semantic("filter", "Is {title} good?", YN),
    "sem_filter_n": Semantic("filter", "Is {n} big?", YN),
    "map": Semantic("map", "Say {title}", TextSpec(), pl.String),
    "map_n": Semantic("map", "{title}/{n}", TextSpec(), pl.String),
    "map_model": Semantic("map", _about_model, TextSpec(), pl.String),
    "extract": Semantic("extract", "title", X_INT, pl.Struct({"x": pl.Int64})),
    # relational filters, incl. dtype selectors (they may read the model's columns)
    "filter_year": Relational(lambda x, k: x.filter(pl.col("year") > 2)),
    "filter_agg": Relational(lambda x, k: x.filter(pl.col("year") >= pl.col("year").median())),
    "filter_window": Relational(lambda x, k: x.filter(pl.col("n") == pl.col("n").max().over("title"))),
    "filter_cum": Relational(lambda x, k: x.filter(pl.col("n").cum_sum() < 250)),
    "filter_int_sel": Relational(lambda x, k: x.filter(pl.all_horizontal(cs.integer() > k))),
    "filter_num_any": Relational(lambda x, k: x.filter(pl.any_horizontal(cs.numeric() < 40 + k))),
    "filter_str_sel": Relational(lambda x, k: x.filter(pl.all_horizontal(cs.string().str.len_chars() > 0))),
    "filter_str_any": Relational(lambda x, k: x.filter(pl.any_horizontal(cs.string().str.contains("a")))),
    "filter_null": Relational(lambda x, k: x.filter(pl.col("title").is_not_null())),
    "filter_model": Relational(lambda x, k: _on_model(x, k, lambda y, c: y.filter(pl.col(c).is_not_null()))),
    # with_columns
    "overwrite_year": Relational(lambda x, k: x.with_columns(year=pl.col("n") // 10)),
    "year_from_rank": Relational(lambda x, k: x.with_columns(year=pl.col("n").rank("ordinal").cast(pl.Int64))),
    "n_cum_sum": Relational(lambda x, k: x.with_columns(n=pl.col("n").cum_sum())),
    "title_upper": Relational(lambda x, k: x.with_columns(pl.col("title").str.to_uppercase())),
    "title_from_n": Relational(lambda x, k: x.with_columns(title=pl.col("n").cast(pl.String).str.slice(0, 1))),
    "numeric_math": Relational(lambda x, k: x.with_columns(cs.numeric() + 1)),
    "int_by_name": Relational(lambda x, k: x.with_columns(cs.by_name("year", "n") * 2)),
    "year_fill": Relational(lambda x, k: x.with_columns(pl.col("year").fill_null(0))),
    # sort, head, drop, rename, select (semframe sorts stably, as maintain_order=True does)
    "sort_year": Relational(lambda x, k: x.sort("year", descending=True),
                            lambda x, k: x.sort("year", descending=True, maintain_order=True)),
    "sort_title": Relational(lambda x, k: x.sort("title", "n", nulls_last=True),
                             lambda x, k: x.sort("title", "n", nulls_last=True, maintain_order=True)),
    "sort_model": Relational(
        lambda x, k: _on_model(x, k, lambda y, c: y.sort(c, nulls_last=True)),
        lambda x, k: _on_model(x, k, lambda y, c: y.sort(c, nulls_last=True, maintain_order=True))),
    "head": Relational(lambda x, k: x.head(3 + k)),
    "head0": Relational(lambda x, k: x.head(0)),
    "drop_n": Relational(lambda x, k: x.drop("n").with_columns(n=pl.col("year") * 7)),
    "rename": Relational(lambda x, k: x.rename({"year": "yr"}).with_columns(year=pl.col("yr")).drop("yr")),
    "swap": Relational(lambda x, k: x.rename({"year": "n", "n": "year"})),
    "select_all": Relational(lambda x, k: x.select(pl.all())),
    "select_exclude": Relational(lambda x, k: x.select(pl.all().exclude("n")).with_columns(n=pl.col("year"))),
    # polars methods through the generic mechanism
    "unique_title": Relational(lambda x, k: x.unique(subset=["title"], keep="first", maintain_order=True)),
    "unique_all": Relational(lambda x, k: x.unique(keep="first", maintain_order=True),
                             lambda x, k: x.unique(subset=_data_columns(x), keep="first", maintain_order=True)),
    "row_index": Relational(lambda x, k: x.with_row_index(f"i{k}")),
    "explode": Relational(lambda x, k: x.with_columns(n=pl.concat_list("n", pl.col("n") + 1)).explode("n")),
    "tail": Relational(lambda x, k: x.tail(4)),
    "slice": Relational(lambda x, k: x.slice(1, 6)),
    "gather_every": Relational(lambda x, k: x.gather_every(2)),
    "reverse": Relational(lambda x, k: x.reverse()),
    "cast_year": Relational(lambda x, k: x.cast({"year": pl.Int32}).with_columns(pl.col("year").cast(pl.Int64))),
    "semi_join": Relational(lambda x, k: x.join(KEEP, on="title", how="semi", maintain_order="left")),
    # polars methods that name columns as strings, or read every column (see KNOWN_ESTIMATE_BUGS)
    "drop_nulls": Relational(lambda x, k: x.drop_nulls()),
    "unique_model": Relational(lambda x, k: _on_model(
        x, k, lambda y, c: y.unique(subset=[c], keep="first", maintain_order=True))),
    "drop_nulls_model": Relational(lambda x, k: _on_model(x, k, lambda y, c: y.drop_nulls(c))),
}
SEMANTIC = frozenset(n for n, s in STEPS.items() if isinstance(s, Semantic))


def reference(df: pl.DataFrame, steps: list[str]) -> tuple[pl.DataFrame, list[Any]]:
    """Apply the steps one by one, eagerly, with plain polars; return the frame and each row's id."""
    frame = df.with_columns(pl.struct(pl.int_range(pl.len(), dtype=pl.UInt32).alias("id")).alias(REF_ID))
    for k, name in enumerate(steps):
        step = STEPS[name]
        frame = step.on_frame(frame, f"s{k}") if isinstance(step, Semantic) else step.on_frame(frame, k)
    ids = frame[REF_ID].struct.field("id").to_list()
    return frame.drop(REF_ID), ids


def on_plan(df: pl.DataFrame, steps: list[str]) -> sf.SemLazyFrame:
    plan = sf.SemLazyFrame.from_data(df)
    for k, name in enumerate(steps):
        step = STEPS[name]
        plan = step.on_plan(plan, f"s{k}") if isinstance(step, Semantic) else step.fn(plan, k)
    return plan


def random_frame(rng: random.Random, height: int = 12) -> pl.DataFrame:
    titles = ["a", "b", "c", "ab", "a", "b", "Zed", "", "  ", None, "é"]

    def num(hi: int) -> int | None:
        return None if rng.random() < 0.08 else rng.randint(0, hi)

    return pl.DataFrame({
        "title": [rng.choice(titles) for _ in range(height)],
        "year": [num(9) for _ in range(height)],
        "n": [num(90) for _ in range(height)],
    }, schema={"title": pl.String, "year": pl.Int64, "n": pl.Int64})


# --------------------------------------------------------------------------- known bugs the property steps around
#
# Each is pinned by a strict xfail test below; when one is fixed, its xfail test starts passing
# (and fails, being strict): delete its entry here so the random plans cover it again.


def _after(steps: list[str], first: set[str] | frozenset[str], then: set[str]) -> bool:
    """True if some step in ``then`` comes after some step in ``first``."""
    seen = False
    for name in steps:
        if seen and name in then:
            return True
        seen = seen or name in first
    return False


#: Steps whose rows after them are a superset of the real ones in the estimate (they may read
#: a model's answer), and steps that do not keep a superset a superset (positional, or whole-frame).
_SUPERSET = {"sem_filter", "sem_filter_n", "filter_model", "filter_int_sel", "filter_num_any", "filter_str_sel",
             "filter_str_any"}
_NOT_ROW_BY_ROW = {"slice", "tail", "gather_every", "unique_title", "unique_all", "filter_agg", "filter_window",
                   "filter_cum", "n_cum_sum", "year_from_rank", "explode", "semi_join"}

#: Result bug: test_regressions.py::test_projection_pushdown_keeps_the_place_of_an_overwritten_column.
KNOWN_RESULT_BUGS: dict = {}
#: Estimate bugs: the check each one breaks is skipped for plans that hit it.
KNOWN_ESTIMATE_BUGS = {
    # test_estimate_upper_bound_of_an_explode_over_unknown_rows: no upper-bound check.
    "superset fed to a step that does not keep it a superset": lambda steps: _after(
        steps, _SUPERSET, {"explode"}),
}
# test_estimate_below_a_head_is_not_exact: steps below a head that stays above them (found in
# the physical plan) get no exactness check, only the upper bound.


#: Relational steps the optimizer moves things through (or must not): drawn more often.
_WEIGHTS = {"head": 5, "filter_year": 3, "filter_agg": 3, "filter_window": 2, "filter_cum": 2, "filter_int_sel": 2,
            "filter_str_sel": 2, "filter_null": 2, "sort_year": 2, "sort_title": 2, "overwrite_year": 2,
            "title_upper": 2, "drop_n": 2, "select_all": 2}


def draw_steps(rng: random.Random) -> list[str]:
    """1-6 steps, about a third of them semantic."""
    semantic, relational = sorted(SEMANTIC), [n for n in STEPS if n not in SEMANTIC]
    weights = [_WEIGHTS.get(n, 1) for n in relational]
    while True:
        steps = [rng.choice(semantic) if rng.random() < 0.35 else rng.choices(relational, weights)[0]
                 for _ in range(rng.randint(1, 6))]
        if not any(hit(steps) for hit in KNOWN_RESULT_BUGS.values()):
            return steps


def steps_below_a_head(plan: sf.SemLazyFrame, options: dict[str, Any]) -> set[int]:
    """Semantic steps that run below a ``head`` the optimizer could not push under them."""
    from semframe.execution.context import RunOptions
    from semframe.optimizer import optimize
    from semframe.physical.planner import plan_physical
    from semframe.physical.relational import PolarsStep
    from semframe.physical.semantic import RowOperator
    from semframe.plan.nodes import Head

    root = plan_physical(optimize(plan.plan), RunOptions(**options))
    return {o.index for op in root.walk() if isinstance(op, PolarsStep) and isinstance(op.node, Head)
            for o in op.walk() if isinstance(o, RowOperator)}


# --------------------------------------------------------------------------- the property


def test_the_reference_interpreter_answers_as_the_engine_would():
    """The reference itself, on a frame with a null, a blank and a repeat: no semframe involved."""
    df = pl.DataFrame({"title": ["a", None, "  ", "a", "b"], "year": [1, 2, 3, 4, None], "n": [1, 2, 3, 4, 5]})
    out, ids = reference(df, ["classify", "classify_year", "sem_filter_n"])
    kept = [i for i in range(5) if _value(YN, f"Is {df['n'][i]} big?") == "YES"]
    assert ids == kept
    assert out["s0"].to_list() == [[_value(YN, "a"), None, None, _value(YN, "a"), _value(YN, "b")][i] for i in kept]
    assert out["s1"].to_list() == [[_value(ABC, "a 1"), None, _value(ABC, "   3"), _value(ABC, "a 4"), None][i]
                                   for i in kept]
    # Some answers are malformed (null cells), so that path is exercised too.
    assert any(_value(YN, t) is None for t in map(str, range(50)))


PLANS_PER_SEED = 5


@pytest.mark.parametrize("seed", range(60))
def test_random_plans_agree_with_the_reference_and_the_estimate(seed):
    for j in range(PLANS_PER_SEED):
        check_random_plan(seed * PLANS_PER_SEED + j)


def check_random_plan(seed: int) -> None:
    rng = random.Random(seed)
    df = random_frame(rng, rng.choice([12, 12, 30]))
    steps = draw_steps(rng)
    options = {"batch_size": rng.choice([1, 2, 5, 512]), "prompt_layout": rng.choice(["shared_first", "inline"]),
               "dedupe": rng.random() < 0.8}
    plan = on_plan(df, steps)
    expected, expected_ids = reference(df, steps)

    # (ii) the optimized run, the run as built and the reference agree on every cell and row id.
    engine = sf.DeterministicEngine(responder=responder)
    opt = plan.run(engine, cache=False, **options)
    raw = plan.run(sf.DeterministicEngine(responder=responder), cache=False, optimize=False, **options)
    for run in (opt, raw):
        assert run.complete, steps
        try:
            assert_frame_equal(run.df, expected, check_column_order=True)
        except AssertionError as exc:
            raise AssertionError(f"plan {seed}: {steps} {options}") from exc
        assert run.row_ids.to_list() == expected_ids, (seed, steps, options)
    assert engine.requests_seen == opt.engine_requests <= raw.engine_requests, steps

    # (i) the estimate walks the same operators: where it says it knows the rows, it knows the
    # calls; and its high figure is an upper bound.
    asked = dict(zip(opt.metrics["step"].to_list(), opt.metrics["engine_requests"].to_list()))
    below_head = steps_below_a_head(plan, options)
    check_high = not KNOWN_ESTIMATE_BUGS["superset fed to a step that does not keep it a superset"](steps)
    est = plan.estimate(sf.DeterministicEngine(responder=responder), cache=False, **options)
    assert [s.step for s in est.steps] == sorted(set(asked) | {s.step for s in est.steps})
    for s in est.steps:
        n = asked.get(s.step, 0)  # a step whose input is cut to nothing before it starts asks nothing
        if s.rows_exact and s.step not in below_head:
            assert s.calls_low == s.calls_high == n, (steps, options, s)
        if check_high:
            assert s.calls_high >= n, (steps, options, s)
        assert 0 <= s.calls_low <= s.calls_high, (steps, options, s)


# --------------------------------------------------------------------------- the estimate bugs found


def test_estimate_below_a_head_is_not_exact():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    yes = sf.DeterministicEngine(responder=lambda r: "YES")
    for plan, batch_size, asked in [
        (df.lazy().semantic.filter("Is {t} good?").head(0), 512, 0),       # nothing below a head(0) runs
        (df.lazy().semantic.filter("Is {t} good?").head(1), 1, 1),         # the first row is enough
    ]:
        run = plan.run(yes, cache=False, batch_size=batch_size)
        assert run.engine_requests == asked
        (s,) = plan.estimate(yes, batch_size=batch_size).steps
        assert (not s.rows_exact) or s.calls_low == s.calls_high == asked


def test_estimate_reads_the_columns_a_polars_method_names():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    base = df.lazy().semantic.classify("t", ["A", "B"], name="c")
    for plan in [base.drop_nulls().semantic.map("Say {t}", name="m"),
                 base.drop_nulls("c").semantic.map("Say {t}", name="m"),
                 base.unique(subset=["c"], keep="first", maintain_order=True).semantic.map("Say {t}", name="m")]:
        engine = sf.DeterministicEngine()
        run = plan.run(engine, cache=False)
        asked = run.metrics["engine_requests"][1]
        assert asked > 0
        s = plan.estimate(engine).steps[1]
        assert (not s.rows_exact) or s.calls_low == s.calls_high == asked
        assert s.calls_high >= asked


def test_estimate_upper_bound_after_a_positional_step_over_unknown_rows():
    df = pl.DataFrame({"t": ["x", "x", "x", "y", "z", "w"], "n": [100, 100, 100, 1, 2, 3]})
    engine = sf.DeterministicEngine(responder=lambda r: "YES" if row_text(r) in {"y", "z", "w"} else "NO")
    kept = df.lazy().semantic.filter("{t}")
    for plan in [kept.slice(0, 2).semantic.map("Say {t}", name="m"),
                 kept.filter(pl.col("n") >= pl.col("n").median()).semantic.map("Say {t}", name="m")]:
        run = plan.run(engine, cache=False)
        asked = run.metrics["engine_requests"][1]
        assert asked == 2
        assert plan.estimate(engine).steps[1].calls_high >= asked


def test_estimate_upper_bound_after_a_head_over_unknown_rows():
    df = pl.DataFrame({"t": [None, None, "a", "b"], "u": ["p", "q", "r", "s"]})
    engine = sf.DeterministicEngine(responder=lambda r: ("YES" if row_text(r) in {"r", "s"} else "NO")
                                    if isinstance(r.spec, ChoiceSpec) else "echo")
    plan = df.lazy().semantic.filter("{u}").head(2).semantic.map("Say {t}", name="m")
    run = plan.run(engine, cache=False)
    assert run.df["t"].to_list() == ["a", "b"] and run.metrics["engine_requests"][1] == 2
    assert plan.estimate(engine).steps[1].calls_high >= 2


@pytest.mark.xfail(strict=True, reason="LIMITATION: over unknown rows, a step that may add rows (explode, a join) is "
                                       "bounded by its input's rows (relational.py PolarsStep.estimate, "
                                       "rows == 'other' branch)")
def test_estimate_upper_bound_of_an_explode_over_unknown_rows():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)], "n": list(range(6))})
    plan = (df.lazy().semantic.classify("t", ["A", "B"], name="c")
              .select(pl.all())                                   # reads the model's column: rows unknown
              .with_columns(n=pl.concat_list("n", pl.col("n") + 100)).explode("n")
              .semantic.map("{t} {n}", name="m"))
    engine = sf.DeterministicEngine()
    run = plan.run(engine, cache=False)
    assert run.df.height == 12 and run.metrics["engine_requests"][1] == 12
    s = plan.estimate(engine).steps[1]
    assert s.rows_high >= 12 and s.calls_high >= 12
