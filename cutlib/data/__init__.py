"""Data: image folders (unpaired, single image, inference), built-in datasets, catalog and downloads.

    from cutlib.data import UnpairedImageFolder, resolve_dataset
    ds = UnpairedImageFolder(resolve_dataset("stripes"), load_size=72, crop_size=64)
"""

from cutlib.data.catalog import get_entry, load_catalog, resolve_dataset
from cutlib.data.cityscapes import prepare_cityscapes
from cutlib.data.download import download_archive, download_dataset
from cutlib.data.folders import ImageFolder, PairedImageFolder, SingleImagePair, UnpairedImageFolder, check_batch_size
from cutlib.images import list_images, load_image
from cutlib.data.synthetic import BUILTIN, make_dataset


def load_dataset(cfg, phase: str = "train"):
    """The dataset a TrainConfig names (cfg.dataset: built-in name, catalog name or folder), as the
    trainer reads it: SingleImagePair for SinCUT, PairedImageFolder when cfg.paired (SPADE), else
    UnpairedImageFolder of ``phase``."""
    import torch

    root = resolve_dataset(cfg.dataset, size=cfg.load_size)  # built-in sets are drawn at the load size
    if cfg.model == "sincut":  # one image per domain: random zoom + 64x64 tiles (book/reference.md section 7)
        return SingleImagePair(root, crop_size=cfg.crop_size, flip=cfg.flip, length=cfg.dataset_len or 100_000,
                               generator=torch.Generator().manual_seed(cfg.seed))
    folder = PairedImageFolder if cfg.paired else UnpairedImageFolder  # paired: B is A's own target (SPADE)
    return folder(
        root, phase=phase, load_size=cfg.load_size, crop_size=cfg.crop_size, flip=cfg.flip and phase == "train",
        input_nc=cfg.input_nc, generator=torch.Generator().manual_seed(cfg.seed),
    )


def sample_images(cfg, n: int):
    """The first n test images of domain A (train images if there is no test split), without jitter:
    the fixed inputs of a run's sample grids. (n, C, crop, crop) in [-1, 1]."""
    import torch

    try:
        ds = load_dataset(cfg, "test")
    except (FileNotFoundError, ValueError):
        ds = load_dataset(cfg, "train")
    ds.jitter = False
    return torch.stack([ds[i]["A"] for i in range(min(n, len(ds.paths_A)))])

__all__ = [
    "BUILTIN",
    "ImageFolder",
    "PairedImageFolder",
    "SingleImagePair",
    "UnpairedImageFolder",
    "check_batch_size",
    "download_archive",
    "download_dataset",
    "get_entry",
    "list_images",
    "load_catalog",
    "load_dataset",
    "load_image",
    "make_dataset",
    "prepare_cityscapes",
    "resolve_dataset",
    "sample_images",
]
