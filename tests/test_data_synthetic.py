"""cutlib.data.synthetic: the built-in 'stripes' and 'city' datasets and their ground truth."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cutlib.data import UnpairedImageFolder, make_dataset
from cutlib.data import drawing, synthetic
from cutlib.data.city import CITY_PALETTE, CITY_USED

SMALL = dict(size=64, n_train=40, n_test=6)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("stripes"), **SMALL)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return make_dataset("city", root=tmp_path_factory.mktemp("city"), **SMALL)


def _load(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["stripes", "city"])
def test_layout_counts_and_meta(name, request):
    root = request.getfixturevalue(name)
    counts = {"trainA": 40, "trainB": 40, "testA": 6, "testB": 6, "testA_target": 6}
    for folder, n in counts.items():
        images = sorted((root / folder).glob("*.png"))
        labels = sorted((root / f"{folder}_labels").glob("*.png"))
        assert len(images) == n and [p.name for p in labels] == [p.name for p in images], folder
        assert _load(images[0]).shape == (64, 64, 3) and _load(labels[0]).shape == (64, 64)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["name"] == name and meta["size"] == 64 and meta["seed"] == 0
    assert meta["n_train"] == 40 and meta["generator_version"] == synthetic.generator_version(name)
    assert len(meta["classes"]) == len(meta["palette"])
    ds = UnpairedImageFolder(root, load_size=72, crop_size=64)
    assert len(ds) == 40 and ds[0]["A"].shape == (3, 64, 64)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    args = dict(size=32, n_train=5, n_test=2)
    one = make_dataset("stripes", root=tmp_path / "one", **args)
    two = make_dataset("stripes", root=tmp_path / "two", **args)
    assert _digest(one) == _digest(two)
    other = make_dataset("stripes", root=tmp_path / "one", seed=1, **args)
    assert other != one and _digest(other)["trainA/00000.png"] != _digest(one)["trainA/00000.png"]
    assert _load(one / "trainA" / "00000.png").shape == (32, 32, 3)


def test_cache_is_reused_and_no_temporary_folder_is_left(tmp_path):
    path = make_dataset("city", root=tmp_path, size=32, n_train=3, n_test=2)
    stamp = (path / "meta.json").stat().st_mtime_ns
    assert make_dataset("city", root=tmp_path, size=32, n_train=3, n_test=2) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_save = drawing.save_png

    def save_then_fail(array, path):  # fault injection: the 7th file write is interrupted
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt
        real_save(array, path)

    monkeypatch.setattr(drawing, "save_png", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("stripes", root=tmp_path, size=32, n_train=5, n_test=2)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_generation_leaves_a_temporary_that_the_next_one_removes(tmp_path):
    """A real generating process killed with SIGKILL (no clean-up runs) leaves its temporary folder; the next
    make_dataset sees that its process is gone, removes it and makes the dataset."""
    args = dict(size=32, n_train=60, n_test=4)
    code = f"from cutlib.data import make_dataset; make_dataset('stripes', root={str(tmp_path)!r}, **{args!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob(".stripes_*.tmp-*/trainA/*.png"))) < 5:  # mid-generation: a few images written
            assert proc.poll() is None and time.monotonic() < deadline, "the generation ended before it could be killed"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped: its process id is gone
    assert proc.returncode == -signal.SIGKILL
    final = synthetic.dataset_dir("stripes", tmp_path, **args)
    [left] = list(tmp_path.iterdir())
    assert left.name.startswith(f".{final.name}.tmp-{proc.pid}-") and left.is_dir() and not final.exists()
    assert make_dataset("stripes", root=tmp_path, **args) == final
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert len(list((final / "trainB").glob("*.png"))) == 60 and (final / "meta.json").is_file()


def test_stripes_b_animals_are_about_twice_as_large(stripes):
    """Paper Fig. 15: animals cover ~18% of horse images and ~37% of zebra images."""
    frac = {d: np.mean([_load(p).mean() for p in (stripes / f"train{d}_labels").glob("*.png")]) for d in "AB"}
    assert 0.12 < frac["A"] < 0.25 and 0.28 < frac["B"] < 0.46
    assert 1.6 < frac["B"] / frac["A"] < 2.6
    assert set(np.unique(_load(stripes / "trainA_labels" / "00000.png"))) <= {0, 1}


def test_stripes_b_coat_is_black_and_white_a_coat_is_smooth(stripes):
    dark = bright = smooth = 0.0
    for name in sorted(p.name for p in (stripes / "trainB").glob("*.png"))[:10]:
        lum = _load(stripes / "trainB" / name).mean(axis=2)
        inside = ndimage.binary_erosion(_load(stripes / "trainB_labels" / name) == 1, iterations=1)
        dark += (lum[inside] < 70).mean() / 10
        bright += (lum[inside] > 160).mean() / 10
        a = _load(stripes / "trainA" / name).astype(float)
        inside_a = ndimage.binary_erosion(_load(stripes / "trainA_labels" / name) == 1, iterations=1)
        # neighbouring pixels of a smooth coat differ little; stripes flip between black and white
        smooth += np.abs(np.diff(a, axis=1))[inside_a[:, 1:] & inside_a[:, :-1]].mean() / 10
    assert dark > 0.2 and bright > 0.2, "striped coats should be strongly black and white"
    assert smooth < 12


def test_stripes_target_is_the_same_scene_striped(stripes):
    for name in ("00000.png", "00003.png"):
        a, target = _load(stripes / "testA" / name).astype(int), _load(stripes / "testA_target" / name).astype(int)
        animal = _load(stripes / "testA_labels" / name) == 1
        assert (_load(stripes / "testA_target_labels" / name) == animal).all()
        far = ~ndimage.binary_dilation(animal, iterations=2)
        assert (a[far] == target[far]).all(), "the background must be identical"
        assert np.abs(a[animal] - target[animal]).mean() > 20, "the coat must change"


def test_city_labels_palette_and_target(city):
    for name in ("00000.png", "00001.png", "00005.png"):
        labels = _load(city / "testA_labels" / name)
        assert set(np.unique(labels)) <= set(CITY_USED)
        assert (_load(city / "testA" / name) == CITY_PALETTE[labels]).all(), "A is the label map in colour"
        assert (_load(city / "testA_target_labels" / name) == labels).all()
        photo = _load(city / "testA_target" / name).astype(int)
        assert np.abs(photo - CITY_PALETTE[labels]).mean() > 20, "the target is a photo, not the label colours"
    seen = set()
    for path in (city / "trainB_labels").glob("*.png"):
        seen |= set(np.unique(_load(path)).tolist())
    assert {0, 1, 2, 8, 10, 13} <= seen, "road, sidewalk, building, vegetation, sky and car should all appear"
    a0, b0 = _load(city / "trainA_labels" / "00000.png"), _load(city / "trainB_labels" / "00000.png")
    assert not (a0 == b0).all(), "domain B shows other layouts than domain A"


def test_city_photos_look_like_their_classes(city):
    """Mean colour per class separates sky (bright, blue-ish) from road (grey) and vegetation (green)."""
    sums = {c: [] for c in (0, 8, 10)}
    for path in (city / "trainB").glob("*.png"):
        photo, labels = _load(path).astype(float), _load(city / "trainB_labels" / path.name)
        for c in sums:
            if (labels == c).sum() > 20:
                sums[c].append(photo[labels == c].mean(axis=0))
    road, veg, sky = (np.mean(sums[c], axis=0) for c in (0, 8, 10))
    assert sky.mean() > road.mean() and sky[2] > sky[0]
    assert veg[1] > veg[0] and veg[1] > veg[2]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="stripes"):
        make_dataset("zebras", root=tmp_path)
    with pytest.raises(ValueError, match="size"):
        make_dataset("stripes", root=tmp_path, size=8)
    with pytest.raises(ValueError, match="positive"):
        make_dataset("stripes", root=tmp_path, n_train=-1)
