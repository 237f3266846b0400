#!/usr/bin/env bash
# The one prepared GPU session script (docs/performance.md#gpu-reference-figures): CUDA-vs-CPU parity on the tiny
# fixtures, then each GPU benchmark with its PyTorch baseline measured in the same run, on the same card. Results are
# JSON lines in $OUT/results.jsonl (and on stdout); peak GPU memory of each phase comes from sampling nvidia-smi.
#
# Build here, then carry .gpubin to the GPU machine. The build needs a CUDA toolkit 12.x or newer with nvcc (NVIDIA's
# installers, or the nvidia-cuda-nvcc-cu12 wheel and its runtime, cuBLAS, cuRAND and NVRTC siblings), its bin/ on
# PATH, CUDA_HOME set to its root and, on a machine without the GPU, CUDA_COMPUTE_CAP=90 for an H100 (see
# docs/performance.md#building-with-cuda):
#   cargo build --release --features cuda --example gpu_bench
#   mkdir -p .gpubin && strip -o .gpubin/gpu_bench target/release/examples/gpu_bench
# There: benches/gpu/run.sh   (needs python3 with torch, transformers and peft for the baselines)
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
BIN=${BIN:-.gpubin/gpu_bench}
CONFIG=benches/gpu/qwen2_5_vl_3b/config.json
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' | tee -a "$OUT/gpu.txt"

# Runs one phase under a time limit while sampling the card's used memory; appends its JSON lines and a peak.
phase() {
    local name=$1 limit=$2
    shift 2
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/mem_$name.txt" &
    local sampler=$!
    local start=$(date +%s.%N)
    timeout "$limit" "$@" 2> "$OUT/err_$name.txt" | tee -a "$RESULTS"
    local rc=${PIPESTATUS[0]}
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
    local peak=$(sort -n "$OUT/mem_$name.txt" | tail -1)
    echo "{\"phase\": \"$name\", \"rc\": $rc, \"wall_s\": $(echo "$(date +%s.%N) - $start" | bc), \"peak_used_mib\": ${peak:-null}}" | tee -a "$RESULTS"
    [ "$rc" = 0 ] || tail -5 "$OUT/err_$name.txt"
}

phase parity 120 "$BIN" parity --device cuda
# Exact top-k (the shape of docs/performance.md#gpu-reference-figures): the CUDA selection kernel, checked against the
# CPU miner first, then timed; torch.topk over the same chunked products with the same timing method. Keep the two
# argument lists in step.
TOPK_SHAPE="--k 100 --chunk-docs 131072 --repeat 5"
phase topk 120 "$BIN" topk --device cuda $TOPK_SHAPE --bench-docs 1000000 --bench-dim 1024 --bench-queries 1024
phase topk_torch 90 python3 benches/topk_gpu_torch.py $TOPK_SHAPE --docs 1000000 --dim 1024 --queries 1024
# The paper's training shape: Qwen2.5-VL-3B, a group of 1 + 16, 448 px images (256 image tokens), LoRA r 16. At 321
# tokens a prompt (63 text tokens) the activations fit as they are; at 3200 (2942 text tokens) only with every layer
# recomputed, so both sides recompute there (PyTorch: gradient checkpointing, sdpa attention).
PAPER="--config $CONFIG --batch 17 --image-side 448 --steps 2"
phase train 180 "$BIN" train $PAPER --text-tokens 63
phase train_torch 180 python3 benches/gpu/torch_baseline.py train $PAPER --text-tokens 63
phase train_3200 300 "$BIN" train $PAPER --text-tokens 2942 --recompute
phase train_3200_torch 300 python3 benches/gpu/torch_baseline.py train $PAPER --text-tokens 2942 --recompute
phase score 120 "$BIN" score --config "$CONFIG" --batch 32 --image-side 448
phase score_torch 120 python3 benches/gpu/torch_baseline.py score --config "$CONFIG" --batch 32 --image-side 448
