"""Chapter 12's comparison: SPADE (paired), CUT and CycleGAN (unpaired) on the built-in city labels -> photo
task, the same small budget for each (32 px, ngf = ndf = 16, batch 1, the same steps and seed), scored by
the built-in city segmenter against the input labels (pixel accuracy, class accuracy, mean IoU).

    OMP_NUM_THREADS=1 python experiments/spade_city/run.py [--steps 400] [--seeds 0]

Writes results_<steps>steps.json and comparison_<steps>steps.png (test label maps | SPADE | CUT | CycleGAN |
true photos, seed of the first run) beside this file; the runs go to runs/spade_city/<method>_<steps>steps_seed<k>
(loaded when finished). Each method keeps
its own preset's losses and learning rates (SPADE: TTUR 1e-4 / 4e-4, betas (0, 0.999); CUT, CycleGAN: 2e-4).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cutlib import config as C
from cutlib.benchmarks import city_scores, load_evaluator
from cutlib.data import resolve_dataset
from cutlib.data.splits import load_split
from cutlib.evaluate import translate_images
from cutlib.paths import runs_root
from cutlib.train import load_or_train
from cutlib.viz import save_grid

HERE = Path(__file__).resolve().parent
SIZE = 32
METHODS = {  # each preset's own objective; only the sizes are shared
    "SPADE": ("spade", dict(num_upsampling=3, spade_nhidden=32, n_layers_D=3)),
    "CUT": ("cut", dict(n_blocks=6, num_patches=64)),
    "CycleGAN": ("cyclegan", dict(n_blocks=6)),
}


def config(method: str, steps: int, seed: int) -> C.TrainConfig:
    """The configuration of ``method`` at the comparison's budget (chapter 12 trains SPADE's with the same values)."""
    preset, extra = METHODS[method]
    return C.preset(preset, dataset="city", load_size=SIZE, crop_size=SIZE, ngf=16, ndf=16, batch_size=1, n_epochs=1,
                    n_epochs_decay=0, dataset_len=steps, save_epoch_freq=0, log_every=10, num_samples=4, device="cpu",
                    seed=seed, **extra)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = resolve_dataset("city", size=SIZE)
    data = load_split(root, "test", SIZE)
    evaluator = load_evaluator(root, size=SIZE)  # trained once (300 steps), cached beside the data
    rows, shown = {}, {}
    for method in METHODS:
        per_seed = []
        for seed in seeds:
            cfg = config(method, args.steps, seed)
            start = time.perf_counter()
            run = load_or_train(cfg, runs_root() / "spade_city" / f"{method.lower()}_{args.steps}steps_seed{seed}", progress=False)
            outputs = translate_images(run.model.eval(), data["inputs"])  # (N, 3, S, S) in [0, 1]
            scores = city_scores(evaluator, outputs, data["input_labels"])
            message = run.message.replace(str(runs_root()), "runs")  # no machine paths in the shipped file
            per_seed.append({"seed": seed, "message": message, "seconds": round(time.perf_counter() - start, 1), **scores})
            if seed == seeds[0]:
                shown[method] = outputs[:6]
                rows.setdefault("configs", {})[method] = cfg.to_dict()
            print(method, seed, {k: round(v, 3) for k, v in scores.items()}, run.message)
        keys = [k for k in per_seed[0] if k.startswith("seg_")]
        rows[method] = {"runs": per_seed, **{k: statistics.mean(r[k] for r in per_seed) for k in keys}}
    rows["true photos"] = city_scores(evaluator, data["targets"], data["input_labels"])  # the segmenter's ceiling
    rows.update(steps=args.steps, seeds=seeds, size=SIZE, num_test_images=len(data["inputs"]), torch=torch.__version__,
                threads=torch.get_num_threads(),
                command=f"OMP_NUM_THREADS=1 python experiments/spade_city/run.py --steps {args.steps} --seeds {args.seeds}")
    (HERE / f"results_{args.steps}steps.json").write_text(json.dumps(rows, indent=1) + "\n")
    columns = [data["inputs"][:6], *shown.values(), data["targets"][:6]]
    save_grid([c * 2 - 1 for c in columns], HERE / f"comparison_{args.steps}steps.png")
    print("written:", HERE / f"results_{args.steps}steps.json", HERE / f"comparison_{args.steps}steps.png")


if __name__ == "__main__":
    main()
