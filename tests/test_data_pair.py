"""cutlib.data.pair: the built-in single-image pair 'sincut_pair' (SinCUT's offline data set)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cutlib import config as C
from cutlib.data import SingleImagePair, resolve_dataset
from cutlib.data.pair import OUTLINE, PAIR_VERSION, PALETTE, make_pair, painting
from cutlib.runs import CHECKPOINT


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("data"))


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_folder_holds_one_image_per_domain(pair):
    assert pair.name == "sincut_pair"
    assert sorted(p.name for p in (pair / "trainA").iterdir()) == ["coffee.png"]
    assert sorted(p.name for p in (pair / "trainB").iterdir()) == ["chelsea_painting.png"]
    assert Image.open(pair / "trainA" / "coffee.png").size == (600, 400)
    assert Image.open(pair / "trainB" / "chelsea_painting.png").size == (451, 300)
    meta = json.loads((pair / "meta.json").read_text())
    assert meta["name"] == "sincut_pair" and meta["version"] == PAIR_VERSION and "CC0" in meta["licence"]
    data = SingleImagePair(pair, crop_size=32, length=4)
    assert data[0]["A"].shape == data[0]["B"].shape == (3, 32, 32)


def test_same_bytes_twice_and_no_temporaries_left(pair, tmp_path):
    again = make_pair(tmp_path)
    assert _digest(again) == _digest(pair)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sincut_pair"]


def test_an_existing_pair_is_reused_and_an_old_version_rebuilt(tmp_path):
    first = make_pair(tmp_path)
    marker = first / "trainA" / "extra.txt"
    marker.write_text("kept while the version matches")
    assert make_pair(tmp_path) == first and marker.is_file()
    meta = json.loads((first / "meta.json").read_text())
    (first / "meta.json").write_text(json.dumps({**meta, "version": PAIR_VERSION - 1}))
    assert make_pair(tmp_path) == first and not marker.exists()
    assert json.loads((first / "meta.json").read_text())["version"] == PAIR_VERSION


def test_resolve_dataset_names_the_pair_whatever_the_size(tmp_path):
    folder = resolve_dataset("sincut_pair", root=tmp_path)
    assert folder == tmp_path / "sincut_pair" and (folder / "trainA" / "coffee.png").is_file()
    assert resolve_dataset("sincut_pair", root=tmp_path, size=1024) == folder  # the images keep their own size


def test_painting_uses_the_palette_and_the_outline_only():
    rng = np.random.default_rng(0)
    photo = (np.linspace(0, 255, 64)[None, :, None] * np.ones((48, 1, 3)) + rng.integers(0, 20, (48, 64, 3))).clip(0, 255)
    out = painting(photo.astype(np.uint8), n_segments=30)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    colours = {tuple(c) for c in out.reshape(-1, 3)}
    assert colours <= set(PALETTE) | {OUTLINE} and len(colours & set(PALETTE)) >= 3  # a gradient spans the palette
    assert out[:, :8].mean() < out[:, -8:].mean()  # dark stays dark, bright stays bright


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32)])
def test_painting_refuses_what_is_not_an_rgb_uint8_photo(bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        painting(bad)


def test_the_command_line_lists_the_pair_and_trains_sincut_on_it(tmp_path):
    env = {**os.environ, "CUTLIB_DATA": str(tmp_path / "data")}
    listed = subprocess.run([sys.executable, "-m", "cutlib", "datasets"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "sincut_pair" in listed.stdout.splitlines()[0]
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "sincut", "--dataset", "sincut_pair", "--out", str(out),
            "--ngf", "2", "--ndf", "2", "--batch-size", "2", "--crop-size", "32", "--netF-nc", "32",
            "--dataset-len", "2", "--n-epochs", "1", "--n-epochs-decay", "0", "--max-steps", "1",
            "--device", "cpu", "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 1
    saved = C.from_dict(torch.load(out / CHECKPOINT, weights_only=False)["config"])
    assert saved.model == "sincut" and saved.dataset == "sincut_pair"
    assert (tmp_path / "data" / "sincut_pair" / "trainB" / "chelsea_painting.png").is_file()
