"""Raw vLLM, the ceiling: ``vllm.LLM.generate`` on the distinct prompts, nothing else.

The prompts are semframe's own requests (same chat messages, rendered with the model's chat
template into the same token ids as semframe's engine sends -- with the shared prefix padded to a
KV block boundary where semframe's engine does that, ``align_prefix``), deduplicated; sampling is the same as semframe's ``VLLMEngine`` (greedy, the same
``max_tokens``; a choice decoded the same way: in one step restricted to the labels' tokens,
with their log-probabilities, where semframe's label table allows it -- the same table, from
``semframe.engines.vllm.build_label_table`` at start-up -- else the structured-output choice),
and the engine is started with the same options. What is left between the two is semframe's own
overhead.

A command may ask for the other decoding: ``{"decoding": "grammar"}`` (the structured-output
choice, token by token, as semframe decodes with ``choice_decoding="grammar"``) or
``{"decoding": "one_token"}``; ``{"first_tokens": true}`` adds each row's first answer token id
(what ``benchmarks/label_decoding.py`` explains differences with).
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
        self.labels = one_step_labels(spec, tok)
        try:
            from semframe.engines.base import Message
            from semframe.engines.vllm import render_chat
        except ImportError:  # a semframe before render_chat: the chat template's text
            self.prompts = [
                tok.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                        tokenize=False, add_generation_prompt=True)
                for messages in spec["requests"]
            ]
        else:
            align = spec["vllm"].get("block_size") if spec["engine"].get("align_prefix", True) else None
            self.prompts = [tuple(render_chat(tok, [Message(r, c) for r, c in messages], align_to=align))
                            for messages in spec["requests"]]


def one_step_labels(spec: dict[str, Any], tokenizer: Any) -> Any:
    """semframe's label table where its engine decodes this choice in one step, else None.

    The engine's rule (``VLLMEngine._one_step``): a choice, ``choice_decoding="one_token"`` (the
    default), a table for the labels, and ``max_tokens`` above the longest label's tokens.
    """
    if spec["kind"] != "classify" or spec["engine"].get("choice_decoding", "one_token") != "one_token":
        return None
    try:
        from semframe.engines.vllm import build_label_table
    except ImportError:  # a semframe without one-step decoding: the grammar, as it decodes
        return None
    table = build_label_table(tokenizer, spec["labels"])
    return table if table is not None and spec["max_tokens"] > table.longest else None


def setup(spec: dict[str, Any]) -> State:
    return State(spec)


def run(state: State, cmd: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    spec = state.spec
    n = cmd.get("rows") or len(state.prompts)
    distinct = list(dict.fromkeys(state.prompts[:n]))
    table = state.labels
    if cmd.get("decoding") == "grammar":
        table = None
    elif cmd.get("decoding") == "one_token" and table is None and spec["kind"] == "classify":
        table = one_step_labels({**spec, "engine": {**spec["engine"], "choice_decoding": "one_token"}},
                                state.llm.get_tokenizer())
    if table is not None:  # as semframe's engine: one token among the labels', with their logprobs
        params = SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=table.allowed,
                                logprob_token_ids=table.allowed, detokenize=False)
    else:
        structured = StructuredOutputsParams(choice=spec["labels"]) if spec["kind"] == "classify" else None
        params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], structured_outputs=structured)
    if not cmd.get("keep_prefix_cache"):
        state.llm.reset_prefix_cache()
    start, cpu_start = time.perf_counter(), time.process_time()
    if distinct and isinstance(distinct[0], tuple):  # token ids, as semframe's engine sends them
        from vllm.inputs import TokensPrompt

        outs = state.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in distinct], params, use_tqdm=False)
    else:
        outs = state.llm.generate(distinct, params, use_tqdm=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if table is not None:  # the label the token begins
        by_prompt = {p: table.labels[table.tokens[o.outputs[0].token_ids[0]]] for p, o in zip(distinct, outs)}
    else:
        by_prompt = {p: o.outputs[0].text for p, o in zip(distinct, outs)}
    extra: dict[str, Any] = {}
    if cmd.get("first_tokens"):
        first = {p: (list(o.outputs[0].token_ids) or [None])[0] for p, o in zip(distinct, outs)}
        extra["first_tokens"] = [first[p] for p in state.prompts[:n]]
    return {
        **extra,
        "wall_s": wall,
        "cpu_s": cpu,  # the process's CPU time (all its threads): less sensitive to a busy machine
        "rows": n,
        "engine_requests": len(distinct),
        "engine_calls": 1,
        "decoding": "one_token" if table is not None else "grammar",
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outs),
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "answers": [by_prompt[p] for p in state.prompts[:n]],
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    serve(setup, run)
