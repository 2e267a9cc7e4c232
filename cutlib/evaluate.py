"""Evaluating a run: FID/KID, and on the built-in datasets scores against their ground truth
(REFERENCE.md section 8).

The built-in benchmarks know the truth about every test image, so they can measure what FID only
hints at:
    stripes  a small segmenter (background / smooth-coated animal / striped animal) finds the animal
             in each output: is it where the input's animal was (preservation IoU), is it striped
             (stripe score), is the background untouched, how far is the output from the true
             striped scene, and how large are the animals (paper Fig. 15: 18% of the pixels in A,
             37% in B)?
    city     a small segmenter trained on the photos labels the generated photos; pixel accuracy,
             class accuracy and mean IoU against the input labels (paper Table 1, "FCN score").
The same segmenter's pooled features serve as the FID/KID extractor there ("builtin-..."), trained
in under a minute on one CPU thread and cached beside the dataset.

    python -m cutlib evaluate RUN_DIR [--split test] [--extractor builtin|inception|random] [--epochs all|final]
writes RUN_DIR/eval.json with the final and the best epoch (papers often report only the best).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from cutlib import __version__
from cutlib.data.folders import list_images, load_image
from cutlib.data.synthetic import BUILTIN
from cutlib.metrics import (
    COMPARABLE,
    NOT_COMPARABLE,
    FeatureExtractor,
    InceptionExtractor,
    RandomConvExtractor,
    feature_statistics,
    frechet_distance,
    image_features,
    kid,
    segmentation_scores,
)

EVALUATOR_VERSION = 2  # bump when the evaluators change: old cache files are then ignored
EVAL_FILE = "eval.json"
STRIPES_CLASSES = ["background", "smooth-coated animal", "striped animal"]
SMOOTH, STRIPED = 1, 2
EXTRACTORS = ("builtin", "inception", "random")


# ----------------------------------------------------------------------------------------------
# reading a split of a dataset at the evaluation size


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


# ----------------------------------------------------------------------------------------------
# the evaluators' network: a small U-Net (segmentation) whose pooled bottleneck gives features


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


class BuiltinEvaluator(nn.Module):
    """The trained segmenter of a built-in benchmark; called on images it is a FID/KID FeatureExtractor.

    Images are (N, 3, H, W) in [0, 1]; other sizes than ``size`` are resized (bilinear, antialiased).
    """

    def __init__(self, benchmark: str, classes: list[str], size: int, seed: int = 0, width: int = 8):
        super().__init__()
        if benchmark not in BUILTIN:
            raise ValueError(f"benchmark must be one of {list(BUILTIN)}, got {benchmark!r}")
        self.benchmark, self.classes, self.size, self.seed = benchmark, list(classes), size, seed
        self.net = SmallUNet(len(classes), width)
        self.name = f"builtin-{benchmark}-{size}px-seed{seed}"
        self.dims = self.net.feature_dims
        self.info: dict = {}  # how it was trained (steps, seconds, cache file)

    def _prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        x = images.to(next(self.parameters()).device, torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def probabilities(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Per-pixel class probabilities (N, K, size, size), on the CPU."""
        self.eval()
        return torch.cat([self.net(self._prepare(b)).softmax(dim=1).cpu() for b in images.split(batch_size)])

    def segment(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Per-pixel class ids (N, size, size)."""
        return self.probabilities(images, batch_size).argmax(dim=1)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        self.eval()
        return self.net.features(self._prepare(images))  # (N, dims)


# ----------------------------------------------------------------------------------------------
# training and caching the evaluators


def _training_data(dataset_dir: Path, benchmark: str, size: int) -> tuple[Tensor, Tensor, list[str]]:
    """Training images (N, 3, S, S) and per-pixel classes (N, S, S) of a built-in dataset's train split."""
    if benchmark == "stripes":  # the domain says which coat: A smooth (1), B striped (2); 0 background
        images = torch.cat([read_images(dataset_dir / "trainA", size), read_images(dataset_dir / "trainB", size)])
        labels = torch.cat([read_labels(dataset_dir / "trainA_labels", size) * SMOOTH,
                            read_labels(dataset_dir / "trainB_labels", size) * STRIPED])
        return images, labels, STRIPES_CLASSES
    meta = json.loads((dataset_dir / "meta.json").read_text())
    return read_images(dataset_dir / "trainB", size), read_labels(dataset_dir / "trainB_labels", size), meta["classes"]


def _noise_images(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 3, S, S) in [0, 1]: white noise, or smooth blobs (noise on a 4x4 to 8x8 grid, upsampled bicubic)."""
    white = torch.rand(n, 3, size, size, generator=generator)
    cells = int(torch.randint(4, 9, (), generator=generator))
    blobs = F.interpolate(torch.rand(n, 3, cells, cells, generator=generator), size=(size, size), mode="bicubic", align_corners=False)
    smooth = torch.rand(n, generator=generator) < 0.5
    return torch.where(smooth[:, None, None, None], blobs.clamp(0, 1), white)


def train_evaluator(dataset_dir: str | Path, size: int = 64, seed: int = 0, steps: int = 300, batch_size: int = 16,
                    width: int = 8, lr: float = 3e-3, progress: bool = False) -> BuiltinEvaluator:
    """Train the segmenter of a built-in dataset on its train split (no caching; see ``load_evaluator``).

    stripes: trainA and trainB with their labels as background / smooth animal / striped animal, plus
    2 noise images per batch labelled background (without them, noise counts as "striped" and the
    blurry blobs of an untrained generator as "smooth animal").
    city: trainB photos with their 19-class labels. Adam with a linear decay, random horizontal flips.
    """
    dataset_dir = Path(dataset_dir)
    benchmark = benchmark_of(dataset_dir)
    if benchmark is None:
        raise ValueError(f"{dataset_dir} is not a built-in dataset (no meta.json naming one of {list(BUILTIN)}); "
                         "the built-in evaluators need the ground truth of python -m cutlib datasets' built-ins")
    if size % 4 or size < 8:
        raise ValueError(f"size must be a multiple of 4 of at least 8 pixels, got {size}")
    images, labels, classes = _training_data(dataset_dir, benchmark, size)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        evaluator = BuiltinEvaluator(benchmark, classes, size, seed, width)
    net = evaluator.net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    n_noise = batch_size // 8 if benchmark == "stripes" else 0
    start = time.perf_counter()
    for _ in tqdm(range(steps), disable=not progress, desc=f"training the {benchmark} evaluator"):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = images[idx], labels[idx]  # (B, 3, S, S), (B, S, S)
        if n_noise:
            x = torch.cat([_noise_images(n_noise, size, generator), x[n_noise:]])
            y = torch.cat([torch.zeros_like(y[:n_noise]), y[n_noise:]])
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = torch.where(flip[:, None, None], y.flip(2), y)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    evaluator.eval()
    evaluator.info = {"steps": steps, "batch_size": batch_size, "width": width, "lr": lr, "final_loss": loss.item(),
                      "train_seconds": round(time.perf_counter() - start, 2), "dataset_dir": str(dataset_dir)}
    return evaluator


def evaluator_cache_path(dataset_dir: str | Path, size: int = 64, seed: int = 0, steps: int = 300,
                         cache_dir: str | Path | None = None) -> Path:
    """Cache file of a trained evaluator: ``<dataset>/evaluators/evaluator_<size>px_seed<seed>_steps<steps>_v<version>.pt``."""
    folder = Path(cache_dir) if cache_dir is not None else Path(dataset_dir) / "evaluators"
    return folder / f"evaluator_{size}px_seed{seed}_steps{steps}_v{EVALUATOR_VERSION}.pt"


def load_evaluator(dataset_dir: str | Path, size: int = 64, seed: int = 0, steps: int = 300,
                   cache_dir: str | Path | None = None, progress: bool = False) -> BuiltinEvaluator:
    """The evaluator of a built-in dataset: loaded from its cache file, else trained (< 1 min on a CPU) and cached."""
    path = evaluator_cache_path(dataset_dir, size, seed, steps, cache_dir)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        evaluator = BuiltinEvaluator(saved["benchmark"], saved["classes"], saved["size"], saved["seed"], saved["info"]["width"])
        evaluator.net.load_state_dict(saved["net"])
        evaluator.info = {**saved["info"], "cache": str(path), "loaded_from_cache": True}
        return evaluator.eval()
    evaluator = train_evaluator(dataset_dir, size, seed, steps, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # atomic: concurrent trainers never see half a file
    torch.save({"benchmark": evaluator.benchmark, "classes": evaluator.classes, "size": size, "seed": seed,
                "info": evaluator.info, "net": evaluator.net.state_dict()}, tmp)
    os.replace(tmp, path)
    evaluator.info = {**evaluator.info, "cache": str(path), "loaded_from_cache": False}
    return evaluator


# ----------------------------------------------------------------------------------------------
# the benchmarks' scores


def animal_fractions(labels: Tensor) -> Tensor:
    """Fraction of animal pixels (any class > 0) per image: (N, H, W) -> (N,). Paper Fig. 15."""
    return (labels > 0).float().mean(dim=(1, 2))


def stripes_scores(evaluator: BuiltinEvaluator, outputs: Tensor, inputs: Tensor, input_labels: Tensor,
                   targets: Tensor | None = None, real_labels: Tensor | None = None) -> dict:
    """Scores of translations ``outputs`` of ``inputs`` (all (N, 3, S, S) in [0, 1]) on the stripes benchmark.

    preservation_iou  IoU of the input's animal (input_labels) and the animal found in the output
    stripe_score      mean probability of "striped animal" over the input's animal pixels
    background_l1     mean |output - input| outside the input's animal (grown by 1 px), in [0, 1] units
    target_l1         mean |output - target| (the true striped scene), when targets are given
    animal_fraction*  mean fraction of animal pixels: outputs (segmented), A (input labels), B (real_labels)
    size_w1_A/B       Wasserstein-1 distance between the outputs' per-image fractions and A's / B's
    """
    probs = evaluator.probabilities(outputs)  # (N, 3, S, S)
    found = probs.argmax(dim=1) > 0  # (N, S, S) animal of either coat
    truth = input_labels > 0
    inter = (found & truth).sum(dim=(1, 2)).float()
    union = (found | truth).sum(dim=(1, 2)).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # (N,)
    striped = (probs[:, STRIPED] * truth).sum(dim=(1, 2)) / truth.sum(dim=(1, 2)).clamp(min=1)  # (N,)
    grown = F.max_pool2d(truth[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0  # edge pixels are mixed
    outside = (~grown)[:, None].expand_as(outputs)
    scores = {
        "preservation_iou": float(iou.mean()),
        "stripe_score": float(striped.mean()),
        "background_l1": float((outputs - inputs).abs()[outside].mean()),
    }
    if targets is not None:
        scores["target_l1"] = float((outputs - targets).abs().mean())
    fractions = animal_fractions(found.long()).numpy()
    fractions_A = animal_fractions(input_labels).numpy()
    scores.update(animal_fraction=float(fractions.mean()), animal_fraction_A=float(fractions_A.mean()),
                  size_w1_A=float(scipy.stats.wasserstein_distance(fractions, fractions_A)))
    if real_labels is not None:
        fractions_B = animal_fractions(real_labels).numpy()
        scores.update(animal_fraction_B=float(fractions_B.mean()),
                      size_w1_B=float(scipy.stats.wasserstein_distance(fractions, fractions_B)))
    return scores


def city_scores(evaluator: BuiltinEvaluator, outputs: Tensor, input_labels: Tensor) -> dict:
    """Table 1 protocol: segment the generated photos (N, 3, S, S) and score them against the input labels (N, S, S)."""
    scores = segmentation_scores(evaluator.segment(outputs), input_labels, num_classes=len(evaluator.classes))
    return {"seg_pixel_acc": scores["pixel_acc"], "seg_class_acc": scores["class_acc"], "seg_mean_iou": scores["mean_iou"]}


METRICS = {  # name: (better, what)
    "fid": ("lower", "Frechet distance between the features of the outputs and the real images of domain B"),
    "kid_mean": ("lower", "KID (unbiased MMD^2, cubic kernel) between the same features, mean over subsets"),
    "kid_std": (None, "standard deviation of KID over the subsets"),
    "preservation_iou": ("higher", "IoU of the input's animal mask and the animal segmented in the output"),
    "stripe_score": ("higher", "mean probability of 'striped animal' over the input's animal pixels"),
    "background_l1": ("lower", "mean |output - input| outside the input's animal, pixels in [0, 1]"),
    "target_l1": ("lower", "mean |output - true striped scene (testA_target)|, pixels in [0, 1]"),
    "animal_fraction": (None, "mean fraction of animal pixels in the outputs (paper Fig. 15)"),
    "animal_fraction_A": (None, "mean fraction of animal pixels in the inputs (ground truth)"),
    "animal_fraction_B": (None, "mean fraction of animal pixels in the real images of B (ground truth)"),
    "size_w1_A": (None, "Wasserstein-1 distance of the outputs' animal fractions to A's (small: sizes kept)"),
    "size_w1_B": (None, "Wasserstein-1 distance of the outputs' animal fractions to B's (small: sizes matched to B)"),
    "seg_pixel_acc": ("higher", "pixel accuracy of the segmented outputs against the input labels (Table 1 pixAcc)"),
    "seg_class_acc": ("higher", "mean class accuracy (Table 1 classAcc)"),
    "seg_mean_iou": ("higher", "mean IoU (Table 1 'mAP')"),
}


def benchmark_scores(benchmark: str | None, evaluator: BuiltinEvaluator | None, outputs: Tensor, data: dict) -> dict:
    """The ground-truth scores of ``outputs`` for the dataset's benchmark (empty for real folders)."""
    if benchmark == "stripes":
        return stripes_scores(evaluator, outputs, data["inputs"], data["input_labels"], data["targets"], data["real_labels"])
    if benchmark == "city":
        return city_scores(evaluator, outputs, data["input_labels"])
    return {}


# ----------------------------------------------------------------------------------------------
# evaluating a run


def extractor_record(extractor: FeatureExtractor) -> dict:
    """What eval.json says about the feature extractor (only Inception is comparable with papers)."""
    standard = isinstance(extractor, InceptionExtractor)
    return {"name": extractor.name, "dims": extractor.dims, "comparable_with_published": standard,
            "note": COMPARABLE if standard else NOT_COMPARABLE.format(name=extractor.name)}


@torch.no_grad()
def translate_images(model, inputs: Tensor, batch_size: int = 16) -> Tensor:
    """G(x) for inputs (N, 3, S, S) in [0, 1] -> outputs in [0, 1], rounded to 8 bits as if saved as PNG files."""
    device = next(model.G.parameters()).device
    outs = [model.translate(b.to(device) * 2 - 1).float().cpu() for b in inputs.split(batch_size)]
    return ((torch.cat(outs).clamp(-1, 1) + 1) * 127.5).round() / 255


def translate_run(run_dir: str | Path, split: str = "test", device: str | None = None) -> dict:
    """The final generator of a run applied to ``split``: ``load_split``'s dict plus "outputs" (N, 3, S, S) in [0, 1],
    "dataset_dir", "benchmark" and "config" (the run's TrainConfig). For pictures; ``evaluate_run`` scores them."""
    from cutlib.data import resolve_dataset
    from cutlib.train import load_run

    cfg, model = load_run(run_dir, device=_resolve_device(device))
    dataset_dir = resolve_dataset(cfg.dataset, size=cfg.load_size)
    data = load_split(dataset_dir, split, cfg.crop_size)
    return {**data, "outputs": translate_images(model, data["inputs"]), "dataset_dir": dataset_dir,
            "benchmark": benchmark_of(dataset_dir), "config": cfg}


def run_checkpoints(run_dir: str | Path, epochs: str = "all") -> list[dict]:
    """The generators saved in a run: epochs/G_epochNNN.pt snapshots (epochs="all") and the final checkpoint.pt.

    Each item: {"checkpoint", "epoch", "step", "final"}; a snapshot with the final step is the final one.
    """
    if epochs not in ("all", "final"):
        raise ValueError(f"epochs must be 'all' or 'final', got {epochs!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"no checkpoint.pt in {run_dir}: expected a run folder written by python -m cutlib train")
    final = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    partial = final.get("batch_in_epoch", 0) > 0
    items = [{"checkpoint": "checkpoint.pt", "epoch": final["epoch"] if partial else final["epoch"] - 1,
              "step": final["step"], "final": True, "partial_epoch": partial}]
    if epochs == "all":
        for path in sorted((run_dir / "epochs").glob("G_epoch*.pt")):
            snap = torch.load(path, map_location="cpu", weights_only=False)
            if snap["step"] != final["step"]:
                items.append({"checkpoint": f"epochs/{path.name}", "epoch": snap["epoch"], "step": snap["step"],
                              "final": False, "partial_epoch": False})
    return sorted(items, key=lambda item: item["step"])


def make_extractor(name: str, benchmark: str | None, evaluator: BuiltinEvaluator | None, device: str,
                   seed: int = 0) -> FeatureExtractor:
    """The FID/KID feature extractor called ``name`` (builtin, inception or random)."""
    if name == "inception":
        return InceptionExtractor(device=device)  # raises InceptionWeightsNotFound with what to do
    if name == "random":
        return RandomConvExtractor(dims=64, seed=seed).to(device)
    if name == "builtin":
        if evaluator is None:
            raise ValueError("the built-in extractor exists only for the built-in datasets "
                             f"({', '.join(BUILTIN)}); this run's data is a folder of real images: use --extractor inception "
                             "(standard, comparable with papers) or --extractor random (offline; compare runs with each other only)")
        return evaluator
    raise ValueError(f"extractor must be one of {list(EXTRACTORS)}, got {name!r}")


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but no CUDA GPU is visible; use --device cpu")
    return str(device)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def evaluate_run(run_dir: str | Path, split: str = "test", extractor: str = "builtin", device: str | None = None,
                 epochs: str = "all", best_by: str = "fid", seed: int = 0, evaluator_steps: int = 300,
                 progress: bool = False) -> dict:
    """Evaluate the generators of a run on ``split`` and write RUN_DIR/eval.json (atomically); returns its contents.

    Every saved epoch (``epochs="all"``) or the final checkpoint only: FID and KID with ``extractor``,
    and on built-in datasets the benchmark's ground-truth scores. "final" and "best" (by ``best_by``)
    are reported side by side. ``seed`` seeds KID's subsets and the built-in evaluator.
    """
    from cutlib.data import resolve_dataset
    from cutlib.train import load_run

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {list(EXTRACTORS)}, got {extractor!r}")
    if best_by not in METRICS or METRICS[best_by][0] is None:
        raise ValueError(f"best_by must be a metric with a direction: {[k for k, v in METRICS.items() if v[0]]}, got {best_by!r}")
    device = _resolve_device(device)
    checkpoints = run_checkpoints(run_dir, epochs)  # (fails first if there is no run)
    cfg, model = load_run(run_dir, device=device)
    final_G = {k: v.clone() for k, v in model.G.state_dict().items()}  # snapshots overwrite model.G below
    if cfg.model == "sincut":
        raise ValueError(f"{run_dir} is a SinCUT run (one image per domain): FID/KID over a test set do not apply; "
                         "evaluate unpaired runs (cut, fastcut, cyclegan)")
    dataset_dir = resolve_dataset(cfg.dataset, size=cfg.load_size)
    benchmark = benchmark_of(dataset_dir)
    size = cfg.crop_size
    # build the extractor first: a missing Inception file fails here, before any work
    if extractor != "builtin":
        features_of = make_extractor(extractor, benchmark, None, device, seed)
    evaluator = load_evaluator(dataset_dir, size, seed, evaluator_steps, progress=progress).to(device) if benchmark else None
    if extractor == "builtin":
        features_of = make_extractor(extractor, benchmark, evaluator, device, seed)

    data = load_split(dataset_dir, split, size)
    real_features = image_features(data["real"], features_of)
    real_stats = feature_statistics(real_features)
    # KID subsets of half the smaller set (at most 1000): with subsets as large as the set, every
    # subset is the whole set and the std over subsets is 0, which says nothing
    kid_subset = max(2, min(1000, min(len(data["real"]), len(data["inputs"])) // 2))
    results = []
    for item in tqdm(checkpoints, disable=not progress, desc=f"evaluating {run_dir.name}"):
        snapshot = final_G if item["final"] else torch.load(run_dir / item["checkpoint"], map_location=device, weights_only=False)["G"]
        model.G.load_state_dict(snapshot)
        model.eval()
        outputs = translate_images(model, data["inputs"])
        fake_features = image_features(outputs, features_of)
        kid_mean, kid_std = kid(real_features, fake_features, num_subsets=100, subset_size=kid_subset, seed=seed)
        metrics = {"fid": frechet_distance(*real_stats, *feature_statistics(fake_features)), "kid_mean": kid_mean, "kid_std": kid_std}
        metrics.update(benchmark_scores(benchmark, evaluator, outputs, data))
        results.append({**item, "metrics": metrics})

    final = next(r for r in results if r["final"])
    sign = 1 if METRICS[best_by][0] == "lower" else -1
    best = min(results, key=lambda r: sign * r["metrics"][best_by])
    num = {"inputs": len(data["inputs"]), "real": len(data["real"])}
    names = list(final["metrics"])
    report = {
        "format": "cutlib-eval-1",
        "run_dir": str(run_dir),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "dataset_dir": str(dataset_dir),
        "benchmark": benchmark,
        "split": split,
        "image_size": size,
        "num_images": num,
        "seed": seed,
        "run_seed": cfg.seed,
        "extractor": extractor_record(features_of),
        "kid": {"num_subsets": 100, "subset_size": kid_subset},
        "evaluator": ({"name": evaluator.name, "classes": evaluator.classes, **evaluator.info} if evaluator else None),
        "final": final,
        "best": {**best, "chosen_by": best_by, "better": METRICS[best_by][0]},
        "epochs": results,
        "metric_info": {k: {"better": METRICS[k][0], "what": METRICS[k][1],
                            "num_images": ({"real": num["real"], "fake": num["inputs"]} if k.startswith(("fid", "kid")) else num["inputs"])}
                        for k in names},
        "note": "final = the last weights of the run; best = the epoch with the best "
                f"{best_by} on this split, an optimistic pick (papers often report only the best epoch)",
        "cutlib_version": __version__,
        "seconds": round(time.perf_counter() - start, 2),
    }
    _write_json_atomic(run_dir / EVAL_FILE, report)
    return report


# ----------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutlib evaluate", description="Evaluate a run folder; writes RUN_DIR/eval.json.")
    p.add_argument("run_dir", help="a run folder written by python -m cutlib train (holds checkpoint.pt)")
    p.add_argument("--split", default="test", choices=["test", "train"], help="which split to translate (default test)")
    p.add_argument("--extractor", default="builtin", choices=list(EXTRACTORS),
                   help="FID/KID features: builtin (built-in datasets, offline), inception (standard; needs the "
                        "pytorch-fid weights file), random (offline; compare runs only). Default builtin")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--epochs", default="all", choices=["all", "final"], help="every saved epoch and the final one, or the final only")
    p.add_argument("--best-by", default="fid", help="the metric that picks the best epoch (default fid)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _summary(report: dict) -> str:
    lines = [f"{report['run_dir']}: {report['split']} split, {report['num_images']['inputs']} images, extractor {report['extractor']['name']}"]
    for which in ("final", "best"):
        r = report[which]
        values = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items() if isinstance(v, float) and math.isfinite(v))
        lines.append(f"  {which:<5} epoch {r['epoch']} (step {r['step']}): {values}")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate_run(args.run_dir, split=args.split, extractor=args.extractor, device=args.device,
                              epochs=args.epochs, best_by=args.best_by, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:  # InceptionWeightsNotFound is a FileNotFoundError
        print(f"cutlib evaluate: {err}", file=sys.stderr)
        return 1
    print(_summary(report))
    print(f"written: {Path(args.run_dir) / EVAL_FILE}")
    return 0
