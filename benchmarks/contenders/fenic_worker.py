"""fenic: ``semantic.map`` against the local ``vllm serve``. Runs in ``.venv-bench/fenic``.

fenic accepts only model names from its own catalog, so the server also serves the model as
``gpt-4o-mini``; fenic counts tokens with tiktoken, whose encoding files ``setup_peers.sh`` puts in
``.venv-bench/tiktoken-cache`` (no download). Rate limits are set far above what the server can
do, so fenic's own scheduler is not the bottleneck. ``semantic.map`` has no label-choice option:
the answer is free text under the same ``max_tokens`` (``max_output_tokens``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _protocol import peak_rss_mib, rows_for, serve  # noqa: E402


class State:
    def __init__(self, spec: dict[str, Any]):
        os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
        import fenic as fc

        self.spec = spec
        self.fc = fc
        model = fc.OpenAILanguageModel(model_name=spec["server"]["alias"], rpm=1_000_000, tpm=1_000_000_000,
                                       base_url=spec["server"]["url"] + "/v1")
        config = fc.SessionConfig(app_name="semframe_bench",
                                  semantic=fc.SemanticConfig(language_models={"m": model}, default_language_model="m"))
        self.session = fc.Session.get_or_create(config)
        from importlib.metadata import version

        self.version = version("fenic")

    def close(self) -> None:
        self.session.stop()


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    fc, spec = state.fc, state.spec
    rows = rows_for(spec, cmd)
    columns = list(rows[0])
    df = state.session.create_dataframe({c: [r[c] for r in rows] for c in columns})
    # fenic templates are Jinja: {{ column }}.
    instruction = re.sub(r"\{(\w+)\}", r"{{ \1 }}", spec["peer_instruction"])
    refs = {c: fc.col(c) for c in columns if "{{ " + c + " }}" in instruction}
    start = time.perf_counter()
    out = df.select(fc.semantic.map(instruction, max_output_tokens=spec["max_tokens"], **refs).alias("answer")).to_polars()
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "rows": len(rows),
        "answers": [str(a) for a in out["answer"].to_list()],
        "version": state.version,
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".venv-bench" / "tiktoken-cache"))
    serve(setup, run)
