"""The Ray executor with a real engine: the tiny random-weight vLLM model on 2 CPU actors, each
actor building its own ``VLLMEngine`` from the model folder, against the same engine in-process.

float32 weights: bf16 answers depend on the prefix cache's state (../shared/DESIGN.md), float32's
do not, so the two executors must agree exactly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

import semframe as sf

pytestmark = [pytest.mark.ray, pytest.mark.vllm]

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "semframe[ray]")')


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    path = Path(__file__).resolve().parents[1] / "engines" / "tiny_model.py"
    spec = importlib.util.spec_from_file_location("_sf_tiny_model", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama")


def _factory(folder: str):
    def make():
        import semframe as _sf

        return _sf.VLLMEngine(folder, dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=512)

    return make


def test_tiny_vllm_on_two_cpu_actors_answers_as_in_process(ray_cluster, tiny_model: Path):
    titles = [f"Battle of place {i % 9}" for i in range(24)] + [None]
    plan = pl.DataFrame({"title": titles}).lazy().semantic.classify(
        "title", ["YES", "NO"], instruction="Is the title about Europe?", name="eu")
    engine = _factory(str(tiny_model))()
    try:
        local = plan.run(engine, cache=False)
    finally:
        engine.close()
    remote = plan.run(_factory(str(tiny_model)), cache=False, executor=sf.RayExecutor(num_actors=2, batch_size=4))
    assert remote.df.height == len(titles)
    assert remote.metrics["engine_requests"].item() == local.metrics["engine_requests"].item() == 9
    assert remote.metrics["dedup_hits"].item() == local.metrics["dedup_hits"].item() == 15
    assert set(remote.df["eu"].drop_nulls()) <= {"YES", "NO"}
    assert remote.df["eu"].null_count() == 1
    assert remote.df["eu"].to_list() == local.df["eu"].to_list()
    assert remote.engine_model == local.engine_model


def test_tiny_vllm_in_the_pool_mode_counts_and_stops_as_in_process(ray_cluster, tiny_model: Path):
    """The pool mode with a real engine: the budget counts each batch's prompts with the engine's
    chat template (asked of an actor) and stops before the same batch as in process."""
    titles = [f"Battle of place {i}" for i in range(12)]
    plan = pl.DataFrame({"title": titles}).lazy().semantic.classify(
        "title", ["YES", "NO"], instruction="Is the title about Europe?", name="eu")
    engine = _factory(str(tiny_model))()
    try:
        full = plan.run(engine, cache=False, batch_size=3)
        limit = full.metrics["prompt_tokens"].item()  # answers are counted at max_tokens: a stop midway
        with pytest.raises(sf.BudgetExceeded) as local:
            plan.run(engine, cache=False, batch_size=3, max_tokens=limit)
    finally:
        engine.close()
    with pytest.raises(sf.BudgetExceeded) as remote:
        plan.run(_factory(str(tiny_model)), cache=False, batch_size=3, max_tokens=limit,
                 executor=sf.RayExecutor(num_actors=2, mode="pool"))
    assert 0 < local.value.result.df.height < len(titles)
    assert remote.value.result.df.equals(local.value.result.df)
    assert remote.value.spent_tokens == local.value.spent_tokens <= limit
    assert str(remote.value).split(" (spent")[0] == str(local.value).split(" (spent")[0]  # the same batch, counted alike
