"""An S3 server on loopback for tests: moto's server in a child process.

In a child process, not in the test process (moto's ``ThreadedMotoServer``): moto's server is a
Flask app, and with Flask imported, vLLM's start-up in the same pytest process failed ("Working
outside of application context": something that walks the loaded modules touched Flask's
request proxies). A child keeps Flask out of the tests' process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest


def require_moto() -> None:
    """Skip the calling test (or module) when moto's server is not installed."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip('moto[server] is not installed (pip install "moto[server]>=5")', allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(timeout: float = 60.0) -> Iterator[str]:
    """``host:port`` of a fresh moto S3 server on 127.0.0.1, stopped on exit."""
    require_moto()
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto's S3 server exited at start (code {proc.returncode})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not listen on 127.0.0.1:{port} in {timeout:.0f} s")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
