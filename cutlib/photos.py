"""An offline evaluator for translations between two folders of real photos (book/reference.md section 8).

Real photos have no ground truth to score against, and the standard FID needs Inception weights
that an offline machine does not have. This evaluator is small, trained here, and honest about what
it is: a classifier of domain A vs domain B trained on the dataset's own training photos.

    target_rate  the fraction of translations the classifier assigns to B (did a horse become a zebra?)
    kid          KID (x 1000 in the summaries) between the translations and the real test images of B,
                 in the classifier's penultimate features; ``kid_inputs`` is the same for the
                 untranslated inputs: a translation that moved towards B scores below it
    structure    SSIM of the blurred grey input and output (1 = the layout kept, ~0 = unrelated);
                 blurring first makes it about shapes and shading, not about the new texture

Its accuracy on the held-out split is reported with it: a weak classifier makes a weak judge. None
of these numbers is comparable with a published (Inception) FID or KID.

    clf = load_photo_classifier("data/horse2zebra")          # trained once (~1 min), then cached
    photo_scores(clf, outputs, inputs, real_B)               # all (N, 3, H, W) in [0, 1]
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cutlib.data.splits import read_images
from cutlib.images import list_images
from cutlib.metrics import kid
from cutlib.paths import data_root
from cutlib.runs import cached_network

CLASSIFIER_VERSION = 3  # bump when the classifier or its training changes: old cache files are then ignored


class PhotoClassifier(nn.Module):
    """A small CNN, domain A (0) vs domain B (1), on (N, 3, size, size) images in [0, 1].

    Four stages of conv 3x3 + batch norm + ReLU (widths w, 2w, 4w, 8w), each halving the size, then the
    mean and the standard deviation of the last stage over positions (the penultimate features, 16w
    numbers: the std sees texture such as stripes) and a linear layer to two logits.
    """

    def __init__(self, size: int = 64, width: int = 16):
        super().__init__()
        if size % 16 or size < 16:
            raise ValueError(f"size must be a multiple of 16 of at least 16 pixels, got {size}")
        self.size, self.width = size, width
        layers, c_in = [], 3
        for c_out in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.dims = 16 * width
        self.head = nn.Linear(self.dims, 2)
        self.name = f"photo-classifier-{size}px"
        self.info: dict = {}

    def _prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        x = images.to(next(self.parameters()).device, torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return 2 * x - 1

    def penultimate(self, x: Tensor) -> Tensor:
        """(N, 3, size, size) in [-1, 1] -> (N, 16w): mean and std over positions of the last stage."""
        h = self.body(x).flatten(2)  # (N, 8w, size*size/256)
        return torch.cat([h.mean(dim=2), h.std(dim=2, unbiased=False)], dim=1)

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self.penultimate(self._prepare(images)))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """The penultimate features (N, 16w) of images in [0, 1]: a FID/KID FeatureExtractor."""
        self.eval()
        return self.penultimate(self._prepare(images))

    @torch.no_grad()
    def prob_b(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """P(domain B) per image, (N,), on the CPU."""
        self.eval()
        return torch.cat([self.logits(b).softmax(dim=1)[:, 1].cpu() for b in images.split(batch_size)])


def _augment(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Random crops (a square of 70-100 % of the side, resized to ``size``) and horizontal flips."""
    n, _, h, w = images.shape
    out = []
    for i in range(n):
        side = int(min(h, w) * (0.7 + 0.3 * float(torch.rand((), generator=generator))))
        top = int(torch.randint(h - side + 1, (), generator=generator))
        left = int(torch.randint(w - side + 1, (), generator=generator))
        crop = images[i:i + 1, :, top:top + side, left:left + side]
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.flip(3)
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def line_pattern(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 1, S, S): sinusoidal line patterns of random orientation, period (2-8 px) and amplitude (0.05-0.3)."""
    angle = torch.rand(n, 1, 1, generator=generator) * math.pi
    period = 2 + 6 * torch.rand(n, 1, 1, generator=generator)
    amp = 0.05 + 0.25 * torch.rand(n, 1, 1, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=generator)
    return (amp * torch.sin(2 * math.pi * (xx * torch.cos(angle) + yy * torch.sin(angle)) / period + phase))[:, None]


def degrade(x: Tensor, generator: torch.Generator) -> Tensor:
    """The look of a failed translation, applied to images that keep their label: each image, with p = 0.5,
    loses 0-100 % of its saturation, and with p = 0.5 gets a faint line pattern (``line_pattern``) over all of it."""
    n, _, s, _ = x.shape
    g = grey(x)
    keep = torch.rand(n, 1, 1, 1, generator=generator)
    desat = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    x = torch.where(desat, keep * x + (1 - keep) * g, x)
    lines = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    return torch.where(lines, (x + line_pattern(n, s, generator)).clamp(0, 1), x)


def _check_folders(dataset_dir: Path, split: str) -> None:
    for domain in "AB":
        folder = dataset_dir / f"{split}{domain}"
        if not folder.is_dir() or not list_images(folder):
            raise FileNotFoundError(f"the photo evaluator needs {folder}: a folder of {split}ing images of domain {domain} "
                                    "(the dataset layout trainA/trainB/testA/testB)")


@torch.no_grad()
def accuracy(classifier: PhotoClassifier, images_a: Tensor, images_b: Tensor) -> float:
    """Balanced accuracy: the mean of the fractions of A called A and of B called B."""
    return float(((classifier.prob_b(images_a) < 0.5).float().mean() + (classifier.prob_b(images_b) >= 0.5).float().mean()) / 2)


def train_photo_classifier(dataset_dir: str | Path, size: int = 64, seed: int = 0, steps: int = 600, batch_size: int = 32,
                           width: int = 16, lr: float = 2e-3, robust: bool = True, progress: bool = False) -> PhotoClassifier:
    """Train the A-vs-B classifier on trainA/trainB (no caching; see ``load_photo_classifier``).

    Balanced batches (half A, half B), random crops and flips, Adam with a linear decay. Its balanced
    accuracy on testA/testB (held out from its training) goes into ``info["test_accuracy"]``.
    """
    dataset_dir = Path(dataset_dir)
    _check_folders(dataset_dir, "train")
    load = int(round(size * 1.125))  # crops of 70-100 % of a slightly larger image
    train = [read_images(dataset_dir / f"train{d}", load) for d in "AB"]
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        classifier = PhotoClassifier(size, width)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    labels = torch.arange(batch_size) % 2  # 0 = A, 1 = B
    classifier.train().to(memory_format=torch.channels_last)  # NHWC: ~1.5x faster convolutions on a CPU
    start = time.perf_counter()
    for _ in tqdm(range(steps), disable=not progress, desc=f"training the photo classifier of {dataset_dir.name}"):
        picks = [train[int(c)][torch.randint(len(train[int(c)]), (), generator=generator)] for c in labels]
        x = _augment(torch.stack(picks), size, generator)
        if robust:  # a faded, line-covered horse is still a horse (and a faded zebra still a zebra)
            x = degrade(x, generator)
        loss = F.cross_entropy(classifier.logits(x.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier.eval().to(memory_format=torch.contiguous_format)
    info = {"steps": steps, "batch_size": batch_size, "width": width, "lr": lr, "seed": seed, "final_loss": loss.item(),
            "train_seconds": round(time.perf_counter() - start, 2), "dataset_dir": str(dataset_dir),
            "num_train": {"A": len(train[0]), "B": len(train[1])}}
    try:
        _check_folders(dataset_dir, "test")
        test = [read_images(dataset_dir / f"test{d}", size) for d in "AB"]
        info.update(test_accuracy=accuracy(classifier, *test), num_test={"A": len(test[0]), "B": len(test[1])})
    except FileNotFoundError:
        info.update(test_accuracy=None, num_test=None)
    classifier.info = info
    return classifier


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """12 hex digits naming a dataset's training photos (their paths, sizes and times): the cache key."""
    dataset_dir = Path(dataset_dir).resolve()
    h = hashlib.sha256(str(dataset_dir).encode())
    for domain in "AB":
        for p in list_images(dataset_dir / f"train{domain}"):
            st = p.stat()
            h.update(f"{p.relative_to(dataset_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def classifier_cache_path(dataset_dir: str | Path, size: int = 64, seed: int = 0, steps: int = 600,
                          cache_dir: str | Path | None = None) -> Path:
    """``<data root>/evaluators/photo_<dataset name>_<fingerprint>_<size>px_seed<seed>_steps<steps>_v<version>.pt``.

    Kept in the course's data folder, not inside the dataset: a dataset may be read-only or shared.
    """
    folder = Path(cache_dir) if cache_dir is not None else data_root() / "evaluators"
    name = Path(dataset_dir).resolve().name
    return folder / f"photo_{name}_{dataset_fingerprint(dataset_dir)}_{size}px_seed{seed}_steps{steps}_v{CLASSIFIER_VERSION}.pt"


def load_photo_classifier(dataset_dir: str | Path, size: int = 64, seed: int = 0, steps: int = 600,
                          cache_dir: str | Path | None = None, progress: bool = False) -> PhotoClassifier:
    """The classifier of a folder dataset: loaded from its cache file, else trained and cached (atomically)."""
    def rebuild(saved: dict) -> PhotoClassifier:
        classifier = PhotoClassifier(saved["size"], saved["info"]["width"])
        classifier.load_state_dict(saved["net"])
        classifier.info = saved["info"]
        return classifier

    return cached_network(classifier_cache_path(dataset_dir, size, seed, steps, cache_dir), rebuild,
                          lambda: train_photo_classifier(dataset_dir, size, seed, steps, progress=progress),
                          lambda c: {"size": size, "info": c.info, "net": c.state_dict()})


# ----------------------------------------------------------------------------------------------
# structure: SSIM of blurred grey images


def _gaussian(sigma: float, radius: int) -> Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x**2 / (2 * sigma**2))
    return k / k.sum()


def _separable(x: Tensor, kernel: Tensor) -> Tensor:
    """Blur (N, 1, H, W) with a 1-D kernel along both axes (reflected borders)."""
    r = len(kernel) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))


def grey(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W): luma, 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * w.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def ssim(x: Tensor, y: Tensor, sigma: float = 1.5, radius: int = 5, c1: float = 0.01**2, c2: float = 0.03**2) -> Tensor:
    """SSIM (Wang et al. 2004) of one-channel images (N, 1, H, W) in [0, 1], per image (N,): Gaussian window."""
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim needs two (N, 1, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    k = _gaussian(sigma, radius).to(x)
    mx, my = _separable(x, k), _separable(y, k)
    vx, vy = _separable(x * x, k) - mx**2, _separable(y * y, k) - my**2
    cov = _separable(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def structure_score(outputs: Tensor, inputs: Tensor, size: int = 64, blur_sigma: float = 1.0) -> Tensor:
    """Per image (N,): SSIM of the grey input and output, both resized to ``size`` and blurred (sigma px)."""
    if outputs.shape != inputs.shape:
        raise ValueError(f"outputs and inputs must have one shape, got {tuple(outputs.shape)} and {tuple(inputs.shape)}")
    k = _gaussian(blur_sigma, max(1, int(3 * blur_sigma)))
    def prep(images):
        g = grey(images.float().cpu())
        if g.shape[-2:] != (size, size):
            g = F.interpolate(g, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return _separable(g, k)
    return ssim(prep(outputs), prep(inputs))


# ----------------------------------------------------------------------------------------------
# the scores of a set of translations


def translation_scores(classifier: PhotoClassifier, outputs: Tensor, inputs: Tensor) -> dict:
    """target_rate (fraction of outputs called B) and structure (mean blurred-grey SSIM to the inputs)."""
    if len(outputs) != len(inputs):
        raise ValueError(f"one output per input: got {len(outputs)} outputs for {len(inputs)} inputs")
    return {"target_rate": float((classifier.prob_b(outputs) >= 0.5).float().mean()),
            "structure": float(structure_score(outputs, inputs).mean())}


def photo_scores(classifier: PhotoClassifier, outputs: Tensor, inputs: Tensor, real: Tensor, seed: int = 0) -> dict:
    """target_rate, structure, photo_kid (translations vs real B) and photo_kid_inputs (inputs vs real B), and
    target_rate_inputs (the inputs called B: the classifier's false-positive rate); all (N, 3, H, W) in [0, 1].

    KID uses 100 subsets of half the smaller set, in the classifier's penultimate features.
    """
    scores = translation_scores(classifier, outputs, inputs)
    feats = {name: np.concatenate([classifier(b).cpu().numpy() for b in x.split(64)])
             for name, x in (("outputs", outputs), ("inputs", inputs), ("real", real))}
    subset = max(2, min(1000, min(len(real), len(outputs)) // 2))
    kid_out, kid_out_std = kid(feats["real"], feats["outputs"], num_subsets=100, subset_size=subset, seed=seed)
    kid_in, _ = kid(feats["real"], feats["inputs"], num_subsets=100, subset_size=subset, seed=seed)
    return {**scores, "target_rate_inputs": float((classifier.prob_b(inputs) >= 0.5).float().mean()),
            "photo_kid": float(kid_out), "photo_kid_std": float(kid_out_std), "photo_kid_inputs": float(kid_in)}
