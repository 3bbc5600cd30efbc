#!/usr/bin/env bash
# The wheels nfaudio needs on the lent GPU machine, downloaded here into .whl/ (git ignores it).
#
# That machine (see the device tool's KINDS.md) has Python 3.12 with torch, torchaudio, timm, numpy, scipy, pandas,
# scikit-learn, numba, msgpack, lazy-loader, pyyaml, tqdm and matplotlib, but not soundfile, librosa or soxr, and
# it reaches no package registry. timm is carried at this venv's version so that both machines build the same nets.
#
# Usage, in the repository root:  bash benchmarks/gpu_wheels.sh
# Then one device call (`run`, carry [".whl"], timeout_s 540) runs every CUDA path and the gpu-marked tests:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; nvidia-smi -L;
#   timeout 420 python3 benchmarks/gpu.py --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log;
#   timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15
# and benchmarks/results/gpu.json is the $OUT/gpu.json that comes back.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 \
    pooch==1.9.0 platformdirs==4.14.9 timm==1.0.31
ls -l .whl
du -sh .whl
