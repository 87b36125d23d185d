"""Raw vLLM, the ceiling: ``vllm.LLM.generate`` on the distinct prompts, nothing else.

The prompts are semframe's own requests (same chat messages, rendered with the model's chat
template), deduplicated; sampling is the same (greedy, the same ``max_tokens``, the same
structured-output choice), and the engine is started with the same options as semframe's
``VLLMEngine``. What is left between the two is semframe's own overhead.
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
        from vllm import LLM

        self.spec = spec
        self.llm = LLM(model=spec["model"], **spec["vllm"])
        tok = self.llm.get_tokenizer()
        self.prompts = [
            tok.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                    tokenize=False, add_generation_prompt=True)
            for messages in spec["requests"]
        ]


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    spec = state.spec
    n = cmd.get("rows") or len(state.prompts)
    distinct = list(dict.fromkeys(state.prompts[:n]))
    structured = StructuredOutputsParams(choice=spec["labels"]) if spec["kind"] == "classify" else None
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], structured_outputs=structured)
    if not cmd.get("keep_prefix_cache"):
        state.llm.reset_prefix_cache()
    start = time.perf_counter()
    outs = state.llm.generate(distinct, params, use_tqdm=False)
    wall = time.perf_counter() - start
    by_prompt = {p: o.outputs[0].text for p, o in zip(distinct, outs)}
    return {
        "wall_s": wall,
        "rows": n,
        "engine_requests": len(distinct),
        "engine_calls": 1,
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outs),
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "answers": [by_prompt[p] for p in state.prompts[:n]],
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    serve(setup, run)
