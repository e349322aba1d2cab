#!/usr/bin/env bash
# Sets up the Python peer Evidently (PyPI `evidently`, ML data-drift statistics) in a virtual
# environment for bench/peers/evidently_drift.py.
#
#   bash bench/peers/setup_evidently.sh [VENV_DIR]     (default: target/peers/evidently-venv)
#
# Idempotent: a stamp file records the pins after an import check passed; a warm run does
# nothing. Never part of the default test run; needs PyPI the first time. Python: $PYTHON, else
# python3 (3.11). pandas is pinned below 3: evidently 0.7.23 fails to import under pandas 3
# (it imports pandas.core.dtypes.common.infer_dtype_from_object, removed there).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-target/peers/evidently-venv}
pins="evidently==${EVIDENTLY_VERSION:-0.7.23} pandas==2.3.3 scipy==1.17.1"
stamp="$venv/.dfp-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
# shellcheck disable=SC2086  # $pins is a space-separated list of requirements
"$venv/bin/pip" install -q $pins
"$venv/bin/python" -c 'import evidently.legacy.calculations.stattests, scipy.stats'
echo "$pins" > "$stamp"
echo "Evidently venv ready: $venv ($pins)" >&2
