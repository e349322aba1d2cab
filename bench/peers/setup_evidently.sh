#!/usr/bin/env bash
# Sets up the Python peer Evidently (PyPI `evidently`, ML data-drift statistics) in a virtual
# environment for bench/peers/evidently_drift.py.
#
#   bash bench/peers/setup_evidently.sh [VENV_DIR]     (default: target/peers/evidently-venv)
#
# Idempotent (bench/peers/venv.sh). Never part of the default test run; needs PyPI the first
# time. pandas is pinned below 3: evidently 0.7.23 fails to import under pandas 3 (it imports
# pandas.core.dtypes.common.infer_dtype_from_object, removed there).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/peers/venv.sh
peer_venv "${1:-target/peers/evidently-venv}" \
  "evidently==${EVIDENTLY_VERSION:-0.7.23} pandas==2.3.3 scipy==1.17.1" \
  "evidently.legacy.calculations.stattests, scipy.stats"
