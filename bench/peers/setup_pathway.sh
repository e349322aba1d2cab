#!/usr/bin/env bash
# Sets up the Python peer Pathway (PyPI `pathway`, a streaming engine on differential dataflow)
# in a virtual environment for bench/peers/pathway_windows.py.
#
#   bash bench/peers/setup_pathway.sh [VENV_DIR]     (default: target/peers/pathway-venv)
#
# Idempotent: a stamp file records the pin after an import check passed; a warm run does
# nothing. Never part of the default test run; needs PyPI the first time. Python: $PYTHON, else
# python3 (3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-target/peers/pathway-venv}
pin="pathway==${PATHWAY_VERSION:-0.33.0}"
stamp="$venv/.dfp-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pin" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q "$pin"
"$venv/bin/python" -c 'import pathway'
echo "$pin" > "$stamp"
echo "Pathway venv ready: $venv ($pin)" >&2
