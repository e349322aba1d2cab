#!/usr/bin/env bash
# The GPU checks of issue 6 in one command, on a machine with an NVIDIA GPU and its driver:
#   1. the backend conformance suite (engine/gpu/tests/backends.rs) and the per-kernel tests
#      (engine/gpu/src/kernel_tests.rs) with CUDA required;
#   2. dfp's GPU benchmark (bench/src/bin/gpu.rs) on CUDA: scoring rows/s, training
#      user-models/s (1,000 users x 1,000 rows x 30 epochs by default);
#   3. the PyTorch peer (bench/peers/torch_gpu.py) on the same GPU: one user at a time as
#      Morpheus trains, and all users stacked with bmm; scoring rows/s;
#   4. a summary with the ratios: target/bench/gpu-summary.json, printed.
#
#   bash bench/gpu.sh                 # build with cargo (if there is one) and run
#   bash bench/gpu.sh --kit           # only build the binaries into target/gpu-kit (to carry to
#                                     # a GPU machine without a Rust toolchain)
#
# On a machine without cargo the binaries come from target/gpu-kit. Sizes: USERS, ROWS, EPOCHS,
# SCORE_ROWS, ONE_USERS (users timed one at a time), environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=target/gpu-kit
out=${DFP_BENCH_DIR:-target/bench}
export DFP_BENCH_DIR=$out
mkdir -p "$out"

if command -v cargo >/dev/null; then
  cargo build --release -p dfp-bench --bin gpu
  # The test executables of dfp-gpu: the conformance suite and the crate's own tests (the
  # per-kernel tests among them).
  tests=$(cargo test --release -p dfp-gpu --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])')
  mkdir -p "$kit"
  # Stripped: ~14 MB each instead of ~130 MB with line tables (small enough to carry).
  strip -o "$kit/gpu" target/release/gpu
  strip -o "$kit/backends" "$(awk '$1 == "backends" {print $2}' <<<"$tests")"
  strip -o "$kit/kernels" "$(awk '$1 == "dfp_gpu" {print $2}' <<<"$tests")"
  if [ "${1:-}" = "--kit" ]; then
    ls -la "$kit"
    exit 0
  fi
fi
[ -x "$kit/gpu" ] || { echo "no $kit/gpu: run bash bench/gpu.sh --kit where cargo is" >&2; exit 1; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu-device.txt"

echo "==> conformance suite on every backend present, CUDA required"
DFP_REQUIRE_CUDA=1 "$kit/backends" --test-threads 1 2>&1 | tee "$out/gpu-conformance.txt"
echo "==> each kernel alone on CUDA against an f64 reference"
DFP_REQUIRE_CUDA=1 "$kit/kernels" --test-threads 1 kernel_tests::on_cuda 2>&1 | tee "$out/gpu-kernels.txt"

USERS=${USERS:-1000} ROWS=${ROWS:-1000} EPOCHS=${EPOCHS:-30} SCORE_ROWS=${SCORE_ROWS:-4000000}
ONE_USERS=${ONE_USERS:-50}
echo "==> dfp on CUDA"
"$kit/gpu" --device cuda --users "$USERS" --rows "$ROWS" --epochs "$EPOCHS" \
  --score-users 1000 --score-rows "$SCORE_ROWS" > "$out/gpu-dfp.json"
echo "==> PyTorch on the same GPU"
python3 bench/peers/torch_gpu.py --users "$USERS" --rows "$ROWS" --epochs "$EPOCHS" \
  --one-at-a-time-users "$ONE_USERS" --score-users 1000 --score-rows "$SCORE_ROWS" > "$out/gpu-torch.json"

python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
d = json.load(open(f"{out}/gpu-dfp.json"))
t = json.load(open(f"{out}/gpu-torch.json"))
train = d["training"]["seconds"]
summary = {
    "device": open(f"{out}/gpu-device.txt").read().strip(),
    "dfp": d["backend"],
    "peer": t["peer"],
    "work": f'{d["training"]["users"]} users x {d["training"]["rows_per_user"]} rows x {d["training"]["epochs"]} epochs',
    "dfp_training_s": train,
    "torch_one_user_at_a_time_s": t["one_at_a_time"]["seconds_for_all_users"],
    "torch_one_user_at_a_time_users_timed": t["one_at_a_time"]["users_timed"],
    "torch_stacked_s": t["stacked"]["seconds"],
    "training_speedup_vs_one_at_a_time": t["one_at_a_time"]["seconds_for_all_users"] / train,
    "training_speedup_vs_stacked": t["stacked"]["seconds"] / train,
    "dfp_scoring_rows_per_s": d["scoring"]["rows_per_s"],
    "torch_scoring_rows_per_s": t["scoring"]["rows_per_s"],
    "scoring_ratio": d["scoring"]["rows_per_s"] / t["scoring"]["rows_per_s"],
    "targets": "scoring >= 10M rows/s; training < 30 s and >= 20x one user at a time",
}
json.dump(summary, open(f"{out}/gpu-summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
