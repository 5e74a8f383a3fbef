#!/usr/bin/env bash
# The GPU checks, in one command of about 5 minutes on one H100/H200 (at most GPU_CHECK_BUDGET, 420 s;
# give the device run a timeout above it):
#   1. every CUDA-only test (`pytest -m cuda`: CPU vs CUDA training in each execution plan, CUDA
#      graph vs eager steps, the capture fallback, the hybrid hash's bits, loss kernels,
#      evaluation, recommend-all, bf16 resume, ranks vs GPUs), then at once one end-to-end CUDA
#      training run on the synthetic default (`cli.py train`);
#   2. `cli.py bench train` at paper scale, batch 256, 4096 and 16384: the step alone, the
#      streaming loop, the reference-style loop (4 DataLoader workers), data wait, GPU busy;
#      at 256 and 4096 also the step alone in each form (eager, CUDA graph, torch.compile'd
#      losses, both), which decides whether --compile should become the CUDA default; 16384
#      without the reference loop (slow at that size), so its table always prints;
#   3. `cli.py bench recommend` (recommend-all at paper scale) and paper-scale training with
#      --refresh-every 1 and 10 (per-epoch data wait and the time spent
#      waiting for the next negative generation);
#   4. ml-100k, when ${ML100K:-../shared/datasets/ml-100k} is there (copy it into an ignored folder
#      to carry it to a GPU machine, then pass ML100K=that/folder): bench and a training run; the
#      log says so when it is not.
# Every section has a time cap; the caps add up to the budget (scaled with GPU_CHECK_BUDGET), and a
# section that would start with under 20 s of budget left is skipped and logged. Before anything
# runs, every module the sections import is checked, and a missing one stops the script naming it.
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
        --only-binary=:all: polars==1.30.0 zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 \
        PyYAML==6.0.4
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
# Section caps in seconds, in running order; they add up to 420 s, the default budget, and are
# scaled to GPU_CHECK_BUDGET when it is set. ml-100k's three are unused when it is absent.
declare -A CAP=(
    [tests]=110 [demo]=40 [bench256]=70 [bench4096]=55 [bench16384]=25 [recommend]=15
    [refresh1]=25 [refresh10]=25 [ml_ingest]=10 [ml_bench]=20 [ml_train]=25
)
BUDGET=${GPU_CHECK_BUDGET:-420}
CAPS_TOTAL=0
for k in "${!CAP[@]}"; do CAPS_TOTAL=$(( CAPS_TOTAL + CAP[$k] )); done
section() {  # section CAP_NAME TITLE COMMAND...: run under its cap, or log why it did not run
    local cap=$(( CAP[$1] * BUDGET / CAPS_TOTAL )) title=$2 left rc
    shift 2
    left=$(( BUDGET - ($(date +%s) - t0) ))
    if (( left < 20 )); then
        echo "== skipped (budget spent, ${left} s left): $title"; SKIPPED+=("$title (budget spent)"); return 1
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
skip() {  # skip TITLE WHY: a section that will not run, logged
    echo "== skipped ($2): $1"; SKIPPED+=("$1 ($2)")
}
{
    t0=$(date +%s)
    FAILED=() SKIPPED=()
    if ls .wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-deps --target /tmp/clcrec-site .wheels/*.whl &&
            export PYTHONPATH=/tmp/clcrec-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    echo "budget ${BUDGET} s; section caps add up to ${CAPS_TOTAL} s at the default budget of 420 s"
    missing=$("$PY" - <<'PYEOF'
import importlib
need = ["torch", "numpy", "zarr", "numcodecs", "polars", "pyarrow", "numba", "typer", "rich", "matplotlib", "yaml", "pytest"]
bad = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as e:  # a broken install counts as missing
        bad.append(f"{name} ({type(e).__name__}: {e})")
print("; ".join(bad))
PYEOF
)
    if [ -n "$missing" ]; then
        echo "!! cannot start, modules missing: $missing"
        echo "   install them (pip install -c constraints.txt -e '.[dev]'), or on a networked machine run"
        echo "   bash scripts/gpu_check.sh --download-wheels and carry .wheels/ along"
        exit 1
    fi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
    nvidia-smi -L || echo "(no nvidia-smi: the CUDA sections will skip or fail)"
    section tests "CUDA tests (pytest -m cuda)" "$PY" -m pytest -q -p no:cacheprovider -rs -m cuda tests
    rm -rf "$OUT/gpu-demo"
    section demo "end-to-end CUDA training on the synthetic default (cli.py train)" \
        "$PY" cli.py train --run-dir "$OUT/gpu-demo"
    section bench256 "bench train, paper scale, batch 256, and the step's forms (eager, graph, compiled; dense and gather)" \
        "$PY" cli.py bench train --batch-size 256 --steps 300 --compare-steps --json "$OUT/bench-train-256.json"
    section bench4096 "bench train, paper scale, batch 4096, and the step's forms" \
        "$PY" cli.py bench train --batch-size 4096 --steps 60 --rounds 3 --compare-steps --json "$OUT/bench-train-4096.json"
    section bench16384 "bench train, paper scale, batch 16384 (no reference loop: too slow at this size)" \
        "$PY" cli.py bench train --batch-size 16384 --steps 60 --rounds 3 --no-reference --json "$OUT/bench-train-16384.json"
    section recommend "bench recommend, paper scale (recommend-all users/s on the GPU)" "$PY" cli.py bench recommend --json "$OUT/bench-recommend.json"
    for every in 1 10; do
        rm -rf "$OUT/refresh-$every" caches/refresh-$every
        section refresh$every "paper-scale training, --refresh-every $every, batch 4096" \
            "$PY" cli.py train --dataset data/synthetic-paper --cache caches/refresh-$every --run-dir "$OUT/refresh-$every" \
            --batch-size 4096 --epochs 4 --patience 10 --refresh-every $every && summary "$OUT/refresh-$every"
    done
    ML=${ML100K:-../shared/datasets/ml-100k}
    if [ -f "$ML/u.data" ]; then
        if section ml_ingest "ml-100k: ingest" "$PY" cli.py ingest movielens "$ML" data/ml-100k --force; then
            section ml_bench "ml-100k: bench train" "$PY" cli.py bench train --dataset data/ml-100k --steps 300 --json "$OUT/bench-train-ml-100k.json"
            section ml_train "ml-100k: training" "$PY" cli.py train --dataset data/ml-100k --run-dir "$OUT/ml-100k" \
                --epochs 20 --patience 10 && summary "$OUT/ml-100k"
        else
            skip "ml-100k: bench train, training" "its ingest did not finish"
        fi
    else
        skip "ml-100k: ingest, bench train, training" "no ml-100k at $ML (its u.data): pass ML100K=DIR"
    fi
    echo "== done in $(( $(date +%s) - t0 )) s of a ${BUDGET} s budget"
    echo "failed: $( (( ${#FAILED[@]} )) && printf "%s; " "${FAILED[@]}" || echo none)"
    echo "skipped: $( (( ${#SKIPPED[@]} )) && printf "%s; " "${SKIPPED[@]}" || echo none)"
} 2>&1 | tee "$LOG"
