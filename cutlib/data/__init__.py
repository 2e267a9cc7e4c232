"""Data: image folders (unpaired, single image, inference), built-in datasets, catalog and downloads.

    from cutlib.data import UnpairedImageFolder, resolve_dataset
    ds = UnpairedImageFolder(resolve_dataset("stripes"), load_size=72, crop_size=64)
"""

from cutlib.data.catalog import get_entry, load_catalog, resolve_dataset
from cutlib.data.download import download_archive, download_dataset, prepare_cityscapes
from cutlib.data.folders import (
    ImageFolder,
    SingleImagePair,
    UnpairedImageFolder,
    check_batch_size,
    list_images,
    load_image,
)
from cutlib.data.synthetic import BUILTIN, make_dataset

__all__ = [
    "BUILTIN",
    "ImageFolder",
    "SingleImagePair",
    "UnpairedImageFolder",
    "check_batch_size",
    "download_archive",
    "download_dataset",
    "get_entry",
    "list_images",
    "load_catalog",
    "load_image",
    "make_dataset",
    "prepare_cityscapes",
    "resolve_dataset",
]
