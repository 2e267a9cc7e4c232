"""Segmentation scores of label maps: the Cityscapes "FCN score" of pix2pix, CycleGAN and CUT's Table 1
(pixel accuracy, class accuracy, mean IoU), from a confusion matrix; and the small segmenter that the
built-in benchmarks (cutlib/benchmarks.py), CyCADA's frozen f_S and the adaptation experiment share.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _labels(name: str, x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {x.dtype}")
    return x.astype(np.int64).ravel()


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Counts (K, K): row = target class, column = predicted class; target pixels == ignore_index are dropped.

    Confusion matrices of several batches add up: sum them, then call ``scores_from_confusion``.
    """
    p, t = _labels("pred", pred), _labels("target", target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {np.shape(pred)} and {np.shape(target)}")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, x in (("target", t), ("pred", p)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            hint = "" if name == "pred" or ignore_index is not None else " (pass ignore_index for void pixels)"
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), found {x.min()}..{x.max()}{hint}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """pixel_acc, class_acc, mean_iou from a confusion matrix (rows target, columns prediction).

    class_acc: mean recall over the classes present in the target. mean_iou (the paper's "mAP"):
    mean IoU over the classes present in the target or the prediction; classes absent from both are
    excluded (as nanmean does in the pix2pix/CycleGAN Cityscapes evaluation).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    if total == 0:
        raise ValueError("no labelled pixels to score (every target pixel is ignore_index?)")
    hits = np.diagonal(confusion)  # (K,)
    in_target, in_pred = confusion.sum(axis=1), confusion.sum(axis=0)  # (K,), (K,)
    union = in_target + in_pred - hits
    present = in_target > 0
    seen = union > 0
    iou = np.where(seen, hits / np.maximum(union, 1), np.nan)
    return {
        "pixel_acc": float(hits.sum() / total),
        "class_acc": float(np.mean(hits[present] / in_target[present])),
        "mean_iou": float(np.mean(iou[seen])),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "num_pixels": int(total),
    }


def segmentation_scores(pred, target, num_classes: int, ignore_index: int | None = None) -> dict:
    """pixel_acc, class_acc and mean_iou (paper Table 1: pixAcc, classAcc, mAP) of label maps of any shape."""
    return scores_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallUNet(nn.Module):
    """Three scales (widths w, 2w, 4w), skip connections, per-pixel class logits; sizes multiple of 4."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv_bn_relu(3, w), _conv_bn_relu(w, w))  # (N, w, S, S)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w))  # (N, 2w, S/2, S/2)
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w))  # (N, 4w, S/4, S/4)
        self.dec2 = _conv_bn_relu(4 * w + 2 * w, 2 * w)  # (N, 2w, S/2, S/2)
        self.dec1 = _conv_bn_relu(2 * w + w, w)  # (N, w, S, S)
        self.head = nn.Conv2d(w, num_classes, 1)  # (N, K, S, S)
        self.feature_dims = 8 * w  # mean and std of the bottleneck

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e1 = self.enc1(2 * x - 1)  # images in [0, 1] -> [-1, 1]
        e2 = self.enc2(e1)
        return e1, e2, self.enc3(e2)

    def forward(self, x: Tensor) -> Tensor:
        e1, e2, e3 = self.encode(x)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2, mode="bilinear"), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2, mode="bilinear"), e1], dim=1))
        return self.head(d1)

    def features(self, x: Tensor) -> Tensor:
        """Mean and standard deviation of the bottleneck over positions: (N, 8w); the std sees texture (stripes)."""
        e3 = self.encode(x)[2].flatten(2)  # (N, 4w, S*S/16)
        return torch.cat([e3.mean(dim=2), e3.std(dim=2)], dim=1)


def train_segmenter(images: Tensor, labels: Tensor, num_classes: int, steps: int = 300, batch_size: int = 16,
                    width: int = 8, lr: float = 3e-3, seed: int = 0) -> SmallUNet:
    """A SmallUNet trained on ``images`` (N, 3, S, S) in [0, 1] and their class maps ``labels`` (N, S, S), by the
    recipe of the built-in city evaluator (cutlib/benchmarks.py): Adam with a linear decay to 0, random
    horizontal flips, cross-entropy; seeded (initialisation and batches), the global RNG untouched. Eval mode."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, 3, S, S) in [0, 1], got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0], *images.shape[2:]) or labels.is_floating_point():
        raise ValueError(f"labels must be integer class maps (N, S, S) = {(images.shape[0], *images.shape[2:])}, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found {int(labels.min())}..{int(labels.max())}")
    if images.shape[-1] % 4 or images.shape[-2] % 4:
        raise ValueError(f"image sides must be multiples of 4 (two poolings), got {tuple(images.shape[-2:])}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        net = SmallUNet(num_classes, width)
    net.final_loss = fit_segmenter(net, images, labels.long(), steps, batch_size, lr, generator)
    return net.eval()


def fit_segmenter(net: nn.Module, images: Tensor, labels: Tensor, steps: int, batch_size: int, lr: float,
                  generator: torch.Generator, mix=None, progress: str | None = None) -> float:
    """The training loop of every course segmenter: random batches of (images, labels), random horizontal
    flips, cross-entropy, Adam with a linear decay to 0. ``mix(x, y, generator) -> (x, y)`` may change a
    batch before the flips (the stripes evaluator's noise images); ``progress``: a tqdm label. Returns the
    last loss; ``net`` is left in train mode."""
    from tqdm.auto import tqdm

    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    for _ in tqdm(range(steps), disable=progress is None, desc=progress):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = images[idx], labels[idx]  # (B, 3, S, S), (B, S, S)
        if mix is not None:
            x, y = mix(x, y, generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = torch.where(flip[:, None, None], y.flip(2), y)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss.item()


@torch.no_grad()
def predict_labels(net: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Per-pixel class ids (N, S, S) of a segmenter on images (N, 3, S, S) in [0, 1], in eval mode, on the CPU."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = torch.cat([net(b.to(device)).argmax(dim=1).cpu() for b in images.split(batch_size)])
    net.train(was_training)
    return out
