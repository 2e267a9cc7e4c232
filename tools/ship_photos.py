"""Ship a finished `make photos` run with the course: notebooks/results/photos/ gets its eval.json
(paths made relative), before_after.png (test photos | translations, 64 px thumbnails) and
readme_pair.png, the README's first picture: one drawing of `make demo` and one held-out photo of
`make photos`, each before and after.

    python tools/ship_photos.py [--photos runs/photos] [--demo runs/demo] [--index 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "notebooks" / "results" / "photos"


def relative(value, roots):
    """Strings holding an absolute path under one of ``roots`` become paths relative to it (recursively)."""
    if isinstance(value, dict):
        return {k: relative(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v, roots) for v in value]
    if isinstance(value, str):
        for root, name in roots:
            if value.startswith(root):
                return name + value[len(root):]
    return value


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default="runs/photos")
    p.add_argument("--demo", default="runs/demo")
    p.add_argument("--index", type=int, default=0, help="which test image of each run the README shows")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from cutlib.data import sample_images
    from cutlib.evaluate import translate_run
    from cutlib.runs import load_run
    from cutlib.viz import save_grid

    photos, demo = Path(args.photos), Path(args.demo)
    OUT.mkdir(parents=True, exist_ok=True)
    report = json.loads((photos / "eval.json").read_text())
    roots = [(str(REPO), "."), (str(REPO.parent), "..")]
    (OUT / "eval.json").write_text(json.dumps(relative(report, roots), indent=1) + "\n")
    shutil.copyfile(photos / "before_after.png", OUT / "before_after.png")

    real = translate_run(photos)
    cfg, model = load_run(demo)
    drawing = sample_images(cfg, args.index + 1)[args.index:]
    with torch.no_grad():
        drawn = model.G(drawing)
    i = args.index
    up = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    row = [up(drawing), up(drawn), up(real["inputs"][i:i + 1] * 2 - 1), up(real["outputs"][i:i + 1] * 2 - 1)]
    save_grid(row, OUT / "readme_pair.png", pad=4)
    print("written:", *(str(OUT / n) for n in ("eval.json", "before_after.png", "readme_pair.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
