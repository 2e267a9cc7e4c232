"""The built-in benchmarks' evaluators: they know the truth about every test image, so they measure
what FID only hints at (book/reference.md section 8).

    stripes  a small segmenter (background / smooth-coated animal / striped animal) finds the animal
             in each output: is it where the input's animal was (preservation IoU), is it striped
             (stripe score), is the background untouched, how far is the output from the true
             striped scene, and how large are the animals (paper Fig. 15: 18% of the pixels in A,
             37% in B)?
    city     a small segmenter trained on the photos labels the generated photos; pixel accuracy,
             class accuracy and mean IoU against the input labels (paper Table 1, "FCN score").
    city_synth the same protocol for CyCADA's source -> target translation: the segmenter trained on the
             target photos (trainB) labels the translated flat-shaded source images, scored against
             the source labels (cutlib/data/city_synthetic.py).
The same segmenter's pooled features serve as the FID/KID extractor there ("builtin-..."), trained
in under a minute on one CPU thread and cached beside the dataset.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cutlib.data.splits import benchmark_of, read_images, read_labels
from cutlib.data.synthetic import BUILTIN
from cutlib.segmentation import SmallUNet, fit_segmenter, segmentation_scores  # SmallUNet: re-exported, it lived here
from cutlib.runs import cached_network

EVALUATOR_VERSION = 2  # bump when the evaluators change: old cache files are then ignored
STRIPES_CLASSES = ["background", "smooth-coated animal", "striped animal"]
SMOOTH, STRIPED = 1, 2


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
    n_noise = batch_size // 8 if benchmark == "stripes" else 0

    def with_noise(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return (torch.cat([_noise_images(n_noise, size, generator), x[n_noise:]]),
                torch.cat([torch.zeros_like(y[:n_noise]), y[n_noise:]]))

    start = time.perf_counter()
    loss = fit_segmenter(evaluator.net, images, labels, steps, batch_size, lr, generator, with_noise if n_noise else None,
                         f"training the {benchmark} evaluator" if progress else None)
    evaluator.eval()
    evaluator.info = {"steps": steps, "batch_size": batch_size, "width": width, "lr": lr, "final_loss": loss,
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
    def rebuild(saved: dict) -> BuiltinEvaluator:
        evaluator = BuiltinEvaluator(saved["benchmark"], saved["classes"], saved["size"], saved["seed"], saved["info"]["width"])
        evaluator.net.load_state_dict(saved["net"])
        evaluator.info = saved["info"]
        return evaluator

    def state(evaluator: BuiltinEvaluator) -> dict:
        return {"benchmark": evaluator.benchmark, "classes": evaluator.classes, "size": size, "seed": seed,
                "info": evaluator.info, "net": evaluator.net.state_dict()}

    return cached_network(evaluator_cache_path(dataset_dir, size, seed, steps, cache_dir), rebuild,
                          lambda: train_evaluator(dataset_dir, size, seed, steps, progress=progress), state)


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


def benchmark_scores(benchmark: str | None, evaluator: BuiltinEvaluator | None, outputs: Tensor, data: dict) -> dict:
    """The ground-truth scores of ``outputs`` for the dataset's benchmark (empty for real folders)."""
    if benchmark == "stripes":
        return stripes_scores(evaluator, outputs, data["inputs"], data["input_labels"], data["targets"], data["real_labels"])
    if benchmark in ("city", "city_synth"):  # city_synth: translated source images against the source labels
        return city_scores(evaluator, outputs, data["input_labels"])
    return {}
