"""cutlib.data.folders: the unpaired, single-image and inference datasets on real and hand-made files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cutlib.data import (
    ImageFolder,
    SingleImagePair,
    UnpairedImageFolder,
    check_batch_size,
    list_images,
    load_image,
)
from cutlib.data.folders import item_rng
from cutlib.images import to_tensor


def _write(path, array, mode=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path, **save)
    return path


def _noise_folder(root, n_a=3, n_b=5, size=40, seed=0):
    """A tiny unaligned dataset of random RGB PNGs (every file different)."""
    rng = np.random.default_rng(seed)
    for split, n in (("trainA", n_a), ("trainB", n_b)):
        for i in range(n):
            _write(root / split / f"{i:02d}.png", rng.integers(0, 256, (size, size + 4, 3)))
    return root


def _as_uint8(t: torch.Tensor) -> np.ndarray:
    return np.rint((t.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- real slices


def test_horse2zebra_slice_loads_with_grayscale_files_as_rgb(horse2zebra_mini):
    ds = UnpairedImageFolder(horse2zebra_mini, load_size=286, crop_size=256)
    assert len(ds) == max(len(ds.paths_A), len(ds.paths_B)) == 24
    gray = [p for p in ds.paths_B if Image.open(p).mode == "L"]
    assert len(gray) == 3, "the slice holds three grayscale zebras on purpose"
    for path in gray:
        img = load_image(path)
        assert img.mode == "RGB"
        arr = np.asarray(img)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    # a whole epoch of items, all RGB crops in [-1, 1]
    seen_gray = False
    for i in range(len(ds)):
        item = ds[i]
        assert item["A"].shape == item["B"].shape == (3, 256, 256)
        assert -1 <= item["A"].min() and item["B"].max() <= 1
        seen_gray |= item["B_path"] in map(str, gray)
    ds.set_epoch(1)
    seen_gray |= any(ds[i]["B_path"] in map(str, gray) for i in range(len(ds)))
    assert seen_gray


def test_afhq_512_images_resize_and_crop(afhq_mini):
    ds = UnpairedImageFolder(afhq_mini, load_size=286, crop_size=256, flip=False)
    assert Image.open(ds.paths_A[0]).size == (512, 512)
    item = ds[0]
    assert item["A"].shape == item["B"].shape == (3, 256, 256)
    # the crop is a window of the 286x286 bicubic resize
    resized = np.asarray(Image.open(ds.paths_A[0]).convert("RGB").resize((286, 286), Image.Resampling.BICUBIC))
    crop = _as_uint8(item["A"])
    windows = [(y, x) for y in range(31) for x in range(31) if (resized[y:y + 256, x:x + 256] == crop).all()]
    assert windows, "the crop is not a 256x256 window of the resized image"
    # decay epochs: no jitter, the image is resized straight to the crop size
    ds.jitter = False
    direct = np.asarray(Image.open(ds.paths_A[0]).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC))
    assert (_as_uint8(ds[0]["A"]) == direct).all()


def test_monet_etretat_yields_sincut_tiles(monet_etretat):
    ds = SingleImagePair(monet_etretat, crop_size=64, length=50, generator=torch.Generator().manual_seed(1))
    assert len(ds) == 50
    batch = torch.stack([ds[i]["A"] for i in range(16)])
    assert batch.shape == (16, 3, 64, 64) and ds[0]["B"].shape == (3, 64, 64)
    assert -1 <= batch.min() and batch.max() <= 1
    assert len({tuple(t.flatten()[:20].tolist()) for t in batch}) == 16, "tiles should differ"
    full_a, full_b = ds.full_A(), ds.full_B()
    assert full_a.shape[0] == 3 and full_a.shape[1] % 4 == 0 and full_a.shape[2] % 4 == 0
    assert full_b.shape == (3, 768, 1024)  # already multiples of 4: untouched


def test_sincut_tile_equals_zoom_then_crop(monet_etretat):
    """The fast region resize gives the pixels of 'zoom the whole image, then cut the tile'."""
    ds = SingleImagePair(monet_etretat, crop_size=64, flip=False)
    img = ds.image_A
    for index in range(3):
        rng = item_rng(ds.base_seed, ds.epoch, index)
        fw, fh = rng.uniform(*ds.zoom, size=2)
        zw, zh = max(64, round(img.width * fw)), max(64, round(img.height * fh))
        x, y = int(rng.integers(zw - 64 + 1)), int(rng.integers(zh - 64 + 1))
        slow = np.asarray(img.resize((zw, zh), Image.Resampling.BICUBIC), dtype=int)[y:y + 64, x:x + 64]
        fast = _as_uint8(ds[index]["A"]).astype(int)
        assert np.abs(fast - slow).mean() < 1.0 and np.abs(fast - slow).max() <= 12


def test_single_image_pair_accepts_two_paths_and_rejects_bad_folders(tmp_path, monet_etretat):
    a, b = list_images(monet_etretat / "trainA")[0], list_images(monet_etretat / "trainB")[0]
    ds = SingleImagePair((a, b), length=4)
    assert ds.paths_A == [a] and ds[3]["B_path"] == str(b)
    (tmp_path / "trainA").mkdir()
    with pytest.raises(FileNotFoundError, match="exactly one image"):
        SingleImagePair(tmp_path)


# ---------------------------------------------------------------------------------------------- semantics


def test_item_pairs_file_i_mod_A_with_random_B(tmp_path):
    root = _noise_folder(tmp_path, n_a=3, n_b=5)
    ds = UnpairedImageFolder(root, load_size=None, crop_size=None, flip=False)
    assert len(ds) == 5 and len(ds.paths_A) == 3
    for i in range(5):
        item = ds[i]
        assert item["A_path"] == str(ds.paths_A[i % 3])
        assert (_as_uint8(item["A"]) == np.asarray(Image.open(ds.paths_A[i % 3]))).all()
        assert item["B_path"] in map(str, ds.paths_B)
    b_paths = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        b_paths |= {ds[i]["B_path"] for i in range(5)}
    assert len(b_paths) > 2, "B should be drawn at random, not in order"


def test_items_are_reproducible_whatever_the_order_and_workers(tmp_path):
    root = _noise_folder(tmp_path, n_a=4, n_b=6)
    make = lambda seed: UnpairedImageFolder(root, load_size=36, crop_size=32, generator=torch.Generator().manual_seed(seed))
    first, second = make(7), make(7)
    forward = [first[i] for i in range(len(first))]
    backward = {i: second[i] for i in reversed(range(len(second)))}
    for i, item in enumerate(forward):
        assert torch.equal(item["A"], backward[i]["A"]) and torch.equal(item["B"], backward[i]["B"])
        assert item["B_path"] == backward[i]["B_path"]
    loader = torch.utils.data.DataLoader(make(7), batch_size=2, num_workers=2, shuffle=False)
    batched = torch.cat([batch["B"] for batch in loader])
    assert torch.equal(batched, torch.stack([item["B"] for item in forward]))
    other = make(8)
    assert any(not torch.equal(other[i]["B"], forward[i]["B"]) for i in range(len(other)))


def test_set_epoch_changes_the_draws_and_going_back_restores_them(tmp_path):
    ds = UnpairedImageFolder(_noise_folder(tmp_path, 4, 6), load_size=36, crop_size=32)
    epoch0 = [ds[i]["B"] for i in range(len(ds))]
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["B"], epoch0[i]) for i in range(len(ds)))
    ds.set_epoch(0)
    assert all(torch.equal(ds[i]["B"], epoch0[i]) for i in range(len(ds)))


def test_flips_happen_about_half_the_time_independently_per_domain(tmp_path):
    same = np.random.default_rng(3).integers(0, 256, (32, 32, 3))
    _write(tmp_path / "trainA" / "a.png", same)
    _write(tmp_path / "trainB" / "b.png", same)
    ds = UnpairedImageFolder(tmp_path, load_size=None, crop_size=None, flip=True)
    flips = []
    for epoch in range(16):
        ds.set_epoch(epoch)
        item = ds[0]
        flips.append(tuple(bool((_as_uint8(item[k]) == same[:, ::-1]).all()) for k in "AB"))
    assert {a for a, _ in flips} == {True, False}, "horizontal flip should happen about half the time"
    assert any(a != b for a, b in flips), "A and B should be flipped independently"


# ---------------------------------------------------------------------------------------------- file formats


def test_modes_are_converted_to_rgb_or_one_channel(tmp_path):
    rgb = _write(tmp_path / "rgb.png", np.full((8, 8, 3), (10, 200, 30)))
    rgba = _write(tmp_path / "rgba.png", np.full((8, 8, 4), (10, 20, 30, 100)), "RGBA")
    gray = _write(tmp_path / "gray.png", np.full((8, 8), 100), "L")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 250, 120, 5] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    expect = {rgb: (10, 200, 30), rgba: (10, 20, 30), gray: (100, 100, 100), tmp_path / "pal.png": (250, 120, 5),
              tmp_path / "cmyk.jpg": (0, 255, 255), tmp_path / "deep.png": (156, 156, 156)}
    for path, colour in expect.items():
        img = load_image(path)
        assert img.mode == "RGB", path.name
        assert np.abs(np.asarray(img, int)[4, 4] - colour).max() <= 2, (path.name, np.asarray(img)[4, 4])
    one = load_image(rgb, input_nc=1)
    assert one.mode == "L"
    assert to_tensor(one).shape == (1, 8, 8)


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    img = np.asarray(load_image(tmp_path / "rotated.jpg"), int)
    assert img.shape == (40, 20, 3), "width and height should swap"
    assert img[5, 10, 0] > 200 and img[35, 10, 2] > 200, "the left (red) half should now be on top"


def test_one_channel_dataset(tmp_path):
    ds = UnpairedImageFolder(_noise_folder(tmp_path), load_size=36, crop_size=32, input_nc=1)
    assert ds[0]["A"].shape == (1, 32, 32)


def test_truncated_files_are_skipped_with_one_warning_or_raise_when_strict(tmp_path):
    root = _noise_folder(tmp_path, n_a=3, n_b=3)
    jpg = _write(root / "trainA" / "broken.jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3)), quality=95)
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    png = root / "trainB" / "01.png"
    png.write_bytes(png.read_bytes()[:-40])
    with pytest.warns(UserWarning) as record:
        ds = UnpairedImageFolder(root, load_size=36, crop_size=32)
    messages = [str(w.message) for w in record if "unreadable" in str(w.message)]
    assert len(messages) == 2  # one per folder, each naming its file
    assert "broken.jpg" in messages[0] and "01.png" in messages[1]
    assert jpg not in ds.paths_A and png not in ds.paths_B and len(ds.paths_A) == 3
    with pytest.raises(OSError, match="broken.jpg"):
        UnpairedImageFolder(root, strict=True)


def _truncated(path, fmt, seed=0):
    """A real BMP or TIFF cut in half: its header parses (and PIL's verify() passes), its pixels end early."""
    _write(path, np.random.default_rng(seed).integers(0, 256, (40, 44, 3)), format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def test_truncated_bmp_and_tiff_are_skipped_before_training_reads_them(tmp_path):
    root = _noise_folder(tmp_path, n_a=3, n_b=3)
    bmp, tif = _truncated(root / "trainA" / "cut.bmp", "BMP"), _truncated(root / "trainB" / "cut.tiff", "TIFF")
    with pytest.warns(UserWarning, match="unreadable") as record:
        ds = UnpairedImageFolder(root, load_size=36, crop_size=32)
    messages = " ".join(str(w.message) for w in record)
    assert "cut.bmp" in messages and "cut.tiff" in messages and "truncated" in messages
    assert bmp not in ds.paths_A and tif not in ds.paths_B
    batches = list(torch.utils.data.DataLoader(ds, batch_size=2))  # every item: none is the broken file
    assert sum(len(b["A"]) for b in batches) == len(ds) == 3
    with pytest.raises(OSError, match="cut.bmp"):
        UnpairedImageFolder(root, strict=True)


def test_training_on_a_folder_with_truncated_bmp_and_tiff_runs_to_the_end(tmp_path):
    from cutlib import config as C
    from cutlib.runs import CHECKPOINT
    from cutlib.train import train

    root = _noise_folder(tmp_path / "data", n_a=2, n_b=2, size=36)
    _truncated(root / "trainA" / "cut.bmp", "BMP")
    _truncated(root / "trainB" / "cut.tif", "TIFF")
    tiny = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}
    with pytest.warns(UserWarning, match="cut.bmp"):
        train(C.preset("cut", dataset=str(root), max_steps=4, **tiny), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / CHECKPOINT).is_file()


def test_extensions_in_any_case_recursive_and_sorted(tmp_path):
    _write(tmp_path / "b" / "z.PNG", np.zeros((4, 4, 3)))
    _write(tmp_path / "a.JPG", np.zeros((4, 4, 3)))
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.JPG", "b/z.PNG"]


# ---------------------------------------------------------------------------------------------- errors


def test_missing_or_empty_folders_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainA") as err:
        UnpairedImageFolder(tmp_path)
    assert str(tmp_path / "trainA") in str(err.value) and "testB" in str(err.value)
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainA" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        UnpairedImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        UnpairedImageFolder(tmp_path / "nope")
    with pytest.raises(ValueError, match="crop_size"):
        UnpairedImageFolder(_noise_folder(tmp_path), load_size=32, crop_size=64)


def test_dataset_smaller_than_the_batch_says_so(tmp_path):
    ds = UnpairedImageFolder(_noise_folder(tmp_path, n_a=2, n_b=3), load_size=36, crop_size=32)
    check_batch_size(ds, 3)
    with pytest.raises(ValueError, match=r"3 item\(s\) but batch_size is 4"):
        check_batch_size(ds, 4)
    with pytest.raises(ValueError, match="at least 1"):
        check_batch_size(ds, 0)


# ---------------------------------------------------------------------------------------------- inference


def test_image_folder_keeps_size_or_resizes(tmp_path):
    _write(tmp_path / "x" / "b.png", np.zeros((30, 50, 3)))
    _write(tmp_path / "a.png", np.full((20, 24), 255), "L")
    ds = ImageFolder(tmp_path)
    assert [item["path"] for item in ds] == [str(tmp_path / "a.png"), str(tmp_path / "x" / "b.png")]
    assert ds[0]["image"].shape == (3, 20, 24) and ds[1]["image"].shape == (3, 30, 50)
    assert ds[0]["image"].min() == 1.0
    assert ImageFolder(tmp_path, load_size=16)[1]["image"].shape == (3, 16, 16)
    assert len(ImageFolder(tmp_path / "a.png")) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "empty")
