#!/usr/bin/env bash
# The GPU path of cutlib, run for real on a machine with one NVIDIA GPU, in one call of under 10 minutes:
#   1. the tests marked `cuda` in tests/test_cuda.py: a training step per preset in fp32, bf16 and fp16;
#      train, resume, translate and evaluate on cuda
#   2. 2,000 iterations of the full-size CUT preset on real horse2zebra photos in bf16: throughput, and the
#      projection of a full paper-scale run (400 epochs x 1,334 iterations = 533,600 iterations)
#   3. bench on cuda at 256 px, one run per preset (CUT, FastCUT, CycleGAN: full reference networks), in
#      fp32, bf16 and fp16 (loss-scaled: the older GPUs' choice), NCHW and NHWC
#   4. torchrun --nproc_per_node 1 for 50 steps (the NCCL path)
#   5. the papermill runner with -p device cuda
#   5-grid. the grid with --gpus 0: two tiny runs (two seeds) queued on GPU 0, each its own papermill process
#   6. bench of CUT compiled (torch.compile) against eager (fp32, and bf16 + NHWC)
#   7. the compile tests marked `cuda` (a compiled step matches an eager one)
# Each step runs for at most the smaller of its own limit and what is left of BUDGET; a step that no longer
# fits is skipped and the summary says so (run the rest later with STEPS). Writes into OUT (default
# gpu_check_out/): gpu_check.json (the summary), gpu_check.log (every step's whole output) and the bench
# tables bench-PRESET.json, bench-compile.json; the run folders (checkpoints) go to WORK (default OUT/work).
#
#   bash tools/gpu_check.sh [DATA_DIR]
#     DATA_DIR  a horse2zebra folder (trainA/ trainB/ testA/ testB/); default BUNDLE/horse2zebra, else
#               ../shared/data/horse2zebra_cpu, else the catalog's horse2zebra (downloaded)
#   environment:
#     BUDGET=540   seconds for the whole check    STEPS="1 2 3-cut 3-fastcut 3-cyclegan 4 5 5-grid 6 7": which
#     OUT, WORK    results, run folders           PYTHON: the one with torch (default .venv/bin/python, else python3)
#     BUNDLE=.gpu_bundle  what `python tools/gpu_check.py bundle` made for a GPU machine without internet:
#                  wheels (only those whose package that machine lacks are installed, into WORK/site) and photos
#     DEVICE=cpu   a rehearsal on a machine without a GPU: the same steps and summary, small sizes
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-gpu_check_out}
WORK=${WORK:-$OUT/work}
BUDGET=${BUDGET:-540}
STEPS=${STEPS:-1 2 3-cut 3-fastcut 3-cyclegan 4 5 5-grid 6 7}
DEVICE=${DEVICE:-cuda}
BUNDLE=${BUNDLE:-.gpu_bundle}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd); WORK=$(cd "$WORK" && pwd)
LOG=$OUT/gpu_check.log
STEPS_TSV=$WORK/steps.tsv
: > "$LOG"; : > "$STEPS_TSV"
START=$(date +%s)
RESERVE=15  # seconds kept for the summary
export PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # cutlib from this checkout, installed or not
status=0

if [ $# -ge 1 ]; then DATA=$1
elif [ -d "$BUNDLE/horse2zebra/trainA" ]; then DATA=$BUNDLE/horse2zebra
elif [ -d ../shared/data/horse2zebra_cpu/trainA ]; then DATA=../shared/data/horse2zebra_cpu
else DATA=horse2zebra
fi

# run_step ID CAP TITLE COMMAND...: runs COMMAND with the smaller of CAP and what is left of the budget,
# its output to WORK/stepID.txt and the log; one line per step in WORK/steps.tsv for the summary
run_step() {
    local id=$1 cap=$2 title=$3; shift 3
    case " $STEPS " in *" $id "*) ;; *) printf '%s\tnot chosen (STEPS)\t0\n' "$id" >> "$STEPS_TSV"; return 0 ;; esac
    local left=$((START + BUDGET - RESERVE - $(date +%s)))
    if [ "$left" -lt 20 ]; then
        echo "=== $id. $title: skipped, ${left} s of the budget left" | tee -a "$LOG"
        printf '%s\tskipped: out of time\t0\n' "$id" >> "$STEPS_TSV"; status=1; return 0
    fi
    local limit=$((cap < left ? cap : left)) t0 rc
    printf '\n=== %s. %s (%s, limit %s s)\n' "$id" "$title" "$(date -u +%H:%M:%S)" "$limit" | tee -a "$LOG"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$WORK/step$id.txt" 2>&1
    rc=$?
    cat "$WORK/step$id.txt" >> "$LOG"
    tail -n 8 "$WORK/step$id.txt"
    local what="ok"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then what="timed out after $limit s"; elif [ "$rc" != 0 ]; then what="failed (exit $rc)"; fi
    [ "$rc" = 0 ] || status=1
    printf '%s\t%s\t%s\n' "$id" "$what" "$(($(date +%s) - t0))" >> "$STEPS_TSV"
    echo "--- $id: $what in $(($(date +%s) - t0)) s" | tee -a "$LOG"
}

echo "=== environment ($(date -u +%H:%M:%S)); data: $DATA; budget $BUDGET s; steps $STEPS" | tee -a "$LOG"
if [ -d "$BUNDLE/wheels" ]; then  # only the distributions this Python lacks, so the machine's own stay first
    missing=$($PY tools/gpu_check.py missing "$BUNDLE/wheels")
    if [ -n "$missing" ]; then
        echo "installing $(echo "$missing" | wc -l) wheels from $BUNDLE/wheels into $WORK/site" | tee -a "$LOG"
        # shellcheck disable=SC2086
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" $missing >> "$LOG" 2>&1 || status=1
        export PYTHONPATH=$PYTHONPATH:$WORK/site
    fi
fi
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$WORK/gpu.txt" | tee -a "$LOG"
else
    echo "DEVICE=$DEVICE: a rehearsal without a GPU, small sizes" | tee "$WORK/gpu.txt" | tee -a "$LOG"
fi
$PY -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', torch.cuda.get_device_capability(0) if torch.cuda.is_available() else '')" \
    2>&1 | tee -a "$WORK/gpu.txt" | tee -a "$LOG"

if [ "$DEVICE" = cuda ]; then  # the sizes of the check; the rehearsal's below only exercise the steps
    SIZE=256; BENCH=(--steps 10 --warmup 3); MODES=fp32,bf16,fp16,fp32+nhwc,bf16+nhwc; ITERS=2000; SHAPE=()
    WORKERS=auto; DDP_STEPS=50; RUNNER=(-p scale cpu -p max_steps 100); GRID_STEPS=50; GRID_ON=(--gpus 0)
else  # fp16 has no fast CPU kernels (minutes per step): left out of the rehearsal
    SIZE=64; BENCH=(--steps 1 --warmup 1); MODES=fp32,bf16,fp32+nhwc,bf16+nhwc; ITERS=20; SHAPE=(--load-size 72 --crop-size 64)
    WORKERS=0; DDP_STEPS=4; RUNNER=(-p scale tiny -p max_steps 4); GRID_STEPS=4; GRID_ON=(--jobs 1)
fi

# the order puts first what the check is for: the GPU path working, then its throughput; compiling (slow
# to start) comes last, so that a budget spent early costs the least
run_step 1 120 "the cuda tests: a training step per preset in fp32, bf16 and fp16; train, resume, translate, evaluate" \
    $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py

rm -rf "$WORK/h2z_cut"
run_step 2 200 "$ITERS iterations of full-size CUT on real photos ($DATA), bf16" \
    $PY -m cutlib train --preset cut --dataset "$DATA" --out "$WORK/h2z_cut" --device "$DEVICE" --precision bf16 \
    --max-steps "$ITERS" --log-every $((ITERS / 40 > 0 ? ITERS / 40 : 1)) --save-every 1000 --no-progress \
    --num-workers "$WORKERS" "${SHAPE[@]}"

for preset in cut fastcut cyclegan; do  # one bench per preset: a step cut short by the budget loses one preset only
    run_step "3-$preset" 80 "bench $preset on $DEVICE: $MODES, $SIZE px" \
        $PY -m cutlib bench --presets "$preset" --size "$SIZE" "${BENCH[@]}" --device "$DEVICE" --modes "$MODES" \
        --json "$OUT/bench-$preset.json"
done

rm -rf "$WORK/ddp"
run_step 4 60 "torchrun --nproc_per_node 1, $DDP_STEPS steps" \
    $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m cutlib train --preset cut --dataset stripes \
    --out "$WORK/ddp" --device "$DEVICE" --max-steps "$DDP_STEPS" --load-size 72 --crop-size 64 --no-progress

rm -rf "$WORK/runner"
run_step 5 90 "the papermill runner on $DEVICE" \
    $PY -m papermill notebooks/run_experiment.ipynb "$WORK/run_experiment.ipynb" -k python3 --cwd notebooks --log-output --no-progress-bar \
    -p device "$DEVICE" "${RUNNER[@]}" -p out_dir "$WORK/runner"

rm -rf "$WORK/grid"
cat > "$WORK/grid.json" <<JSON
{"description": "tools/gpu_check.sh: two tiny CUT runs queued on one GPU by the grid (--gpus 0)",
 "out": "$WORK/grid", "seeds": [0, 1],
 "base": {"dataset": "stripes", "scale": "tiny", "max_steps": $GRID_STEPS, "extractor": "builtin", "evaluate": true},
 "variants": {"cut": {"preset": "cut"}}}
JSON
run_step 5-grid 90 "the grid ${GRID_ON[*]}: two tiny runs, one after the other, each its own papermill process" \
    $PY -m cutlib grid "$WORK/grid.json" "${GRID_ON[@]}"

run_step 6 150 "bench CUT on $DEVICE compiled (torch.compile) against eager, $SIZE px" \
    $PY -m cutlib bench --presets cut --size "$SIZE" "${BENCH[@]}" --device "$DEVICE" \
    --modes fp32,bf16+nhwc,bf16+nhwc+compiled --json "$OUT/bench-compile.json"

run_step 7 150 "the compile tests on cuda: a compiled step matches an eager one, fp32 and bf16" \
    $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_compile.py

echo; echo "=== summary ($(($(date +%s) - START)) s)" | tee -a "$LOG"
$PY tools/gpu_check.py summary "$OUT" "$WORK" 2>&1 | tee -a "$LOG" || status=1
exit $status
