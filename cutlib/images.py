"""Image files: which files are images, how one is read, and how pixels become tensors and back.

Two pixel conventions meet here: the networks work in [-1, 1] (``to_tensor``), FID/KID in [0, 1]
(``to_tensor(img, unit=True)``); ``to_uint8`` is the one way back to 8-bit pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The image files in ``folder`` (sub-folders too unless ``recursive=False``; any extension case), sorted."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_image(path: str | Path, input_nc: int = 3, exif: bool = True) -> Image.Image:
    """Open an image as RGB (or "L" when ``input_nc == 1``).

    Grayscale, palette, CMYK and RGBA files are converted (alpha is dropped, as the reference does);
    16-bit grayscale is scaled to 8 bits. ``exif``: apply the EXIF orientation (training and
    translation do; FID does not, as pytorch-fid reads the stored pixels).
    """
    if input_nc not in (1, 3):
        raise ValueError(f"input_nc must be 1 or 3, got {input_nc}")
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img) if exif else img
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit integer grayscale
            arr = np.asarray(img, dtype=np.float64)
            scale = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if img.mode == "P":
            img = img.convert("RGBA")  # palette with transparency: go through RGBA first
        return img.convert("RGB" if input_nc == 3 else "L")


def to_tensor(img: Image.Image, unit: bool = False) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [-1, 1] (``unit=True``: in [0, 1])."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / 255.0 if unit else arr / 127.5 - 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (any shape) -> uint8 in [0, 255], clamped and rounded: what a saved PNG holds."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
