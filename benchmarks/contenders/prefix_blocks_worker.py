"""semframe on one ``VLLMEngine`` (one KV block size), running several classify workloads.

Spec: ``model``, ``engine`` (``VLLMEngine`` options, ``block_size`` among them) and ``workloads``:
name -> {``column``, ``instruction``, ``labels``, ``max_tokens``, ``rows``}. A command names its
``workload``; every run starts from an empty prefix cache and uses no persistent cache. Used by
``benchmarks/prefix_blocks.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _protocol import peak_rss_mib, serve  # noqa: E402


class State:
    def __init__(self, spec: dict[str, Any]):
        import semframe as sf

        self.spec = spec
        sf.configure(progress=False)
        self.engine = sf.VLLMEngine(model=spec["model"], **spec["engine"])
        self.engine.max_model_len  # noqa: B018 - start vLLM now (a refused block size fails here)

    def close(self) -> None:
        self.engine.close()


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    w = state.spec["workloads"][cmd["workload"]]
    rows = w["rows"] if cmd.get("rows") is None else w["rows"][: cmd["rows"]]
    df = pl.DataFrame(rows)
    plan = df.lazy().semantic.classify(w["column"], w["labels"], instruction=w["instruction"], name="answer",
                                       max_tokens=w["max_tokens"])
    state.engine._llm.reset_prefix_cache()
    start = time.perf_counter()
    result = plan.run(engine=state.engine, cache=False)
    wall = time.perf_counter() - start
    m = result.step_metrics
    return {
        "wall_s": wall,
        "rows": len(rows),
        "engine_requests": sum(s.engine_requests for s in m),
        "errors": sum(s.errors for s in m),
        "prompt_tokens": sum(s.prompt_tokens for s in m),
        "cached_prompt_tokens": sum(s.cached_prompt_tokens for s in m),
        "output_tokens": sum(s.output_tokens for s in m),
        "answers": result.df["answer"].to_list(),
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    serve(setup, run)
