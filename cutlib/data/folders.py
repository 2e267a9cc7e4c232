"""Image-folder datasets: unpaired A/B folders (CUT, FastCUT), aligned pairs (SPADE), one image pair
(SinCUT), inference.

Preprocessing follows book/reference.md section 5 (resize to ``load_size`` bicubic, random crop to
``crop_size``, random horizontal flip, each domain on its own) and section 7 for SinCUT
(random zoom, 64x64 tiles, flips). Pixels are scaled to [-1, 1].

Every random choice of item ``i`` comes from a generator seeded with ``(base_seed, epoch, i)``,
so an item is the same whatever the access order or the number of DataLoader workers, and a
resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cutlib.images import IMAGE_EXTENSIONS, list_images, load_image, to_tensor

BICUBIC = Image.Resampling.BICUBIC

LAYOUT = """expected layout (the CycleGAN/CUT unaligned layout):
    ROOT/trainA/  images of domain A for training
    ROOT/trainB/  images of domain B for training
    ROOT/testA/   images of domain A for testing
    ROOT/testB/   images of domain B for testing"""


# ----------------------------------------------------------------------------------------------
# files


def check_image(path: Path) -> None:
    """Raise if ``path`` cannot be decoded. JPEGs decode at 1/8 scale (cheap), PNGs are verified (chunk
    CRCs and the end of the stream); other formats (BMP, TIFF, PPM, WebP) are decoded in full, as
    PIL's verify() checks nothing for them and a truncated file would only fail when first used."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (img.width // 8 + 1, img.height // 8 + 1))
            img.load()  # a truncated JPEG raises here
        elif img.format == "PNG":
            img.verify()
        else:
            img.load()  # a truncated BMP or TIFF raises "image file is truncated" here


def readable_images(paths: list[Path], strict: bool = False, stacklevel: int = 3) -> list[Path]:
    """``paths`` without the files that cannot be decoded: one warning names them (strict: raise)."""
    good, bad = [], []
    for path in paths:
        try:
            check_image(path)
            good.append(path)
        except Exception as err:  # PIL raises many types for broken files
            if strict:
                raise OSError(f"cannot read image {path}: {err} (strict=True; remove or fix the file)") from err
            bad.append(f"{path} ({err})")
    if bad:
        warnings.warn(f"skipping {len(bad)} unreadable image file(s): " + "; ".join(bad), stacklevel=stacklevel)
    return good


def item_rng(base_seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one item: a function of (seed, epoch, index) only."""
    return np.random.default_rng([int(base_seed), int(epoch), int(index)])


def base_seed_of(generator: torch.Generator | None) -> int:
    """Seed of a torch.Generator (0 when None): the data's randomness follows the run's seed."""
    return int(generator.initial_seed()) if generator is not None else 0


def check_batch_size(dataset, batch_size: int) -> None:
    """Raise a clear error when ``dataset`` has fewer items than one batch (the reference crashes)."""
    n = len(dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if n < batch_size:
        where = getattr(dataset, "root", "the dataset")
        raise ValueError(
            f"dataset at {where} has {n} item(s) but batch_size is {batch_size}: "
            f"add images or lower batch_size to at most {n}"
        )


# ----------------------------------------------------------------------------------------------
# unpaired folders (CUT, FastCUT, CycleGAN)


def _phase_images(root: Path, phase: str, domain: str, strict: bool) -> list[Path]:
    folder = root / f"{phase}{domain}"
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found.\n{LAYOUT}")
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(
            f"image folder {folder} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}).\n{LAYOUT}"
        )
    paths = readable_images(paths, strict, stacklevel=4)  # the warning points at the caller of the dataset
    if not paths:
        raise FileNotFoundError(f"no readable image in {folder} (all files failed to decode).")
    return paths


class UnpairedImageFolder(torch.utils.data.Dataset):
    """Unaligned A/B folders: item i pairs A file ``i mod |A|`` with a random B file (REFERENCE 5).

    ``len`` is max(|A|, |B|). ``jitter=False`` (the decay epochs) resizes straight to ``crop_size``.
    ``load_size``/``crop_size`` None skip the resize/crop. Call ``set_epoch`` once per epoch.
    """

    def __init__(
        self,
        root: str | Path,
        phase: str = "train",
        load_size: int | None = 286,
        crop_size: int | None = 256,
        flip: bool = True,
        input_nc: int = 3,
        generator: torch.Generator | None = None,
        strict: bool = False,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} not found.\n{LAYOUT}")
        if load_size is not None and crop_size is not None and crop_size > load_size:
            raise ValueError(f"crop_size ({crop_size}) must not exceed load_size ({load_size})")
        if input_nc not in (1, 3):
            raise ValueError(f"input_nc must be 1 or 3, got {input_nc}")
        self.phase, self.load_size, self.crop_size = phase, load_size, crop_size
        self.flip, self.input_nc = flip, input_nc
        self.paths_A = _phase_images(self.root, phase, "A", strict)
        self.paths_B = _phase_images(self.root, phase, "B", strict)
        self.base_seed = base_seed_of(generator)
        self.epoch = 0
        self.jitter = True  # False in the decay epochs: no random crop (REFERENCE 5)

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (B partner, crops, flips) for a new epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(len(self.paths_A), len(self.paths_B))

    def _transform(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        load = self.load_size if self.jitter else self.crop_size
        if load is not None:
            img = img.resize((load, load), BICUBIC)  # square, as the reference
        # the draws happen even when unused, so one item's stream never depends on the settings
        crop = self.crop_size
        fx, fy, do_flip = rng.random(), rng.random(), rng.random() < 0.5
        if crop is not None and (img.width > crop or img.height > crop):
            if img.width < crop or img.height < crop:
                raise ValueError(f"image of size {img.size} is smaller than crop_size {crop}")
            x, y = int(fx * (img.width - crop + 1)), int(fy * (img.height - crop + 1))
            img = img.crop((x, y, x + crop, y + crop))
        if self.flip and do_flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(img)

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.base_seed, self.epoch, index)
        path_A = self.paths_A[index % len(self.paths_A)]
        path_B = self.paths_B[int(rng.integers(len(self.paths_B)))]
        A = self._transform(load_image(path_A, self.input_nc), rng)  # (C, crop, crop)
        B = self._transform(load_image(path_B, self.input_nc), rng)
        return {"A": A, "B": B, "A_path": str(path_A), "B_path": str(path_B)}


class PairedImageFolder(UnpairedImageFolder):
    """Aligned pairs for SPADE: item i is A file i and B = the file of the same name in ``{phase}A_target/``
    (the photo of A's own layout; the built-in ``city`` writes it), both cropped and flipped alike.

    ``len`` is |A|; every A file needs its target (a missing one is named)."""

    def __init__(self, root: str | Path, phase: str = "train", **kwargs):
        super().__init__(root, phase=phase, **kwargs)
        folder = self.root / f"{phase}A_target"
        if not folder.is_dir():
            raise FileNotFoundError(f"paired data needs {folder} (the target of every {phase}A image, same file names); "
                                    "the built-in city writes it, an unpaired folder has none: train with paired=False")
        targets = {p.stem: p for p in list_images(folder)}
        missing = [p.name for p in self.paths_A if p.stem not in targets]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {phase}A image(s) have no target in {folder}: {', '.join(missing[:5])}")
        self.paths_B = [targets[p.stem] for p in self.paths_A]  # paths_B[i] is the target of paths_A[i]

    def __len__(self) -> int:
        return len(self.paths_A)

    def __getitem__(self, index: int) -> dict:
        path_A = self.paths_A[index % len(self.paths_A)]
        path_B = self.paths_B[index % len(self.paths_A)]
        rng = item_rng(self.base_seed, self.epoch, index)
        state = rng.bit_generator.state
        A = self._transform(load_image(path_A, self.input_nc), rng)  # (C, crop, crop)
        rng.bit_generator.state = state  # the same draws again: the same crop and flip for the target
        B = self._transform(load_image(path_B, self.input_nc), rng)
        return {"A": A, "B": B, "A_path": str(path_A), "B_path": str(path_B)}


# ----------------------------------------------------------------------------------------------
# one image pair (SinCUT)


def _single_image(root: Path, domain: str) -> Path:
    folder = root / f"train{domain}"
    paths = list_images(folder) if folder.is_dir() else []
    if len(paths) != 1:
        raise FileNotFoundError(
            f"SinCUT needs exactly one image in {folder}, found {len(paths)}.\n"
            "expected layout: ROOT/trainA/<one image>, ROOT/trainB/<one image> "
            "(or pass the two image paths as a tuple)"
        )
    return paths[0]


class SingleImagePair(torch.utils.data.Dataset):
    """Random crops of one image pair for SinCUT (REFERENCE 7).

    Each item zooms each image by independent width/height factors in ``zoom`` (never below the
    crop size), cuts a ``crop_size`` tile at a random offset and flips it at random.
    ``root`` is a folder with trainA/ and trainB/ holding one image each, or a tuple (path_A, path_B).
    ``length`` items make one "epoch" (the reference: 100,000, i.e. 6,250 steps of 16 crops).
    """

    def __init__(
        self,
        root: str | Path | tuple,
        crop_size: int = 64,
        zoom: tuple[float, float] = (1 / 3, 1.0),
        flip: bool = True,
        length: int = 100_000,
        generator: torch.Generator | None = None,
    ):
        if isinstance(root, (tuple, list)):
            if len(root) != 2:
                raise ValueError(f"root must be a folder or a pair (path_A, path_B), got {root!r}")
            self.path_A, self.path_B = Path(root[0]), Path(root[1])
            self.root = self.path_A.parent
        else:
            self.root = Path(root)
            if not self.root.is_dir():
                raise FileNotFoundError(f"SinCUT folder {self.root} not found (expected trainA/ and trainB/)")
            self.path_A, self.path_B = _single_image(self.root, "A"), _single_image(self.root, "B")
        for path in (self.path_A, self.path_B):
            if not path.is_file():
                raise FileNotFoundError(f"SinCUT image {path} not found")
            readable_images([path], strict=True)
        if not 0 < zoom[0] <= zoom[1]:
            raise ValueError(f"zoom must be (low, high) with 0 < low <= high, got {zoom}")
        self.image_A, self.image_B = load_image(self.path_A), load_image(self.path_B)
        self.crop_size, self.zoom, self.flip, self.length = crop_size, tuple(zoom), flip, int(length)
        for path, img in ((self.path_A, self.image_A), (self.path_B, self.image_B)):
            if min(img.size) < crop_size:
                raise ValueError(f"image {path} of size {img.size} is smaller than crop_size {crop_size}")
        self.paths_A, self.paths_B = [self.path_A], [self.path_B]
        self.base_seed = base_seed_of(generator)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws for a new epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _tile(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        crop = self.crop_size
        fw, fh = rng.uniform(*self.zoom, size=2)
        zw, zh = max(crop, round(img.width * fw)), max(crop, round(img.height * fh))  # zoomed size
        x, y = int(rng.integers(zw - crop + 1)), int(rng.integers(zh - crop + 1))  # tile offset
        sx, sy = img.width / zw, img.height / zh  # source pixels per zoomed pixel
        # resize only the source region under the tile: same pixels as zoom-then-crop, much faster
        box = (x * sx, y * sy, (x + crop) * sx, (y + crop) * sy)
        tile = img.resize((crop, crop), BICUBIC, box=box)
        if self.flip and rng.random() < 0.5:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(tile)  # (3, crop, crop)

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.base_seed, self.epoch, index)
        A, B = self._tile(self.image_A, rng), self._tile(self.image_B, rng)
        return {"A": A, "B": B, "A_path": str(self.path_A), "B_path": str(self.path_B)}

    @staticmethod
    def _full(img: Image.Image, multiple: int) -> torch.Tensor:
        w, h = max(multiple, img.width // multiple * multiple), max(multiple, img.height // multiple * multiple)
        return to_tensor(img if (w, h) == img.size else img.resize((w, h), BICUBIC))

    def full_A(self, multiple: int = 4) -> torch.Tensor:
        """The whole image A (3, H, W) in [-1, 1], sides resized down to a multiple of ``multiple``."""
        return self._full(self.image_A, multiple)

    def full_B(self, multiple: int = 4) -> torch.Tensor:
        """The whole image B (3, H, W) in [-1, 1], sides resized down to a multiple of ``multiple``."""
        return self._full(self.image_B, multiple)


# ----------------------------------------------------------------------------------------------
# inference


class ImageFolder(torch.utils.data.Dataset):
    """Every image under ``root`` (recursive, sorted; or one image file) for translation.

    Item: dict(image=(C, H, W) in [-1, 1], path=str). Original size when ``load_size`` is None,
    else a square ``load_size`` resize (bicubic).
    """

    def __init__(self, root: str | Path, load_size: int | None = None, input_nc: int = 3, strict: bool = False):
        self.root = Path(root)
        if self.root.is_file():
            paths = [self.root]
        elif self.root.is_dir():
            paths = list_images(self.root)
        else:
            raise FileNotFoundError(f"image folder or file {self.root} not found")
        if not paths:
            raise FileNotFoundError(f"no images (extensions {', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.paths = readable_images(paths, strict)
        if not self.paths:
            raise FileNotFoundError(f"no readable image under {self.root}")
        if input_nc not in (1, 3):
            raise ValueError(f"input_nc must be 1 or 3, got {input_nc}")
        self.load_size, self.input_nc = load_size, input_nc

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        img = load_image(self.paths[index], self.input_nc)
        if self.load_size is not None:
            img = img.resize((self.load_size, self.load_size), BICUBIC)
        return {"image": to_tensor(img), "path": str(self.paths[index])}
