"""LOTUS (``lotus-ai``): ``DataFrame.sem_map`` through litellm's ``hosted_vllm/`` route to the
local ``vllm serve``. Runs in ``.venv-bench/lotus`` (``benchmarks/setup_peers.sh``).

The instruction is the workload's own text with the row's column referenced as ``{column}``;
LOTUS lays the request out its own way (a generic system prompt, then ``Context: <row>`` and
``Instruction: ...``). Output limits match semframe's (``max_tokens``), and the label choice is
passed to the server as ``structured_outputs`` (litellm forwards ``extra_body``). LOTUS's own
response cache is off, so every repetition asks the server.
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
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
        import lotus
        from lotus.models import LM

        self.spec = spec
        extra = {"extra_body": {"structured_outputs": {"choice": spec["labels"]}}} if spec["kind"] == "classify" else {}
        self.lm = LM(model=f"hosted_vllm/{spec['server']['model']}", api_base=spec["server"]["url"] + "/v1",
                     max_tokens=spec["max_tokens"], temperature=0.0, **extra)
        lotus.settings.configure(lm=self.lm, enable_cache=False)
        from importlib.metadata import version

        self.version = version("lotus-ai")


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    spec = state.spec
    rows = rows_for(spec, cmd)
    df = pd.DataFrame(rows)
    start = time.perf_counter()
    out = df.sem_map(spec["peer_instruction"], suffix="answer", progress_bar_desc="lotus")
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "rows": len(rows),
        "answers": [str(a) for a in out["answer"].tolist()],
        "client_prompt_tokens": state.lm.stats.physical_usage.prompt_tokens,
        "version": state.version,
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    serve(setup, run)
