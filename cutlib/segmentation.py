"""Segmentation scores of label maps: the Cityscapes "FCN score" of pix2pix, CycleGAN and CUT's Table 1
(pixel accuracy, class accuracy, mean IoU), from a confusion matrix.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


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
