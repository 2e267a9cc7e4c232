"""Scoring swaps against the truth: on the built-in ``stripes`` data every image is a scene whose
structure (the animal's shape, pose and place, the background) and texture (a smooth or a striped
coat) are known, so the hybrid "structure of image 1, texture of image 2" can be rendered exactly
(cutlib.data.stripes.render) and a swap can be scored against it (thesis ch. 4 has no such truth):

    structure_iou   IoU of the animal found in the output (the stripes segmenter of cutlib.benchmarks)
                    and the STRUCTURE source's animal mask
    texture_score   mean probability, over the structure source's animal pixels, of the TEXTURE
                    source's coat class (smooth-coated or striped animal)
    hybrid_l1       mean |output - ground-truth hybrid|, images in [0, 1]
    rec_l1, rec_psnr  of the reconstructions G(E(x)) against x (PSNR in dB, peak 1)

    data = swap_data(resolve_dataset("stripes", size=64), n=8, size=64)
    scores = evaluate_swaps(model, data, load_evaluator(data["dataset_dir"]))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cutlib.benchmarks import SMOOTH, STRIPED, BuiltinEvaluator
from cutlib.data.splits import read_images, read_labels
from cutlib.data.stripes import render, scene_of


def _stripes_meta(dataset_dir: Path) -> dict:
    meta_path = dataset_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("name") != "stripes":
        raise ValueError(f"{dataset_dir} is not the built-in stripes dataset (its meta.json does not name it): the "
                         "ground-truth hybrids exist for stripes only; make it with python -m cutlib datasets stripes")
    return meta


def hybrids(dataset_dir: str | Path, structures: list[tuple[str, int]], textures: list[tuple[str, int]],
            size: int | None = None) -> tuple[Tensor, Tensor]:
    """Ground-truth hybrids of the stripes dataset in ``dataset_dir``: for each pair k, the scene
    structures[k] = (split, index) wearing the coat of textures[k]. Returns (images (N, 3, S, S) in
    [0, 1], animal masks (N, S, S) int64), rendered at the dataset's size and resized to ``size``
    (bicubic, as the dataset's images are read; masks nearest)."""
    dataset_dir = Path(dataset_dir)
    meta = _stripes_meta(dataset_dir)
    if len(structures) != len(textures):
        raise ValueError(f"structures and textures must pair up, got {len(structures)} and {len(textures)} scenes")
    size = size or meta["size"]
    images, masks = [], []
    for (s_split, s_i), (t_split, t_i) in zip(structures, textures):
        image, mask = render(scene_of(s_split, s_i, meta["size"], meta["seed"]), scene_of(t_split, t_i, meta["size"], meta["seed"]))
        images.append(np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255)
        masks.append(np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST)))
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(np.stack(masks).astype(np.int64)))


def swap_scores(evaluator: BuiltinEvaluator, outputs: Tensor, structure_masks: Tensor, texture_striped: Tensor,
                targets: Tensor | None = None) -> dict[str, float]:
    """structure_iou, texture_score (and hybrid_l1 against ``targets``) of swaps ``outputs`` (N, 3, S, S)
    in [0, 1]; structure_masks (N, S, S) the structure sources' animals; texture_striped (N,) bool,
    whether each texture source wears stripes."""
    if not (len(outputs) == len(structure_masks) == len(texture_striped)):
        raise ValueError(f"outputs, structure_masks and texture_striped must have one length, got "
                         f"{len(outputs)}, {len(structure_masks)} and {len(texture_striped)}")
    probs = evaluator.probabilities(outputs)  # (N, 3, S, S)
    if probs.shape[-2:] != structure_masks.shape[-2:]:
        raise ValueError(f"structure_masks must be {tuple(probs.shape[-2:])} (the evaluator's size), got {tuple(structure_masks.shape[-2:])}")
    found, truth = probs.argmax(dim=1) > 0, structure_masks > 0
    inter, union = (found & truth).sum(dim=(1, 2)).float(), (found | truth).sum(dim=(1, 2)).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    wanted = torch.where(texture_striped.bool(), STRIPED, SMOOTH)  # (N,) class of the texture source's coat
    p_coat = probs.gather(1, wanted.view(-1, 1, 1, 1).expand(-1, 1, *probs.shape[-2:]))[:, 0]  # (N, S, S)
    texture = (p_coat * truth).sum(dim=(1, 2)) / truth.sum(dim=(1, 2)).clamp(min=1)
    scores = {"structure_iou": float(iou.mean()), "texture_score": float(texture.mean())}
    if targets is not None:
        scores["hybrid_l1"] = float((outputs - targets).abs().mean())
    return scores


def reconstruction_scores(reconstructions: Tensor, originals: Tensor) -> dict[str, float]:
    """rec_l1 (mean absolute error) and rec_psnr (mean over images of 10 log10(1 / MSE), dB), images in [0, 1]."""
    mse = (reconstructions - originals).pow(2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return {"rec_l1": float((reconstructions - originals).abs().mean()), "rec_psnr": float((10 * torch.log10(1 / mse)).mean())}


def swap_data(dataset_dir: str | Path, n: int = 8, size: int = 64) -> dict:
    """The first n test images of each domain of a stripes dataset, with masks, the names of their
    scenes and the ground-truth hybrids both ways (structure of testA[i] with the coat of testB[i] and
    the reverse), all at ``size`` px in [0, 1]."""
    dataset_dir = Path(dataset_dir)
    _stripes_meta(dataset_dir)
    a, b = read_images(dataset_dir / "testA", size)[:n], read_images(dataset_dir / "testB", size)[:n]
    n = min(len(a), len(b))
    names_a, names_b = [("testA", i) for i in range(n)], [("testB", i) for i in range(n)]
    ab, ab_masks = hybrids(dataset_dir, names_a, names_b, size)  # structure A, texture B: a zebra in A's pose
    ba, ba_masks = hybrids(dataset_dir, names_b, names_a, size)  # structure B, texture A
    return {"dataset_dir": dataset_dir, "A": a[:n], "B": b[:n],
            "A_labels": read_labels(dataset_dir / "testA_labels", size)[:n], "B_labels": read_labels(dataset_dir / "testB_labels", size)[:n],
            "AB": ab, "AB_masks": ab_masks, "BA": ba, "BA_masks": ba_masks}


@torch.no_grad()
def run_swaps(model, structures: Tensor, textures: Tensor) -> Tensor:
    """model.swap on images in [0, 1] at the model's crop size -> (N, 3, S, S) in [0, 1]."""
    device = next(model.G.parameters()).device
    s, t = (torch.nn.functional.interpolate(x, size=(model.cfg.crop_size,) * 2, mode="bilinear", antialias=True,
                                            align_corners=False) * 2 - 1 for x in (structures, textures))
    out = model.swap(s.to(device), t.to(device)).cpu().clamp(-1, 1) * 0.5 + 0.5
    return torch.nn.functional.interpolate(out, size=structures.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def evaluate_swaps(model, data: dict, evaluator: BuiltinEvaluator) -> dict:
    """Scores of ``model`` (with swap(), e.g. the Swapping Autoencoder) on ``data`` (swap_data): swaps
    both ways, each against its ground-truth hybrid, and the reconstructions of both domains. Returns
    {"AB": {...}, "BA": {...}, "reconstruction": {...}, "outputs": {"AB", "BA", "rec_A", "rec_B"}}."""
    n = len(data["A"])
    outputs = {"AB": run_swaps(model, data["A"], data["B"]), "BA": run_swaps(model, data["B"], data["A"]),
               "rec_A": run_swaps(model, data["A"], data["A"]), "rec_B": run_swaps(model, data["B"], data["B"])}
    striped, smooth = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    return {"AB": swap_scores(evaluator, outputs["AB"], data["A_labels"], striped, data["AB"]),
            "BA": swap_scores(evaluator, outputs["BA"], data["B_labels"], smooth, data["BA"]),
            "reconstruction": reconstruction_scores(torch.cat([outputs["rec_A"], outputs["rec_B"]]), torch.cat([data["A"], data["B"]])),
            "outputs": outputs}
