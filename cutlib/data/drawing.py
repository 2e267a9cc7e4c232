"""Drawing helpers of the built-in datasets (cutlib/data/stripes.py, cutlib/data/city.py) and the
writer of their splits: every image draws from its own generator seeded by (seed, split, index).

All drawing happens on an (S, S) grid of pixel centres in units of the image width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"trainA": 1, "trainB": 2, "testA": 3, "testB": 4}  # stream ids for the seeds


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    return (u + 0.5) / size, (v + 0.5) / size  # u: x / S, v: y / S, both (S, S)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random (cells x cells) grid upsampled bicubically to (S, S)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.clip(np.asarray(Image.fromarray(grid, "F").resize((size, size), Image.Resampling.BICUBIC)), 0, 1)


def fractal(rng: np.random.Generator, size: int, octaves: int = 4, base: int = 3) -> np.ndarray:
    """Sum of value-noise octaves (cells base, 2*base, ...), normalised to [0, 1]."""
    total = sum(0.5**o * smooth_noise(rng, size, base * 2**o) for o in range(octaves))
    return total / sum(0.5**o for o in range(octaves))


def segment_distance(u, v, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to the segment p0-p1, and its position t along it (0..1, unclipped)."""
    d = np.subtract(p1, p0)
    t = ((u - p0[0]) * d[0] + (v - p0[1]) * d[1]) / max(float(d @ d), 1e-12)
    tc = np.clip(t, 0, 1)
    return np.hypot(u - p0[0] - tc * d[0], v - p0[1] - tc * d[1]), t


def clip_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)



def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def write_splits(out: Path, n_train: int, n_test: int, seed: int, draw) -> None:
    """Write every split of the unaligned layout and its ground truth. ``draw(rng, split)`` returns one
    scene as {folder suffix: uint8 array}: "" the image, "_labels", and for testA "_target", "_target_labels"
    (a writer may add such folders to other splits: city's trainA_target)."""
    counts = {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test}
    for split, n in counts.items():
        folders = [split, split + "_labels"] + (["testA_target", "testA_target_labels"] if split == "testA" else [])
        for folder in folders:
            (out / folder).mkdir()
        for i in range(n):
            rng = np.random.default_rng([seed, SPLITS[split], i])  # one stream per image: same seed, same bytes
            for suffix, array in draw(rng, split).items():
                (out / f"{split}{suffix}").mkdir(exist_ok=True)  # a writer's extra folders (city: trainA_target)
                save_png(array, out / f"{split}{suffix}" / f"{i:05d}.png")
