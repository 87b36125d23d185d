"""KV block sizes for vLLM's prefix cache on CPU, with and without the block-aligned shared prefix.

    .venv/bin/python -m benchmarks.prefix_blocks                         # blocks 16/32/64/128, aligned and not
    .venv/bin/python -m benchmarks.prefix_blocks --blocks 32 --align on,off --repeats 3

vLLM's prefix cache reuses whole KV blocks only: of a shared prefix of S tokens, a request reuses
``B * floor(S / B)`` and recomputes the rest. One process per configuration (``VLLMEngine(block_size=B, align_prefix=A)``,
prefix caching on, everything else as ``VLLMEngine`` picks on CPU) runs three classify workloads,
each from an empty prefix cache, with semframe's default decoding (one token per label).
``align_prefix=True`` (the default since this benchmark showed it pays) pads the shared instruction
with `` .`` tokens so that the row starts on a block boundary; ``False`` sends the prompts as the
chat template renders them:

- ``titles``: workload 1 (short rows, a 39-token shared prefix);
- ``topics_long_instruction``: BBC headlines into 5 topics under a ~400-token instruction (topic
  descriptions and labelled examples): a long shared prefix, short rows;
- ``articles``: BBC article openings (~2000 characters each) into 5 topics: long rows.

*computed* = prompt tokens - prefix-cached tokens (vLLM's ``num_cached_tokens``, which semframe
reports as ``cached_prompt_tokens``); *minimum* = every distinct request's own tokens plus one copy
of the (unpadded) shared prefix. Writes
``docs/results/prefix_blocks.md`` and ``.json``; never ``docs/benchmarks.md``.
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

from benchmarks._common import RESULTS, Worker, WorkerError, cleanup, log, machine_facts, markdown_table, median, workdir  # noqa: E402
from benchmarks.report import environment_block  # noqa: E402
from benchmarks.workloads import DEFAULT, _bbc, default_model, irreducible_prompt_tokens, make_spec, semframe_requests  # noqa: E402

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
CORPUS_TOPIC = {"sport": "sports"}
LONG_INSTRUCTION_HEAD = (
    "You sort BBC News headlines into the five sections of the BBC News website.\n"
    "- business: companies, markets, the economy, trade, jobs, prices, banks and company results.\n"
    "- entertainment: film, music, television, theatre, books, celebrities and awards.\n"
    "- politics: government, parliament, elections, parties, ministers and public policy in the UK.\n"
    "- sport: football, rugby, tennis, athletics, cricket and every other sport, players and results.\n"
    "- tech: computers, the internet, phones, games, software, gadgets and technology companies.\n"
    "Read the headline, decide which section a BBC editor would file it under, and answer with the "
    "section's name only. Examples of headlines and their sections:\n"
)
ARTICLES_INSTRUCTION = "Which section of the BBC News website is this article from?"
ARTICLE_CHARS = 2000
WORKLOADS = ("titles", "topics_long_instruction", "articles")


def _topic_frame(seed: int) -> Any:
    df = _bbc().unique("title", keep="first", maintain_order=True)
    return df.sample(fraction=1.0, shuffle=True, seed=seed)


def _label(corpus_topic: str) -> str:
    return {v: k for k, v in CORPUS_TOPIC.items()}.get(corpus_topic, corpus_topic)


def classify_spec(name: str, column: str, instruction: str, labels: list[str], rows: list[dict[str, str]],
                  model: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "classify", "column": column, "instruction": instruction, "labels": labels,
                            "max_tokens": None, "rows": rows, "workload": name, "model": model, "engine": {}, "vllm": {}}
    spec["requests"], spec["max_tokens"] = semframe_requests(spec)
    return spec


def shared_prefix_tokens(spec: dict[str, Any]) -> int:
    return irreducible_prompt_tokens(spec)["shared_prefix_tokens"]


def make_workloads(rows: int, topic_rows: int, articles: int, examples: int, model: str) -> dict[str, dict[str, Any]]:
    titles = make_spec("titles", dataclasses.replace(DEFAULT, titles=rows))
    df = _topic_frame(seed=1)
    shots = df.head(examples)
    rest = df.slice(examples)
    instruction = LONG_INSTRUCTION_HEAD + "".join(
        f"{t} -> {_label(topic)}\n" for t, topic in zip(shots["title"], shots["topic"]))
    rng = random.Random(0)
    picked = rng.sample(range(rest.height), topic_rows)
    long_instr = classify_spec("topics_long_instruction", "title", instruction, TOPICS,
                               [{"title": rest["title"][i]} for i in picked], model)
    bodies = _bbc().unique("body", keep="first", maintain_order=True).sample(n=articles, seed=2)
    arts = classify_spec("articles", "body", ARTICLES_INSTRUCTION, TOPICS,
                         [{"body": b[:ARTICLE_CHARS]} for b in bodies["body"]], model)
    return {"titles": {k: titles[k] for k in ("workload", "kind", "column", "instruction", "labels", "max_tokens",
                                               "rows", "requests", "model", "engine", "vllm")},
            "topics_long_instruction": long_instr, "articles": arts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", default="16,32,64,128")
    p.add_argument("--align", default="on,off", help="align_prefix settings to run: on, off or on,off")
    p.add_argument("--rows", type=int, default=200, help="workload 1 titles")
    p.add_argument("--topic-rows", type=int, default=200, help="headlines under the long instruction")
    p.add_argument("--examples", type=int, default=12, help="labelled headlines in the long instruction")
    p.add_argument("--articles", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    aligns = [a.strip() == "on" for a in args.align.split(",")]
    # A configuration: its label ("32", "32 unaligned") -> (block size, align_prefix).
    configs = {(f"{b}" if a else f"{b} unaligned"): (int(b), a) for b in args.blocks.split(",") for a in aligns}
    blocks = list(configs)

    facts = machine_facts()
    model = default_model()
    base = make_workloads(args.rows, args.topic_rows, args.articles, args.examples, model)
    limits = {name: irreducible_prompt_tokens(spec) for name, spec in base.items()}
    per_block = {b: base for b in blocks}
    tmp = workdir("prefix-blocks")
    workers: dict[int, Worker] = {}
    refused: dict[int, str] = {}
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    try:
        for b in blocks:
            size, align = configs[b]
            spec = {"model": model, "engine": {"block_size": size, "enable_prefix_caching": True,
                                               "align_prefix": align},
                    "workloads": {k: {x: v[x] for x in ("column", "instruction", "labels", "max_tokens", "rows")}
                                  for k, v in per_block[b].items()}}
            w = Worker(f"block-{b.replace(' ', '-')}", "prefix_blocks_worker.py", spec, tmp)
            log(f"starting the engine with block size {b}")
            try:
                w.start()
            except WorkerError as exc:
                refused[b] = str(exc).splitlines()[0][:300]
                log(f"block size {b} refused: {refused[b]}")
                continue
            for name in WORKLOADS:
                w.run(workload=name, rows=4)  # warm-up
            workers[b] = w
        live = list(workers)
        for r in range(args.repeats):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for b in order:
                for name in WORKLOADS:
                    res = workers[b].run(workload=name)
                    runs.setdefault((b, name), []).append(res)
                    log(f"#{r + 1} block {b:>13} {name:>24}: {res['wall_s']:6.2f} s, "
                        f"{res['prompt_tokens'] - res['cached_prompt_tokens']} computed prompt tokens")
    finally:
        for w in workers.values():
            w.stop()
        cleanup(tmp)

    ref = "32" if "32" in workers else (next(iter(workers)) if workers else None)
    sections = []
    summary: dict[str, Any] = {}
    for name in WORKLOADS:
        lim = limits[name]
        shared = {b: shared_prefix_tokens({**per_block[b][name], "model": model}) for b in workers}
        body = []
        for b in blocks:
            if b in refused:
                body.append([b, "refused", None, None, None, None, None, None, None, None, None])
                continue
            rs = runs[(b, name)]
            last = rs[-1]
            computed = last["prompt_tokens"] - last["cached_prompt_tokens"]
            ref_rs = runs[(ref, name)]
            vs = median([x["wall_s"] / y["wall_s"] for x, y in zip(rs, ref_rs)])
            other = ref_rs
            agree = sum(a == c for a, c in zip(last["answers"], other[-1]["answers"])) / len(last["answers"])
            n = last["engine_requests"]
            body.append([b, median([x["wall_s"] for x in rs]), f"{vs:.2f}", last["prompt_tokens"],
                         last["cached_prompt_tokens"], computed, f"{computed / lim['minimum_prompt_tokens']:.2f}",
                         shared[b], f"{0 if configs[b][1] else shared[b] % configs[b][0]}",
                         f"{last['cached_prompt_tokens'] / max(1, n - 1):.1f}", f"{100 * agree:.1f}%"])
            summary.setdefault(name, {})[b] = {"wall_s": median([x["wall_s"] for x in rs]), "computed": computed,
                                               "agreement": agree, "answers": last["answers"],
                                               "computed_over_minimum": computed / lim["minimum_prompt_tokens"],
                                               "prompt_tokens": last["prompt_tokens"],
                                               "shared_prefix_tokens": shared[b]}
        table = markdown_table(["block", "wall s (median)", f"x block {ref}", "prompt tokens", "cached", "computed",
                                "computed / minimum", "shared prefix", "shared tokens recomputed per row",
                                "cached per request",
                                f"agrees with block {ref}"], body)
        spec = base.get(name, base["titles"])
        sections += [f"### {name}", "",
                     f"{len(spec['rows'])} rows; minimum prompt tokens {lim['minimum_prompt_tokens']:,} "
                     f"(shared prefix {lim['shared_prefix_tokens']} tokens, {lim['distinct_prompt_tokens']:,} "
                     "prompt tokens in all).", "", table, ""]
    refused_lines = [f"- Block size {b} refused by vLLM's CPU backend: `{why}`" for b, why in refused.items()]
    text = "\n".join([
        "## Prefix-cache block sizes (CPU)", "",
        f"`.venv/bin/python -m benchmarks.prefix_blocks --blocks {args.blocks} --repeats {args.repeats}`: one "
        "`VLLMEngine(block_size=B, align_prefix=A)` per configuration (*unaligned*: `align_prefix=False`), each in its own process, prefix caching on, semframe's default "
        "decoding (one token per label); every run from an empty prefix cache, "
        f"{args.repeats} repetitions in a rotating order (wall times: medians; *x block {ref}*: the ratio within "
        "a repetition, median).", "",
        environment_block(facts), "", *refused_lines, "" if refused_lines else "", *sections,
        "- *shared tokens recomputed per row*: S mod B for a shared prefix of S tokens (vLLM reuses whole blocks "
        "only); *cached per request*: the prefix-cached tokens over all requests but the first.",
        "- `align_prefix=True` (the default) pads the shared instruction with ` .` tokens so that the row starts on "
        "a block boundary: every shared token is reused. It changes the prompt the model reads (the agreement "
        "column compares with the aligned block-32 engine).",
    ])
    print("\n" + text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "prefix_blocks.md").write_text(text.rstrip() + "\n", encoding="utf-8")
        (RESULTS / "prefix_blocks.json").write_text(json.dumps(
            {"facts": facts, "args": vars(args), "limits": limits, "refused": refused,
             "results": {k: {str(b): v for b, v in d.items()} for k, d in summary.items()}},
            indent=1, default=str) + "\n", encoding="utf-8")
        log(f"wrote {RESULTS / 'prefix_blocks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
