"""Ship the Swapping Autoencoder's longer CPU run with the course (chapter 14 loads it):
notebooks/results/swapae_cpu/ gets the run's last epoch snapshot (E and G only, under a megabyte), its
eval.json (paths made relative) and metrics.jsonl.

    OMP_NUM_THREADS=1 python -m cutlib train --preset swapping_autoencoder --dataset stripes --load-size 32 \\
        --crop-size 32 --ngf 8 --ndf 8 --texture-nc 256 --cooc-crops 4 --batch-size 4 --n-epochs 6 \\
        --n-epochs-decay 0 --dataset-len 2000 --save-epoch-freq 1 --log-every 10 --num-samples 4 --seed 0 \\
        --out runs/swapae_cpu
    OMP_NUM_THREADS=1 python -m cutlib evaluate runs/swapae_cpu --device cpu
    python tools/ship_swapae.py [--run runs/swapae_cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from ship_photos import relative  # noqa: E402  (one helper: absolute paths under the checkout -> relative)

OUT = REPO / "notebooks" / "results" / "swapae_cpu"
WEIGHTS = "swapae_EG.pt"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/swapae_cpu")
    p.add_argument("--out", default=str(OUT), help="where the shipped files go (default notebooks/results/swapae_cpu)")
    args = p.parse_args(argv)
    out = Path(args.out)

    from cutlib.runs import EPOCHS_DIR, EVAL_FILE, load_checkpoint, save_checkpoint

    run = Path(args.run)
    report = json.loads((run / EVAL_FILE).read_text())
    snapshots = sorted((run / EPOCHS_DIR).glob("G_epoch*.pt"))
    if not snapshots:
        raise SystemExit(f"no epoch snapshots in {run / EPOCHS_DIR}: train with --save-epoch-freq 1")
    last = load_checkpoint(snapshots[-1])
    if last["step"] != report["final"]["step"]:
        raise SystemExit(f"the last snapshot ({snapshots[-1].name}, step {last['step']}) is not the final weights "
                         f"(step {report['final']['step']}): finish the run first")
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({k: last[k] for k in ("E", "G", "config", "epoch", "step")}, out / WEIGHTS)
    roots = [(str(REPO), "."), (str(REPO.parent), "..")]
    (out / EVAL_FILE).write_text(json.dumps(relative(report, roots), indent=1) + "\n")
    shutil.copyfile(run / "metrics.jsonl", out / "metrics.jsonl")
    print("written:", *(str(out / n) for n in (WEIGHTS, EVAL_FILE, "metrics.jsonl")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
