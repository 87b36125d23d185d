"""The tiny protocol between the benchmark driver and its contender workers (standard library only).

Every contender runs in its own process (its own engine, memory and threads; the peers even in
their own virtual environments, without semframe installed), started once per workload and then
asked to run the workload several times, alternating with the other contenders:

    worker <spec.json> <result fd>

The worker reads the workload spec, starts its engine or client, writes one JSON line
``{"ready": true, "startup_s": ...}`` to the result fd, then for each JSON line on stdin
(``{"op": "run", "rows": n}`` or ``{"op": "quit"}``) writes one JSON line of results. Results go
to their own file descriptor because vLLM and the peers print freely to stdout and stderr.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` (reset by exec); ``ru_maxrss`` would carry over the parent's peak from
    before the fork.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(setup: Callable[[dict[str, Any]], Any], run: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> None:
    """Run a worker: ``setup(spec) -> state`` once, then ``run(state, command) -> result`` per command."""
    spec_path, fd = sys.argv[1], int(sys.argv[2])
    out = os.fdopen(fd, "w", buffering=1)

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    start = time.perf_counter()
    try:
        state = setup(spec)
    except Exception as exc:  # report why, then stop
        reply({"ready": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return
    reply({"ready": True, "startup_s": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        try:
            result = run(state, cmd)
            result.setdefault("peak_rss_mib", peak_rss_mib())
            reply({"ok": True, **result})
        except Exception as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    close = getattr(state, "close", None)
    if callable(close):
        close()


def rows_for(spec: dict[str, Any], cmd: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a command asks for: the spec's rows, or their first ``cmd["rows"]`` (warm-up)."""
    rows = spec["rows"]
    n = cmd.get("rows")
    return rows if n is None else rows[:n]
