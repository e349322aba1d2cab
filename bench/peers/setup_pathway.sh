#!/usr/bin/env bash
# Sets up the Python peer Pathway (PyPI `pathway`, a streaming engine on differential dataflow)
# in a virtual environment for bench/peers/pathway_windows.py.
#
#   bash bench/peers/setup_pathway.sh [VENV_DIR]     (default: target/peers/pathway-venv)
#
# Idempotent (bench/peers/venv.sh). Never part of the default test run; needs PyPI the first
# time. Python: $PYTHON, else python3 (3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/peers/venv.sh
peer_venv "${1:-target/peers/pathway-venv}" "pathway==${PATHWAY_VERSION:-0.33.0}" pathway
