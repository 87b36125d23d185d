"""Every operator on Ray (the pool mode): the driver runs the local physical operators unchanged and
the actor pool answers their engine batches, so a join, a top-k, an aggregate and a cascade give
the same answers, lineage and engine calls as locally; a budget is checked on the driver before
each batch and stops the run before it is exceeded; the driver's progress line counts the rows
the cluster has answered.

Each run starts its own actors (a few seconds on 2 cores): the tests keep their runs few.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "semframe[ray]")')

from tests.ray.compare import same  # noqa: E402

def _logging_factory(log: str, seconds: float = 0.0):
    """A deterministic engine factory (sent to the actors by value) that answers a join's YES/NO
    from the text, writes the answering process's pid, one line per request, and takes
    ``seconds`` per request."""

    def factory():
        import os as _os
        import time as _time

        import semframe as _sf

        def responder(request):
            _time.sleep(seconds)
            with open(log, "a") as f:
                f.write(f"{_os.getpid()}\n")
            text = request.prompt_text
            if "product" in text and "ticket" in text:  # the join: a ticket is about its own product
                last = text.rstrip().splitlines()
                return "YES" if any(f"product {d}" in last[-1] and f"issue {d}" in text for d in "0123") else "NO"
            return _sf.DeterministicEngine().answer(request)

        return _sf.DeterministicEngine(responder=responder)

    return factory


TICKETS = pl.DataFrame({"ticket": [f"ticket issue {i % 4} number {i}" for i in range(10)] + [None]})
PRODUCTS = pl.DataFrame({"product": [f"product {i}" for i in range(4)]})
ITEMS = pl.DataFrame({"item": [f"complaint {i}: the parcel came late and broken" for i in range(14)]
                     + ["complaint 3: the parcel came late and broken", None]})


def test_join_topk_aggregate_and_dedup_give_the_local_answers_lineage_and_engine_calls(ray_cluster, tmp_path: Path):
    log = tmp_path / "answers.log"
    join = (TICKETS.lazy()
            .semantic.join(PRODUCTS.lazy(), "Is the ticket {left.ticket} about {right.product}?",
                           algorithm="nested_loop")
            .semantic.classify("ticket", ["HIGH", "LOW"], name="urgency"))
    topk = ITEMS.lazy().semantic.topk(3, "Which is more urgent: {a} or {b}?", column="item")
    agg = (ITEMS.lazy().with_columns(group=pl.int_range(pl.len()) % 2)
           .semantic.aggregate("Summarize the complaints", "item", by="group", max_tokens=8, context_window=80))
    people = pl.DataFrame({"who": ["John Smith, Sydney", "Mary Jones, Perth", "Jon Smith, Sydney",
                                   "Mary Jones, Perth WA", None]})
    dedup = people.lazy().semantic.dedup("who", candidates=2, embedder=sf.HashingEmbedder())
    executor = sf.RayExecutor(num_actors=2, mode="auto")
    remote = {}
    for name, plan in {"join": join, "topk": topk, "aggregate": agg, "dedup": dedup}.items():
        local = plan.run(_logging_factory(str(tmp_path / "local.log"))(), cache=False, batch_size=8)
        remote[name] = plan.run(_logging_factory(str(log)), cache=False, batch_size=8, executor=executor)
        same(local, remote[name])
        assert remote[name].complete and remote[name].engine_model == "deterministic-v1"
    assert remote["join"].df.height == 10  # each ticket matched its own product, of 40 pairs asked
    assert remote["join"].metrics["engine_requests"].to_list() == [40, 10]
    assert remote["topk"].df["rank"].to_list() == [1, 2, 3]
    assert remote["topk"].metrics["engine_batches"].item() > 1  # comparisons in rounds
    assert remote["aggregate"].metrics["engine_batches"].item() > 1  # a reduce in levels
    pids = log.read_text().split()
    answered_locally = (tmp_path / "local.log").read_text().split()
    assert len(pids) == len(answered_locally)  # every request asked once, on the cluster as locally
    assert len(set(pids)) >= 2  # the batches were split over both actors


def test_a_row_wise_plan_gives_the_same_result_in_both_modes(ray_cluster):
    df = pl.DataFrame({"title": [None if i == 5 else f"Battle number {i % 9}" for i in range(30)]})
    plan = (df.lazy().semantic.classify("title", ["EU", "ASIA"], name="region")
            .semantic.filter("Is {title} ({region}) famous?"))
    local = plan.run("deterministic", cache=False, batch_size=7)
    for mode in ("data", "pool"):
        same(local, plan.run("deterministic", cache=False, batch_size=7,
                              executor=sf.RayExecutor(num_actors=2, mode=mode)), batches=mode == "pool")


def test_the_data_mode_reads_its_input_in_windows(ray_cluster, monkeypatch):
    from semframe.physical.ray import RayRowStep

    asked: list[int] = []
    original = RayRowStep._ask_cluster

    def counted(self, info, texts, *args):
        asked.append(len(texts))
        return original(self, info, texts, *args)

    monkeypatch.setattr(RayRowStep, "_ask_cluster", counted)
    df = pl.DataFrame({"title": [None if i == 5 else f"Battle number {i % 9}" for i in range(30)]})
    plan = df.lazy().semantic.classify("title", ["EU", "ASIA"], name="region")
    local = plan.run("deterministic", cache=False)
    windowed = plan.run("deterministic", cache=False,
                        executor=sf.RayExecutor(num_actors=2, mode="data", window_rows=12))
    same(local, windowed, batches=False)  # repeats in later windows are dedup rows, as locally
    assert windowed.metrics["engine_requests"].item() == 9 and windowed.metrics["dedup_hits"].item() == 20
    # Windows of rows 0-11, 12-23, 24-29: the first asks 8 titles, the second only title 5 (row 14;
    # row 5 is null), the third none (all in the memo): two Ray Data executions.
    assert asked == [8, 1]
    with pytest.raises(ValueError, match="window_rows"):
        sf.RayExecutor(window_rows=0)


def test_steps_that_ask_every_row_run_in_the_pool(ray_cluster):
    df = pl.DataFrame({"t": ["a", "b", "a", "c"]})
    plan = df.lazy().semantic.map("Say {t}", temperature=0.7, name="m")
    local = plan.run("deterministic", cache=False)
    remote = plan.run("deterministic", cache=False, executor=sf.RayExecutor(num_actors=2))
    assert remote.df.equals(local.df)
    assert remote.metrics["engine_requests"].item() == 4  # no dedup at temperature > 0, as locally


def _budget_plan(n: int = 100):
    return pl.DataFrame({"t": [f"text {i}" for i in range(n)]}).lazy().semantic.classify("t", ["YES", "NO"])


# A token budget of 300 lets one batch of 10 through (~16 prompt + 1 output tokens a request).
# A cost budget: 50 ms a request is ~$1.4e-5 a batch of 10 on the 2-vCPU price, so $3.5e-5 lets two
# batches through and stops before the third (predicted from the speed seen so far).
@pytest.mark.parametrize("limit, seconds", [({"max_tokens": 300}, 0.0), ({"max_cost": 3.5e-5}, 0.05)])
def test_a_budget_stops_the_cluster_before_it_is_exceeded(ray_cluster, tmp_path: Path, limit, seconds):
    log = tmp_path / "answers.log"
    with pytest.raises(sf.BudgetExceeded) as local_err:
        _budget_plan().run(_logging_factory(str(tmp_path / "local.log"), seconds)(), cache=False, batch_size=10,
                           **limit)
    with pytest.raises(sf.BudgetExceeded) as err:
        _budget_plan().run(_logging_factory(str(log), seconds), cache=False, batch_size=10, **limit,
                           executor=sf.RayExecutor(num_actors=2))
    partial, expected = err.value.result, local_err.value.result
    assert not partial.complete and 0 < partial.df.height < 100
    assert partial.df.equals(expected.df)  # the same batches went through before the stop
    if "max_tokens" in limit:
        assert err.value.spent_tokens == local_err.value.spent_tokens <= limit["max_tokens"]
    else:
        assert err.value.spent_usd <= limit["max_cost"]
    answered = len(log.read_text().splitlines())
    assert answered == partial.metrics["engine_requests"].item() == partial.df.height  # nothing asked past the stop
    assert sf.last_run() is partial


@pytest.mark.parametrize("mode", ["data", "pool"])
def test_the_driver_shows_the_clusters_progress(ray_cluster, capsys, tmp_path: Path, mode):
    df = pl.DataFrame({"t": [f"row {i % 30}" for i in range(90)]})
    plan = df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
    executor = sf.RayExecutor(num_actors=2, mode=mode, blocks_per_actor=3)
    slow = _logging_factory(str(tmp_path / "answers.log"), 0.05)  # a line shows after 0.5 s
    result = plan.run(slow, cache=False, batch_size=10, progress=True, executor=executor)
    assert result.metrics["engine_requests"].item() == 30
    err = capsys.readouterr().err
    final = err.strip().split("\r")[-1]
    assert final.startswith("semframe: classify -> c 90/90 rows (100%)"), err[-500:]
    assert "30 engine calls, 60 reused" in final, final
    assert err.count("\r") >= 2  # drawn while it ran, not only at the end


def test_the_data_mode_refuses_what_it_cannot_run_clearly():
    executor = sf.RayExecutor(num_actors=1, mode="data")
    join = TICKETS.lazy().semantic.join(PRODUCTS.lazy(), "Is {left.ticket} about {right.product}?")
    with pytest.raises(sf.PlanError, match=r"step 0 \(join\) asks in rounds.*mode='auto'"):
        join.run("deterministic", executor=executor)
    with pytest.raises(sf.PlanError, match="budgets.*mode='pool'"):
        _budget_plan(3).run("deterministic", max_tokens=10, executor=executor)
    with pytest.raises(ValueError, match="mode must be one of"):
        sf.RayExecutor(mode="local")
    with pytest.raises(sf.PlanError, match="engine object cannot be sent"):
        join.run(sf.DeterministicEngine(), executor=sf.RayExecutor(num_actors=1))


def test_a_sink_runs_on_the_cluster_too(ray_cluster, tmp_path: Path):
    plan = pl.DataFrame({"t": [f"title {i}" for i in range(30)]}).lazy().semantic.classify("t", ["YES", "NO"], name="c")
    local = plan.collect(engine=sf.DeterministicEngine(), cache=False)
    path = tmp_path / "out.parquet"
    run = plan.sink_parquet(path, engine="deterministic", cache=False, executor=sf.RayExecutor(num_actors=2))
    assert run.rows_written == 30 and pl.read_parquet(path).equals(local)
