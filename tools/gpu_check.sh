#!/usr/bin/env bash
# The GPU path of cutlib, run for real on a machine with one NVIDIA GPU, in under 10 minutes:
#   1. the tests marked `cuda` (a training step per preset in fp32, bf16 and fp16, compiled against eager,
#      train/resume/translate/evaluate)
#   2. bench on cuda in fp32, bf16 and fp16 (loss-scaled: the older GPUs' choice), NCHW and NHWC, at 256 px
#      for CUT, FastCUT and CycleGAN (full reference networks), and CUT eager against torch.compile (--compile)
#   3. 2,000 iterations of the full-size CUT preset on real horse2zebra photos (throughput, projection of
#      a full paper-scale run: 400 epochs x 1,334 iterations = 533,600 iterations)
#   4. torchrun --nproc_per_node 1 for 50 steps (the NCCL path)
#   5. the papermill runner with -p device cuda
# and writes one summary file: $OUT/gpu_check.json (OUT defaults to gpu_check_out/).
#
#   bash tools/gpu_check.sh [DATA_DIR]     DATA_DIR: a horse2zebra folder (trainA/ trainB/ testA/ testB/);
#                                          default ../shared/data/horse2zebra_cpu, else the catalog's horse2zebra
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
DATA=${1:-../shared/data/horse2zebra_cpu}
[ -d "$DATA/trainA" ] || DATA=horse2zebra
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))" | tee -a "$OUT/gpu.txt"

step "1. tests marked cuda"
timeout 300 $PY -m pytest -q -m cuda tests/test_cuda.py tests/test_compile.py 2>&1 | tee "$OUT/tests.txt" | tail -5 || status=1

step "2. bench on cuda, fp32, bf16 and fp16 (loss-scaled), NCHW and NHWC, 256 px"
timeout 300 $PY -m cutlib bench --presets cut,fastcut,cyclegan --size 256 --steps 20 --warmup 5 --device cuda \
    --modes fp32,bf16,fp16,fp32+nhwc,bf16+nhwc --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1

step "2b. bench on cuda: CUT eager and compiled, fp32 and bf16, 256 px"
timeout 240 $PY -m cutlib bench --presets cut --size 256 --steps 20 --warmup 5 --device cuda \
    --precision fp32,bf16 --compile --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt" || status=1

step "3. 2,000 iterations of full-size CUT on real photos ($DATA), bf16"
rm -rf "$OUT/h2z_cut"
timeout 600 $PY -m cutlib train --preset cut --dataset "$DATA" --out "$OUT/h2z_cut" --device cuda --precision bf16 \
    --max-steps 2000 --log-every 50 --save-every 1000 --no-progress --num-workers 4 2>&1 | tail -20 | tee "$OUT/train.txt" || status=1

step "4. torchrun --nproc_per_node 1, 50 steps"
rm -rf "$OUT/ddp"
timeout 240 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m cutlib train --preset cut --dataset stripes \
    --out "$OUT/ddp" --device cuda --max-steps 50 --load-size 72 --crop-size 64 --no-progress 2>&1 | tail -15 | tee "$OUT/ddp.txt" || status=1

step "5. the papermill runner on cuda"
timeout 300 $PY -m papermill notebooks/run_experiment.ipynb "$OUT/run_experiment.ipynb" -k python3 --cwd notebooks \
    -p device cuda -p scale cpu -p max_steps 100 -p out_dir "$PWD/$OUT/runner" 2>&1 | tail -5 | tee "$OUT/runner.txt" || status=1

step "summary"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"gpu": (out / "gpu.txt").read_text().strip().splitlines()}
for name in ("bench", "bench_compile"):
    if (out / f"{name}.json").is_file():
        summary[name] = [{k: r.get(k) for k in ("preset", "precision", "channels_last", "compile", "median_s", "warmup_s",
                                                "memory_mb", "speedup_vs_fp32")}
                         for r in json.loads((out / f"{name}.json").read_text())["results"]]
rows = [json.loads(l) for l in (out / "h2z_cut" / "metrics.jsonl").read_text().splitlines() if l.strip()] \
    if (out / "h2z_cut" / "metrics.jsonl").is_file() else []
if len(rows) > 2:  # seconds per iteration from the logged step times (after the first logged rows)
    times = sorted(r["time"] for r in rows[2:])
    per_iter = times[len(times) // 2]
    summary["h2z_cut"] = {"steps": rows[-1]["step"], "median_s_per_iter": per_iter,
                          "projected_full_run_hours": round(533_600 * per_iter / 3600, 2)}
for name in ("tests", "train", "ddp", "runner"):
    f = out / f"{name}.txt"
    summary[name] = f.read_text().strip().splitlines()[-3:] if f.is_file() else "not run"
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
exit $status
