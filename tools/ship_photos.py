"""Ship a finished `make photos` run with the course: notebooks/results/photos/ gets its eval.json
(paths made relative), before_after.png (test photos | translations, 64 px thumbnails) and
readme_pair.png, the README's first picture: one drawing of `make demo` and one held-out photo of
`make photos`, each before and after.

    python tools/ship_photos.py [--photos runs/photos] [--demo runs/demo] [--index 0]
    python tools/ship_photos.py --demo-only [--demo runs/demo]   # a new demo run: only the drawing is redrawn

With --demo-only the photo pair of the readme_pair.png already shipped is kept (no runs/photos needed:
that run takes half an hour) and eval.json and before_after.png are left as they are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "notebooks" / "results" / "photos"
TILE, PAD = 128, 4  # readme_pair.png: four 64 px images shown at 2x, one row, 4 px apart


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
    p.add_argument("--demo-only", action="store_true", help="redraw the drawing pair only; keep the shipped photo pair")
    p.add_argument("--out", default=str(OUT), help="folder of the shipped files (default notebooks/results/photos)")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from cutlib.data import sample_images
    from cutlib.evaluate import translate_run
    from cutlib.runs import load_run
    from cutlib.viz import save_grid

    photos, demo, out = Path(args.photos), Path(args.demo), Path(args.out)
    i = args.index
    up = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731  (64 px shown at 128)
    if args.demo_only:
        photo_pair = shipped_photo_pair(out / "readme_pair.png")
    else:
        out.mkdir(parents=True, exist_ok=True)
        report = json.loads((photos / "eval.json").read_text())
        roots = [(str(REPO), "."), (str(REPO.parent), "..")]
        (out / "eval.json").write_text(json.dumps(relative(report, roots), indent=1) + "\n")
        shutil.copyfile(photos / "before_after.png", out / "before_after.png")
        real = translate_run(photos)
        photo_pair = [up(real["inputs"][i:i + 1] * 2 - 1), up(real["outputs"][i:i + 1] * 2 - 1)]
    cfg, model = load_run(demo)
    drawing = sample_images(cfg, i + 1)[i:]
    with torch.no_grad():
        drawn = model.G(drawing)
    save_grid([up(drawing), up(drawn), *photo_pair], out / "readme_pair.png", pad=PAD)
    names = ("readme_pair.png",) if args.demo_only else ("eval.json", "before_after.png", "readme_pair.png")
    print("written:", *(str(out / n) for n in names))
    return 0


def shipped_photo_pair(path: Path) -> list:
    """The two photo tiles (columns 3 and 4) of a readme_pair.png, as (1, 3, 128, 128) tensors in [-1, 1]."""
    from cutlib.images import load_image, to_tensor

    if not path.is_file():
        raise SystemExit(f"--demo-only keeps the photo pair of {path}, which is missing: ship a photos run first")
    pixels = to_tensor(load_image(path))  # (3, H, W) in [-1, 1]
    if pixels.shape[1:] != (TILE + 2 * PAD, 4 * TILE + 5 * PAD):
        raise SystemExit(f"{path} is {pixels.shape[2]}x{pixels.shape[1]} px, not the 4-tile row this tool writes")
    return [pixels[None, :, PAD:PAD + TILE, PAD + j * (TILE + PAD):PAD + j * (TILE + PAD) + TILE] for j in (2, 3)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
