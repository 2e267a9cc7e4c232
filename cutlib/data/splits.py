"""One split of a dataset as tensors, with whatever ground truth the dataset has (built-in ones: labels
and the true translations), at the size the evaluators work at.

    data = load_split(resolve_dataset("stripes"), "test", size=64)
    data["inputs"], data["real"]      # (N, 3, 64, 64) in [0, 1]: testA and testB
    data["input_labels"]              # (N, 64, 64) class ids of testA (None for plain folders)

Unreadable images are skipped with one warning naming them (as training and translation do); a label
map or true translation belongs to the image of the same file stem (0007.png <-> 0007.png).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cutlib.data.folders import readable_images
from cutlib.data.synthetic import BUILTIN
from cutlib.images import list_images, load_image


def read_images(folder: str | Path, size: int) -> Tensor:
    """The readable images of ``folder`` as (N, 3, size, size) in [0, 1], resized bicubic (as the trainer's test-time loading)."""
    return _images(_image_paths(folder), size)


def read_labels(folder: str | Path, size: int) -> Tensor:
    """The readable label maps of ``folder`` (uint8 class ids) as (N, size, size) int64, resized nearest."""
    return _labels(_image_paths(folder), size)


def _images(paths: list[Path], size: int) -> Tensor:
    arrays = [np.asarray(load_image(p).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _labels(paths: list[Path], size: int) -> Tensor:
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.resize((size, size), Image.Resampling.NEAREST)))
    return torch.from_numpy(np.stack(arrays).astype(np.int64))


def _image_paths(folder: str | Path, readable: bool = True) -> list[Path]:
    """The image files of ``folder`` (without the unreadable ones, named in one warning, when ``readable``)."""
    folder = Path(folder)
    paths = list_images(folder) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no images in {folder}: expected a folder of .png/.jpg files (the dataset's split folders)")
    paths = readable_images(paths, stacklevel=4) if readable else paths
    if not paths:
        raise FileNotFoundError(f"no readable image in {folder} (all files failed to decode)")
    return paths


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in paths:
        stem = str(p.relative_to(folder).with_suffix(""))
        if stem in found:
            raise ValueError(f"{found[stem]} and {p} have the same name: keep one file per image in {folder}")
        found[stem] = p
    return found


def _few(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def paired_paths(images: list[Path], image_folder: str | Path, folder: str | Path) -> list[Path]:
    """The file of ``folder`` with the stem of each of ``images`` (files of ``image_folder``), in their order.

    A missing or an extra file (no image of that stem; unreadable images excepted) is a ValueError naming a few.
    """
    image_folder, folder = Path(image_folder), Path(folder)
    everything = _by_stem(list_images(image_folder), image_folder)  # unreadable images too: their labels are not extra
    wanted = list(_by_stem(images, image_folder))
    found = _by_stem(_image_paths(folder), folder)
    missing = [s for s in wanted if s not in found]
    extra = [s for s in found if s not in everything]
    if missing or extra:
        parts = ([f"no file for the image(s) {_few(missing)}"] if missing else []) + (
            [f"no image of {image_folder.name} for {_few(extra)}"] if extra else [])
        raise ValueError(f"{folder} does not match {image_folder} by file name: {'; '.join(parts)}. Each image needs the "
                         "file of the same name (e.g. 0007.png for 0007.jpg); add, remove or rename those files")
    return [found[s] for s in wanted]


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
    targets ({split}A_target, the true translations) or None; input_paths, real_paths (the files read).
    Ground truth is paired with its image by file stem.
    """
    root = Path(dataset_dir)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths = {"A": _image_paths(root / f"{split}A"), "B": _image_paths(root / f"{split}B")}
    data = {"inputs": _images(paths["A"], size), "real": _images(paths["B"], size),
            "input_paths": paths["A"], "real_paths": paths["B"]}
    for key, domain, suffix, reader in (("input_labels", "A", "_labels", _labels), ("real_labels", "B", "_labels", _labels),
                                        ("targets", "A", "_target", _images)):
        folder = root / f"{split}{domain}{suffix}"
        data[key] = reader(paired_paths(paths[domain], root / f"{split}{domain}", folder), size) if folder.is_dir() else None
    return data
