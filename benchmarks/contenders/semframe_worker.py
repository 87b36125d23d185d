"""semframe: the workload as a lazy plan, run with ``SemLazyFrame.run()`` on a ``VLLMEngine``.

Spec options (``spec["semframe"]``): ``layout`` ("shared_first", the default, or "inline": the
``prompt_layout`` run option; a command may override it), ``exact_cache`` (a cache
folder, or null for ``cache=False``), ``semantic_cache`` (a threshold, True for a calibrated one, or absent), ``batch_size``. A classify
command may ask ``{"probabilities": true}``: the plan then shows the label probabilities
(``classify(..., probabilities=True)``) and the result has them, one dict (or null) per row.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _protocol import peak_rss_mib, rows_for, serve  # noqa: E402


class State:
    def __init__(self, spec: dict[str, Any]):
        import semframe as sf

        self.spec = spec
        self.opts = spec.get("semframe", {})
        if self.opts.get("exact_cache"):
            sf.configure(cache_dir=self.opts["exact_cache"])
        sf.configure(progress=False)
        self.engine = sf.VLLMEngine(model=spec["model"], **spec["engine"])
        self.engine.max_model_len  # noqa: B018 - start vLLM in setup (VLLMEngine() itself starts nothing)

    def close(self) -> None:
        self.engine.close()


def build_plan(lf: Any, spec: dict[str, Any], *, semantic_cache: Any = None, probabilities: bool = False) -> Any:
    """The workload as a semframe plan, written as a user would write it."""
    sem = lf.semantic
    if spec["kind"] == "classify":
        extra = {"probabilities": True} if probabilities else {}
        return sem.classify(spec["column"], spec["labels"], instruction=spec["instruction"], name="answer",
                            max_tokens=spec["max_tokens"], semantic_cache=semantic_cache, **extra)
    return sem.map("{" + spec["column"] + "}", instruction=spec["instruction"], name="answer",
                   max_tokens=spec["max_tokens"], semantic_cache=semantic_cache)


def reset_prefix_cache(engine: Any) -> None:
    """Start every repetition cold: vLLM keeps prefix blocks from the previous one."""
    llm = getattr(engine, "_llm", None)
    if llm is not None:
        llm.reset_prefix_cache()


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    import polars as pl


    spec, opts = state.spec, state.opts
    rows = rows_for(spec, cmd)
    df = pl.DataFrame(rows)
    plan = build_plan(df.lazy(), spec, semantic_cache=opts.get("semantic_cache") or None,
                      probabilities=bool(cmd.get("probabilities")))
    run_kwargs: dict[str, Any] = dict(engine=state.engine, cache=bool(opts.get("exact_cache")),
                                      batch_size=opts.get("batch_size"))
    if cmd.get("layout", opts.get("layout")) == "inline":
        run_kwargs["prompt_layout"] = "inline"
    if not cmd.get("keep_prefix_cache"):
        reset_prefix_cache(state.engine)
    calls_before = state.engine.usage.calls
    start, cpu_start = time.perf_counter(), time.process_time()
    result = plan.run(**run_kwargs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    m = result.step_metrics
    answers = result.df["answer"].cast(pl.String).to_list()
    out = {
        "wall_s": wall,
        "cpu_s": cpu,  # the process's CPU time (all its threads): less sensitive to a busy machine
        "rows": len(rows),
        "engine_requests": sum(s.engine_requests for s in m),
        "engine_calls": state.engine.usage.calls - calls_before,
        "dedup_hits": sum(s.dedup_hits for s in m),
        "exact_cache_hits": sum(s.exact_cache_hits for s in m),
        "semantic_cache_hits": sum(s.semantic_cache_hits for s in m),
        "errors": sum(s.errors for s in m),
        "prompt_tokens": sum(s.prompt_tokens for s in m),
        "cached_prompt_tokens": sum(s.cached_prompt_tokens for s in m),
        "output_tokens": sum(s.output_tokens for s in m),
        "answers": answers,
        "peak_rss_mib": peak_rss_mib(),
    }
    if cmd.get("probabilities"):
        out["probabilities"] = result.df["answer_probabilities"].to_list()
    cost = _cost(result)
    if cost is not None:
        out["cost_usd"] = cost
    return out


def _cost(result: Any) -> float | None:
    """The run's local cost in USD (machine time at its price), as semframe reports it."""
    try:
        value = result.cost.local_usd
    except Exception:  # an older semframe without cost reports
        return None
    return float(value) if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    serve(setup, run)
