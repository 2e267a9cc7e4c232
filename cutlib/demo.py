"""The course's main demo (``make demo``): train CUT on the built-in ``stripes`` data for a few
minutes on a CPU and write a before/after grid, the loss curves and the metrics into ``runs/demo/``.

Chapter 4 shows this run when it exists. Interrupted? Run it again: it resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEMO_STEPS = 1200


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


def loss_plot(run: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cutlib.viz import plot_losses

    ax = plot_losses(run / "metrics.jsonl", smooth=10)
    ax.set_title("CUT on stripes (make demo)")
    path = run / "losses.png"
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cutlib demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default {DEMO_STEPS})")
    args = parser.parse_args(argv)

    from cutlib.config import cpu_scale
    from cutlib.train import train

    out = Path(args.out)
    cfg = cpu_scale("cut", max_steps=args.steps, sample_every=200)
    print(f"Training CUT on the built-in stripes data ({args.steps} steps at 64 px) into {out} ...")
    summary = train(cfg, out, resume=True)
    paths = [before_after(out), loss_plot(out)]
    print(json.dumps(summary, indent=2))
    print("Written:", *(str(p) for p in paths), str(out / "metrics.jsonl"), str(out / "samples"), sep="\n  ")
    return 0
