#!/usr/bin/env bash
# Run every benchmark at full size, writing Markdown + JSON + PNG into benchmarks/results/,
# then render the README tables from them (publish.py).
#
#   bash benchmarks/run_all.sh RUN_DIR [flags passed to every script, e.g. --threads 1]
#
# RUN_DIR is a `bld demo --out RUN_DIR` folder (prior/, autoencoder/, classifier/). Its FD
# classifier is used by every script, so all FD figures share one feature space. Add
# --quick for a smoke test of every script (output in benchmarks/results/quick/).
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash benchmarks/run_all.sh RUN_DIR [--quick] [--threads N]" >&2
    echo "RUN_DIR: a folder made by 'bld demo --out RUN_DIR'" >&2
    exit 2
fi
RUN_DIR=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLF=()
if [ -f "$RUN_DIR/classifier/config.json" ]; then
    CLF=(--classifier "$RUN_DIR/classifier")
fi

start=$(date +%s)
run() {
    echo "=== $* ==="
    local t0
    t0=$(date +%s)
    python "$@"
    echo "=== $1 took $(( $(date +%s) - t0 )) s ==="
}
run "$HERE/steps.py" --run "$RUN_DIR" "${CLF[@]}" "$@"
run "$HERE/guidance.py" --runs "$RUN_DIR" "${CLF[@]}" "$@"
run "$HERE/gaussian_baseline.py" "${CLF[@]}" "$@"
run "$HERE/tokenizers.py" "${CLF[@]}" "$@"
run "$HERE/speed.py" "$@"
run "$HERE/storage.py" --run "$RUN_DIR" "$@"
run "$HERE/large_runs.py" "$@"
run "$HERE/serve_load.py" "$@"
case " $* " in
    *" --quick "*) ;;  # quick figures mean nothing: leave the READMEs alone
    *) run "$HERE/publish.py" --run "$RUN_DIR" ;;
esac
echo "all benchmarks done in $(( ($(date +%s) - start) / 60 )) min"
