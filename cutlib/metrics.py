"""Evaluation metrics: FID, KID and segmentation scores (book/reference.md section 8).

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) compare the feature distributions of real
and generated images. Only the standard extractor, the pytorch-fid Inception-v3 pool3 features
(``InceptionExtractor``), gives numbers comparable with published FIDs; any other extractor (e.g.
``RandomConvExtractor``) is fine for comparing runs with each other, never with papers.

Image convention everywhere in this module: float tensors (N, 3, H, W) with values in [0, 1]
(pytorch-fid's convention). Generator outputs in [-1, 1] must be mapped with ``(x + 1) / 2``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cutlib import images
from cutlib.images import IMAGE_EXTENSIONS, list_images, to_tensor
from cutlib.inception import InceptionExtractor

NOT_COMPARABLE = "features from {name}: compare runs with each other only; only the standard Inception extractor (InceptionExtractor) gives FIDs comparable with published ones"
COMPARABLE = "pytorch-fid Inception pool3 features: comparable with published FIDs computed the same way (same number of images, split, resizing and file format)"

ImageSource = str | os.PathLike | Tensor  # a folder of images, or a tensor (N, 3, H, W) in [0, 1]


def _to_numpy(x) -> np.ndarray:
    """numpy float64 view of a numpy array or torch tensor."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Frechet distance and KID on features
# --------------------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), as pytorch-fid (np.cov, N - 1)."""
    features = _to_numpy(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2 images, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (the FID formula).

    Computed as pytorch-fid does: scipy's sqrtm of S1 S2; if that is not finite (singular product),
    eps is added to both diagonals; an imaginary part above 1e-3 on the diagonal is an error.
    """
    mu1, mu2 = np.atleast_1d(_to_numpy(mu1)), np.atleast_1d(_to_numpy(mu2))
    sigma1, sigma2 = np.atleast_2d(_to_numpy(sigma1)), np.atleast_2d(_to_numpy(sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must have shape ({d}, {d}) like the means, got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected when N < D; handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)  # (D, D)
        if not np.isfinite(covmean).all():
            warnings.warn(f"frechet_distance: singular product S1 S2; adding {eps} to the diagonals", RuntimeWarning)
            offset = np.eye(d) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):  # numerical error gives a tiny imaginary part; a large one is a bug
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: sqrtm(sigma1 @ sigma2) has an imaginary part of {np.abs(covmean.imag).max():.3g}; "
                "sigma1 and sigma2 must be covariance matrices (symmetric, positive semi-definite)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef0)^degree for all pairs, (N, D) x (M, D) -> (N, M); gamma = 1 / D by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1) -> float:
    """Unbiased MMD^2 (Binkowski et al. 2018, Eq. 2): same-set pairs i != j only, all cross pairs."""
    m, n = len(x), len(y)
    k_xx = polynomial_kernel(x, x, degree, gamma, coef0)  # (m, m)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef0)  # (n, n)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef0)  # (m, n)
    same_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    same_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(same_x + same_y - 2 * k_xy.mean())


# Below ~50 images a side FID/KID say little: KID's subsets (evaluate draws half the smaller set)
# hold under 25 images and overlap, so their std shrinks towards 0 instead of measuring the spread
# (2 images: every subset is the whole set, std 0); FID's covariance of D-dim features from N < D
# images is rank-deficient and biased upwards. Both then follow the test images more than the model.
MIN_IMAGES = 50


class FewImagesWarning(UserWarning):
    """FID/KID computed from fewer than MIN_IMAGES images on a side."""


def few_images_message(n_real: int, n_fake: int, minimum: int = MIN_IMAGES) -> str | None:
    """The warning for FID/KID over ``n_real`` and ``n_fake`` images, or None when both reach ``minimum``."""
    return None if min(n_real, n_fake) >= minimum else (
        f"FID/KID from only {n_real} real and {n_fake} generated images (fewer than {minimum}): the scores are unreliable "
        f"and KID's std over subsets is no spread (0 when a subset is the whole set); use at least {minimum} test images "
        "a side, thousands to compare with papers")


def kid_subset_size(n_a: int, n_b: int, subset_size: int = 1000) -> int:
    """The subset size KID uses: subset_size clipped to the smaller set (one rule for kid and kid_score)."""
    return min(subset_size, n_a, n_b)


def kid(
    features_a,
    features_b,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """KID: mean and std (over ``num_subsets`` random subsets) of the unbiased MMD^2, cubic kernel.

    Each subset draws ``kid_subset_size(...)`` rows of each set without replacement; the kernel is
    k(x, y) = (x.y / D + 1)^3 as in Binkowski et al. 2018 and torch-fidelity. Unbiased means it can
    be negative: a set against itself gives -(2/m)(mean k(x, x) - mean k(x, x') over x != x'), not 0.
    Fewer than MIN_IMAGES rows on a side give a FewImagesWarning.
    """
    a, b = _to_numpy(features_a), _to_numpy(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have shapes (N, D) and (M, D), got {a.shape} and {b.shape}")
    size = kid_subset_size(len(a), len(b), subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature rows on each side, got {len(a)} and {len(b)}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if (message := few_images_message(len(a), len(b))) is not None:
        warnings.warn(message, FewImagesWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)], degree, gamma, coef0)
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps images (N, 3, H, W) in [0, 1] to features (N, dims), with a ``name``."""

    name: str
    dims: int

    def __call__(self, images: Tensor) -> Tensor: ...


class RandomConvExtractor(nn.Module):
    """A small untrained conv net with seeded weights: cheap, deterministic features for tests.

    Images are resized to ``size`` x ``size``; three stride-2 convolutions, then a global average.
    Its FIDs are NOT comparable with published ones.
    """

    def __init__(self, dims: int = 64, seed: int = 0, size: int = 64):
        super().__init__()
        self.dims, self.size = dims, size
        self.name = f"random-conv-{dims}d-seed{seed}"
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),  # (N, 16, size/2, size/2)
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),  # (N, 32, size/4, size/4)
            nn.Conv2d(32, dims, 4, stride=2, padding=1),  # (N, dims, size/8, size/8)
        )
        generator = torch.Generator().manual_seed(seed)
        for layer in self.net:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, generator=generator)
                nn.init.zeros_(layer.bias)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.net[0].weight.device, torch.float32)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(2 * x - 1).mean(dim=(2, 3))  # (N, dims)


# --------------------------------------------------------------------------------------------
# Images -> features -> FID / KID
# --------------------------------------------------------------------------------------------


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (cutlib.images' extensions, any case), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (expected a folder of .png/.jpg images)")
    files = list_images(folder, recursive=False)
    if not files:
        raise ValueError(f"image folder {folder} holds no images with extensions {list(IMAGE_EXTENSIONS)}")
    return files


def load_image(path: str | os.PathLike) -> Tensor:
    """One image as a float tensor (3, H, W) in [0, 1], as pytorch-fid reads it (RGB, no EXIF rotation)."""
    return to_tensor(images.load_image(path, exif=False), unit=True)


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor (N, 3, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}; use images.float() / 255")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"images must lie in [0, 1], got values in [{images.min().item():.3g}, {images.max().item():.3g}]; "
            "generator outputs in [-1, 1] need (x + 1) / 2"
        )


def _batches(images: ImageSource, batch_size: int):
    """Yield image batches (B, 3, H, W) in [0, 1] from a folder or a tensor; a batch never mixes sizes."""
    if isinstance(images, Tensor):
        _check_images(images)
        yield from images.split(batch_size)
        return
    batch: list[Tensor] = []
    for path in image_files(images):
        image = load_image(path)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    yield torch.stack(batch)


def _num_images(images: ImageSource) -> int:
    if not isinstance(images, (str, os.PathLike, Tensor)):
        raise TypeError(f"images must be a folder path or a tensor (N, 3, H, W) in [0, 1], got {type(images).__name__}")
    return len(images) if isinstance(images, Tensor) else len(image_files(images))


def image_features(images: ImageSource, extractor: FeatureExtractor, batch_size: int = 50, progress: bool = False) -> np.ndarray:
    """Features (N, D) float64 of a folder of images or a tensor (N, 3, H, W) in [0, 1]."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = -(-_num_images(images) // batch_size)
    chunks = []
    for batch in tqdm(_batches(images, batch_size), total=total, disable=not progress, desc=f"features ({extractor.name})"):
        feats = extractor(batch)  # (B, D)
        if tuple(feats.shape) != (len(batch), extractor.dims):
            raise ValueError(f"extractor {extractor.name} returned shape {tuple(feats.shape)}, expected ({len(batch)}, {extractor.dims})")
        chunks.append(_to_numpy(feats))
    return np.concatenate(chunks)


def extractor_record(extractor: FeatureExtractor) -> dict:
    """What a FID/KID result says about its features (only Inception is comparable with papers)."""
    standard = isinstance(extractor, InceptionExtractor)
    return {"name": extractor.name, "dims": extractor.dims, "comparable_with_published": standard,
            "note": COMPARABLE if standard else NOT_COMPARABLE.format(name=extractor.name)}


def _record(extractor: FeatureExtractor, n_real: int, n_fake: int) -> dict:
    """What every FID/KID result records besides its value."""
    record = extractor_record(extractor)
    return {"num_real": n_real, "num_fake": n_fake, "extractor": record.pop("name"), **record}


def _features_of_both(real, fake, extractor, batch_size, device, progress):
    if extractor is None:
        extractor = InceptionExtractor(device=device)
    elif device is not None:
        raise ValueError("device only places the default InceptionExtractor; build your extractor on the device you want")
    return extractor, image_features(real, extractor, batch_size, progress), image_features(fake, extractor, batch_size, progress)


def fid(
    real: ImageSource,
    fake: ImageSource,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """FID between two image sets (folders or tensors in [0, 1]); standard Inception features by default.

    Returns {"fid", "num_real", "num_fake", "extractor", "dims", "comparable_with_published", "note"}.
    """
    extractor, f_real, f_fake = _features_of_both(real, fake, extractor, batch_size, device, progress)
    value = frechet_distance(*feature_statistics(f_real), *feature_statistics(f_fake))
    result = {"fid": value, **_record(extractor, len(f_real), len(f_fake))}
    if min(len(f_real), len(f_fake)) <= extractor.dims:
        result["note"] += f"; fewer images than feature dimensions ({extractor.dims}): the covariances are rank-deficient and FID is biased upwards, report KID too"
    return result


def kid_score(
    real: ImageSource,
    fake: ImageSource,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """KID between two image sets (folders or tensors in [0, 1]), mean and std over subsets.

    Returns {"kid_mean", "kid_std", "num_subsets", "subset_size" (after clipping), "seed", ...record}.
    """
    extractor, f_real, f_fake = _features_of_both(real, fake, extractor, batch_size, device, progress)
    mean, std = kid(f_real, f_fake, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    size = kid_subset_size(len(f_real), len(f_fake), subset_size)
    return {"kid_mean": mean, "kid_std": std, "num_subsets": num_subsets, "subset_size": size, "seed": seed,
            **_record(extractor, len(f_real), len(f_fake))}
