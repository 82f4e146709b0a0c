#!/usr/bin/env bash
# The nearest-ETF closed form of this checkout against an older commit on one thread: both
# packages imported in one process and timed call by call, back to back in alternating order, so
# the machine's load drifts out of the ratios (python -m guiding_nc.bench paired); then the full
# table of this checkout (trust-region and memory included).
#
#   bash scripts/bench_etf_against.sh OLD_COMMIT [CALLS]      (FULL=0: the comparison only)
#
# Writes data/bench/etf_cpu_vs_<old>.json (the paired ratios) and data/bench/etf_cpu.json (the full
# table). Needs the virtual environment (make env).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bash scripts/bench_etf_against.sh OLD_COMMIT [CALLS]}
calls=${2:-30}
py=${PYTHON:-.venv/bin/python}
short=$(git rev-parse --short "$old^{commit}") || { echo "error: $old is not a commit of this repository" >&2; exit 2; }
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git worktree add --detach --quiet "$tree" "$short"
echo "=== this checkout against $short, paired calls"
OMP_NUM_THREADS=1 PYTHONPATH=src "$py" -m guiding_nc.bench paired --other-src "$tree/src" --calls "$calls" --threads 1 \
  --out "data/bench/etf_cpu_vs_${short}.json"
[ "${FULL:-1}" = 0 ] && exit 0
echo "=== the full table of this checkout"
OMP_NUM_THREADS=1 PYTHONPATH=src "$py" -m guiding_nc.bench etf --threads 1 --repeats 5 --tr-repeats 3 --tr-cap-s 120 \
  --out data/bench/etf_cpu.json
