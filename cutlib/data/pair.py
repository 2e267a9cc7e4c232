"""The built-in single-image pair ``sincut_pair``: SinCUT's data set, offline, in seconds.

Domain A is scikit-image's *coffee* photo (Rachel Michetti, CC0); domain B is its *chelsea* photo
(Stefan van der Walt, CC0) rendered like a painting: flat superpixels recoloured with a five-colour
palette by brightness, and dark outlines. A SinCUT model trained on the pair learns B's style from
one image and keeps A's content (the cup, saucer and spoon) in place.

    ROOT/sincut_pair/trainA/coffee.png            the photo to translate (400 x 600)
    ROOT/sincut_pair/trainB/chelsea_painting.png  the style to learn (300 x 451)
    ROOT/sincut_pair/meta.json                    sources, licence, version

Written once into the data folder (through cutlib.files.staged_folder, so never half-made); the
rendering has no randomness, so the same bytes come out every time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cutlib.files import staged_folder
from cutlib.paths import data_root

PAIR_VERSION = 1
PALETTE = ((20, 30, 90), (40, 80, 170), (90, 140, 200), (230, 190, 60), (250, 235, 160))  # dark blue to pale yellow
OUTLINE = (15, 15, 40)
FILES = {"A": "coffee.png", "B": "chelsea_painting.png"}


def painting(photo: np.ndarray, n_segments: int = 600, palette=PALETTE) -> np.ndarray:
    """A painting-like rendering of an (H, W, 3) uint8 photo: SLIC superpixels filled with their mean
    colour, that colour replaced by one of ``palette`` by brightness, and dark outlines. (H, W, 3) uint8."""
    import skimage.color
    import skimage.segmentation

    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be an (H, W, 3) uint8 array, got shape {photo.shape} and dtype {photo.dtype}")
    if len(palette) < 2:
        raise ValueError(f"palette needs at least two colours, got {len(palette)}")
    segments = skimage.segmentation.slic(photo, n_segments=n_segments, compactness=10, start_label=0)
    flat = skimage.color.label2rgb(segments, photo, kind="avg", bg_label=-1)  # mean colour per superpixel
    lum = skimage.color.rgb2gray(flat)
    level = np.clip((lum - lum.min()) / (np.ptp(lum) + 1e-8) * len(palette), 0, len(palette) - 1).astype(int)
    out = np.asarray(palette, dtype=np.uint8)[level]
    out[skimage.segmentation.find_boundaries(segments, mode="thick")] = OUTLINE
    return out


def _fill(tmp: Path) -> None:
    import skimage.data

    for domain, image in (("A", skimage.data.coffee()), ("B", painting(skimage.data.chelsea()))):
        (tmp / f"train{domain}").mkdir()
        Image.fromarray(image).save(tmp / f"train{domain}" / FILES[domain])
    meta = dict(name="sincut_pair", version=PAIR_VERSION, licence="CC0 (scikit-image's sample photos)",
                A="scikit-image coffee (Rachel Michetti)",
                B="scikit-image chelsea (Stefan van der Walt), rendered by cutlib.data.pair.painting")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def make_pair(root: str | Path | None = None) -> Path:
    """The folder of the built-in pair under ``root`` (default cutlib.paths.data_root()), written on
    first use: trainA/ and trainB/ with one image each. A folder from an older version is rebuilt."""
    final = Path(root if root is not None else data_root()) / "sincut_pair"
    meta = final / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("version") == PAIR_VERSION:
        return final
    if final.exists():
        shutil.rmtree(final)
    return staged_folder(final, _fill, keep_existing=True)
