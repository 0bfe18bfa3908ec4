#!/bin/sh
# The GPU run in one command (attncheck/bench/gpu.py): conformance of torch SDPA's CUDA backends, compiled
# FlexAttention and JAX on the GPU, and a GPU baseline of the quick benchmark grid, into one output folder.
#
#   scripts/gpu-run.sh [OUT_DIR] [--budget S] [--dry-run]
#
# For a CUDA machine that already has PyTorch, Triton and JAX and no network: attncheck is installed from this
# checkout with --no-deps --no-index --no-build-isolation (nothing downloaded; setuptools must be present), unless
# it is already importable. The whole run is held to its budget (default 480 s) by the driver, and killed 60 s
# after it by timeout(1) if a step does not stop.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-gpu-run-$(date -u +%Y%m%d-%H%M%S)}
[ $# -gt 0 ] && shift
PY=${PYTHON:-$(command -v python || command -v python3)}
if ! "$PY" -c "import attncheck" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation .
fi
exec timeout 540 "$PY" -m attncheck.bench.gpu --out "$OUT" "$@"
