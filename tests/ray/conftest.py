"""A local Ray cluster for the Ray executor's tests: loopback only, files in a temp dir.

Started once per test session (``ray.init`` takes ~3-10 s here) by the first test that asks for
``ray_cluster`` and shut down at the end. This folder has no ``__init__.py`` on purpose: with one,
pytest would import it as a package named ``ray`` and hide the real one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Read when ray is imported: without it the cluster binds every interface (../shared/DESIGN.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_cluster() -> Path:
    """The session's local Ray cluster (2 CPUs: one per actor); yields its temp dir.

    A short path under /tmp: Ray's Unix sockets live in it (107 characters at most).
    """
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "semframe[ray]")')
    temp = Path(tempfile.mkdtemp(prefix="sf-ray-"))
    if ray.is_initialized():  # pragma: no cover - someone else's cluster: not ours to check
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip("ray is already initialized in this process")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), configure_logging=False,
             log_to_driver=False)
    try:
        yield temp
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
