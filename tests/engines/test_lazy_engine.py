"""VLLMEngine starts nothing until it must: the fingerprint, sharing one vLLM, quiet start-up.

The first part needs vllm installed (a VLLMEngine checks for it) but never starts it: the
fingerprint is computed from a model folder (a fake one will do), the options and the installed
packages' metadata. The second part (marked ``vllm``) starts the tiny random-weight model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semframe.engines.base import Message, Request
from semframe.errors import EngineError
from semframe.plan.spec import ChoiceSpec

needs_vllm_installed = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                          reason='vLLM is not installed (pip install "semframe[cpu]")')
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"


def fake_model(folder: Path, *, weights: bytes = b"\x01" * 100_000, config: dict | None = None,
               template: str | None = TEMPLATE) -> Path:
    """A folder with the files the fingerprint reads (vLLM could not load it, and never does here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "llama", "hidden_size": 64,
                                                                "torch_dtype": "bfloat16"}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    tok_config = {"eos_token": "<|end|>"}
    if template is not None:
        tok_config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return fake_model(tmp_path / "m" / "my-model")


def engine(folder: Path, **options):
    from semframe.engines.vllm import VLLMEngine

    return VLLMEngine(str(folder), **options)


def fp(folder: Path, **options) -> str:
    e = engine(folder, **options)
    try:
        return e.fingerprint()
    finally:
        e.close()


# -- no vLLM needed ----------------------------------------------------------------------------------


@needs_vllm_installed
def test_creating_an_engine_and_its_fingerprint_import_no_vllm(model_dir):
    code = f"""
import sys, semframe as sf
e = sf.VLLMEngine({str(model_dir)!r})
print(e.fingerprint(), e.started, e.device, e.model_name)
print(sorted(m for m in ("vllm", "torch", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    first, second = out.stdout.splitlines()
    fingerprint, started, device, name = first.split()
    assert len(fingerprint) == 64 and started == "False" and device == "cpu" and name == "my-model"
    assert second == "[]"
    assert out.stderr == ""


@needs_vllm_installed
def test_the_fingerprint_is_the_same_in_another_process(model_dir):
    code = f"import semframe as sf; print(sf.VLLMEngine({str(model_dir)!r}, seed=3).fingerprint())"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           check=True).stdout.strip() for _ in range(2)}
    assert runs == {fp(model_dir, seed=3)}


@needs_vllm_installed
@pytest.mark.parametrize("options", [
    {"dtype": "float32"},
    {"max_model_len": 512},
    {"seed": 1},
    {"structured_outputs_backend": "xgrammar"},
    {"truncate_prompt": True},
    {"chat_template": "{{ messages[0].content }}"},
    {"choice_decoding": "grammar"},
    {"quantization": "fp8"},
    {"revision": "v2"},
    {"hf_overrides": {"rope_theta": 1.0}},
    {"kv_cache_dtype": "fp8"},
    {"tokenizer_mode": "slow"},
    {"kv_cache_memory_bytes": 2 << 30},  # sizes the context vLLM fits when max_model_len is not given
    {"block_size": 64},
])
def test_every_option_that_can_change_an_answer_changes_the_fingerprint(model_dir, options):
    assert fp(model_dir, **options) != fp(model_dir)


@needs_vllm_installed
@pytest.mark.parametrize("options", [
    {"max_num_seqs": 8},
    {"enforce_eager": False},
    {"enable_prefix_caching": False},
    {"multiprocess": True},
    {"quiet": False},
])
def test_options_that_cannot_change_an_answer_keep_it(model_dir, options):
    assert fp(model_dir, **options) == fp(model_dir)


@needs_vllm_installed
def test_kv_cache_size_does_not_matter_once_the_context_is_given(model_dir):
    assert fp(model_dir, max_model_len=512) == fp(model_dir, max_model_len=512, kv_cache_memory_bytes=2 << 30)


@needs_vllm_installed
@pytest.mark.parametrize("change", ["config", "tokenizer", "template", "weights", "name"])
def test_the_model_folders_contents_change_the_fingerprint(tmp_path, model_dir, change):
    other = tmp_path / "other" / "my-model"
    shutil.copytree(model_dir, other)
    assert fp(other) == fp(model_dir)  # the same model elsewhere: the same fingerprint
    if change == "config":
        (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 128}))
    elif change == "tokenizer":
        (other / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    elif change == "template":
        (other / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE + " "}))
    elif change == "weights":
        (other / "model.safetensors").write_bytes(b"\x01" * 50_000 + b"\x02" + b"\x01" * 49_999)
    else:
        other = other.rename(other.with_name("my-model-v2"))
    assert fp(other) != fp(model_dir)


@needs_vllm_installed
@pytest.mark.parametrize("fact", ["vllm", "torch", "transformers", "machine", "device"])
def test_the_installed_runtime_changes_the_fingerprint(model_dir, monkeypatch, fact):
    from semframe.engines import vllm as mod

    before = fp(model_dir)
    real = mod._runtime()
    facts, device = dict(real.facts), real.device
    if fact == "device":
        device = "cuda"
    else:
        facts[fact] = f"{facts[fact]}-other"
    monkeypatch.setattr(mod, "_runtime", lambda: mod._Runtime(facts, device))
    assert fp(model_dir) != before


@needs_vllm_installed
def test_a_model_folder_without_chat_template_is_refused_at_once(tmp_path):
    folder = fake_model(tmp_path / "base-model", template=None)
    with pytest.raises(EngineError, match="no chat template"):
        engine(folder)
    e = engine(folder, chat_template=TEMPLATE)  # with one given it is fine
    e.close()
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    engine(folder).close()


@needs_vllm_installed
def test_engines_with_the_same_options_share_one_core(model_dir):
    from semframe.engines import vllm as mod

    a = engine(model_dir, kv_cache_memory_bytes=32 << 20)
    b = engine(model_dir, kv_cache_memory_bytes=32 << 20, truncate_prompt=True)  # a per-engine option
    c = engine(model_dir, kv_cache_memory_bytes=64 << 20)
    try:
        assert a._core is b._core and a._core is not c._core
        assert a.fingerprint() != b.fingerprint()  # truncation changes answers, not the model
        core = a._core
        a.close()
        assert not core.shut and mod._cores.get(core.key) is core  # b still holds it
        assert not b.closed and a.closed
        del b  # garbage collected without close(): lets go too
        import gc

        gc.collect()
        assert core.shut and core.key not in mod._cores
        d = engine(model_dir, kv_cache_memory_bytes=32 << 20)  # a new one starts afresh
        assert d._core is not core
        d.close()
    finally:
        c.close()


def test_short_model_names():
    from semframe.engines.models import short_model_name

    assert short_model_name("/x/.cache/semframe/models/SmolLM2-135M-Instruct.Q4_1-8251de5504f5") == \
        "SmolLM2-135M-Instruct.Q4_1"
    assert short_model_name("/data/models/llama-3-8b-0123456789ab-extra") == "llama-3-8b-0123456789ab-extra"
    assert short_model_name("/data/my-model") == "my-model"
    assert short_model_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


def test_notices_follow_the_progress_setting(capsys, monkeypatch):
    from semframe import config
    from semframe.engines import quiet

    config.settings.progress = False
    quiet.notice("converting")
    assert capsys.readouterr().err == ""
    config.settings.progress = True
    quiet.notice("converting")
    assert capsys.readouterr().err == "semframe: converting\n"
    config.settings.progress = None  # by default: only on a terminal or in a notebook
    quiet.notice("converting")
    assert capsys.readouterr().err == ""


def test_engine_output_catches_python_c_and_warning_output(capfd, caplog):
    import ctypes
    import warnings

    from semframe.engines.quiet import engine_output

    with caplog.at_level("INFO", logger="semframe.engine"), engine_output(loud=False) as captured:
        print("to python stdout")
        print("to python stderr", file=sys.stderr)
        os.write(1, b"to fd 1\n")
        os.write(2, b"to fd 2\n")
        ctypes.CDLL(None).printf(b"from C printf\n")
        warnings.warn("a FutureWarning", FutureWarning)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = captured.text()
    for line in ("to python stdout", "to python stderr", "to fd 1", "to fd 2", "from C printf", "a FutureWarning"):
        assert line in text
        assert any(line in r.getMessage() for r in caplog.records if r.name == "semframe.engine")
    print("after")  # everything is back
    os.write(2, b"fd 2 after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == "fd 2 after\n"
    with engine_output(loud=True):
        print("loud")
    assert capfd.readouterr().out == "loud\n"


# -- on vLLM (the tiny model) --------------------------------------------------------------------------


def ask(text: str) -> Request:
    spec = ChoiceSpec(("YES", "NO"))
    return Request((Message("user", text),), spec, spec.default_max_tokens())


@pytest.mark.vllm
def test_the_same_engine_twice_starts_vllm_once(tiny_model_dir):
    pytest.importorskip("vllm")
    from semframe.engines.vllm import VLLMEngine

    options = dict(kv_cache_memory_bytes=32 << 20, max_model_len=256, max_num_seqs=7)
    first = VLLMEngine(str(tiny_model_dir), **options)
    assert not first.started
    fingerprint = first.fingerprint()
    tokens = first.count_tokens("The Battle of Waterloo")  # the folder's tokenizer: no vLLM
    prompt = first.render([Message("system", "Be brief."), Message("user", "hello <|im_end|>")])
    assert not first.started
    try:
        assert first.generate([ask("One?")])[0].ok
        core = first._core
        assert first.started and core.starts == 1
        # A notebook cell run again: a new VLLMEngine with the same options, the old one dropped.
        again = VLLMEngine(str(tiny_model_dir), **options)
        assert again._core is core and again._llm is first._llm
        assert again.generate([ask("Two?")])[0].ok
        assert core.starts == 1  # vLLM started once
        assert again.fingerprint() == fingerprint  # as computed before vLLM ran
        assert again.count_tokens("The Battle of Waterloo") == tokens  # vLLM's tokenizer agrees
        assert again.render([Message("system", "Be brief."), Message("user", "hello <|im_end|>")]) == prompt
        first.close()
        assert again.generate([ask("Three?")])[0].ok  # the shared vLLM is still up
        again.close()
        assert core.shut and core.llm is None
    finally:
        first.close()


QUIET_SCRIPT = """
import sys, polars as pl, semframe as sf
engine = sf.VLLMEngine({model!r}, kv_cache_memory_bytes=32 << 20, max_model_len=256)
out = pl.DataFrame({{"t": ["a", "b"]}}).semantic.classify("t", ["YES", "NO"], engine=engine, cache=False)
print("ROWS", out.height)
"""


@pytest.mark.vllm
@pytest.mark.parametrize("loud", [False, True])
def test_starting_vllm_prints_nothing_unless_asked(tiny_model_dir, loud):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_LOGGING", "VLLM_CONFIGURE"))}
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    if loud:
        env["SEMFRAME_ENGINE_LOGS"] = "1"
    else:
        env.pop("SEMFRAME_ENGINE_LOGS", None)
    out = subprocess.run([sys.executable, "-c", QUIET_SCRIPT.format(model=str(tiny_model_dir))],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "ROWS 2\n"  # vLLM never writes to stdout, loud or not
    if loud:
        assert "WARNING" in out.stderr or "INFO" in out.stderr  # vLLM's own lines are back
    else:
        assert out.stderr == ""


@pytest.mark.vllm
def test_progress_on_says_that_vllm_is_starting(tiny_model_dir):
    script = QUIET_SCRIPT.replace("import sys, polars as pl, semframe as sf",
                                  "import sys, polars as pl, semframe as sf\nsf.configure(progress=True)")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    env.pop("SEMFRAME_ENGINE_LOGS", None)
    out = subprocess.run([sys.executable, "-c", script.format(model=str(tiny_model_dir))],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "ROWS 2\n"
    assert "semframe: starting the local vLLM engine on tiny-llama" in out.stderr
    assert "semframe: vLLM engine ready in" in out.stderr
    assert "WARNING" not in out.stderr and "Warning" not in out.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_in_jupyter_only_semframes_own_lines_show(tiny_model_dir):
    """In a notebook: no vLLM/torch lines, no tqdm "IProgress" warning; semframe says it is starting."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os; os.environ['VLLM_ENABLE_V1_MULTIPROCESSING'] = '0'; os.environ['OMP_NUM_THREADS'] = '1'\n"
        "os.environ.pop('SEMFRAME_ENGINE_LOGS', None)\n"
        "import polars as pl, semframe as sf\n"
        f"engine = sf.VLLMEngine({str(tiny_model_dir)!r}, kv_cache_memory_bytes=32 << 20, max_model_len=256)\n"
        "out = pl.DataFrame({'t': ['a', 'b']}).semantic.classify('t', ['YES', 'NO'], engine=engine, cache=False)\n"
        "print('ROWS', out.height)"),
        nbformat.v4.new_code_cell(  # the cell run again: the same vLLM
            f"engine = sf.VLLMEngine({str(tiny_model_dir)!r}, kv_cache_memory_bytes=32 << 20, max_model_len=256)\n"
            "print('STARTS', engine._core.starts)")]
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    streams = [(o.name, o.text) for cell in nb.cells for o in cell.outputs if o.output_type == "stream"]
    stdout = "".join(text for name, text in streams if name == "stdout")
    stderr = [line for name, text in streams if name == "stderr" for line in text.splitlines() if line.strip()]
    assert stdout == "ROWS 2\nSTARTS 1\n"
    assert stderr and all(line.startswith("semframe: ") for line in stderr), stderr
    assert any("starting the local vLLM engine" in line for line in stderr)


def test_the_applications_logging_shows_each_line_once_during_a_capture():
    code = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from semframe.engines.quiet import engine_output, engine_logger, prepare_vllm_logging
prepare_vllm_logging(False)
with engine_output(loud=False):
    logging.getLogger("vllm.worker").warning("a vLLM warning")  # as vLLM logs while starting
    logging.getLogger("semframe").info("semframe says")
    os.write(2, b"a C++ line\\n")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines.count("INFO semframe.engine: vllm.worker: a vLLM warning") == 1, lines
    assert lines.count("INFO semframe: semframe says") == 1, lines
    assert lines.count("INFO semframe.engine: a C++ line") == 1, lines
    assert len(lines) == 3, lines
