"""Chapter 13's shipped results: CycleGAN, CUT and CyCADA trained on the built-in city_synth at the course's
CPU scale, then the adaptation table (cutlib.adaptation): a segmenter trained on the source only, on the
source translated by each generator, and on the target (oracle), all scored on the target test split.

    OMP_NUM_THREADS=1 python experiments/cycada_cpu.py --steps 800 --out runs/cycada_cpu \
        --ship notebooks/results/cycada_cpu

Writes RUN/<method>/ (the three runs), SHIP/results.json and SHIP/translations.png (test inputs, their
translations, the true photo-like render of each layout). Training on a CPU is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cutlib import config as C
from cutlib.adaptation import adaptation_table, generator_translator
from cutlib.data import make_dataset
from cutlib.data.splits import read_images
from cutlib.train import load_or_train

METHODS = {"CycleGAN": "cyclegan", "CUT": "cut", "CyCADA": "cycada"}


def method_config(preset: str, steps: int, seed: int) -> C.TrainConfig:
    """The preset at CPU scale on city_synth: epochs of 400 items, half at the initial rate, half decaying."""
    half = max(steps // 800, 1)
    return C.cpu_scale(preset, dataset="city_synth", dataset_len=400, n_epochs=half, n_epochs_decay=half,
                       seed=seed, log_every=50, save_epoch_freq=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps per method (a multiple of 800)")
    parser.add_argument("--seg-steps", type=int, default=300, help="steps of each adaptation segmenter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/cycada_cpu")
    parser.add_argument("--ship", default="notebooks/results/cycada_cpu")
    args = parser.parse_args()
    start, out, ship = time.time(), Path(args.out), Path(args.ship)
    ship.mkdir(parents=True, exist_ok=True)
    runs, seconds = {}, {}
    for name, preset in METHODS.items():
        t0 = time.time()
        runs[name] = load_or_train(method_config(preset, args.steps, args.seed), out / name, progress=False)
        seconds[name] = round(time.time() - t0, 1)
        print(runs[name].message, flush=True)
    dataset = make_dataset("city_synth", size=72)  # the training data (drawn at the load size)
    translators = {f"{name}-translated": generator_translator(run.model.G) for name, run in runs.items()}
    t0 = time.time()
    table = adaptation_table(dataset, translators, size=64, steps=args.seg_steps, seed=args.seed)
    seconds["adaptation_table"] = round(time.time() - t0, 1)
    # pictures: 4 test layouts: source | CycleGAN | CUT | CyCADA | the true photo-like render
    src = read_images(dataset / "testA", 64)[:4]
    cols = [src] + [translators[f"{n}-translated"](src) for n in METHODS] + [read_images(dataset / "testA_target", 64)[:4]]
    grid = torch.cat([torch.cat(list(c), dim=1) for c in cols], dim=2)  # (3, 4*64, 5*64)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(ship / "translations.png")
    final_losses = {}
    for name, run in runs.items():
        rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        final_losses[name] = {k: v for k, v in rows[-1].items() if k not in ("step", "epoch", "lr", "time")}
    result = {"table": table, "methods": METHODS, "steps": args.steps, "seg_steps": args.seg_steps, "seed": args.seed,
              "configs": {n: r.cfg.to_dict() for n, r in runs.items()}, "final_losses": final_losses,
              "seconds": seconds, "total_seconds": round(time.time() - start, 1),
              "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (ship / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(table["rows"], indent=1))


if __name__ == "__main__":
    main()
