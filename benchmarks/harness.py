"""Run one workload with several contenders side by side, and summarize the runs.

Each contender runs in its own process, started once; then the workload runs ``repeats`` times,
the contenders taking turns in a rotating order (so none is always first or last on a machine
whose load drifts). Every repetition starts with a cold prefix cache. Ratios are taken within a
repetition, then the median over repetitions is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import (
    VLLMServer,
    Worker,
    WorkerError,
    cleanup,
    log,
    median,
    peer_python,
    percentile,
    workdir,
)
from benchmarks.workloads import Sizes, irreducible_prompt_tokens, make_spec

#: name -> (worker script, peer venv or None, needs the server)
CONTENDERS: dict[str, tuple[str, str | None, bool]] = {
    "semframe": ("semframe_worker.py", None, False),
    "semframe+semantic_cache": ("semframe_worker.py", None, False),
    "semframe_rerun_exact_cache": ("semframe_worker.py", None, False),
    "raw_vllm": ("raw_vllm_worker.py", None, False),
    "naive_loop": ("naive_loop_worker.py", None, True),
    "lotus": ("lotus_worker.py", "lotus", True),
    "fenic": ("fenic_worker.py", "fenic", True),
}
PEERS = ("lotus", "fenic")


@dataclass
class WorkloadResult:
    workload: str
    spec_info: dict[str, Any]
    limits: dict[str, int]
    startup_s: dict[str, float] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    server_rss_mib: float | None = None


def _worker_spec(name: str, spec: dict[str, Any], tmp: Any) -> dict[str, Any]:
    if name == "semframe+semantic_cache":
        # The fixed 0.95 the numbers in docs/benchmarks.md were measured with (True now calibrates).
        return {**spec, "semframe": {"semantic_cache": 0.95}}
    if name == "semframe_rerun_exact_cache":
        return {**spec, "semframe": {"exact_cache": str(tmp / "semframe-cache")}}
    return spec


def run_workload(name: str, sizes: Sizes, contenders: list[str], repeats: int) -> WorkloadResult:
    log(f"{name}: preparing the workload")
    spec = make_spec(name, sizes)
    if spec.get("peer_instruction") is None:
        skipped = [c for c in contenders if c in PEERS]
        contenders = [c for c in contenders if c not in PEERS]
    else:
        skipped = []
    limits = irreducible_prompt_tokens(spec)
    info = {k: spec.get(k) for k in ("kind", "instruction", "labels", "max_tokens", "model", "engine", "vllm",
                                     "context_tokens", "peer_instruction")}
    if name == "long_context":
        info["instruction"] = f"<{spec['context_tokens']} tokens of BBC articles>\n" + spec["instruction"].rsplit("\n", 1)[-1]
    info["rows"] = len(spec["rows"])
    result = WorkloadResult(name, info, limits)
    for c in skipped:
        result.failed[c] = "not run on this workload (see the notes)"
    tmp = workdir(name)
    server: VLLMServer | None = None
    workers: dict[str, Worker] = {}
    try:
        if any(CONTENDERS[c][2] for c in contenders):
            server = VLLMServer(spec["model"], spec["vllm"], tmp)
            log(f"{name}: starting vllm serve on {server.url}")
            result.startup_s["vllm serve"] = server.start()
            spec["server"] = {"url": server.url, "model": server.names[0], "alias": server.names[1]}
        for c in contenders:
            script, peer, _ = CONTENDERS[c]
            python = None
            if peer is not None:
                python = peer_python(peer)
                if python is None:
                    result.failed[c] = f"not installed: run `bash benchmarks/setup_peers.sh {peer}`"
                    continue
            w = Worker(c, script, _worker_spec(c, spec, tmp), tmp, python=python)
            log(f"{name}: starting {c}")
            try:
                result.startup_s[c] = w.start()["startup_s"]
                # Warm-up: first-call costs out of the timings. The rerun contender first runs the
                # whole workload once, so every timed run is a rerun answered by the exact cache.
                w.run(rows=None if c == "semframe_rerun_exact_cache" else min(8, len(spec["rows"])))
            except WorkerError as exc:
                result.failed[c] = str(exc).splitlines()[0][:300]
                log(f"{name}: {c} failed: {exc}")
                w.stop()
                continue
            workers[c] = w
        active = list(workers)
        for r in range(repeats):
            order = active[r % len(active):] + active[: r % len(active)] if active else []
            for c in order:
                uses_server = CONTENDERS[c][2]
                if uses_server:
                    server.reset_prefix_cache()
                    before = server.counters()
                try:
                    res = workers[c].run()
                except WorkerError as exc:
                    result.failed[c] = str(exc).splitlines()[0][:300]
                    log(f"{name}: {c} failed: {exc}")
                    active.remove(c)
                    continue
                if uses_server:
                    after = server.counters()
                    res["server"] = {k: after[k] - before[k] for k in after}
                res["repeat"] = r
                result.runs.setdefault(c, []).append(res)
                log(f"{name} #{r + 1}: {c:>24} {res['wall_s']:7.2f} s")
        if server is not None:
            result.server_rss_mib = server.rss_mib()
    finally:
        for w in workers.values():
            w.stop()
        if server is not None:
            server.stop()
        cleanup(tmp)
    return result


# ---------------------------------------------------------------------------------------- summary


def _norm(answer: Any, classify: bool) -> str:
    text = "" if answer is None else str(answer).strip()
    return text.upper().strip(".!") if classify else text


def agreement(reference: list | None, answers: list | None, classify: bool) -> float | None:
    """The share of rows whose answer equals the reference's (labels case-insensitively)."""
    if not reference or not answers or len(reference) != len(answers):
        return None
    return sum(_norm(a, classify) == _norm(b, classify) for a, b in zip(reference, answers)) / len(reference)


def strip_answers(result: WorkloadResult) -> dict[str, Any]:
    """The result as plain data, each run's answers replaced by its agreement with raw vLLM."""
    from dataclasses import asdict

    data = asdict(result)
    classify = result.spec_info["kind"] == "classify"
    raw = result.runs.get("raw_vllm", [{}])[0].get("answers")
    for runs in data["runs"].values():
        for run in runs:
            answers = run.pop("answers", None)
            if run.get("agreement_with_raw") is None:
                run["agreement_with_raw"] = agreement(raw, answers, classify)
    return data


def summarize(result: WorkloadResult) -> list[dict[str, Any]]:
    """One row per contender: medians over repetitions, ratios within a repetition."""
    classify = result.spec_info["kind"] == "classify"
    raw_by_repeat = {r["repeat"]: r for r in result.runs.get("raw_vllm", [])}
    sf_by_repeat = {r["repeat"]: r for r in result.runs.get("semframe", [])}
    raw_answers = next(iter(raw_by_repeat.values()), {}).get("answers")
    minimum = result.limits["minimum_prompt_tokens"]
    rows = []
    for c, runs in result.runs.items():
        walls = [r["wall_s"] for r in runs]
        wall = median(walls)
        n = runs[0]["rows"]
        last = runs[-1]
        tokens_from = "server" if "server" in last else "engine"
        src = last["server"] if "server" in last else last
        prompt = src.get("prompt_tokens")
        cached = src.get("cached_prompt_tokens")
        output = src.get("output_tokens")
        requests = src.get("requests", last.get("engine_requests"))
        computed = None if prompt is None else prompt - (cached or 0)
        spreads = [percentile(r["latencies_s"], 90) - percentile(r["latencies_s"], 10)
                   for r in runs if r.get("latencies_s")]
        vs_raw = [r["wall_s"] / raw_by_repeat[r["repeat"]]["wall_s"] for r in runs if r["repeat"] in raw_by_repeat]
        vs_sf = [r["wall_s"] / sf_by_repeat[r["repeat"]]["wall_s"] for r in runs if r["repeat"] in sf_by_repeat]
        agree = agreement(raw_answers, last.get("answers"), classify)
        if agree is None:
            agree = last.get("agreement_with_raw")  # saved results keep the share, not the answers
        rows.append({
            "contender": c,
            "version": last.get("version"),
            "repeats": len(runs),
            "wall_s": wall,
            "wall_min_s": min(walls),
            "wall_max_s": max(walls),
            "rows_per_s": n / wall,
            "prompt_tok_per_s": None if prompt is None else prompt / wall,
            "output_tok_per_s": None if output is None else output / wall,
            "latency_p90_p10_s": median(spreads) if spreads else None,
            "engine_requests": None if requests is None else int(requests),
            "engine_calls": last.get("engine_calls"),
            "prompt_tokens": None if prompt is None else int(prompt),
            "cached_prompt_tokens": None if cached is None else int(cached),
            "computed_prompt_tokens": None if computed is None else int(computed),
            "computed_over_minimum": None if computed is None else computed / minimum,
            "output_tokens": None if output is None else int(output),
            "tokens_from": tokens_from,
            "vs_raw_vllm": median(vs_raw) if vs_raw else None,
            "vs_semframe": median(vs_sf) if vs_sf else None,
            "agreement_with_raw": agree,
            "peak_rss_mib": max(r.get("peak_rss_mib", 0) for r in runs),
            "startup_s": result.startup_s.get(c),
            "dedup_hits": last.get("dedup_hits"),
            "semantic_cache_hits": last.get("semantic_cache_hits"),
            "cost_usd": last.get("cost_usd"),
        })
    return rows
