#!/usr/bin/env bash
# Install the peer libraries the benchmarks compare against, each in its own venv under
# .venv-bench/ (git-ignored), never in the project's .venv: their dependencies would move
# torch / transformers / vllm.
#
#   bash benchmarks/setup_peers.sh          # both peers
#   bash benchmarks/setup_peers.sh lotus    # one of them
#
# LOTUS (lotus-ai) pulls torch through sentence-transformers: constrained to torch==2.13.0 (the
# CPU wheel here), else pip resolves the CUDA wheels (several GB). fenic needs tqdm and httpx
# beside it, and tiktoken's encoding files, which it would download at run time: they are taken
# from the PyPI package bpe-openai (byte-identical files, checked against tiktoken's hashes) into
# .venv-bench/tiktoken-cache (point TIKTOKEN_CACHE_DIR there). Both peers only talk HTTP to a
# local `vllm serve`, so neither needs vllm itself.
# Idempotent: a venv whose stamp matches this script is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
ROOT=.venv-bench
PEERS=("$@")
[ ${#PEERS[@]} -eq 0 ] && PEERS=(lotus fenic)
STAMP_ID=$(sha1sum benchmarks/setup_peers.sh | cut -c1-12)
mkdir -p "$ROOT"
CONSTRAINTS="$ROOT/constraints.txt"
printf 'torch==2.13.0\n' > "$CONSTRAINTS"

install_peer() {
  local name=$1; shift
  local venv="$ROOT/$name"
  if [ -f "$venv/.stamp-$STAMP_ID" ]; then
    echo "[peers] $venv is up to date"; return 0
  fi
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  local start=$(date +%s)
  echo "[peers] installing $* into $venv"
  local log="$ROOT/$name-install.log"
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip &&
         "$venv/bin/python" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"; } >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -20
    echo "[peers] pip failed for $name (full log: $log)"; exit 1
  fi
  rm -f "$venv"/.stamp-*
  touch "$venv/.stamp-$STAMP_ID"
  echo "[peers] $name done in $(( $(date +%s) - start )) s"
}

for peer in "${PEERS[@]}"; do
  case "$peer" in
    lotus) install_peer lotus "lotus-ai==1.2.4" ;;
    fenic)
      install_peer fenic "fenic==0.13.0" tqdm httpx bpe-openai
      # tiktoken looks a file up in its cache dir under sha1(url) and checks its sha256.
      "$ROOT/fenic/bin/python" - "$ROOT/tiktoken-cache" <<'PY'
import gzip, hashlib, importlib.util, pathlib, sys
from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS  # noqa: F401 (the URLs and hashes live there)
import tiktoken_ext.openai_public as pub, inspect, re
src = inspect.getsource(pub)
data = pathlib.Path(importlib.util.find_spec("bpe_openai").submodule_search_locations[0]) / "data"
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for name in ("cl100k_base", "o200k_base"):
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    want = re.search(re.escape(url) + r'",\s*expected_hash="([0-9a-f]+)"', src).group(1)
    blob = gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes())
    assert hashlib.sha256(blob).hexdigest() == want, f"{name}: bpe-openai's file differs from tiktoken's"
    (out / hashlib.sha1(url.encode()).hexdigest()).write_bytes(blob)
print(f"[peers] tiktoken cache ready in {out}")
PY
      ;;
    *) echo "unknown peer '$peer' (lotus, fenic)"; exit 2 ;;
  esac
done
