"""Cityscapes, prepared from the user's own download (its licence forbids redistribution): label maps
(A) -> photos (B) in the unaligned layout, the paper's labels->photo task (Table 1).

    python -m cutlib prepare-cityscapes --gtfine gtFine --leftimg leftImg8bit --out data/cityscapes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cutlib.files import staged_folder
from cutlib.paths import data_root

# Cityscapes label id -> train id (the 19 evaluated classes; 255 = ignored)
CITYSCAPES_TRAIN_ID = np.full(256, 255, np.uint8)
for _label_id, _train_id in {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}.items():
    CITYSCAPES_TRAIN_ID[_label_id] = _train_id


def prepare_cityscapes(gtfine: str | Path, leftimg: str | Path, out: str | Path, size: int = 256) -> Path:
    """Write trainA/ (colour label maps), trainB/ (photos) from ``train`` and testA/ testB/ from ``val``.

    Label maps are resized with nearest neighbour (colours stay exact) and train ids go to
    ``X_labels/`` for the paper's correspondence scores (book/reference.md section 8); photos are resized bicubic.
    Files keep the Cityscapes name (city_seq_frame), so A and B of the same scene share a name.
    """
    gtfine, leftimg, out = Path(gtfine), Path(leftimg), Path(out)
    for folder, what in ((gtfine, "gtFine"), (leftimg, "leftImg8bit")):
        if not (folder / "train").is_dir() or not (folder / "val").is_dir():
            raise FileNotFoundError(f"{folder} should be the unzipped {what} folder with train/ and val/ inside")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")

    def fill(tmp: Path) -> None:
        for phase, split in (("val", "test"), ("train", "train")):
            colours = sorted((gtfine / phase).glob("*/*_gtFine_color.png"))
            photos = {p.name.replace("_leftImg8bit.png", ""): p for p in (leftimg / phase).glob("*/*_leftImg8bit.png")}
            if not colours:
                raise FileNotFoundError(f"no *_gtFine_color.png files under {gtfine / phase}/CITY/")
            for folder in ("A", "B", "A_labels", "B_labels"):
                (tmp / f"{split}{folder}").mkdir()
            for colour in tqdm(colours, desc=f"cityscapes {phase}", unit="img"):
                stem = colour.name.replace("_gtFine_color.png", "")
                if stem not in photos:
                    raise FileNotFoundError(f"no photo {stem}_leftImg8bit.png under {leftimg / phase} for {colour}")
                label_map = Image.open(colour).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
                label_map.save(tmp / f"{split}A" / f"{stem}.png")
                photo = Image.open(photos[stem]).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
                photo.save(tmp / f"{split}B" / f"{stem}.jpg", quality=100, subsampling=0)
                ids_path = colour.with_name(f"{stem}_gtFine_labelIds.png")
                if ids_path.is_file():
                    ids = Image.open(ids_path).resize((size, size), Image.Resampling.NEAREST)
                    train_ids = Image.fromarray(CITYSCAPES_TRAIN_ID[np.asarray(ids, dtype=np.uint8)])
                    for folder in ("A_labels", "B_labels"):
                        train_ids.save(tmp / f"{split}{folder}" / f"{stem}.png")

    return staged_folder(out, fill)


def prepare_cityscapes_cli(argv: list[str]) -> int:
    """``python -m cutlib prepare-cityscapes --gtfine DIR --leftimg DIR --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m cutlib prepare-cityscapes", description=prepare_cityscapes.__doc__)
    parser.add_argument("--gtfine", required=True, help="unzipped gtFine folder (has train/ and val/)")
    parser.add_argument("--leftimg", required=True, help="unzipped leftImg8bit folder (has train/ and val/)")
    parser.add_argument("--out", default=str(data_root() / "cityscapes"), help="output dataset folder")
    parser.add_argument("--size", type=int, default=256, help="square output size (default 256, as the paper)")
    args = parser.parse_args(argv)
    path = prepare_cityscapes(args.gtfine, args.leftimg, args.out, args.size)
    print(f"ready: {path} (trainA/testA label maps, trainB/testB photos)")
    return 0
