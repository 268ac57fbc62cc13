#!/usr/bin/env bash
# One command on a GPU machine: train the 256 px and 1024 px presets briefly with bf16 on CUDA
# and record steps/s, sampling images/s at 16 steps, peak memory and a sample grid.
#   bash benchmarks/gpu_check.sh                        # CUDA, <= 8 min on one H100; rerun resumes
#   bash benchmarks/gpu_check.sh --device cpu --tiny    # the same path at tiny sizes on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
for size in 256 1024; do
  case " $* " in *" --tiny "*) ;; *) python3 -m bld.app.cli prepare-openmoji --size "$size" ;; esac
done
exec python3 benchmarks/gpu_check.py "$@"
