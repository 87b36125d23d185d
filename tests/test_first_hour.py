"""The first hour with semframe (issue 11): progress for every step, errors that say what to do,
plans and runs you can look at, and living beside other libraries' ``.semantic``."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import textwrap
import types
from html.parser import HTMLParser

import pandas as pd
import polars as pl
import pytest

import semframe as sf
import semframe.physical.executor as executor
from semframe.accounting.prices import MACHINE_PRICES
from semframe.execution.progress import Progress
from semframe.physical.relational import PolarsQuery


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _balanced(page: str) -> None:
    """The HTML is well formed: every tag closed, in order."""

    class Check(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("br", "meta", "img", "hr"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()

    c = Check()
    c.feed(page)
    assert not c.stack, c.stack


@pytest.fixture
def shown(monkeypatch):
    """Runs show progress at once (no delay), on a fake terminal; returns what was written."""
    out = _Tty()
    monkeypatch.setattr(executor, "Progress", functools.partial(Progress, delay=0.0, every=0.0, stream=out))
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: types.SimpleNamespace(columns=400, lines=50))
    return out


def _lines(out: io.StringIO) -> list[str]:
    return [line.rstrip() for line in out.getvalue().split("\r") if line.strip()]


# --------------------------------------------------------------------------- item 5: progress


def test_progress_shows_every_step_and_the_whole_run(shown):
    df = pl.DataFrame({"t": [f"x{i % 25}" for i in range(50)]})
    plan = df.lazy().semantic.classify("t", ["a", "b"], name="c").semantic.map("Say {t}", name="m")
    plan.collect(engine=sf.DeterministicEngine(), progress=True, batch_size=10)
    lines = _lines(shown)
    assert any(line.startswith("semframe: step 1/2 classify -> c") for line in lines)
    assert any(line.startswith("semframe: step 2/2 map -> m") for line in lines)
    last = lines[-1]
    # Both steps' rows are known ahead (an aligned step yields what its input does).
    assert "all steps 100/100 rows (100%)" in last and "2/2" in last
    assert "50 engine calls, 50 reused" in last  # 25 distinct texts per step; the repeats are dedup hits
    assert " tokens, " in last and "tok/s" in last and "so far" in last
    assert shown.getvalue().endswith("\n")


def test_progress_after_a_filter_counts_rows_without_a_total(shown):
    df = pl.DataFrame({"t": [f"x{i}" for i in range(30)]})
    yes = sf.DeterministicEngine(responder=lambda r: "YES" if "x1" in r.prompt_text else "NO")
    plan = df.lazy().semantic.filter("Keep {t}?").semantic.map("Say {t}", name="m")
    out = plan.collect(engine=yes, progress=True, batch_size=7)
    assert out.height == 11
    last = _lines(shown)[-1]
    assert f"map -> m {out.height} rows (done)" in last and "2/2 steps done" in last


def test_progress_counts_the_rows_once_and_reports_cache_hits(shown, monkeypatch):
    calls = []
    real = PolarsQuery.count_rows
    monkeypatch.setattr(PolarsQuery, "count_rows", lambda self: calls.append(1) or real(self))
    df = pl.DataFrame({"t": [f"x{i}" for i in range(20)]})
    plan = df.lazy().semantic.classify("t", ["a", "b"], name="c").semantic.map("Say {t}", name="m")
    plan.collect(engine=sf.DeterministicEngine(), progress=True)
    assert len(calls) == 1  # two steps expect the same rows: counted once
    plan.collect(engine=sf.DeterministicEngine(), progress=True)  # every answer from the exact cache
    assert "0 engine calls, 40 reused" in _lines(shown)[-1]


def test_progress_is_silent_when_not_asked_off_a_terminal(capsys):
    pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.classify("t", ["a", "b"]).collect(engine=sf.DeterministicEngine())
    assert capsys.readouterr().err == ""


def test_progress_terminal_line_fits_and_clears(monkeypatch):
    out = _Tty()
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: types.SimpleNamespace(columns=60, lines=20))
    p = Progress("terminal", machine=MACHINE_PRICES["cpu-2vcpu"], stream=out, delay=0, every=0)
    p.plan_steps([(0, "classify", "a_long_column_name"), (1, "extract", "another_long_name")])
    p.start_step(0, "classify", "a_long_column_name", total_rows=1000)
    p.rows(500, step=0)
    widths = [len(line) for line in out.getvalue().split("\r") if line]
    assert max(widths) <= 60  # a wrapped line could not be rewritten in place


def test_notebook_progress_is_one_table_with_a_row_per_step(monkeypatch):
    shown_html = []

    class Handle:
        def update(self, obj):
            shown_html.append(obj.data)

    disp = types.ModuleType("IPython.display")
    disp.display = lambda obj, display_id=False: shown_html.append(obj.data) or Handle()
    disp.HTML = lambda s: types.SimpleNamespace(data=s)
    monkeypatch.setitem(sys.modules, "IPython.display", disp)
    p = Progress("notebook", machine=MACHINE_PRICES["cpu-2vcpu"], delay=0, every=0)
    p.plan_steps([(0, "classify", "c"), (1, "map", "m")])
    p.start_step(0, "classify", "c", total_rows=4)
    p.rows(4, step=0)
    p.end_step(0)
    p.close()
    page = shown_html[-1]
    _balanced(page)
    assert page.count("<tr") == 3 and "classify -&gt; c" in page and "map -&gt; m" in page
    assert "4/4 rows (100%)" in page and "done" in page and "waiting" in page


# --------------------------------------------------------------------------- item 8: errors


def test_a_misspelled_option_on_an_eager_verb_names_the_verb_and_the_options():
    df = pl.DataFrame({"t": ["a"]})
    with pytest.raises(TypeError) as err:
        df.semantic.classify("t", ["Y", "N"], instructions="x", engine=sf.DeterministicEngine())
    msg = str(err.value)
    assert msg.startswith("semantic.classify() got an unexpected argument 'instructions' (did you mean 'instruction'?)")
    assert "its options are instruction, name, max_tokens" in msg and "engine, batch_size" in msg
    assert "SemLazyFrame" not in msg
    with pytest.raises(TypeError, match=r"semantic\.map\(\) got an unexpected argument 'nmae' \(did you mean 'name'\?\)"):
        pd.DataFrame({"t": ["a"]}).semantic.map("{t}", nmae="x", engine=sf.DeterministicEngine())


def test_lazy_steps_and_runners_name_themselves():
    lf = pl.DataFrame({"t": ["a"]}).lazy()
    with pytest.raises(TypeError, match=r"semantic\.classify\(\): batch_size is a run option and a lazy step takes "
                                        r"none; pass batch_size=\.\.\. to \.collect\(\) or \.run\(\)"):
        lf.semantic.classify("t", ["Y", "N"], batch_size=3)
    plan = lf.semantic.classify("t", ["Y", "N"])
    with pytest.raises(TypeError, match=r"collect\(\) got an unexpected argument 'batchsize' \(did you mean "
                                        r"'batch_size'\?\); its options are engine, batch_size"):
        plan.collect(engine=sf.DeterministicEngine(), batchsize=3)
    with pytest.raises(TypeError, match=r"explain\(\) got an unexpected argument 'estimat' \(did you mean 'estimate'"):
        plan.explain(estimat=True)
    with pytest.raises(TypeError, match=r"estimate\(\) got an unexpected argument 'batchsize'"):
        plan.estimate(batchsize=3)


@pytest.mark.parametrize("call", [
    lambda df: df.semantic.classify("t", ["Y", "N"], engine="vlm"),
    lambda df: df.lazy().semantic.classify("t", ["Y", "N"]).collect(engine="vlm"),
    lambda df: df.lazy().semantic.classify("t", ["Y", "N"]).run("vlm"),
    lambda df: df.lazy().semantic.classify("t", ["Y", "N"]).estimate("vlm"),
    lambda df: df.lazy().semantic.classify("t", ["Y", "N"]).explain(estimate=True, engine="vlm"),
    lambda df: df.lazy().semantic.classify("t", ["Y", "N"]).select("t").collect(engine="vlm"),  # no step needs it
    lambda df: df.to_pandas().semantic.classify("t", ["Y", "N"], engine="vlm"),
    lambda df: df.lazy().semantic.classify("t", ["Y", "N"], engine="vlm"),  # a step's own engine
])
def test_an_unknown_engine_name_is_refused_clearly_everywhere(call):
    with pytest.raises(sf.PlanError, match=r"unknown engine 'vlm'; engine names are .*'deterministic', 'vllm'"):
        call(pl.DataFrame({"t": ["a"]}))


def test_a_sink_refuses_an_unknown_engine_name(tmp_path):
    plan = pl.DataFrame({"t": ["a"]}).lazy().semantic.classify("t", ["Y", "N"])
    with pytest.raises(sf.PlanError, match="unknown engine 'vlm'"):
        plan.sink_parquet(tmp_path / "x.parquet", engine="vlm")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": "0.5"}, "semantic.classify: temperature must be a number between 0 and 2, got '0.5'"),
    ({"max_tokens": "3"}, "semantic.classify: max_tokens must be a positive integer, got '3'"),
    ({"batch_size": 1.5}, "batch_size must be a positive integer, got 1.5"),
    ({"max_cost": "1"}, "max_cost must be a non-negative number of USD, got '1'"),
    ({"progress": "yes"}, "progress must be True, False or None, got 'yes'"),
])
def test_bad_values_name_the_argument(kwargs, message):
    with pytest.raises(ValueError) as err:  # PlanError is a ValueError too; never a raw TypeError
        pl.DataFrame({"t": ["a"]}).semantic.classify("t", ["Y", "N"], engine=sf.DeterministicEngine(), **kwargs)
    assert str(err.value) == message


def test_pandas_frames_with_non_string_column_names():
    pdf = pd.DataFrame({0: ["a", "b"], "t": ["c", "d"]})
    with pytest.raises(sf.PlanError, match=r"columns are '0', 't'$"):
        pdf.semantic.classify("{x}", ["Y", "N"], engine=sf.DeterministicEngine())
    with pytest.raises(sf.PlanError, match=r"got int 0 \(for the column 0, write '\{0\}'\)"):
        pdf.semantic.classify(0, ["Y", "N"], engine=sf.DeterministicEngine())
    out = pdf.semantic.map("{0} and {t}", name="m", engine=sf.DeterministicEngine())
    assert list(out.columns) == [0, "t", "m"] and out["m"].tolist() == ["echo: a and c", "echo: b and d"]


def test_the_semantic_cache_error_names_a_setting_that_exists():
    import inspect

    from semframe.cache import embed

    assert "sf.configure(embedding_model=" in inspect.getsource(embed.resolve_model_path)
    assert "embedding_model" in inspect.signature(sf.configure).parameters


# --------------------------------------------------------------------------- item 11: look rather than read


@pytest.fixture
def plan():
    df = pl.DataFrame({"title": ["Battle of Waterloo", None, "Treaty of Versailles", "Battle of Waterloo",
                                 "Soup", "Fall of Rome"], "year": [1815, 2001, 1919, 1815, 1999, 476]})
    return (df.lazy().semantic.filter("Is {title} about a war?")
            .semantic.classify("title", ["Europe", "Elsewhere"], name="where").sort("year").head(3))


def test_text_and_html_reprs_show_the_same_plan_and_say_which(plan):
    text = repr(plan).splitlines()
    assert text[0] == "<SemLazyFrame>" and text[1].startswith("PLAN (optimized; rewrites:")
    page = plan._repr_html_()
    _balanced(page)
    assert f"<b>{text[1]}</b>" in page
    # The folded text inside the drawing is exactly explain(), i.e. what print(plan) shows.
    import html as html_mod

    assert html_mod.escape(plan.explain()) in page


def test_the_drawn_plan_has_a_box_per_operator_with_its_estimate(plan):
    page = plan._repr_html_()
    assert "semframe-plan" in page and "<script" not in page  # plain HTML, no JavaScript
    for title in ("HEAD 3", "SORT BY", "SEMANTIC CLASSIFY → where", "SEMANTIC FILTER", "POLARS QUERY"):
        assert title in page, title
    assert page.count("engine calls</span>") == 2  # one chip per semantic step
    est = plan.estimate()
    lo, hi = est.calls
    assert f"total: {lo}-{hi} engine calls" in page or f"total: {lo} engine calls" in page


def test_the_drawn_plan_reads_no_file_and_no_database(tmp_path):
    import duckdb

    path = tmp_path / "t.parquet"
    pl.DataFrame({"t": ["a", "b"]}).write_parquet(path)
    page = pl.scan_parquet(path).semantic.classify("t", ["Y", "N"])._repr_html_()
    assert "engine calls</span>" not in page and "call .estimate()" in page
    con = duckdb.connect()
    con.sql("CREATE TABLE r AS SELECT 'x' AS t")
    page = con.sql("SELECT t FROM r").pl(lazy=True).semantic.classify("t", ["Y", "N"])._repr_html_()
    assert "engine calls</span>" not in page
    # A LazyFrame over a DataFrame is in memory: it gets figures.
    assert "engine calls</span>" in pl.DataFrame({"t": ["a"]}).lazy().semantic.classify("t", ["Y", "N"])._repr_html_()


def test_profile_shows_what_each_operator_did(plan):
    run = plan.run(sf.DeterministicEngine(), cache=False)
    prof = run.profile()
    frame = prof.to_frame()
    assert frame["operator"].to_list() == ["HEAD 3", 'SORT BY [col("year")]', "SEMANTIC CLASSIFY → where",
                                           "SEMANTIC FILTER", "POLARS QUERY"]
    steps = frame.filter(pl.col("step").is_not_null()).sort("step")
    metrics = run.metrics.sort("step")
    for col in ("rows_in", "rows_out", "engine_requests", "dedup_hits", "prompt_tokens", "output_tokens"):
        assert steps[col].to_list() == metrics[col].to_list(), col
    assert frame["rows_out"].to_list()[0] == run.df.height == 3
    assert frame["rows_out"].to_list()[-1] == 6  # the scan
    assert (frame["seconds"] >= 0).all() and frame["seconds"].sum() <= run.seconds + 0.05
    text = str(prof)
    assert text.startswith("PROFILE (the optimized plan as it ran: 3 rows out in ")
    assert "where the time went" in text and "where the money went" in text
    assert "└─ SEMANTIC CLASSIFY → where (step 1)" in text
    page = prof._repr_html_()
    _balanced(page)
    assert "where the time went" in page and "rows in" in page and "engine calls" in page
    assert repr(prof) == text


def test_profile_of_a_cached_rerun_and_of_a_bare_result(plan):
    plan.run(sf.DeterministicEngine())
    again = plan.run(sf.DeterministicEngine()).profile()
    assert "no engine time" in str(again)
    assert again.to_frame()["exact_cache_hits"].drop_nulls().sum() > 0
    run = sf.last_run()
    bare = sf.RunResult(df=run.df, row_ids=run.row_ids, recorder=run.recorder, step_metrics=run.step_metrics,
                        plan=run.plan, seconds=run.seconds, engine_model=run.engine_model)
    assert bare.profile().to_frame()["operator"].to_list() == ["SEMANTIC CLASSIFY → where", "SEMANTIC FILTER"]
    _balanced(bare._repr_html_())


def test_profile_after_an_early_stop():
    df = pl.DataFrame({"t": [f"x{i}" for i in range(100)]})
    with pytest.raises(sf.BudgetExceeded) as err:
        df.lazy().semantic.map("Say {t}", name="m").run(sf.DeterministicEngine(), batch_size=10, max_tokens=100)
    prof = err.value.result.profile()
    assert ", stopped early: BudgetExceeded" in prof.header
    assert prof.to_frame()["rows_in"][0] < 100
    # A head stops pulling: the operators below yield only what it needed (in batches).
    run = df.lazy().semantic.filter("Keep {t}?").head(2).run(sf.DeterministicEngine(responder=lambda r: "YES"),
                                                               batch_size=10)
    frame = run.profile().to_frame()
    assert frame["rows_out"].to_list() == [2, 10, 10] and frame["engine_requests"][1] == 10


def test_estimate_and_cost_print_as_tables(plan):
    est = plan.estimate()
    text = repr(est)
    assert not text.startswith("PlanEstimate(") and text == str(est)
    header = text.splitlines()[1].split()
    assert header[:4] == ["step", "operator", "rows", "skipped"] and "cost" in header
    assert len(text.splitlines()[2].split()) >= 9  # a row per step, a cell per column
    run = plan.run(sf.DeterministicEngine(), cache=False)
    cost = repr(run.cost)
    assert not cost.startswith("CostReport(") and cost == str(run.cost)
    assert cost.startswith("COST (local: ")
    assert "requests  prompt tokens" in cost and "model" in cost and "openai/gpt-4o-mini" in cost
    _balanced(run.cost._repr_html_())
    _balanced(est._repr_html_())


# --------------------------------------------------------------------------- item 13: beside DocETL


_FAKE = '''
import pandas as pd, polars as pl

@pd.api.extensions.register_dataframe_accessor("semantic")
class SemanticAccessor:
    def __init__(self, df):
        self._df = df

    def map(self, *args, **kwargs):
        return "docetl"

@pl.api.register_lazyframe_namespace("semantic")
class LazySemantic:
    def __init__(self, lf):
        self._lf = lf

    def map(self, *args, **kwargs):
        return "docetl"
'''


def _run(tmp_path, code: str) -> subprocess.CompletedProcess:
    (tmp_path / "docetl").mkdir(exist_ok=True)
    (tmp_path / "docetl" / "__init__.py").write_text(_FAKE)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, "-W", "default", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_foreign_semantic_namespace_is_left_alone_with_one_warning(tmp_path):
    out = _run(tmp_path, """
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as seen:
            import docetl, pandas as pd, polars as pl, semframe as sf
        ours = [str(w.message) for w in seen if w.category.__name__ == "NamespaceConflictWarning"]
        assert len(ours) == 2, ours
        assert all("'docetl'" in m and "df.sf.classify" in m for m in ours), ours
        assert any("pandas.DataFrame.semantic" in m for m in ours) and any("polars.LazyFrame.semantic" in m for m in ours)
        e = sf.DeterministicEngine()
        assert pd.DataFrame({"t": ["a"]}).semantic.map() == "docetl"          # DocETL keeps working
        assert pl.LazyFrame({"t": ["a"]}).semantic.map() == "docetl"
        assert list(pd.DataFrame({"t": ["a"]}).sf.classify("t", ["Y", "N"], engine=e).columns) == ["t", "classify"]
        assert pl.LazyFrame({"t": ["a"]}).sf.classify("t", ["Y", "N"]).sf.map("{t}", name="m").collect(engine=e).columns == ["t", "classify", "m"]
        assert pl.DataFrame({"t": ["a"]}).semantic.classify("t", ["Y", "N"], engine=e).columns == ["t", "classify"]
        import semframe.frontends.namespaces as ns
        from semframe.frontends.pandas import PandasSemanticAccessor
        with warnings.catch_warnings(record=True) as again:  # asked again: warned once already
            ns.register([(pd.DataFrame, pd.api.extensions.register_dataframe_accessor, PandasSemanticAccessor)])
        assert not [w for w in again if w.category.__name__ == "NamespaceConflictWarning"]
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_semframe_alone_warns_nothing_and_registers_both_names(tmp_path):
    out = _run(tmp_path, """
        import warnings
        warnings.simplefilter("error")
        import pandas as pd, polars as pl, semframe as sf
        from semframe.frontends.lazy import LazyVerbs
        from semframe.frontends.pandas import PandasSemanticAccessor
        assert pd.DataFrame.semantic is pd.DataFrame.sf is PandasSemanticAccessor
        assert pl.DataFrame.semantic is pl.DataFrame.sf and pl.LazyFrame.semantic is pl.LazyFrame.sf
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_library_imported_after_semframe_takes_semantic_and_sf_still_works(tmp_path):
    out = _run(tmp_path, """
        import pandas as pd, semframe as sf, docetl
        assert pd.DataFrame({"t": ["a"]}).semantic.map() == "docetl"
        out = pd.DataFrame({"t": ["a"]}).sf.map("{t}", name="m", engine=sf.DeterministicEngine())
        assert list(out.columns) == ["t", "m"]
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
