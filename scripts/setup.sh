#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the right torch build and the pinned
# versions of everything else (constraints.txt).
# Without an NVIDIA GPU, torch==2.13.0 resolves to the local CPU wheel on these machines; a bare
# `torch` requirement would pull several GB of CUDA packages instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing CUDA torch"
        python -m pip install --quiet "torch>=2.3"
    else
        echo "setup: no NVIDIA GPU, installing the CPU torch wheel"
        python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
    fi
fi
# every other package at the exact version of constraints.txt (refresh it with `make constraints`)
python -m pip install --quiet -c constraints.txt -e ".[dev]"
python -c "import torch, zarr, polars, numba; print(f'setup: torch {torch.__version__}, zarr {zarr.__version__}, polars {polars.__version__}, numba {numba.__version__}')"
