"""The course's demos. ``make demo``: train CUT on the built-in ``stripes`` data for a few minutes on a
CPU and write a before/after grid, the loss curves and the metrics into ``runs/demo/``. ``make photos``
(``python -m cutlib demo --photos [DATASET]``): the ``laptop`` preset on real photos (horse2zebra from
the catalog, downloaded on first use, or any folder with trainA/trainB/testA/testB), scored by the
photo evaluator (cutlib.photos), into ``runs/photos/``.

Chapter 4 shows the first run when it exists, chapter 10 the second. Interrupted? Run it again: it resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# 750 steps (1,200 before): chapter 4, which trains this run, then takes 3 minutes on a 2-core CPU without
# AVX-512. Stripe score on 100 held-out drawings after 750 / 1,200 steps: 0.93 / 0.95 (seed 0, one torch thread),
# 0.92 / 0.97 (seed 1, one thread), 0.91 / 0.96 (seed 0, two threads: other roundings, another run); the animal's
# outline kept alike (IoU 0.46 / 0.48, 0.36 / 0.38, 0.45 / 0.41). After 500 steps 0.69 and 0.86; after 700
# 0.94, 0.94 and 0.80.
DEMO_STEPS = 750


def demo_config(steps: int = DEMO_STEPS, seed: int = 0):
    """make demo's run: CUT at the course's laptop scale (cpu_scale) for ``steps`` steps, a sample grid every
    100 steps. Chapter 4 trains (or loads) the same run."""
    from cutlib.config import cpu_scale

    return cpu_scale("cut", seed=seed, max_steps=steps, sample_every=100)


def before_after(run: Path, n: int = 8) -> Path:
    """runs/demo/before_after.png: test inputs | untrained generator | trained generator."""
    import torch

    from cutlib.data import sample_images
    from cutlib.models import build_model
    from cutlib.runs import load_run
    from cutlib.viz import save_grid

    cfg, model = load_run(run)
    inputs = sample_images(cfg, n)
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg).G.eval()  # a freshly initialised generator: what training starts from
    with torch.no_grad():
        return save_grid([inputs, untrained(inputs), model.G(inputs)], run / "before_after.png")


def photo_grid(run: Path, n: int = 8) -> Path:
    """RUN/before_after.png: the first n test photos of domain A | their translations."""
    from cutlib.evaluate import translate_run
    from cutlib.viz import save_grid

    result = translate_run(run)
    return save_grid([result["inputs"][:n] * 2 - 1, result["outputs"][:n] * 2 - 1], run / "before_after.png")


def photos(dataset: str, out: Path, steps: int | None = None, evaluator_steps: int | None = None) -> dict:
    """``make photos``: train ``laptop`` on ``dataset`` into ``out`` (resuming), evaluate it, draw it; eval.json's dict."""
    import time

    from cutlib.config import preset
    from cutlib.data import resolve_dataset
    from cutlib.data.catalog import load_catalog
    from cutlib.data.download import download_dataset
    from cutlib.evaluate import evaluate_run
    from cutlib.train import train

    start = time.perf_counter()
    try:
        folder = resolve_dataset(dataset)
    except FileNotFoundError:
        if dataset not in load_catalog():
            raise
        print(f"Downloading {dataset} (the catalog's entry; once) ...")
        folder = download_dataset(dataset)
    cfg = preset("laptop", dataset=str(folder), **({"max_steps": steps} if steps else {}))
    print(f"Training the laptop preset on {folder} ({cfg.crop_size} px, precision {cfg.precision}) into {out} ...")
    train(cfg, out, resume=True)
    report = evaluate_run(out, evaluator_steps=evaluator_steps, progress=True)
    paths = [photo_grid(out), loss_plot(out, "CUT, laptop preset, on real photos (make photos)")]
    final = report["final"]["metrics"]
    print(f"final step {report['final']['step']}: target rate {final['target_rate']:.2f} (inputs "
          f"{final['target_rate_inputs']:.2f}), structure {final['structure']:.2f}, "
          f"KID {final['kid_mean']:.3g} (untranslated inputs {final['kid_inputs']:.3g})")
    print(report["evaluator"]["note"])
    print(f"{time.perf_counter() - start:.0f} s in all. Written:", *(str(p) for p in paths), str(out / "eval.json"), sep="\n  ")
    return report


def loss_plot(run: Path, title: str = "CUT on stripes (make demo)") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cutlib.viz import plot_losses

    ax = plot_losses(run / "metrics.jsonl", smooth=10)
    ax.set_title(title)
    path = run / "losses.png"
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cutlib demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default {DEMO_STEPS}; with --photos the laptop preset's own)")
    parser.add_argument("--photos", nargs="?", const="horse2zebra", default=None, metavar="DATASET",
                        help="real photos instead: a catalog name (default horse2zebra, downloaded on first use) "
                             "or a folder with trainA/trainB/testA/testB; the run goes to runs/photos unless --out")
    parser.add_argument("--evaluator-steps", type=int, default=None,
                        help="--photos: training steps of the photo classifier when not cached (default 600)")
    args = parser.parse_args(argv)
    if args.photos is not None:
        try:
            photos(args.photos, Path(args.out if args.out != "runs/demo" else "runs/photos"), args.steps,
                   args.evaluator_steps)
        except (ValueError, OSError) as err:  # a missing dataset, a failed download, a full disk
            print(f"cutlib demo --photos: {err}", file=sys.stderr)
            return 1
        return 0
    args.steps = args.steps or DEMO_STEPS

    from cutlib.train import train

    out = Path(args.out)
    cfg = demo_config(args.steps)
    print(f"Training CUT on the built-in stripes data ({args.steps} steps at 64 px) into {out} ...")
    summary = train(cfg, out, resume=True)
    paths = [before_after(out), loss_plot(out)]
    print(json.dumps(summary, indent=2))
    print("Written:", *(str(p) for p in paths), str(out / "metrics.jsonl"), str(out / "samples"), sep="\n  ")
    return 0
