#!/usr/bin/env bash
# The device checks, as one script for a lent GPU machine (see the device tool's README):
# the throughput benchmark (ViT-L), the GPU tests, then one predict configuration per step
# (benchmarks/gpu_predict_options.py: precision auto/fp32/fp16, the light decoder,
# torch.compile True and "reduce-overhead", for ViT-L and ViT-S). Results go to $OUT (or
# ./gpu_out): one log and one JSON per step, and summary.txt (each step's exit status).
# Usage on the device: bash benchmarks/gpu_check.sh. With a .venv (make setup) it uses it;
# a lent device machine has none (and no network): run scripts/device_wheels.sh here
# first and carry .whl; the script then installs those wheels into /tmp/site and runs
# the image's python3 (which has torch) with them and this checkout on PYTHONPATH.
# Time: the whole script stays within XCHM_GPU_CHECK_SECONDS (default 540, for a 10 min
# command limit): each step runs under `timeout` (its own cap, or the time left), the
# steps in order of importance; a step that fails or hangs does not stop the others,
# and steps with under 20 s left are skipped (summary.txt says so).
# When CUDA is present it installs the `gpu` extra (dask-cuda, for the LocalCUDACluster
# test) if missing: from PyPI, or offline from wheels in .whl/ (a device machine has no
# network: `pip download` them beside the checkout and carry .whl). XCHM_GPU_CHECK=1 makes
# that test fail, not skip, when dask-cuda is still missing.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
budget="${XCHM_GPU_CHECK_SECONDS:-540}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
py=.venv/bin/python
if [ ! -x "$py" ]; then  # a device machine: its python3 holds torch; our wheels on top
    py=python3
    if [ -d .whl ]; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl > "$out/install-wheels.txt" 2>&1
        echo "wheels from .whl into /tmp/site: exit $?" | tee -a "$out/summary.txt"
        export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$py" -c "import xchm, torch; print('xchm', xchm.__version__, 'torch', torch.__version__)" \
        2>&1 | tee -a "$out/summary.txt"
fi

# step NAME CAP COMMAND...: run COMMAND (output to $out/NAME.txt) under `timeout`, at most
# CAP seconds and never past the budget; record its exit status (124: timed out).
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((budget - SECONDS - 5))
    if ((left < 20)); then
        echo "$name: skipped (${SECONDS} s spent of ${budget} s)" | tee -a "$out/summary.txt"
        return
    fi
    ((cap > left)) && cap=$left
    timeout -k 5 "$cap" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc (limit ${cap} s, done at ${SECONDS} s)" | tee -a "$out/summary.txt"
    tail -2 "$out/$name.txt"
}

if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if ! "$py" -c "import dask_cuda" 2>/dev/null; then
        # The `gpu` extra's requirements, from pyproject.toml (one source of truth).
        read -r -a gpu_extra < <("$py" -c "import tomllib; print(' '.join(tomllib.load(open(
            'pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu']))")
        # dask-cuda pins dask/distributed (rapids-dask-dependency): pip may move them.
        offline=()
        [ -d .whl ] && offline=(--no-index --find-links .whl)
        step install-gpu-extra 90 "$py" -m pip install -q "${offline[@]}" "${gpu_extra[@]}"
    fi
else
    echo "no CUDA device visible to torch: the gpu tests will skip" | tee -a "$out/summary.txt"
fi

# First measurement, the most important: ViT-L at precision auto (bf16 on CUDA), 8192 px,
# stride 64 and the default overlap, in memory and from a local COG, windows/s and MFU.
# XCHM_GPU_CHECK_LARGE/_SMALL replace ViT-L/ViT-S (test-tiny: a smoke run of this script).
large="${XCHM_GPU_CHECK_LARGE:-dinov3-vitl16-sat}"
small="${XCHM_GPU_CHECK_SMALL:-dinov3-vits16}"
step throughput 200 "$py" benchmarks/throughput.py --presets "$large" \
    -o "$out/throughput.json"
# The GPU tests, by file: collecting the whole suite would import the S3/STAC test
# dependencies, which a device machine lacks. Without dask-cuda the cluster test fails.
XCHM_GPU_CHECK=1 step gpu-tests 150 "$py" -m pytest -q -rs -m gpu -p no:cacheprovider \
    --junitxml="$out/gpu-tests.xml" tests/models/test_gpu.py tests/pretraining/test_gpu.py \
    tests/inference/test_gpu_predict.py tests/test_cluster_gpu.py
# Then one predict configuration per step (4096 px in memory, default overlap), most
# important first: precisions, the light decoder, ViT-S, then torch.compile.
options() { # options NAME CAP ARGS...
    local name=$1 cap=$2
    shift 2
    step "$name" "$cap" "$py" benchmarks/gpu_predict_options.py "$@" --json "$out/$name.json"
}
L=(--preset "$large")
S=(--preset "$small")
options vitl-auto 60 "${L[@]}" --precision auto
options vitl-fp32 90 "${L[@]}" --precision fp32
options vitl-fp16 60 "${L[@]}" --precision fp16
options vitl-light-auto 60 "${L[@]}" --precision auto --decoder light
options vits-auto 45 "${S[@]}" --precision auto
options vits-light-auto 45 "${S[@]}" --precision auto --decoder light
options vitl-compile 150 "${L[@]}" --precision auto --compile true
options vitl-reduce-overhead 150 "${L[@]}" --precision auto --compile reduce-overhead
options vits-fp32 60 "${S[@]}" --precision fp32
options vits-fp16 45 "${S[@]}" --precision fp16
options vits-compile 120 "${S[@]}" --precision auto --compile true
options vits-reduce-overhead 120 "${S[@]}" --precision auto --compile reduce-overhead
# DINO pretraining speed (chips/s), bf16, default multi-crop, if time is left.
step pretrain-speed 120 "$py" benchmarks/pretrain_speed.py --presets "$small" "$large" \
    --batch-size 64 --json "$out/pretrain_speed.json"
echo "total: ${SECONDS} s" | tee -a "$out/summary.txt"
tail -25 "$out/throughput.txt" 2>/dev/null
grep -h "windows/s\|skipped" "$out"/vit*.txt 2>/dev/null
