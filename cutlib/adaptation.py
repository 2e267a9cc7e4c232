"""The adaptation experiment of CyCADA (thesis Sec. 3.4.3, Table 3.8) on a dataset with labels on both sides
(the built-in city_synth): train the target model f_T on

    source only    the source images with the source labels
    translated     the source images translated by a generator (CycleGAN, CUT, CyCADA) with the source labels
    target oracle  the target images with the target labels (the upper bound; no adaptation method has them)

and score each on the TARGET test split (testB against testB_labels): mean IoU, pixel and class accuracy.
Every segmenter is the built-in SmallUNet trained by the same seeded recipe (cutlib/segmentation.py), so the
rows differ only in their training images.

    from cutlib.adaptation import adaptation_table, run_translator
    table = adaptation_table(make_dataset("city_synth"), {"CyCADA": run_translator("runs/cycada")})
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from cutlib.data.splits import read_images, read_labels
from cutlib.segmentation import predict_labels, segmentation_scores, train_segmenter

Translator = Callable[[Tensor], Tensor]  # (N, 3, S, S) in [0, 1] -> (N, 3, S, S) in [0, 1]


def generator_translator(G: torch.nn.Module, batch_size: int = 16) -> Translator:
    """A generator on [-1, 1] images as a Translator on [0, 1] images (eval mode, no gradient, on G's device)."""
    device = next(G.parameters()).device

    @torch.no_grad()
    def translate(images: Tensor) -> Tensor:
        G.eval()
        return torch.cat([((G(2 * b.to(device) - 1) + 1) / 2).clamp(0, 1).cpu() for b in images.split(batch_size)])

    return translate


def run_translator(run_dir: str | Path, device: str = "cpu") -> Translator:
    """The final generator G (A -> B) of a saved run as a Translator."""
    from cutlib.runs import load_run

    _, model = load_run(run_dir, device)
    return generator_translator(model.G)


def target_scores(net: torch.nn.Module, images: Tensor, labels: Tensor, num_classes: int) -> dict:
    """mean_iou, pixel_acc, class_acc of a segmenter on images (N, 3, S, S) in [0, 1] against labels (N, S, S)."""
    s = segmentation_scores(predict_labels(net, images), labels, num_classes)
    return {"mean_iou": s["mean_iou"], "pixel_acc": s["pixel_acc"], "class_acc": s["class_acc"]}


def adaptation_table(dataset_dir: str | Path, translators: dict[str, Translator] | None = None, size: int = 64,
                     steps: int = 300, seed: int = 0, n_train: int | None = None) -> dict:
    """Train one segmenter per row (source only, each translator's translated source, target oracle) and score
    it on the target test split. Returns {"rows": {name: scores}, "source_on_source": scores of the source-only
    segmenter on the source test split (the other side of the domain gap), "settings": ...}.

    ``n_train``: use the first n training images of each domain (None: all). Deterministic for a seed on a CPU.
    """
    root = Path(dataset_dir)
    meta_path = root / "meta.json"
    folders = ("trainA", "trainA_labels", "trainB", "trainB_labels", "testA", "testA_labels", "testB", "testB_labels")
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: the adaptation experiment needs labels on both sides "
                                "(the built-in city_synth has them: cutlib.data.make_dataset('city_synth'))")
    if n_train is not None and n_train < 1:
        raise ValueError(f"n_train must be a positive number of images or None, got {n_train!r}")
    num_classes = len(json.loads(meta_path.read_text())["classes"]) if meta_path.is_file() else None
    cut = slice(None, n_train)
    src, src_labels = read_images(root / "trainA", size)[cut], read_labels(root / "trainA_labels", size)[cut]
    tgt, tgt_labels = read_images(root / "trainB", size)[cut], read_labels(root / "trainB_labels", size)[cut]
    test_t, test_t_labels = read_images(root / "testB", size), read_labels(root / "testB_labels", size)
    test_s, test_s_labels = read_images(root / "testA", size), read_labels(root / "testA_labels", size)
    if num_classes is None:
        num_classes = int(max(src_labels.max(), tgt_labels.max(), test_t_labels.max())) + 1

    def fit(images: Tensor, labels: Tensor) -> torch.nn.Module:
        return train_segmenter(images, labels, num_classes, steps=steps, seed=seed)

    rows = {}
    source_only = fit(src, src_labels)
    rows["source only"] = target_scores(source_only, test_t, test_t_labels, num_classes)
    for name, translate in (translators or {}).items():
        translated = translate(src)
        if translated.shape != src.shape:
            raise ValueError(f"translator {name!r} returned {tuple(translated.shape)} for images {tuple(src.shape)}")
        rows[name] = target_scores(fit(translated.clamp(0, 1), src_labels), test_t, test_t_labels, num_classes)
    rows["target oracle"] = target_scores(fit(tgt, tgt_labels), test_t, test_t_labels, num_classes)
    return {"rows": rows, "source_on_source": target_scores(source_only, test_s, test_s_labels, num_classes),
            "settings": {"size": size, "steps": steps, "seed": seed, "n_train": len(src), "n_test": len(test_t),
                         "num_classes": num_classes, "dataset": root.name}}
