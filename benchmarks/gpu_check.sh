#!/usr/bin/env bash
# The GPU check: training throughput and MFU (single + torch.compile, FSDP2, ZeRO-2), generation with the
# KV cache, and the activation-memory estimate against the measured peak, on one GPU. See
# benchmarks/gpu_check.py for what each part runs; docs/distributed.md ("Checking on a GPU") for its output.
#
#   bash benchmarks/gpu_check.sh --out gpu_check.json                        # one GPU (at most ~8 minutes)
#   bash benchmarks/gpu_check.sh --dry-run --no-compile --out dry_run.json   # every part on the CPU, tiny
#
# PYTHON selects the interpreter (default: python on PATH, e.g. the project's activated .venv).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$repo/benchmarks/gpu_check.py" "$@"
