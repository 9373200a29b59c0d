#!/usr/bin/env bash
# The prepared device check (bench/gpu_check.py): on a lent GPU machine, from a fresh copy of
# this repo with a CUDA build of torch installed (no internet needed), in under 8 minutes:
#   scripts/gpu_check.sh [OUT]        (OUT defaults to $OUT, else ./gpu_check_out)
# Records: OUT/consistency.json, OUT/bench.jsonl, OUT/paper_meta_train/, OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
shift || true
# hard stop before 8 minutes whatever a step does (each step also has its own timeout)
exec timeout 475 python bench/gpu_check.py --out "$out" "$@"
