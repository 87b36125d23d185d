"""semframe over HTTP (``sf.OpenAIEngine`` -> ``vllm serve``) against semframe in process, the
naive 4-client loop, and a run through injected faults -- side by side, in one run.

Workload 1 (``titles``: YES/NO over distinct BBC titles, SmolLM2-135M). One ``vllm serve`` of the
model, with the options the in-process engine uses; four contenders, each in its own process
(``benchmarks/_protocol.py``):

- ``semframe``: the plan on ``VLLMEngine`` in process (``contenders/semframe_worker.py``);
- ``semframe_grammar``: the same with ``choice_decoding="grammar"``: in process, the label decoded
  by vLLM's choice grammar (what one-step labels save);
- ``semframe_http``: the same plan on ``OpenAIEngine`` against the server
  (``contenders/semframe_http_worker.py``);
- ``naive_loop``: 4 threads, one request per row, to the same server;
- ``semframe_http_faults``: ``semframe_http`` through a fault-injecting proxy in front of the
  server (``tests/engines/fault_server.py`` with ``upstream=``): 20% of requests answered 429,
  5% answered 500, the rest forwarded.

Clean contenders take turns in a rotating order, each repetition with a cold prefix cache
(``/reset_prefix_cache``); then the fault runs. Targets (issue 12): HTTP <= 1.2x in process;
>= 3x faster than the naive loop; under faults the clean run's answers, 0 rows lost, the
attempts reported.

    python -m benchmarks.http_engine [--rows 200] [--repeats 3] [--fault-runs 1]

Writes ``docs/results/http_engine.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import replace
from typing import Any

from benchmarks._common import (
    RESULTS,
    ROOT,
    VLLMServer,
    Worker,
    cleanup,
    fmt,
    log,
    machine_facts,
    markdown_table,
    median,
    workdir,
)
from benchmarks.workloads import DEFAULT, make_spec

FAULTS = {"429": 0.20, "500": 0.05}
CLEAN = ("semframe", "semframe_grammar", "semframe_http", "naive_loop")
SCRIPTS = {"semframe": "semframe_worker.py", "semframe_grammar": "semframe_worker.py",
           "semframe_http": "semframe_http_worker.py",
           "naive_loop": "naive_loop_worker.py", "semframe_http_faults": "semframe_http_worker.py"}


def _fault_server_class() -> Any:
    path = ROOT / "tests" / "engines" / "fault_server.py"
    spec = importlib.util.spec_from_file_location("semframe_fault_server", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.FaultServer


def run(rows: int, repeats: int, fault_runs: int, concurrency: int) -> dict[str, Any]:
    spec = make_spec("titles", replace(DEFAULT, titles=rows))
    tmp = workdir("http-engine")
    server = VLLMServer(spec["model"], spec["vllm"], tmp, names=("smollm2",))
    proxy = None
    workers: dict[str, Worker] = {}
    out: dict[str, Any] = {"machine": machine_facts(), "rows": len(spec["rows"]), "faults": FAULTS,
                           "concurrency": concurrency, "runs": {}, "startup_s": {}}
    try:
        log(f"starting vllm serve on {server.url}")
        out["startup_s"]["vllm serve"] = server.start()
        spec["server"] = {"url": server.url, "model": "smollm2"}
        proxy = _fault_server_class()(upstream=server.url, faults=FAULTS, seed=12, lifetime_s=3 * 3600,
                                      max_requests=10_000_000).start()
        specs = {
            "semframe": spec,
            "semframe_grammar": {**spec, "engine": {**spec["engine"], "choice_decoding": "grammar"}},
            "semframe_http": {**spec, "http": {"max_concurrency": concurrency}},
            "naive_loop": spec,
            "semframe_http_faults": {**spec, "http": {"max_concurrency": concurrency, "url": proxy.url,
                                                      "backoff_s": 0.25}},
        }
        for name, script in SCRIPTS.items():
            w = Worker(name, script, specs[name], tmp)
            log(f"starting {name}")
            out["startup_s"][name] = w.start()["startup_s"]
            w.run(rows=min(8, len(spec["rows"])))  # warm-up: first-call costs out of the timings
            workers[name] = w
        for r in range(repeats):
            k = r % len(CLEAN)
            order = list(CLEAN[k:] + CLEAN[:k])
            for name in order:
                if name in ("semframe_http", "naive_loop"):
                    server.reset_prefix_cache()
                res = workers[name].run()
                res["repeat"] = r
                out["runs"].setdefault(name, []).append(res)
                log(f"#{r + 1} {name:>22} {res['wall_s']:7.2f} s")
        for r in range(fault_runs):
            server.reset_prefix_cache()
            proxy.reset_stats()
            res = workers["semframe_http_faults"].run()
            res["repeat"] = r
            res["proxy"] = dict(proxy.stats)
            out["runs"].setdefault("semframe_http_faults", []).append(res)
            log(f"faults #{r + 1}: {res['wall_s']:.2f} s, {res['attempts']} attempts, {res['proxy']}")
        out["server_rss_mib"] = server.rss_mib()
    finally:
        for w in workers.values():
            w.stop()
        if proxy is not None:
            proxy.stop()
        server.stop()
        cleanup(tmp)
    return out


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    runs = out["runs"]
    by = {name: {r["repeat"]: r for r in rs} for name, rs in runs.items()}
    wall = {name: median([r["wall_s"] for r in rs]) for name, rs in runs.items()}

    def ratio(a: str, b: str) -> float:
        return median([by[a][k]["wall_s"] / by[b][k]["wall_s"] for k in by[a] if k in by.get(b, {})])

    clean = runs["semframe_http"][0]["answers"]
    s = {
        "wall_s": wall,
        "http_over_in_process": ratio("semframe_http", "semframe"),
        "http_over_in_process_grammar": ratio("semframe_http", "semframe_grammar"),
        "grammar_over_one_token": ratio("semframe_grammar", "semframe"),
        "naive_over_http": ratio("naive_loop", "semframe_http"),
        "naive_over_in_process": ratio("naive_loop", "semframe"),
        "http_vs_in_process_agreement": _agree(runs["semframe"][0]["answers"], clean),
        "http_repeat_agreement": min(_agree(clean, r["answers"]) for r in runs["semframe_http"]),
        "faults": [],
    }
    for r in runs.get("semframe_http_faults", []):
        s["faults"].append({
            "wall_s": r["wall_s"], "rows": r["rows"], "rows_lost": r["rows_lost"], "errors": r["errors"],
            "attempts": r["attempts"], "requests": r["engine_requests_sent"], "proxy": r["proxy"],
            "same_answers_as_clean": sum(a == b for a, b in zip(clean, r["answers"])),
        })
    return s


def _agree(a: list[Any], b: list[Any]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def write(out: dict[str, Any], s: dict[str, Any]) -> None:
    m = out["machine"]
    runs = out["runs"]
    rows = []
    for name in (*CLEAN, "semframe_http_faults"):
        if name not in runs:
            continue
        rs = runs[name]
        last = rs[-1]
        rows.append([name, len(rs), s["wall_s"][name], min(r["wall_s"] for r in rs), max(r["wall_s"] for r in rs),
                     last["rows"] / s["wall_s"][name], last.get("engine_requests"), last.get("prompt_tokens"),
                     last.get("cached_prompt_tokens"), last.get("output_tokens"), out["startup_s"].get(name)])
    table = markdown_table(["contender", "runs", "wall s (median)", "min", "max", "rows/s", "requests",
                            "prompt tokens", "cached", "output tokens", "start-up s"], rows)
    faults = markdown_table(
        ["fault run", "wall s", "rows", "rows lost", "null answers", "attempts", "proxy: 429 / 500 / forwarded",
         "answers = clean HTTP run"],
        [[i + 1, f["wall_s"], f["rows"], f["rows_lost"], f["errors"], f["attempts"],
          f"{f['proxy'].get('429', 0)} / {f['proxy'].get('500', 0)} / {f['proxy'].get('ok', 0)}",
          f"{f['same_answers_as_clean']} / {f['rows']}"] for i, f in enumerate(s["faults"])])
    text = f"""## Results: semframe over HTTP (`OpenAIEngine` -> `vllm serve`)

`python -m benchmarks.http_engine --rows {out['rows']}` (`benchmarks/http_engine.py`).

- Date: {m['date']}; semframe commit `{m['semframe_commit']}`{' (with uncommitted changes in src/)' if m.get('semframe_src_uncommitted') else ''}
- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, no GPU; load average at start {fmt(m['load_average_at_start'])}
- Threads: {m['threads']} in every engine process; versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}
- Workload 1 (titles, YES/NO), {out['rows']} distinct rows, SmolLM2-135M-Instruct; one `vllm serve` with the in-process engine's options; `OpenAIEngine(max_concurrency={out['concurrency']})`; naive loop: 4 threads. Every run starts with a cold prefix cache.

{table}

- **HTTP / in process: {s['http_over_in_process']:.2f}x** (target <= 1.2x), median of the per-repetition ratios.
  HTTP (one decode step) / in process with vLLM's choice grammar instead:
  {s['http_over_in_process_grammar']:.2f}x; in process, grammar / one decode step {s['grammar_over_one_token']:.2f}x.
- **naive loop / HTTP: {s['naive_over_http']:.2f}x** (target >= 3x); naive loop / in process: {s['naive_over_in_process']:.2f}x.
- Answers: HTTP vs in process agree on {s['http_vs_in_process_agreement']:.0%} of rows; HTTP runs agree with each other on at least {s['http_repeat_agreement']:.0%}.
- vllm serve resident memory at the end: {fmt(out.get('server_rss_mib'))} MiB.

### Through faults: {int(FAULTS['429'] * 100)}% of requests 429, {int(FAULTS['500'] * 100)}% 500

A fault-injecting proxy (`tests/engines/fault_server.py`, `upstream=` the server) answers each
request with a 429 (no `Retry-After`) or a 500 with these probabilities, or forwards it.

{faults}

"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_engine.md").write_text(text + _notes(s), encoding="utf-8")
    slim = json.loads(json.dumps(out))
    for rs in slim["runs"].values():
        for r in rs:
            r.pop("answers", None)
            r.pop("latencies_s", None)
    slim.pop("summary", None)
    (RESULTS / "http_engine.json").write_text(json.dumps({"summary": s, **slim}, indent=1), encoding="utf-8")


def _notes(s: dict[str, Any]) -> str:
    lost = sum(f["rows_lost"] for f in s["faults"])
    same = all(f["same_answers_as_clean"] == f["rows"] for f in s["faults"])
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return f"""### Reading the numbers

- Under faults: {lost} rows lost in all; {'every' if same else 'not every'} fault run gave the clean HTTP run's
  answers; attempts = requests + the faults injected on them (each 429 and 500 was retried, with
  exponential backoff and jitter: the proxy sends no `Retry-After`).
- HTTP <= 1.2x in process: {met(s['http_over_in_process'] <= 1.2)} ({s['http_over_in_process']:.2f}x). Both
  decode a label in one step and align the instruction to the 32-token prefix-cache blocks (the
  prompt and cached token columns match), and the HTTP run pipelines its batches. What is left is
  the transport on a 2-core machine: the API server process (chat template, tokenizing, JSON,
  detokenizing, its own event loop) and the client's HTTP work take CPU time from the engine core
  for every request, where the in-process engine hands token ids straight to its scheduler.
  (A py-spy profile of the client against this server: about a tenth of its CPU goes to
  httpcore's connection-pool scan, which visits every one of the 64 connections per request --
  a known cost, encode/httpcore#1035, unmerged.) 200 rows are one batch (`batch_size` 512), so
  pipelining plays no part here.
- naive loop >= 3x slower than HTTP: {met(s['naive_over_http'] >= 3)} ({s['naive_over_http']:.2f}x). Both send the
  same requests to the same server; the difference is how many are in flight (64 vs 4), which lets
  the server batch more rows per decode step. On this 2-core CPU machine a step of the 135M model
  gains little from a bigger batch once the cores are busy (the API server process shares them),
  so the in-flight depth pays off far less than on a GPU, where a step of hundreds of sequences
  costs about what one of four does; that cannot be shown here (no GPU on this
  machine). With the in-process engine the naive loop is {s['naive_over_in_process']:.2f}x slower.
- The machine is shared (see the load average above): the wall times of one contender vary
  between repetitions by the min/max columns; the ratios are taken within a repetition.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=DEFAULT.titles)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fault-runs", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rewrite", action="store_true", help="only rewrite the .md from the saved .json")
    args = ap.parse_args()
    if args.rewrite:
        saved = json.loads((RESULTS / "http_engine.json").read_text(encoding="utf-8"))
        write(saved, saved.pop("summary"))
        return
    start = time.perf_counter()
    out = run(args.rows, args.repeats, args.fault_runs, args.concurrency)
    out["total_s"] = time.perf_counter() - start
    s = summarize(out)
    write(out, s)
    log(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
