#!/usr/bin/env bash
# One prepared run on a rented NVIDIA machine (see docs/performance.md, "GPU"):
# kernel and model tests on the GPU adapter, both benches (the kernels bench times every
# convolution kernel that can run each pass, the implicit-GEMM ones included; the train
# step runs once as planned and once with the implicit-GEMM kernels forced), PyTorch's
# step on the same card, and a DenseNet-121 golden check made there with PyTorch.
#
# Built elsewhere and carried along (nothing is compiled here):
#   .devbin/{train,kernels-test,model-test,kernels-bench,train_step-bench,load_costs-bench}
#   .gl/*.deb   (the Vulkan loader and glvnd, which the NVIDIA ICD needs; often missing)
# Usage: bash benches/gpu/run.sh OUT_DIR
set -u
OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
ROOT=$(pwd)
B=$ROOT/.devbin
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -e "$ICD" ] || ICD=$(find / -name nvidia_icd.json -not -path '/proc/*' 2>/dev/null | head -1)
[ -n "$ICD" ] && export VK_DRIVER_FILES=$ICD
export DENSENET_WGPU_ADAPTER=${DENSENET_WGPU_ADAPTER:-nvidia}
# Test binaries look for their data under the path they were built in.
mkdir -p /work && ln -sfn "$ROOT" /work/main
mkdir -p "$ROOT/target/release" && cp "$B/train" "$ROOT/target/release/train"

log "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"
"$B/train" info 2>&1 | tee -a "$OUT/summary.txt"

log "kernel tests on the GPU adapter"
timeout 240 "$B/kernels-test" --test-threads=4 > "$OUT/tests_kernels.log" 2>&1
grep -E "test result|FAILED|panicked" "$OUT/tests_kernels.log" | head -20 | tee -a "$OUT/summary.txt"
log "model tests on the GPU adapter"
timeout 240 "$B/model-test" --test-threads=1 > "$OUT/tests_model.log" 2>&1
grep -E "test result|FAILED|panicked" "$OUT/tests_model.log" | head -20 | tee -a "$OUT/summary.txt"

log "kernel benchmarks"
timeout 240 "$B/kernels-bench" > "$OUT/bench_kernels.txt" 2>&1
cat "$OUT/bench_kernels.txt" >> "$OUT/summary.txt"
cp "$ROOT/target/bench/kernels.jsonl" "$OUT/" 2>/dev/null
log "convolution and matmul benchmarks without the subgroup variants"
DENSENET_WGPU_NO_SUBGROUPS=1 timeout 120 "$B/kernels-bench" conv > "$OUT/bench_kernels_nosg.txt" 2>&1
DENSENET_WGPU_NO_SUBGROUPS=1 timeout 60 "$B/kernels-bench" matmul >> "$OUT/bench_kernels_nosg.txt" 2>&1
grep -E "conv|matmul" "$OUT/bench_kernels_nosg.txt" >> "$OUT/summary.txt"

log "where a convolution's time goes"
timeout 120 "$B/load_costs-bench" > "$OUT/bench_load_costs.txt" 2>&1
cat "$OUT/bench_load_costs.txt" >> "$OUT/summary.txt"

log "train-step benchmark"
BENCH_STEPS=5 timeout 300 "$B/train_step-bench" > "$OUT/bench_train_step.txt" 2>&1
cat "$OUT/bench_train_step.txt" >> "$OUT/summary.txt"
cp "$ROOT/target/bench/train_step.jsonl" "$OUT/" 2>/dev/null
log "train-step benchmark with the implicit-GEMM convolution kernels forced"
DENSENET_WGPU_CONV=gemm_forward,gemm_backward_data,gemm_backward_weight BENCH_STEPS=5 \
    timeout 200 "$B/train_step-bench" > "$OUT/bench_train_step_gemm.txt" 2>&1
cat "$OUT/bench_train_step_gemm.txt" >> "$OUT/summary.txt"
cp "$ROOT/target/bench/train_step.jsonl" "$OUT/train_step_gemm.jsonl" 2>/dev/null

log "PyTorch on the same GPU"
[ -n "${SKIP_TORCH:-}" ] || PYTHONUNBUFFERED=1 timeout 240 python3 benches/gpu/torch_step.py "$OUT/torch_step.jsonl" 2>&1 | tee -a "$OUT/summary.txt"

log "DenseNet-121 golden made here by PyTorch (CPU), checked on the GPU adapter"
if timeout 180 python3 scripts/make_golden.py /tmp/golden121 densenet121 > "$OUT/golden121.log" 2>&1; then
    timeout 120 "$B/train" verify-torch /tmp/golden121/densenet121_golden.safetensors 2>&1 | tee -a "$OUT/summary.txt"
    timeout 120 "$B/train" verify-torch /tmp/golden121/densenet121_golden.safetensors --plain 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
else
    tail -5 "$OUT/golden121.log" | tee -a "$OUT/summary.txt"
fi
log "done"
