#!/usr/bin/env bash
# Wheels for a lent GPU machine (the `device` tool), run HERE before the device call.
# The device image has Python 3.12 with torch, timm, xarray, numpy, pandas, pytest and
# hypothesis, but no dask, rioxarray/rasterio, pyproj or zarr, and cannot download; this
# fetches those (the versions of this checkout's .venv, cp312 manylinux wheels, about
# 60 MiB: the device call carries at most 64 MiB with the working tree) into .whl/.
# benchmarks/gpu_check.sh installs them there into /tmp/site when it finds no .venv.
# Then: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
names=(rioxarray rasterio affine cligj click-plugins pyproj dask distributed partd locket
    tblib tornado zict zarr numcodecs donfig google-crc32c timm xarray fsspec)
pins=()
for name in "${names[@]}"; do
    pins+=("$name==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pins[@]}"
du -sh .whl
