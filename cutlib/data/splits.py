"""One split of a dataset as tensors, with whatever ground truth the dataset has (built-in ones: labels
and the true translations), at the size the evaluators work at.

    data = load_split(resolve_dataset("stripes"), "test", size=64)
    data["inputs"], data["real"]      # (N, 3, 64, 64) in [0, 1]: testA and testB
    data["input_labels"]              # (N, 64, 64) class ids of testA (None for plain folders)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cutlib.data.synthetic import BUILTIN
from cutlib.images import list_images, load_image


def read_images(folder: str | Path, size: int) -> Tensor:
    """The images of ``folder`` as (N, 3, size, size) in [0, 1], resized bicubic (as the trainer's test-time loading)."""
    paths = _image_paths(folder)
    arrays = [np.asarray(load_image(p).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_labels(folder: str | Path, size: int) -> Tensor:
    """The label maps of ``folder`` (uint8 class ids) as (N, size, size) int64, resized nearest."""
    arrays = []
    for p in _image_paths(folder):
        with Image.open(p) as im:
            arrays.append(np.asarray(im.resize((size, size), Image.Resampling.NEAREST)))
    return torch.from_numpy(np.stack(arrays).astype(np.int64))


def _image_paths(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    paths = list_images(folder) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no images in {folder}: expected a folder of .png/.jpg files (the dataset's split folders)")
    return paths


def benchmark_of(dataset_dir: str | Path) -> str | None:
    """"stripes" or "city" when ``dataset_dir`` is a built-in dataset (its meta.json says so), else None."""
    meta = Path(dataset_dir) / "meta.json"
    if not meta.is_file():
        return None
    name = json.loads(meta.read_text()).get("name")
    return name if name in BUILTIN else None


def load_split(dataset_dir: str | Path, split: str = "test", size: int = 64) -> dict:
    """One split of a dataset at ``size`` px: inputs ({split}A), real ({split}B) and whatever ground truth exists.

    Keys: inputs, real (N, 3, S, S) in [0, 1]; input_labels, real_labels (N, S, S) or None;
    targets ({split}A_target, the true translations) or None.
    """
    root = Path(dataset_dir)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = {"inputs": read_images(root / f"{split}A", size), "real": read_images(root / f"{split}B", size)}
    for key, folder, reader in (("input_labels", f"{split}A_labels", read_labels), ("real_labels", f"{split}B_labels", read_labels),
                                ("targets", f"{split}A_target", read_images)):
        data[key] = reader(root / folder, size) if (root / folder).is_dir() else None
    return data
