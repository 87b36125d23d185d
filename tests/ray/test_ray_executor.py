"""The Ray executor: the same plan gives the same answers, lineage and engine requests on Ray Data
as locally; the shared cache makes a rerun free; a killed actor loses no row; the local cluster
listens on loopback only.

Each Ray Data execution starts its actors (a few seconds each on 2 cores), so the tests share
plans and keep their number small.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "semframe[ray]")')

from tests.ray.compare import same  # noqa: E402


def _frame(n: int = 60) -> pl.DataFrame:
    titles = [None if i == 7 else f"Battle number {i % 23}" for i in range(n)]  # repeats and a null
    return pl.DataFrame({"title": titles, "year": list(range(1800, 1800 + n))})


def _plan(df: pl.DataFrame):
    schema = {"place": str, "year": int}
    return (df.lazy().filter(pl.col("year") > 1802)
            .semantic.classify("title", ["EU", "ASIA", "OTHER"], name="region")
            .semantic.extract("title", schema, name="facts")
            .semantic.filter("Is {title} ({region}) famous?")
            .with_columns(pl.col("year") + 1)
            .head(25))


def test_same_answers_lineage_and_engine_requests_as_local(ray_cluster):
    plan = _plan(_frame())
    local = plan.run("deterministic", cache=False)
    remote = plan.run("deterministic", cache=False, executor=sf.RayExecutor(num_actors=2, batch_size=8))
    same(local, remote, batches=False)
    m = remote.metrics
    assert m["engine_requests"].to_list()[0] == 23  # 23 distinct titles (the filter drops rows, no title)
    assert m["dedup_hits"].sum() > 0 and m["skipped"].sum() > 0  # the repeats and the null were there
    assert remote.complete and remote.engine_model == "deterministic-v1"


def test_a_rerun_is_answered_by_the_shared_cache(ray_cluster):
    plan = _frame(40).lazy().semantic.classify("title", ["YES", "NO"], name="c")
    executor = sf.RayExecutor(num_actors=2)
    first = plan.run("deterministic", executor=executor)
    again = plan.run("deterministic", executor=executor)
    assert first.metrics["engine_requests"].item() == 23
    assert again.metrics["engine_requests"].item() == 0
    assert again.metrics["exact_cache_hits"].item() == 23
    assert again.df.equals(first.df)
    local = plan.run("deterministic")  # the local executor reads what the actors wrote
    assert local.metrics["engine_requests"].item() == 0 and local.df.equals(first.df)


def test_the_local_cluster_listens_on_loopback_only(ray_cluster):
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
    for p in psutil.process_iter(["pid", "cmdline"]):
        if str(ray_cluster) in " ".join(p.info["cmdline"] or []):
            ours.add(p.info["pid"])  # a Ray process that was reparented
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "found no Ray process listening at all: the check would be vacuous"
    bad = []
    for c in listening:
        addr = ipaddress.ip_address(c.laddr.ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_loopback:
            bad.append((c.laddr, c.pid, psutil.Process(c.pid).name()))
    assert not bad, f"Ray processes listen on non-loopback addresses: {bad}"


def _responder_factory(log: str, marker: str | None):
    """An engine factory (sent to the actors by value): it answers from the row's text, writes one
    line per answer to ``log``, and -- once, if ``marker`` is given -- kills its own process in the
    middle of a batch, as a preempted node would."""

    def factory():
        import os as _os

        import semframe as _sf

        def responder(request):
            with open(log, "a") as f:
                f.write("answer\n")
            if marker is not None and not _os.path.exists(marker):
                with open(log) as f:
                    answered = sum(1 for _ in f)
                if answered >= 3:
                    open(marker, "w").close()
                    _os._exit(1)  # no cleanup, no exception: the process is gone
            number = int(request.prompt_text.rstrip().split()[-1])
            return "YES" if number % 2 == 0 else "NO"

        return _sf.DeterministicEngine(responder=responder)

    return factory


def test_a_killed_actor_is_replaced_and_no_row_is_lost(ray_cluster, tmp_path: Path):
    df = _frame(60)
    plan = df.lazy().semantic.classify("title", ["YES", "NO"], name="even")
    log, marker = tmp_path / "answers.log", tmp_path / "killed"
    batch = 5
    remote = plan.run(_responder_factory(str(log), str(marker)), cache=False,
                      executor=sf.RayExecutor(num_actors=2, batch_size=batch))
    assert marker.exists(), "the actor was never killed: the test proves nothing"
    expected = plan.run(_responder_factory(str(tmp_path / "local.log"), None)(), cache=False)
    assert remote.df.height == df.height == expected.df.height
    assert remote.df.equals(expected.df)
    assert remote.metrics["engine_requests"].item() == 23
    assert remote.df["even"].null_count() == 1  # only the null title
    answered = len(log.read_text().splitlines())
    assert 23 <= answered <= 23 + batch  # at most the killed batch was answered twice


def test_engine_objects_are_refused_clearly_before_any_cluster_starts():
    plan = _frame(5).lazy().semantic.classify("title", ["YES", "NO"])
    executor = sf.RayExecutor(num_actors=1)
    with pytest.raises(sf.PlanError, match="engine object cannot be sent"):
        plan.run(sf.DeterministicEngine(), executor=executor)
    assert sf.last_run().complete is False and "engine object" in sf.last_run().error
    with pytest.raises(sf.PlanError, match="engine object cannot be sent"):  # the pool mode checks first too
        plan.run(sf.DeterministicEngine(), max_cost=1.0, executor=executor)
    with pytest.raises(ValueError, match="num_actors"):
        sf.RayExecutor(num_actors=0)


def test_import_semframe_does_not_import_ray():
    code = ("import sys, semframe as sf\n"
            "ex = sf.RayExecutor(num_actors=2)\n"
            "print('ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


_DRIVER = r'''
import sys, time
import polars as pl
import ray
import semframe as sf

address, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/../.."]  # tests/ray, and the repository (tests.ray.compare)
from test_ray_executor import _plan_for_kill, _slow_engine_factory

ray.init(address=address, configure_logging=False, log_to_driver=False)
_plan_for_kill(n).run(_slow_engine_factory(log), executor=sf.RayExecutor(num_actors=2, batch_size=5))
print("finished", flush=True)
'''


def _plan_for_kill(n: int):
    return pl.DataFrame({"title": [f"Item number {i}" for i in range(n)]}).lazy().semantic.classify(
        "title", ["YES", "NO"], name="c")


def _slow_engine_factory(log: str):
    """A deterministic engine (its fingerprint does not depend on the process, so a rerun in
    another process finds its answers) that takes 50 ms per request and logs each one."""

    def factory():
        import time as _time

        import semframe as _sf

        class Slow(_sf.DeterministicEngine):
            def _generate(self, requests):
                for _ in requests:
                    _time.sleep(0.05)
                    with open(log, "a") as f:
                        f.write("answer\n")
                return super()._generate(requests)

        return Slow()

    return factory


def test_a_killed_driver_reruns_from_the_shared_cache(ray_cluster, tmp_path: Path):
    n, batch, actors = 120, 5, 2
    log = tmp_path / "answers.log"
    address = ray.get_runtime_context().gcs_address
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), address, str(log), str(n), str(Path(__file__).parent)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 30:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the driver ended before it could be killed"
        proc.kill()  # SIGKILL: no cleanup
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = len(log.read_text().splitlines())
    assert 30 <= before < n
    time.sleep(2)  # its actors may still finish a batch or two before Ray stops them
    result = _plan_for_kill(n).run(_slow_engine_factory(str(log)), executor=sf.RayExecutor(num_actors=actors,
                                                                                        batch_size=batch))
    assert result.df.height == n and result.df["c"].null_count() == 0
    m = result.metrics.row(0, named=True)
    assert m["exact_cache_hits"] >= 30 - actors * batch  # what the killed run finished was kept
    assert m["exact_cache_hits"] + m["engine_requests"] == n
    total = len(log.read_text().splitlines())
    # Engine work of both runs: one answer per row, plus at most the batches in flight at the kill
    # (one per actor, and one more each if its actors outlived the driver by a batch).
    assert n <= total <= n + 2 * actors * batch, (before, total, m)
    print(f"killed driver: {before} answered before the kill, {total} in all for {n} rows")


def test_the_executor_starts_and_stops_its_own_local_cluster(tmp_path: Path):
    code = (
        "import os, sys, polars as pl, semframe as sf\n"
        "plan = pl.DataFrame({'t': ['a', 'b', 'a']}).lazy().semantic.classify('t', ['YES', 'NO'], name='c')\n"
        "with sf.RayExecutor(num_actors=1, cpus=1) as ex:\n"
        "    r = plan.run('deterministic', executor=ex, cache=False)\n"
        "    temp = ex._temp_dir\n"
        "    assert os.path.isdir(temp) and 'ray' in sys.modules\n"
        "import ray\n"
        "print(r.df['c'].to_list() == plan.collect('deterministic', cache=False)['c'].to_list(),\n"
        "      r.metrics['engine_requests'].item(), ray.is_initialized(), os.path.exists(temp))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # it sets it itself
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["True", "2", "False", "False"], out.stdout + out.stderr[-3000:]
