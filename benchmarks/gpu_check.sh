#!/usr/bin/env bash
# The device checks, as one script for a lent GPU machine (see the device tool's README):
# GPU tests, then the throughput benchmark. Results go to $OUT (or ./gpu_out).
# Usage on the device: bash benchmarks/gpu_check.sh   (needs .venv: make setup first).
# When CUDA is present it installs the `gpu` extra (dask-cuda, for the LocalCUDACluster
# test) if missing: from PyPI, or offline from wheels in .whl/ (a device machine has no
# network: `pip download` them beside the checkout and carry .whl). XCHM_GPU_CHECK=1 makes
# that test fail, not skip, when dask-cuda is still missing.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
py=.venv/bin/python

if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if ! "$py" -c "import dask_cuda" 2>/dev/null; then
        # The `gpu` extra's requirements, from pyproject.toml (one source of truth).
        read -r -a gpu_extra < <("$py" -c "import tomllib; print(' '.join(tomllib.load(open(
            'pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu']))")
        # dask-cuda pins dask/distributed (rapids-dask-dependency): pip may move them.
        offline=()
        [ -d .whl ] && offline=(--no-index --find-links .whl)
        "$py" -m pip install -q "${offline[@]}" "${gpu_extra[@]}" \
            > "$out/install-gpu-extra.txt" 2>&1
        echo "gpu extra (${gpu_extra[*]}) install: exit $?" | tee -a "$out/summary.txt"
    fi
else
    echo "no CUDA device visible to torch: the gpu tests will skip" | tee -a "$out/summary.txt"
fi

XCHM_GPU_CHECK=1 "$py" -m pytest -q -rs -m gpu -p no:cacheprovider \
    --junitxml="$out/gpu-tests.xml" > "$out/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?" | tee -a "$out/summary.txt"
tail -5 "$out/gpu-tests.txt"
# ViT-L and ViT-S, stride 64 and the default overlap, memory and COG, 8192 px (CUDA default).
timeout 420 "$py" benchmarks/throughput.py --json "$out/throughput.json" \
    > "$out/throughput.txt" 2>&1
echo "throughput: exit $?" | tee -a "$out/summary.txt"
# DINO pretraining speed (chips/s), bf16, default multi-crop.
timeout 240 "$py" benchmarks/pretrain_speed.py --presets dinov3-vits16 \
    dinov3-vitl16-sat --batch-size 64 --json "$out/pretrain_speed.json" \
    > "$out/pretrain_speed.txt" 2>&1
echo "pretrain speed: exit $?" | tee -a "$out/summary.txt"
tail -40 "$out/throughput.txt"
