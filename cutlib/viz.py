"""Pictures of what training does: image grids, loss curves, similarity heat-maps, PCA of features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def to_image(x: Tensor) -> np.ndarray:
    """(C, H, W) tensor in [-1, 1] -> (H, W, 3) uint8 array (one channel is repeated)."""
    if x.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(x.shape)}")
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def image_grid(columns: Sequence[Tensor], pad: int = 2) -> np.ndarray:
    """Grid of images in [-1, 1]: columns[j] is a (N, C, H, W) batch shown as column j. -> (H', W', 3) uint8."""
    if not columns:
        raise ValueError("image_grid needs at least one column")
    n, _, h, w = columns[0].shape
    if any(c.shape[0] != n or c.shape[2:] != (h, w) for c in columns):
        raise ValueError(f"every column must be (N, C, H, W) with N={n}, H={h}, W={w}; got {[tuple(c.shape) for c in columns]}")
    grid = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(n):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = to_image(col[i])
    return grid


def save_grid(columns: Sequence[Tensor], path: str | Path, pad: int = 2) -> Path:
    """Write image_grid(columns) as a PNG (atomically: a reader never sees half a file)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(image_grid(columns, pad)).save(tmp)
    tmp.replace(path)
    return path


def read_metrics(path: str | Path) -> dict[str, list]:
    """metrics.jsonl -> {"step": [...], "D": [...], ...} (missing values as NaN)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    keys = sorted({k for row in rows for k in row})
    return {k: [row.get(k, float("nan")) for row in rows] for k in keys}


def plot_losses(metrics: dict[str, list] | str | Path, keys: Sequence[str] | None = None, ax=None, smooth: int = 1):
    """Loss curves against the step, one line per loss; smooth = moving-average window."""
    import matplotlib.pyplot as plt

    if not isinstance(metrics, dict):
        metrics = read_metrics(metrics)
    skip = {"step", "epoch", "lr", "time", "seconds"}
    keys = keys or [k for k in metrics if k not in skip and isinstance(metrics[k][0], (int, float))]
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    steps = np.asarray(metrics["step"])
    for key in keys:
        values = np.asarray(metrics[key], dtype=float)
        if smooth > 1 and len(values) >= smooth:
            kernel = np.ones(smooth) / smooth
            values = np.convolve(values, kernel, mode="valid")
            ax.plot(steps[smooth - 1 :], values, label=key)
        else:
            ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return ax

