"""The effect of semframe's prompt layout, with vLLM's prefix cache on and off.

    .venv/bin/python -m benchmarks.prefix_layout              # 300 YES/NO titles, 3 repetitions
    .venv/bin/python -m benchmarks.prefix_layout --rows 500 --repeats 5

``shared_first`` is the default ``prompt_layout`` (the instruction and the answer
format in a system message every row shares, the row's text last); ``inline`` is every rule but
``prompt_layout="inline"`` (the row's text first, the instruction after it, as a hand-written loop sends
it). Two engines (prefix caching on, off; block size 32 as ``VLLMEngine`` picks on CPU), each in
its own process, run both layouts in alternation; every run starts with an empty prefix cache.
Writes ``docs/results/prefix_layout.md`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Worker, cleanup, log, machine_facts, markdown_table, median, workdir  # noqa: E402
from benchmarks.report import environment_block, write_piece  # noqa: E402
from benchmarks.workloads import DEFAULT, engine_options, irreducible_prompt_tokens, make_spec  # noqa: E402

LAYOUTS = ("shared_first", "inline")


def inline_requests(spec: dict) -> dict:
    """The same spec with the inline layout's messages (for the minimum-token count)."""
    from benchmarks.workloads import semframe_requests

    requests, _ = semframe_requests(spec, prompt_layout="inline")
    return {**spec, "requests": requests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    facts = machine_facts()
    spec = make_spec("titles", dataclasses.replace(DEFAULT, titles=args.rows))
    limits = {"shared_first": irreducible_prompt_tokens(spec), "inline": irreducible_prompt_tokens(inline_requests(spec))}
    minimum = {k: v["minimum_prompt_tokens"] for k, v in limits.items()}
    tmp = workdir("prefix-layout")
    workers: dict[bool, Worker] = {}
    runs: dict[tuple[bool, str], list[dict]] = {}
    try:
        for caching in (True, False):
            sf_opts, raw = engine_options(prefix_caching=caching)
            w = Worker(f"semframe-prefix-{'on' if caching else 'off'}", "semframe_worker.py",
                       {**spec, "engine": sf_opts, "vllm": raw}, tmp)
            log(f"starting the engine with prefix caching {'on' if caching else 'off'}")
            w.start()
            for layout in LAYOUTS:
                w.run(rows=8, layout=layout)  # warm-up
            workers[caching] = w
        for r in range(args.repeats):
            combos = [(c, lay) for c in (True, False) for lay in LAYOUTS]
            combos = combos[r % 4:] + combos[: r % 4]
            for caching, layout in combos:
                res = workers[caching].run(layout=layout)
                runs.setdefault((caching, layout), []).append(res)
                log(f"#{r + 1} prefix caching {'on ' if caching else 'off'} {layout:>12}: {res['wall_s']:6.2f} s, "
                    f"{res['cached_prompt_tokens']} cached prompt tokens")
    finally:
        for w in workers.values():
            w.stop()
        cleanup(tmp)

    base = median([r["wall_s"] for r in runs[(True, "shared_first")]])
    rows = []
    for (caching, layout), rs in runs.items():
        wall = median([r["wall_s"] for r in rs])
        last = rs[-1]
        computed = last["prompt_tokens"] - last["cached_prompt_tokens"]
        rows.append(["on" if caching else "off", layout, wall, args.rows / wall, f"{wall / base:.2f}",
                     last["prompt_tokens"], last["cached_prompt_tokens"], computed, f"{computed / minimum[layout]:.2f}"])
    table = markdown_table(["prefix caching", "layout", "wall s (median)", "rows/s", "x shared_first+on",
                            "prompt tokens", "cached", "computed", "computed / minimum"], rows)
    text = "\n".join([
        "## Prompt layout and prefix caching", "",
        f"`.venv/bin/python -m benchmarks.prefix_layout --rows {args.rows} --repeats {args.repeats}`: "
        f"{args.rows} distinct YES/NO title rows (workload 1) on SmolLM2-135M-Instruct, `max_tokens={spec['max_tokens']}`, "
        f"block size 32; median of {args.repeats} runs per cell, each from an empty prefix cache.", "",
        environment_block(facts), "", table, "",
        f"- The prefix every request shares is {limits['shared_first']['shared_prefix_tokens']} tokens in the "
        "`shared_first` layout (chat header, instruction, answer format) and "
        f"{limits['inline']['shared_prefix_tokens']} in `inline` (only the chat template's default system header). "
        "vLLM reuses whole blocks of 32 tokens: one block per request in `shared_first`, none in `inline`. "
        "*minimum* (each distinct request's own tokens plus one copy of the shared prefix) is computed per layout.",
        "- `inline` is what `run(prompt_layout=\"inline\")` sends; `shared_first` is the default.",
    ])
    print("\n" + text)
    if not args.no_write:
        path = write_piece("prefix_layout.md", text)
        log(f"wrote {path} and docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
