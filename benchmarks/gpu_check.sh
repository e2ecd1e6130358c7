#!/usr/bin/env bash
# The device checks, as one script for a lent GPU machine (see the device tool's README):
# GPU tests, then the throughput benchmark. Results go to $OUT (or ./gpu_out).
# Usage on the device: bash benchmarks/gpu_check.sh   (needs .venv: make setup first,
# plus `pip install 'dask-cuda>=24.10'` for the LocalCUDACluster test).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
.venv/bin/python -m pytest -q -m gpu -p no:cacheprovider --junitxml="$out/gpu-tests.xml" \
    > "$out/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?" | tee -a "$out/summary.txt"
# ViT-L and ViT-S, stride 64 and the default overlap, memory and COG, 8192 px (CUDA default).
timeout 420 .venv/bin/python benchmarks/throughput.py --json "$out/throughput.json" \
    > "$out/throughput.txt" 2>&1
echo "throughput: exit $?" | tee -a "$out/summary.txt"
# DINO pretraining speed (chips/s), bf16, default multi-crop.
timeout 240 .venv/bin/python benchmarks/pretrain_speed.py --presets dinov3-vits16 \
    dinov3-vitl16-sat --batch-size 64 --json "$out/pretrain_speed.json" \
    > "$out/pretrain_speed.txt" 2>&1
echo "pretrain speed: exit $?" | tee -a "$out/summary.txt"
tail -40 "$out/throughput.txt"
