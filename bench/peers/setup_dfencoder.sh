#!/usr/bin/env bash
# Sets up the Python reference peer `dfencoder` 0.0.42 (the autoencoder library that NVIDIA
# Morpheus forked for DFP) in a virtual environment, for bench/peers/dfencoder_peer.py.
#
#   bash bench/peers/setup_dfencoder.sh [VENV_DIR]     (default: target/peers/dfencoder-venv)
#
# Idempotent: when VENV_DIR already holds exactly these pins (a stamp file records them, written
# only after an import check passed) and the modules are still there, it does nothing (~0.03 s). Never part of the default test
# run; needs PyPI (pip's ordinary client) the first time. Python: $PYTHON, else `python3` (3.11).
#
# Pins, and why (checked on Debian bookworm, CPython 3.11.7, x86-64, CPU only):
#   dfencoder==0.0.42     the version Morpheus forked (Aug 2022). It imports torch, numpy, pandas,
#                         tqdm, dill and scikit-learn (scalers.py); its declared matplotlib and
#                         tensorboardX are only imported by the optional notebook/tensorboard
#                         loggers, so they are NOT installed (everything goes in with --no-deps
#                         from the fully pinned closure below: no resolver surprises).
#   torch==1.13.1         the torch closest to dfencoder's era that has CPython 3.11 wheels. PyPI has NO CPU-only torch wheel for Linux x86-64: every
#                         version pulls CUDA libraries, and `torch --no-deps` does not import
#                         (torch/__init__.py preloads libcublas/libcudnn from the nvidia-* wheels
#                         and fails without them). 1.13.1 needs only 4 nvidia-*-cu11 wheels
#                         (~1.95 GB downloaded in all) where torch 2.x needs ~14 of them plus
#                         triton (~2.9 GB+). The CUDA libraries are never used here (CPU).
#                         (Debian's python3-torch 1.13.1 is CPU-only, but it is ~200 system
#                         packages for /usr/bin/python3 only: not used.)
#   nvidia-*-cu11         exactly the versions torch 1.13.1 requires.
#   numpy==1.24.4         torch 1.13.1 is built against numpy 1.x; numpy 2 breaks its C ABI.
#   pandas==1.5.3         the last 1.x, the newest pandas of dfencoder's era with 3.11 wheels
#                         (dfencoder subclasses DataFrame and relies on Categorical.fillna; pandas
#                         2 and 3 postdate it and were not used by it).
#   scikit-learn==1.2.2, scipy==1.10.1, joblib==1.2.0, threadpoolctl==3.1.0: era-matched,
#                         numpy-1.24-compatible (scikit-learn also gives roc_auc_score).
#   python-dateutil==2.8.2, six==1.16.0, pytz==2023.3, tqdm==4.65.0, dill==0.3.6,
#   typing_extensions==4.5.0: era-matched small pure-Python deps (left to itself pip would pick
#                         python-dateutil 4.x, which pandas 1.5.3 predates).
# The torch wheel set is large (~3.5 GB installed, ~2 GB downloaded, ~100 s on a fresh machine):
# that is the price of torch from PyPI.
set -euo pipefail

VENV="${1:-$(cd "$(dirname "$0")/../.." && pwd)/target/peers/dfencoder-venv}"
PY="${PYTHON:-python3}"

PINS="dfencoder==0.0.42
torch==1.13.1
nvidia-cublas-cu11==11.10.3.66
nvidia-cuda-nvrtc-cu11==11.7.99
nvidia-cuda-runtime-cu11==11.7.99
nvidia-cudnn-cu11==8.5.0.96
typing_extensions==4.5.0
numpy==1.24.4
pandas==1.5.3
python-dateutil==2.8.2
six==1.16.0
pytz==2023.3
scikit-learn==1.2.2
scipy==1.10.1
joblib==1.2.0
threadpoolctl==3.1.0
tqdm==4.65.0
dill==0.3.6"

STAMP="$VENV/.dfencoder-pins"
CHECK='import dfencoder, torch, numpy, pandas, sklearn, sklearn.metrics; assert dfencoder.AutoEncoder'
# The fast path only locates the modules (no import: importing torch takes seconds).
FIND='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("dfencoder", "torch", "numpy", "pandas", "sklearn")))'

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]] && "$VENV/bin/python" -c "$FIND" 2>/dev/null; then
    echo "dfencoder venv up to date: $VENV"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
fi
req="$(mktemp)"
trap 'rm -f "$req"' EXIT
printf '%s\n' "$PINS" >"$req"
# --no-deps: the list above is the whole closure we need, each pinned exactly.
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    --only-binary=:all: --no-deps -r "$req"
"$VENV/bin/python" -c "$CHECK"
printf '%s' "$PINS" >"$STAMP"
echo "dfencoder venv ready: $VENV ($(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1))"
