#!/usr/bin/env bash
# Every benchmark, side by side with its peer in the same run, then bench/RESULTS.md (tables,
# the machine, versions and the exact commands) and the JSON reports beside it in
# bench/results/. Not part of the test run; the Python peers get their venvs under
# target/peers/ on first use (dfencoder + torch: ~3.5 GB, Pathway: ~0.5 GB), and the streaming
# row needs the tansu broker (`bash .ci/run` installs it).
#
#   bash bench/run.sh            # everything (about 20 minutes on 2 cores, warm venvs)
#   QUICK=1 bash bench/run.sh    # smaller sizes, to check the suite itself (a few minutes)
#
# Rows: 1 ingest vs the JSON-parse limit; 2 per-user rolling aggregates vs Pathway; 3 the model
# vs dfencoder (and the GEMM peak); 4 end to end, 1 and 2 workers, Morpheus' published times for
# reference; 5 streaming; 6 how cost grows with users and history; 7 detection quality; 8 drift;
# 9 dfp serve on NATS; GPU
# figures when bench/gpu.sh has run on a GPU machine (target/bench/gpu-summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export DFP_BENCH_DIR=${DFP_BENCH_DIR:-$PWD/target/bench}
mkdir -p "$DFP_BENCH_DIR"
log() { printf '\n==> %s\n' "$*" >&2; }
q=${QUICK:-0}
big() { if [ "$q" = 1 ]; then echo "$1"; else echo "$2"; fi; }

cargo build --release -p dfp-bench --bins
# dfp serve's row runs the dfp binary.
cargo build --release -p dfp-jobs
bin=target/release
commands=()
step() {
  log "$*"
  commands+=("$*")
  "$@" > /dev/null
}

step $bin/ingest --users "$(big 50 200)" --days 30
step $bin/windows --users "$(big 100 1000)"
step $bin/model --reps "$(big 2 5)"
step $bin/parity --source azure --users "$(big 8 20)" --epochs "$(big 5 30)"
step $bin/parity --source duo --users "$(big 8 20)" --epochs "$(big 5 30)"
step $bin/e2e --users 200 --workers 1,2
step $bin/drift
step $bin/stream --users "$(big 50 100)"
step $bin/serve --users "$(big 50 100)" --seconds "$(big 5 10)"
# Detection quality: every config, both sources, tuned and held-out seeds, with and without
# the generator's benign novelty.
step $bin/quality --users "$(big 40 100)"
mv "$DFP_BENCH_DIR/quality.json" "$DFP_BENCH_DIR/quality-novelty.json"
step $bin/quality --users "$(big 40 100)" --novelty off --configs configs/dfp.toml,configs/calibrated.toml
mv "$DFP_BENCH_DIR/quality.json" "$DFP_BENCH_DIR/quality-stable.json"
# Scaling: 10x and 100x the users at 30 days, and 15/30/60 days of history at 200 users; each
# in its own report directory.
for users in 20 200 $(big 600 2000); do
  DFP_BENCH_DIR=$DFP_BENCH_DIR/scaling/users-$users step $bin/e2e --users "$users" --workers 1
done
for days in 15 60; do
  DFP_BENCH_DIR=$DFP_BENCH_DIR/scaling/days-$days \
    step $bin/e2e --users 200 --days "$days" --train-days $((days - 5)) --workers 1
done

log "writing bench/RESULTS.md"
printf '%s\n' "${commands[@]}" > "$DFP_BENCH_DIR/commands.txt"
python3 bench/report.py "$DFP_BENCH_DIR" bench
