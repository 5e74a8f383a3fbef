#!/usr/bin/env bash
# The GPU checks, in one command of about 5 minutes on one H100/H200 (at most GPU_CHECK_BUDGET, 420 s):
#   1. every CUDA-only test (CPU vs CUDA training in each execution plan, CUDA graph vs eager
#      steps, the hybrid hash's bits, loss kernels, evaluation, bf16 resume, ranks vs GPUs);
#   2. `cli.py bench train` at paper scale, batch 256, 4096 and 16384: the step alone, the
#      streaming loop, the reference-style loop (4 DataLoader workers), data wait, GPU busy;
#      at 256 and 4096 also the step alone in each form (eager, CUDA graph, torch.compile'd
#      losses, both), which decides whether --compile should become the CUDA default;
#   3. `cli.py bench recommend` (recommend-all at paper scale) and paper-scale training with
#      --refresh-every 1 and 10 (per-epoch data wait and the time spent
#      waiting for the next negative generation);
#   4. ml-100k, when ${ML100K:-../shared/datasets/ml-100k} is there (copy it into an ignored folder
#      to carry it to a GPU machine, then pass ML100K=that/folder): bench and a training run;
#   5. one end-to-end CUDA training run on the synthetic default.
# Everything it prints goes to ${OUT:-out}/gpu_check.log (and run records under ${OUT:-out}/).
#
# Offline GPU machines whose image lacks polars/zarr: on a networked machine run
#   bash scripts/gpu_check.sh --download-wheels      # fills .wheels/ (git-ignored, ~46 MB)
# and carry .wheels/ along; this script installs them (--no-deps) before anything else.
# polars 1.30 is used there because its single wheel is 36 MB (2.x needs 54 MB more).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--download-wheels" ]; then
    PY=${PYTHON:-python3}
    mkdir -p .wheels
    "$PY" -m pip download --quiet --no-deps -d .wheels --python-version "${WHEEL_PY:-3.12}" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --only-binary=:all: polars==1.30.0 zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1
    ls -la .wheels
    exit 0
fi
PY=${PYTHON:-python3}
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 COLUMNS=200
summary() {  # per-epoch speed, data wait and generation wait of a run directory
    "$PY" - "$1" <<'PYEOF'
import json, sys
for line in open(f"{sys.argv[1]}/metrics.jsonl"):
    m = json.loads(line)
    print(f"  epoch {m['epoch']} gen {m['generation']}: {m['samples_per_s']:,.0f} samples/s, "
          f"data wait {m['data_wait_frac']:.1%}, waited {m.get('generation_wait_s', 0):.2f} s for its generation, "
          f"epoch {m['seconds']:.2f} s")
PYEOF
}
# Each section runs under `timeout` with a cap, and none starts once the budget
# (GPU_CHECK_BUDGET seconds, default 420: give the device run a timeout above it) is nearly spent, so one hang cannot eat a device
# session: the log says which sections failed, timed out or were skipped.
BUDGET=${GPU_CHECK_BUDGET:-420}
section() {  # section CAP_SECONDS TITLE COMMAND...
    local cap=$1 title=$2 left rc
    shift 2
    left=$(( BUDGET - ($(date +%s) - t0) ))
    if (( left < 20 )); then
        echo "== skipped (budget spent): $title"; SKIPPED+=("$title"); return 1
    fi
    (( cap > left )) && cap=$left
    echo "== [$(( $(date +%s) - t0 )) s] $title (cap ${cap} s)"
    timeout --kill-after=10 "$cap" "$@"
    rc=$?
    if (( rc != 0 )); then
        echo "!! $title: exit $rc$( (( rc == 124 || rc == 137 )) && echo ' (timed out)')"; FAILED+=("$title (exit $rc)")
    fi
    return $rc
}
{
    t0=$(date +%s)
    FAILED=() SKIPPED=()
    if ls .wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-deps --target /tmp/clcrec-site .wheels/*.whl && export PYTHONPATH=/tmp/clcrec-site
    fi
    "$PY" -c "import torch, zarr, polars, numba, typer; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
    nvidia-smi -L
    section 150 "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider -rs tests/clcrec/test_kernels.py \
        tests/clcrec/test_evaluate.py tests/clcrec/test_step.py tests/clcrec/test_train.py \
        tests/clcrec/test_distributed.py tests/clcrec/test_serve_new_items.py -k cuda
    section 150 "bench train, paper scale, batch 256, and the step's forms (eager, graph, compiled; dense and gather)" \
        "$PY" cli.py bench train --batch-size 256 --steps 300 --compare-steps --json "$OUT/bench-train-256.json"
    section 120 "bench train, paper scale, batch 4096, and the step's forms" \
        "$PY" cli.py bench train --batch-size 4096 --steps 60 --rounds 3 --compare-steps --json "$OUT/bench-train-4096.json"
    section 60 "bench train, paper scale, batch 16384" "$PY" cli.py bench train --batch-size 16384 --steps 60 --rounds 3 --json "$OUT/bench-train-16384.json"
    section 45 "bench recommend, paper scale (recommend-all users/s on the GPU)" "$PY" cli.py bench recommend --json "$OUT/bench-recommend.json"
    for every in 1 10; do
        rm -rf "$OUT/refresh-$every" caches/refresh-$every
        section 60 "paper-scale training, --refresh-every $every, batch 4096" \
            "$PY" cli.py train --dataset data/synthetic-paper --cache caches/refresh-$every --run-dir "$OUT/refresh-$every" \
            --batch-size 4096 --epochs 4 --patience 10 --refresh-every $every && summary "$OUT/refresh-$every"
    done
    ML=${ML100K:-../shared/datasets/ml-100k}
    if [ -d "$ML" ]; then
        section 30 "ml-100k: ingest" "$PY" cli.py ingest movielens "$ML" data/ml-100k --force &&
        section 60 "ml-100k: bench train" "$PY" cli.py bench train --dataset data/ml-100k --steps 300 --json "$OUT/bench-train-ml-100k.json" &&
        section 60 "ml-100k: training" "$PY" cli.py train --dataset data/ml-100k --run-dir "$OUT/ml-100k" \
            --epochs 20 --patience 10 && summary "$OUT/ml-100k"
    fi
    rm -rf "$OUT/gpu-demo"
    section 60 "end-to-end CUDA training on the synthetic default" "$PY" cli.py train --run-dir "$OUT/gpu-demo"
    echo "== done in $(( $(date +%s) - t0 )) s"
    echo "failed: $( (( ${#FAILED[@]} )) && printf "%s; " "${FAILED[@]}" || echo none)"
    echo "skipped: $( (( ${#SKIPPED[@]} )) && printf "%s; " "${SKIPPED[@]}" || echo none)"
} 2>&1 | tee "$LOG"
