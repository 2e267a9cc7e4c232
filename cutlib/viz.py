"""Pictures of what training does: image grids, loss curves, similarity heat-maps, PCA of features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from cutlib.files import atomic_write
from cutlib.images import to_uint8


def to_image(x: Tensor) -> np.ndarray:
    """(C, H, W) tensor in [-1, 1] -> (H, W, 3) uint8 array (one channel is repeated)."""
    if x.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(x.shape)}")
    x = to_uint8(x)
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
    image = Image.fromarray(image_grid(columns, pad))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


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


# ------------------------------------------------------------- inside the encoder (paper Fig. 7)
@torch.no_grad()
def patch_similarity(encoder, heads, x: Tensor, out: Tensor, query: tuple[int, int],
                     taps: Sequence[str], tau: float = 0.07) -> list[Tensor]:
    """Paper Fig. 7: exp(v . v- / tau) of the OUTPUT patch at pixel ``query`` = (row, col) against every
    INPUT patch, normalised to sum to 1 over the input (a softmax). One (h_l, w_l) map per NCE layer.

    x, out: (1, C, H, W) input and its translation; v = H_l(encoder tap l), as PatchNCE compares them
    (Sec. 3.2); the query pixel is mapped onto each layer's grid by ``encoder.tap_cell``.
    """
    if x.dim() != 4 or x.shape[0] != 1 or x.shape != out.shape:
        raise ValueError(f"x and out must both be one image (1, C, H, W), got {tuple(x.shape)} and {tuple(out.shape)}")
    height, width = x.shape[2:]
    cells = [encoder.tap_cell(tap, query, (height, width)) for tap in taps]  # raises if the query is outside
    feats_k, feats_q = encoder.encode(x, taps), encoder.encode(out, taps)  # lists of (1, C_l, h_l, w_l)
    keys = heads([f[0].flatten(1).t() for f in feats_k])  # list of (h_l*w_l, dim), unit length
    queries = heads([f[0].flatten(1).t() for f in feats_q])
    maps = []
    for f, k, q, (r, c) in zip(feats_k, keys, queries, cells):
        h, w = f.shape[2:]
        maps.append(torch.softmax(k @ q[r * w + c] / tau, dim=0).view(h, w))  # exp(v . v-_j / tau) / sum_j
    return maps


def feature_pca(features: Sequence[Tensor], k: int = 3) -> list[np.ndarray]:
    """Top-k PCA components of feature maps as images, one basis fitted on all of them jointly
    (so colours mean the same in the input and the output). features: list of (C, h, w) -> list of (h, w, k) in [0, 1]."""
    if not features:
        raise ValueError("feature_pca needs at least one (C, h, w) feature map")
    if any(f.dim() != 3 or f.shape[0] != features[0].shape[0] for f in features):
        raise ValueError(f"every feature map must be (C, h, w) with the same C; got {[tuple(f.shape) for f in features]}")
    if features[0].shape[0] < k:
        raise ValueError(f"k={k} components need at least {k} channels, got {features[0].shape[0]}")
    rows = torch.cat([f.detach().float().cpu().flatten(1).t() for f in features])  # (sum h*w, C)
    centred = rows - rows.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # rows of v: principal directions
    proj = centred @ v[:k].t()  # (sum h*w, k)
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    images, start = [], 0
    for f in features:
        h, w = f.shape[1:]
        images.append(proj[start : start + h * w].view(h, w, k).numpy())
        start += h * w
    return images
