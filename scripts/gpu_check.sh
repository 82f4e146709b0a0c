#!/usr/bin/env bash
# make gpu-check: the checks that need a CUDA device (python -m guiding_nc.gpu_check; its docstring
# lists the stages). Needs no virtual environment: PYTHON if set, else .venv/bin/python if it
# imports torch, else python3; src/ goes on PYTHONPATH. Arguments pass through (--dry-run,
# --only, --seeds, --budget-s, --archive ...). Refuses in one line without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m guiding_nc.gpu_check "$@"
