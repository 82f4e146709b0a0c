#!/usr/bin/env bash
# The nearest-ETF closed form of this checkout against an older commit, measured alternately in one
# session on one thread (old, new, old, new: the machine's load drifts, so only interleaved ratios
# are compared), then the full table of this checkout (trust-region and memory included).
#
#   bash scripts/bench_etf_against.sh OLD_COMMIT [ROUNDS]      (FULL=0: the comparison only)
#
# Writes data/bench/etf_cpu.json (the full table), data/bench/etf_cpu_vs_<old>.json (the ratios)
# and keeps the per-round tables in runs/bench/. Needs the virtual environment (make env).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bash scripts/bench_etf_against.sh OLD_COMMIT [ROUNDS]}
rounds=${2:-2}
py=${PYTHON:-.venv/bin/python}
short=$(git rev-parse --short "$old^{commit}") || { echo "error: $old is not a commit of this repository" >&2; exit 2; }
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git worktree add --detach --quiet "$tree" "$short"
mkdir -p runs/bench
# Flags both sides know (older code has no --no-trust-region): the trust-region reference capped
# at 2 s, no peak-memory subprocesses; only the closed-form columns are compared.
args=(etf --threads 1 --repeats 5 --tr-repeats 1 --tr-cap-s 2 --no-memory)
olds=() news=()
for i in $(seq 1 "$rounds"); do
  echo "=== round $i/$rounds: $short"
  OMP_NUM_THREADS=1 PYTHONPATH="$tree/src" "$py" -m guiding_nc.bench "${args[@]}" --out "runs/bench/etf_old_${short}_$i.json"
  olds+=("runs/bench/etf_old_${short}_$i.json")
  echo "=== round $i/$rounds: this checkout"
  OMP_NUM_THREADS=1 PYTHONPATH=src "$py" -m guiding_nc.bench "${args[@]}" --out "runs/bench/etf_new_$i.json"
  news+=("runs/bench/etf_new_$i.json")
done
PYTHONPATH=src "$py" -m guiding_nc.bench compare --old "${olds[@]}" --new "${news[@]}" --out "data/bench/etf_cpu_vs_${short}.json"
[ "${FULL:-1}" = 0 ] && exit 0
echo "=== the full table of this checkout"
OMP_NUM_THREADS=1 PYTHONPATH=src "$py" -m guiding_nc.bench etf --threads 1 --repeats 5 --tr-repeats 3 --tr-cap-s 120 \
  --out data/bench/etf_cpu.json
