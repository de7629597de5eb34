#!/usr/bin/env bash
# Create .venv (if missing) with the pinned versions in requirements-ci.txt and install
# denoiserep into it in editable mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and alone: pip then takes the CPU-capable wheel without resolving extras.
.venv/bin/python -m pip install -q "$(grep '^torch==' requirements-ci.txt)" \
    "$(grep '^torchvision==' requirements-ci.txt)"
.venv/bin/python -m pip install -q -r requirements-ci.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -c "import denoiserep, torch; print('denoiserep', denoiserep.__version__, 'torch', torch.__version__)"
