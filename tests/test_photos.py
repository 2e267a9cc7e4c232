"""The photo evaluator (cutlib.photos): SSIM and the structure score derived by hand, the A-vs-B
classifier trained on real photos (../shared/data, skipped with the reason when absent), its cache,
and `evaluate` on a run trained on a folder of real photos."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import shared_dataset
from cutlib.photos import (
    CLASSIFIER_VERSION,
    PhotoClassifier,
    classifier_cache_path,
    dataset_fingerprint,
    degrade,
    grey,
    line_pattern,
    load_photo_classifier,
    photo_scores,
    ssim,
    structure_score,
    train_photo_classifier,
    translation_scores,
)


def ssim_by_hand(x, y, sigma=1.5, radius=5, c1=1e-4, c2=9e-4):
    """SSIM of two (H, W) images, a loop over pixels: Gaussian-weighted local means, variances and covariance
    over the window around each pixel, borders reflected (as numpy's 'reflect': the edge pixel not repeated)."""
    h, w = x.shape
    g = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-radius, radius + 1)]
    total = sum(g)
    g = [v / total for v in g]

    def at(img, i, j):
        i = -i if i < 0 else (2 * (h - 1) - i if i >= h else i)
        j = -j if j < 0 else (2 * (w - 1) - j if j >= w else j)
        return float(img[i, j])

    values = []
    for i in range(h):
        for j in range(w):
            mx = my = sxx = syy = sxy = 0.0
            for a in range(-radius, radius + 1):
                for b in range(-radius, radius + 1):
                    k = g[a + radius] * g[b + radius]
                    u, v = at(x, i + a, j + b), at(y, i + a, j + b)
                    mx, my = mx + k * u, my + k * v
                    sxx, syy, sxy = sxx + k * u * u, syy + k * v * v, sxy + k * u * v
            vx, vy, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


def test_ssim_equals_the_loop_over_pixels():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 13)
    y = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    got = ssim(x, y, sigma=1.5, radius=3)
    for n in range(2):
        assert got[n].item() == pytest.approx(ssim_by_hand(x[n, 0], y[n, 0], radius=3), abs=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_ssim_refuses_colour_or_mismatched_images():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_grey_is_bt601_luma():
    images = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(grey(images), torch.full((1, 1, 2, 2), 0.299))
    assert torch.allclose(grey(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2))


def test_structure_ignores_fine_texture_but_not_layout():
    torch.manual_seed(0)
    # a smooth scene: a bright square on a dark ground
    scene = torch.full((1, 3, 64, 64), 0.2)
    scene[..., 16:48, 20:44] = 0.8
    stripes = (torch.arange(64) % 2).float().view(1, 1, 1, 64) * 0.2 - 0.1  # 1-px stripes, mean 0
    textured = (scene + stripes).clamp(0, 1)
    moved = torch.roll(scene, shifts=(20, 20), dims=(2, 3))
    same, texture, layout = (structure_score(o, scene).item() for o in (scene, textured, moved))
    assert same == pytest.approx(1.0, abs=1e-6)
    assert texture > 0.9 > layout  # new fine texture keeps the structure, a moved square does not
    with pytest.raises(ValueError, match="one shape"):
        structure_score(scene, scene[..., :32])


def test_line_pattern_and_degrade():
    g = torch.Generator().manual_seed(0)
    lines = line_pattern(64, 32, g)
    assert lines.shape == (64, 1, 32, 32)
    amp = lines.flatten(1).abs().amax(dim=1)
    assert bool((amp <= 0.3 + 1e-6).all()) and bool((amp > 0.03).all())  # faint, but there
    assert lines.mean().abs() < 0.01  # zero-mean lines: they change texture, not brightness
    x = torch.rand(200, 3, 16, 16)
    y = degrade(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and bool(((y >= 0) & (y <= 1)).all())
    changed = (y - x).flatten(1).abs().amax(dim=1) > 1e-6
    assert 0.6 < changed.float().mean() < 0.9  # each of two changes with p = 0.5: 75 % of the images change


def test_classifier_shapes_and_bad_input():
    clf = PhotoClassifier(size=32, width=4)
    images = torch.rand(3, 3, 48, 40)  # resized to 32 px inside
    assert clf(images).shape == (3, clf.dims) == (3, 64)
    p = clf.prob_b(images)
    assert p.shape == (3,) and bool(((p >= 0) & (p <= 1)).all())
    with pytest.raises(ValueError, match="multiple of 16"):
        PhotoClassifier(size=40)
    with pytest.raises(ValueError, match=r"float tensor \(N, 3, H, W\)"):
        clf(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_translation_scores_refuses_unpaired_sets():
    clf = PhotoClassifier(size=16, width=2)
    with pytest.raises(ValueError, match="one output per input"):
        translation_scores(clf, torch.rand(3, 3, 16, 16), torch.rand(2, 3, 16, 16))


@pytest.fixture(scope="module")
def horse2zebra_cpu():
    return shared_dataset("horse2zebra_cpu")


@pytest.fixture(scope="module")
def trained(horse2zebra_cpu):
    return train_photo_classifier(horse2zebra_cpu, size=32, steps=150, batch_size=16, width=8, lr=3e-3)


def test_classifier_tells_real_horses_from_real_zebras(trained):
    # 150 steps at 32 px: far from the 600 at 64 px of the default, but well above chance on held-out photos
    assert trained.info["num_test"] == {"A": 60, "B": 60}
    assert trained.info["test_accuracy"] > 0.65


def test_photo_scores_on_real_photos(trained, horse2zebra_cpu):
    from cutlib.data.splits import read_images

    horses, zebras = read_images(horse2zebra_cpu / "testA", 32), read_images(horse2zebra_cpu / "testB", 32)
    same = photo_scores(trained, horses, horses, zebras)
    assert same["structure"] == pytest.approx(1.0, abs=1e-6)
    assert same["photo_kid"] == same["photo_kid_inputs"] and same["target_rate"] == same["target_rate_inputs"]
    # "translations" that are real zebras: called zebras far more often, and closer to the zebras in KID
    zebra = photo_scores(trained, zebras, horses, zebras[torch.randperm(60, generator=torch.Generator().manual_seed(0))])
    assert zebra["target_rate"] > same["target_rate"] + 0.3
    assert zebra["photo_kid"] < zebra["photo_kid_inputs"]
    assert zebra["structure"] < 0.5  # unrelated images


def test_cache_is_reused_and_keyed_by_the_training_photos(tmp_path, horse2zebra_mini):
    data = tmp_path / "h2z"
    for split in ("trainA", "trainB", "testA", "testB"):
        (data / split).mkdir(parents=True)
        for p in sorted((horse2zebra_mini / split).iterdir())[:6]:
            os.symlink(p, data / split / p.name)
    cache = tmp_path / "cache"
    first = load_photo_classifier(data, size=16, steps=3, cache_dir=cache)
    assert first.info["loaded_from_cache"] is False
    path = classifier_cache_path(data, size=16, steps=3, cache_dir=cache)
    assert path.is_file() and path.parent == cache and not (data / "evaluators").exists()  # the dataset is untouched
    again = load_photo_classifier(data, size=16, steps=3, cache_dir=cache)
    assert again.info["loaded_from_cache"] is True
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(first(x), again(x))
    before = dataset_fingerprint(data)
    extra = sorted((horse2zebra_mini / "trainA").iterdir())[6]
    os.symlink(extra, data / "trainA" / extra.name)
    assert dataset_fingerprint(data) != before  # another training set: another cache file
    assert classifier_cache_path(data, size=16, steps=3, cache_dir=cache) != path


def test_classifier_needs_the_training_folders(tmp_path):
    (tmp_path / "trainA").mkdir()
    with pytest.raises(FileNotFoundError, match="trainB"):
        train_photo_classifier(tmp_path, steps=1)


def test_evaluate_a_run_on_real_photos(tmp_path, monkeypatch, horse2zebra_mini):
    from cutlib.config import tiny_scale
    from cutlib.train import train

    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))  # the classifier's cache goes here
    run = tmp_path / "run"
    train(tiny_scale("cut", dataset=str(horse2zebra_mini), max_steps=4, n_epochs=1, n_epochs_decay=0), run, progress=False)
    from cutlib.evaluate import evaluate_run

    report = evaluate_run(run, epochs="final", evaluator_steps=4)
    metrics = report["final"]["metrics"]
    assert {"fid", "kid_mean", "kid_inputs", "target_rate", "structure"} <= set(metrics)
    assert 0 <= metrics["target_rate"] <= 1 and -1 <= metrics["structure"] <= 1
    assert report["extractor"]["name"] == "photo-classifier-64px" and report["extractor"]["comparable_with_published"] is False
    assert "NOT comparable" in report["evaluator"]["note"] and report["evaluator"]["steps"] == 4
    assert json.loads((run / "eval.json").read_text())["final"]["metrics"]["target_rate"] == metrics["target_rate"]
    assert list((tmp_path / "data" / "evaluators").glob(f"photo_horse2zebra_mini_*_64px_seed0_steps4_v{CLASSIFIER_VERSION}.pt"))

def test_evaluate_cli_says_what_the_photo_numbers_are(tmp_path, monkeypatch, capsys, horse2zebra_mini):
    from cutlib.config import tiny_scale
    from cutlib.evaluate import cli
    from cutlib.train import train

    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
    run = tmp_path / "run"
    train(tiny_scale("cut", dataset=str(horse2zebra_mini), max_steps=2, n_epochs=1, n_epochs_decay=0), run, progress=False)
    assert cli([str(run), "--epochs", "final", "--no-progress", "--evaluator-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "target_rate" in out and "NOT comparable with published (Inception) FIDs" in out
    assert "balanced accuracy on the held-out test photos" in out


def test_demo_photos_trains_evaluates_and_draws(tmp_path, monkeypatch, capsys, horse2zebra_mini):
    from PIL import Image

    from cutlib.demo import cli

    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
    out = tmp_path / "photos"
    args = ["--photos", str(horse2zebra_mini), "--out", str(out), "--steps", "3", "--evaluator-steps", "2"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "laptop preset" in printed and "target rate" in printed and "NOT comparable" in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["final"]["step"] == 3 and "structure" in report["final"]["metrics"]
    assert json.loads((out / "config.json").read_text())["n_layers_D"] == 2  # the laptop preset's discriminator
    with Image.open(out / "before_after.png") as grid:  # 8 test photos (the mini set has 8) x 2 columns of 64 px
        assert grid.size == (2 * 66 + 2, 8 * 66 + 2)
    assert (out / "losses.png").is_file()
    assert cli(args) == 0  # again: the finished run is resumed (nothing to train), evaluated and drawn again


def test_demo_photos_names_what_is_missing(tmp_path, monkeypatch, capsys):
    from cutlib.demo import cli

    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
    assert cli(["--photos", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "cutlib demo --photos:" in err and "nowhere" in err and not (tmp_path / "run").exists()


def test_ship_photos_makes_paths_relative():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("ship_photos", REPO / "tools" / "ship_photos.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    roots = [("/srv/course/repo", "."), ("/srv/course", "..")]
    report = {"run_dir": "/srv/course/repo/runs/photos", "info": [{"cache": "/srv/course/shared/x.pt"}], "n": 3}
    assert ship.relative(report, roots) == {"run_dir": "./runs/photos", "info": [{"cache": "../shared/x.pt"}], "n": 3}
    shipped = json.loads((REPO / "notebooks" / "results" / "photos" / "eval.json").read_text())
    assert shipped["final"]["step"] > 0 and {"target_rate", "structure", "kid_inputs"} <= set(shipped["final"]["metrics"])


def test_ship_photos_demo_only_redraws_the_drawing_and_keeps_the_shipped_photo_pair(tmp_path, monkeypatch, capsys):
    import importlib.util

    import numpy as np
    import torch.nn.functional as F
    from conftest import REPO
    from PIL import Image

    from cutlib.data import sample_images
    from cutlib.demo import cli
    from cutlib.images import to_uint8
    from cutlib.runs import load_run

    spec = importlib.util.spec_from_file_location("ship_photos", REPO / "tools" / "ship_photos.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
    with pytest.raises(SystemExit, match="missing: ship a photos run first"):
        ship.main(["--demo-only", "--out", str(tmp_path / "shipped")])
    run, out = tmp_path / "demo", tmp_path / "shipped"
    assert cli(["--out", str(run), "--steps", "1"]) == 0
    out.mkdir()
    Image.new("RGB", (100, 50)).save(out / "readme_pair.png")
    with pytest.raises(SystemExit, match="not the 4-tile row"):
        ship.main(["--demo-only", "--demo", str(run), "--out", str(out)])
    old = np.random.default_rng(0).integers(0, 256, (136, 532, 3), dtype=np.uint8)  # (H, W, 3): 4 tiles of 128 px
    Image.fromarray(old).save(out / "readme_pair.png")
    assert ship.main(["--demo-only", "--demo", str(run), "--out", str(out)]) == 0
    new = np.asarray(Image.open(out / "readme_pair.png").convert("RGB"))
    assert new.shape == old.shape and sorted(p.name for p in out.iterdir()) == ["readme_pair.png"]
    for left in (268, 400):  # the photo pair (tiles 3 and 4) as shipped
        assert np.array_equal(new[4:132, left:left + 128], old[4:132, left:left + 128])
    assert (new[:4] == 255).all() and (new[:, 264:268] == 255).all() and (new[:, 396:400] == 255).all()  # the gaps
    drawing = F.interpolate(sample_images(load_run(run)[0], 1), scale_factor=2, mode="nearest")
    assert np.array_equal(new[4:132, 4:132], to_uint8(drawing[0]).permute(1, 2, 0).numpy())  # tile 1: the demo's drawing
    assert not np.array_equal(new[4:132, 136:264], old[4:132, 136:264])  # tile 2 redrawn: the translation


def test_demo_photos_downloads_a_catalog_dataset_first(tmp_path, monkeypatch, capsys, horse2zebra_mini):
    """`demo --photos horse2zebra` with nothing downloaded: the catalog's entry, pointed at a local HTTP
    server holding a real zip of photos (as the catalog's is laid out), is fetched, then trained on."""
    import threading
    import zipfile
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import cutlib.data.catalog as catalog
    from cutlib.demo import cli

    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "horse2zebra.zip", "w") as zf:
        for split in ("trainA", "trainB", "testA", "testB"):
            for p in sorted((horse2zebra_mini / split).iterdir())[:6]:
                zf.write(p, f"horse2zebra/{split}/{p.name}")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        entry = {**catalog.get_entry("horse2zebra"), "url": f"http://127.0.0.1:{server.server_address[1]}/horse2zebra.zip",
                 "md5": None, "sha256": None}
        monkeypatch.setattr(catalog, "get_entry", lambda name, path=None: entry)  # a mirror: the test server
        monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
        out = tmp_path / "run"
        assert cli(["--photos", "horse2zebra", "--out", str(out), "--steps", "2", "--evaluator-steps", "2"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    printed = capsys.readouterr().out
    assert "Downloading horse2zebra" in printed
    assert sorted(p.name for p in (tmp_path / "data" / "horse2zebra").iterdir()) >= ["testA", "testB", "trainA", "trainB"]
    assert json.loads((out / "eval.json").read_text())["num_images"] == {"inputs": 6, "real": 6}


def test_cached_network_trains_once_then_loads(tmp_path):
    from cutlib.runs import cached_network

    calls = []

    def train():
        calls.append(1)
        net = torch.nn.Linear(2, 1)
        net.info = {"steps": 1}
        return net

    def rebuild(saved):
        net = torch.nn.Linear(2, 1)
        net.load_state_dict(saved["net"])
        net.info = saved["info"]
        return net

    state = lambda net: {"net": net.state_dict(), "info": net.info}  # noqa: E731
    path = tmp_path / "cache" / "net.pt"
    first = cached_network(path, rebuild, train, state)
    again = cached_network(path, rebuild, train, state)
    assert calls == [1] and first.info["loaded_from_cache"] is False and again.info["loaded_from_cache"] is True
    assert again.info["cache"] == str(path) and again.info["steps"] == 1 and not again.training
    assert torch.equal(first.weight, again.weight) and [p.name for p in path.parent.iterdir()] == ["net.pt"]
