"""cutlib.evaluate: the built-in evaluators against the ground truth itself and noise, hand-computed
scores, caching, eval.json of a tiny trained run (final and best epoch), real folders, the command."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch

from cutlib import config as C
from cutlib.__main__ import main
from cutlib.data import make_dataset
from cutlib.benchmarks import (
    BuiltinEvaluator,
    SmallUNet,
    STRIPED,
    animal_fractions,
    city_scores,
    evaluator_cache_path,
    load_evaluator,
    stripes_scores,
    train_evaluator,
)
from cutlib.data.splits import benchmark_of, load_split, read_images, read_labels
from cutlib.evaluate import evaluate_run, make_extractor, run_checkpoints, translate_images, translate_run
from cutlib.metrics import FewImagesWarning, extractor_record
from cutlib.inception import INCEPTION_WEIGHTS_FILE
from cutlib.metrics import (
    FeatureExtractor,
    RandomConvExtractor,
    feature_statistics,
    frechet_distance,
    image_features,
)
from cutlib.runs import load_run
from cutlib.train import train

SIZE = 32  # evaluation size of the tiny runs (their crop size)
TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}  # the datasets come from fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def stripes(data_root):
    return make_dataset("stripes", root=data_root, size=40, n_train=100, n_test=16)


@pytest.fixture(scope="module")
def city(data_root):
    return make_dataset("city", root=data_root, size=40, n_train=100, n_test=16)


@pytest.fixture(scope="module")
def stripes_evaluator(stripes):
    return load_evaluator(stripes, size=SIZE)  # trained here (~10 s), cached in the dataset folder


@pytest.fixture(scope="module")
def city_evaluator(city):
    return load_evaluator(city, size=SIZE)


@pytest.fixture(scope="module")
def tiny_run(stripes, tmp_path_factory):
    """150 steps on 100 images: a snapshot after epoch 1 (step 100) and the final checkpoint (step 150)."""
    out = tmp_path_factory.mktemp("runs") / "cut"
    train(C.preset("cut", dataset=str(stripes), max_steps=150, save_epoch_freq=1, **TINY), out, progress=False)
    return out


# ---------------------------------------------------------------- reading data


def test_read_images_and_labels_at_the_evaluation_size(stripes):
    images = read_images(stripes / "testA", SIZE)
    labels = read_labels(stripes / "testA_labels", SIZE)
    assert images.shape == (16, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert labels.shape == (16, SIZE, SIZE) and set(labels.unique().tolist()) == {0, 1}  # nearest: no new values
    native = read_labels(stripes / "testA_labels", 40)  # the stored size: the files themselves
    assert float(animal_fractions(labels).mean()) == pytest.approx(float(animal_fractions(native).mean()), abs=0.01)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_images(stripes / "nowhere", SIZE)


def test_load_split_and_benchmark_of(stripes, city, tmp_path):
    assert benchmark_of(stripes) == "stripes" and benchmark_of(city) == "city" and benchmark_of(tmp_path) is None
    data = load_split(stripes, "test", SIZE)
    assert data["inputs"].shape == data["targets"].shape == data["real"].shape == (16, 3, SIZE, SIZE)
    assert data["input_labels"].shape == data["real_labels"].shape == (16, SIZE, SIZE)
    train_split = load_split(stripes, "train", SIZE)
    assert len(train_split["inputs"]) == 100 and train_split["targets"] is None  # no targets for train
    with pytest.raises(ValueError, match="split"):
        load_split(stripes, "val", SIZE)


def _bomb_png(path, side=20_000):
    """A real PNG of ~100 bytes declaring side x side pixels: PIL refuses it as a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _test_split_copy(stripes, dest):
    dest.mkdir()
    for name in ("meta.json", "testA", "testA_labels", "testA_target", "testB", "testB_labels"):
        (shutil.copytree if (stripes / name).is_dir() else shutil.copy)(stripes / name, dest / name)
    return dest


def test_unreadable_test_images_are_skipped_by_name_and_their_ground_truth_with_them(stripes, tmp_path):
    root = _test_split_copy(stripes, tmp_path / "copy")
    _bomb_png(root / "testA" / "00003.png")  # replaces a real input; its label and target stay
    _bomb_png(root / "testB" / "zz_bomb.png")
    with pytest.warns(UserWarning, match="unreadable") as record:
        data = load_split(root, "test", SIZE)
    messages = " ".join(str(w.message) for w in record)
    assert "00003.png" in messages and "zz_bomb.png" in messages
    assert len(data["inputs"]) == 15 and len(data["real"]) == 16 and "00003" not in [p.stem for p in data["input_paths"]]
    full = load_split(stripes, "test", SIZE)
    keep = [i for i in range(16) if i != 3]
    assert torch.equal(data["inputs"], full["inputs"][keep])
    assert torch.equal(data["input_labels"], full["input_labels"][keep]) and torch.equal(data["targets"], full["targets"][keep])
    assert torch.equal(data["real_labels"], full["real_labels"])


def test_ground_truth_is_paired_by_name_and_missing_or_extra_files_are_refused(stripes, tmp_path):
    root = _test_split_copy(stripes, tmp_path / "copy")
    (root / "testA_labels" / "00005.png").unlink()  # one label fewer than images
    with pytest.raises(ValueError, match=r"testA_labels does not match .*testA by file name: no file for the image\(s\) 00005"):
        load_split(root, "test", SIZE)
    shutil.copy(stripes / "testA_labels" / "00005.png", root / "testA_labels" / "00005.png")
    for i in range(3):  # as many targets as images, but three of them named for no image
        (root / "testA_target" / f"{i:05d}.png").rename(root / "testA_target" / f"other_{i}.png")
    with pytest.raises(ValueError, match=r"no file for the image\(s\) 00000, 00001, 00002; no image of testA for other_0"):
        load_split(root, "test", SIZE)
    for i in range(3):
        (root / "testA_target" / f"other_{i}.png").rename(root / "testA_target" / f"{i:05d}.png")
    (root / "testB" / "00015.png").unlink()  # its label is now extra
    with pytest.raises(ValueError, match="no image of testB for 00015"):
        load_split(root, "test", SIZE)


def test_animal_fractions_on_hand_made_maps():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2] = 1  # half the image
    labels[1, 0, 0] = 2  # one pixel of sixteen, the striped class counts as animal too
    assert animal_fractions(labels).tolist() == [0.5, 1 / 16]


# ---------------------------------------------------------------- the evaluators on the ground truth


def test_small_unet_shapes():
    net = SmallUNet(num_classes=5, width=4).eval()
    x = torch.rand(2, 3, 16, 24)
    assert net(x).shape == (2, 5, 16, 24)
    feats = net.features(x)
    assert feats.shape == (2, net.feature_dims) == (2, 32)
    e3 = net.encode(x)[2].flatten(2)  # (2, 16, 4*6): the second half of the features is its spread
    torch.testing.assert_close(feats[:, 16:], e3.std(dim=2))


def test_stripes_evaluator_near_perfect_on_the_truth_and_poor_on_noise(stripes, stripes_evaluator):
    data = load_split(stripes, "test", SIZE)
    args = dict(inputs=data["inputs"], input_labels=data["input_labels"], targets=data["targets"], real_labels=data["real_labels"])
    truth = stripes_scores(stripes_evaluator, data["targets"], **args)  # the true striped scenes as "outputs"
    assert truth["preservation_iou"] > 0.8 and truth["stripe_score"] > 0.7
    assert truth["background_l1"] < 0.01 and truth["target_l1"] == 0
    assert truth["size_w1_A"] < 0.03 < truth["size_w1_B"]  # the true translations keep A's sizes (Fig. 15)
    assert truth["animal_fraction_A"] < truth["animal_fraction_B"]

    identity = stripes_scores(stripes_evaluator, data["inputs"], **args)  # G = identity: preserved, not striped
    assert identity["preservation_iou"] > 0.8 and identity["stripe_score"] < 0.2
    assert identity["background_l1"] == 0 and identity["target_l1"] > 0.03

    noise = stripes_scores(stripes_evaluator, torch.rand(data["inputs"].shape, generator=torch.Generator().manual_seed(0)), **args)
    assert noise["preservation_iou"] < 0.2 and noise["stripe_score"] < 0.2
    assert noise["background_l1"] > 0.2 and noise["target_l1"] > 0.2


def test_city_evaluator_scores_true_photos_high_and_noise_low(city, city_evaluator):
    data = load_split(city, "test", SIZE)
    held_out = city_scores(city_evaluator, data["real"], data["real_labels"])  # testB photos, never trained on
    truth = city_scores(city_evaluator, data["targets"], data["input_labels"])  # the true photos of the input labels
    noise = city_scores(city_evaluator, torch.rand(data["targets"].shape, generator=torch.Generator().manual_seed(0)), data["input_labels"])
    for good in (held_out, truth):
        assert good["seg_pixel_acc"] > 0.85 and good["seg_mean_iou"] > 0.35
    assert noise["seg_pixel_acc"] < 0.5 and noise["seg_mean_iou"] < 0.15
    assert city_evaluator.classes[0] == "road" and len(city_evaluator.classes) == 19


def test_stripes_scores_match_a_hand_computation(stripes, stripes_evaluator):
    data = load_split(stripes, "test", SIZE)
    inputs, labels = data["inputs"][:4], data["input_labels"][:4]
    outputs = inputs.clone()
    outputs[:, :, :3, :] = 1 - outputs[:, :, :3, :]  # change the top rows (sky: outside every animal)
    scores = stripes_scores(stripes_evaluator, outputs, inputs, labels)
    outside = np.stack([~scipy.ndimage.binary_dilation(m, structure=np.ones((3, 3))) for m in labels.numpy() > 0])
    diff = (outputs - inputs).abs().numpy().transpose(1, 0, 2, 3)  # (3, N, S, S)
    assert scores["background_l1"] == pytest.approx(diff[:, outside].mean(), rel=1e-5)
    probs = stripes_evaluator.probabilities(outputs)
    found = (probs.argmax(1) > 0).numpy()
    truth = labels.numpy() > 0
    ious = [(f & t).sum() / (f | t).sum() for f, t in zip(found, truth)]
    striped = [p[t].mean() for p, t in zip(probs[:, STRIPED].numpy(), truth)]
    assert scores["preservation_iou"] == pytest.approx(np.mean(ious), rel=1e-5)
    assert scores["stripe_score"] == pytest.approx(np.mean(striped), rel=1e-5)
    assert scores["animal_fraction"] == pytest.approx(found.mean(), rel=1e-5) and "target_l1" not in scores


def test_builtin_evaluator_is_a_feature_extractor_that_separates_domains(stripes, stripes_evaluator):
    assert isinstance(stripes_evaluator, FeatureExtractor) and stripes_evaluator.name == f"builtin-stripes-{SIZE}px-seed0"
    data = load_split(stripes, "test", SIZE)
    feats = image_features(data["real"], stripes_evaluator)
    assert feats.shape == (16, stripes_evaluator.dims)
    np.testing.assert_allclose(image_features(data["real"], stripes_evaluator, batch_size=5), feats, rtol=1e-4, atol=1e-5)
    train_b = image_features(read_images(stripes / "trainB", SIZE), stripes_evaluator)
    train_a = image_features(read_images(stripes / "trainA", SIZE), stripes_evaluator)
    same = frechet_distance(*feature_statistics(train_b), *feature_statistics(feats))
    other = frechet_distance(*feature_statistics(train_a), *feature_statistics(feats))
    assert same < 0.5 * other  # testB is nearer trainB than trainA in these features
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        stripes_evaluator(torch.rand(2, 1, SIZE, SIZE))


# ---------------------------------------------------------------- caching


def test_trained_evaluators_are_cached_not_retrained(stripes, stripes_evaluator):
    path = evaluator_cache_path(stripes, size=SIZE)
    assert path.is_file() and path.parent == stripes / "evaluators"
    assert stripes_evaluator.info["cache"] == str(path)
    stamp = path.stat().st_mtime_ns
    again = load_evaluator(stripes, size=SIZE)
    assert again.info["loaded_from_cache"] is True and path.stat().st_mtime_ns == stamp
    assert again.info["train_seconds"] == stripes_evaluator.info["train_seconds"]
    for key, value in stripes_evaluator.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[key], value), key
    assert evaluator_cache_path(stripes, size=SIZE, seed=1) != path and evaluator_cache_path(stripes, size=64) != path


def test_evaluators_need_a_builtin_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a built-in dataset"):
        train_evaluator(tmp_path, size=SIZE)
    with pytest.raises(ValueError, match="benchmark"):
        BuiltinEvaluator("horses", ["a"], SIZE)


# ---------------------------------------------------------------- evaluating a run


def test_eval_json_of_a_tiny_run_reports_final_and_best_epoch(tiny_run, stripes, stripes_evaluator):
    report = evaluate_run(tiny_run, device="cpu")
    assert json.loads((tiny_run / "eval.json").read_text()) == json.loads(json.dumps(report))
    assert [(e["checkpoint"], e["epoch"], e["step"]) for e in report["epochs"]] == [
        ("epochs/G_epoch001.pt", 1, 100), ("checkpoint.pt", 2, 150)]
    assert report["final"]["step"] == 150 and report["final"]["final"] and report["final"]["partial_epoch"]
    assert report["best"]["chosen_by"] == "fid" and report["best"]["better"] == "lower"
    assert report["best"]["metrics"]["fid"] == min(e["metrics"]["fid"] for e in report["epochs"])
    assert report["split"] == "test" and report["seed"] == 0 and report["image_size"] == SIZE
    assert report["num_images"] == {"inputs": 16, "real": 16} and report["benchmark"] == "stripes"
    assert report["extractor"]["name"] == stripes_evaluator.name and report["extractor"]["dims"] == stripes_evaluator.dims
    assert report["extractor"]["comparable_with_published"] is False
    assert report["evaluator"]["loaded_from_cache"] is True  # the fixture's evaluator, not a new one
    metrics = report["final"]["metrics"]
    assert {"fid", "kid_mean", "kid_std", "preservation_iou", "stripe_score", "background_l1", "target_l1",
            "animal_fraction", "size_w1_B"} <= set(metrics)
    assert set(report["metric_info"]) == set(metrics) and report["metric_info"]["fid"]["num_images"] == {"real": 16, "fake": 16}
    assert report["kid"]["subset_size"] == 8 and metrics["kid_std"] > 0

    # the final entry is what the final generator gives, recomputed here by hand
    _, model = load_run(tiny_run)
    data = load_split(stripes, "test", SIZE)
    outputs = translate_images(model, data["inputs"])
    assert torch.equal(outputs, (outputs * 255).round() / 255)  # 8-bit values, as a saved PNG
    expected = stripes_scores(stripes_evaluator, outputs, data["inputs"], data["input_labels"], data["targets"], data["real_labels"])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    real, fake = image_features(data["real"], stripes_evaluator), image_features(outputs, stripes_evaluator)
    assert metrics["fid"] == pytest.approx(frechet_distance(*feature_statistics(real), *feature_statistics(fake)), rel=1e-5)

    only_final = evaluate_run(tiny_run, device="cpu", epochs="final")
    assert len(only_final["epochs"]) == 1 and only_final["best"]["step"] == only_final["final"]["step"] == 150
    assert only_final["final"]["metrics"]["fid"] == pytest.approx(metrics["fid"], rel=1e-6)


def test_translate_run_gives_the_final_generators_outputs(tiny_run, stripes):
    result = translate_run(tiny_run, device="cpu")
    assert result["benchmark"] == "stripes" and result["dataset_dir"] == stripes and result["config"].crop_size == SIZE
    _, model = load_run(tiny_run)
    assert torch.equal(result["outputs"], translate_images(model, result["inputs"]))
    assert result["outputs"].shape == result["inputs"].shape == (16, 3, SIZE, SIZE)


def test_make_extractor_and_its_record(stripes_evaluator):
    random = make_extractor("random", None, None, "cpu", seed=3)
    assert isinstance(random, RandomConvExtractor) and random.name == "random-conv-64d-seed3"
    assert make_extractor("builtin", "stripes", stripes_evaluator, "cpu") is stripes_evaluator
    with pytest.raises(ValueError, match="needs a built-in dataset .* or the photo classifier"):
        make_extractor("builtin", None, None, "cpu")
    record = extractor_record(random)
    assert record["comparable_with_published"] is False and record["dims"] == 64 and "compare runs" in record["note"]


def test_run_checkpoints_lists_snapshots_then_final(tiny_run):
    items = run_checkpoints(tiny_run)
    assert [i["final"] for i in items] == [False, True]
    assert len(run_checkpoints(tiny_run, "final")) == 1
    with pytest.raises(ValueError, match="epochs"):
        run_checkpoints(tiny_run, "best")


def test_command_writes_eval_json(tiny_run):
    (tiny_run / "eval.json").unlink(missing_ok=True)
    assert main(["evaluate", str(tiny_run), "--epochs", "final", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((tiny_run / "eval.json").read_text())
    assert len(report["epochs"]) == 1 and report["final"]["checkpoint"] == "checkpoint.pt"


def test_command_exits_nonzero_with_the_weights_message_when_inception_is_missing(tiny_run, tmp_path, monkeypatch, capsys):
    # in-process: `python -m cutlib` is sys.exit(main(argv)); an empty torch hub and a refusing proxy = offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CUTLIB_INCEPTION_WEIGHTS", raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: connection refused at once
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    before = (tiny_run / "eval.json").read_bytes() if (tiny_run / "eval.json").exists() else None
    assert main(["evaluate", str(tiny_run), "--extractor", "inception", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cutlib evaluate: ") and INCEPTION_WEIGHTS_FILE in err and "download failed" in err
    assert str(tmp_path / "torch") in err  # where to put the file
    after = (tiny_run / "eval.json").read_bytes() if (tiny_run / "eval.json").exists() else None
    assert after == before  # nothing written


def test_real_folder_runs_get_the_photo_evaluator_or_fid_and_kid_only(stripes, tmp_path, monkeypatch):
    folder = tmp_path / "my_photos"  # an own dataset: the layout without the built-ins' meta.json and labels
    for split in ("trainA", "trainB", "testA", "testB"):
        (folder / split).mkdir(parents=True)
        for name in sorted(os.listdir(stripes / split))[:4]:
            shutil.copy(stripes / split / name, folder / split / name)
    run = tmp_path / "run"
    train(C.preset("fastcut", dataset=str(folder), max_steps=2, **TINY), run, progress=False)
    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))  # where the photo classifier is cached
    photo = evaluate_run(run, device="cpu", epochs="final", evaluator_steps=2)  # builtin: the photo classifier
    assert photo["evaluator"]["name"] == "photo-classifier-64px" and "NOT comparable" in photo["evaluator"]["note"]
    assert {"target_rate", "structure", "kid_inputs"} <= set(photo["final"]["metrics"])
    report = evaluate_run(run, extractor="random", device="cpu")
    assert report["benchmark"] is None and report["evaluator"] is None
    assert set(report["final"]["metrics"]) == {"fid", "kid_mean", "kid_std"}
    assert report["extractor"]["name"].startswith("random-conv") and report["num_images"] == {"inputs": 4, "real": 4}


def test_few_or_unreadable_test_images_are_warned_and_recorded_in_eval_json(stripes, tmp_path):
    folder = tmp_path / "photos"
    for split in ("trainA", "trainB", "testA", "testB"):
        (folder / split).mkdir(parents=True)
        for name in sorted(os.listdir(stripes / split))[:2]:
            shutil.copy(stripes / split / name, folder / split / name)
    _bomb_png(folder / "testA" / "bomb.png")
    train(C.preset("fastcut", dataset=str(folder), max_steps=2, **TINY), tmp_path / "run", progress=False)
    with pytest.warns(FewImagesWarning, match="only 2 real and 2 generated images"):
        report = evaluate_run(tmp_path / "run", extractor="random", device="cpu", epochs="final")
    assert report["num_images"] == {"inputs": 2, "real": 2} and report["final"]["metrics"]["kid_std"] == pytest.approx(0, abs=1e-9)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())["warnings"]
    assert any("bomb.png" in w for w in saved) and any("fewer than 50" in w for w in saved)


def test_a_read_only_run_folder_fails_before_the_work_in_one_line(tiny_run, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs (permission bits alone are ignored by root)")
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copytree(tiny_run, mount / "run", ignore=shutil.ignore_patterns("eval.json"))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        done = subprocess.run([sys.executable, "-m", "cutlib", "evaluate", str(mount / "run"), "--device", "cpu",
                               "--no-progress"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("cutlib evaluate: cannot write eval.json into "), done.stderr
        assert "Read-only" in lines[0] and "copy the run elsewhere" in lines[0] and done.stdout == ""
        assert not (mount / "run" / "eval.json").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_evaluate_run_rejects_bad_arguments(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        evaluate_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="extractor"):
        evaluate_run(tiny_run, extractor="vgg")
    with pytest.raises(ValueError, match="best_by"):
        evaluate_run(tiny_run, best_by="animal_fraction")
    assert main(["evaluate", str(tmp_path / "empty")]) == 1


# ---------------------------------------------------------------- the Swapping Autoencoder's runs
SWAPAE = dict(load_size=40, crop_size=32, ngf=4, ndf=4, texture_nc=16, structure_nc=4, cooc_crops=2, batch_size=2,
              n_epochs=2, n_epochs_decay=0, dataset_len=8, save_epoch_freq=1, device="cpu", log_every=1, num_samples=2)


@pytest.fixture(scope="module")
def swapae_run(stripes, tmp_path_factory):
    """2 epochs of 4 steps: a snapshot after epoch 1 (step 4) and the final checkpoint (step 8)."""
    out = tmp_path_factory.mktemp("runs") / "swapae"
    train(C.preset("swapping_autoencoder", dataset=str(stripes), **SWAPAE), out, progress=False)
    return out


def test_swapae_snapshots_keep_the_encoder_and_evaluate_reports_swaps_against_the_truth(swapae_run, stripes, stripes_evaluator):
    from cutlib.evaluate import swap_metrics
    from cutlib.runs import load_checkpoint
    from cutlib.swaps import swap_data

    snap = load_checkpoint(swapae_run / "epochs" / "G_epoch001.pt")
    assert {"E", "G", "config", "step"} <= set(snap) and snap["step"] == 4
    report = evaluate_run(swapae_run, device="cpu")
    assert [(e["checkpoint"], e["step"]) for e in report["epochs"]] == [("epochs/G_epoch001.pt", 4), ("checkpoint.pt", 8)]
    metrics = report["final"]["metrics"]
    swap_keys = {"swap_structure_iou", "swap_texture_score", "swap_hybrid_l1", "swap_structure_iou_BA",
                 "swap_texture_score_BA", "swap_hybrid_l1_BA", "rec_l1", "rec_psnr"}
    assert swap_keys | {"fid", "preservation_iou", "stripe_score"} <= set(metrics) == set(report["metric_info"])

    # recomputed by hand for each entry: the translation is A's structure with the texture of B's test image i
    _, model = load_run(swapae_run)
    data = load_split(stripes, "test", SIZE)
    swaps = swap_data(stripes, n=16, size=SIZE)
    for entry, state in zip(report["epochs"], [snap, None]):
        if state is not None:
            model.E.load_state_dict(state["E"])
            model.G.load_state_dict(state["G"])
        else:
            _, model = load_run(swapae_run)
        with torch.no_grad():
            fake = model.swap(data["inputs"] * 2 - 1, data["real"] * 2 - 1)
        outputs = (((fake.clamp(-1, 1) + 1) * 127.5).round() / 255)
        expected = stripes_scores(stripes_evaluator, outputs, data["inputs"], data["input_labels"], data["targets"], data["real_labels"])
        expected.update(swap_metrics(model, swaps, stripes_evaluator))
        for key, value in expected.items():
            assert entry["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (entry["checkpoint"], key)
    assert report["epochs"][0]["metrics"]["rec_l1"] != report["epochs"][1]["metrics"]["rec_l1"]  # E and G of epoch 1 were used


def test_swapae_translates_from_the_command_line_with_its_own_or_another_images_texture(swapae_run, tiny_run, stripes, tmp_path, capsys):
    from cutlib.data import ImageFolder
    from cutlib.models.swapae import SwapTranslator
    from cutlib.translate import load_generator, translate_image

    _, model = load_run(swapae_run)
    G = load_generator(swapae_run)
    assert isinstance(G, SwapTranslator) and G.multiple == 16
    x = ImageFolder(stripes / "testA" / "00000.png")[0]["image"]  # (3, 40, 40): padded to 48 and cropped back
    with torch.no_grad():
        padded = torch.nn.functional.pad(x[None], (0, 8, 0, 8), mode="reflect")
        assert torch.allclose(translate_image(G, x), model.G(*model.E(padded))[0, :, :40, :40], atol=1e-6)  # reconstruction
        texture = ImageFolder(stripes / "testB" / "00001.png")[0]["image"]
        G.set_texture(texture)
        seen = torch.nn.functional.interpolate(texture[None], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        want = model.G(model.E(padded)[0], model.E(seen)[1])[0, :, :40, :40]
        assert torch.allclose(translate_image(G, x), want, atol=1e-6)  # A's structure, B's texture

    out = tmp_path / "out"
    assert main(["translate", "--checkpoint", str(swapae_run), "--input", str(stripes / "testA" / "00000.png"),
                 "--output", str(out), "--texture", str(stripes / "testB" / "00001.png"), "--device", "cpu",
                 "--no-progress"]) == 0
    assert (out / "00000.png").is_file()
    assert main(["translate", "--checkpoint", str(tiny_run), "--input", str(stripes / "testA" / "00000.png"),
                 "--output", str(tmp_path / "cut"), "--texture", str(stripes / "testB" / "00001.png"), "--device", "cpu"]) == 1
    assert "--texture applies to Swapping Autoencoder runs only" in capsys.readouterr().err
    snap = torch.load(swapae_run / "epochs" / "G_epoch001.pt", weights_only=False)
    old = tmp_path / "old_snapshot.pt"
    torch.save({k: v for k, v in snap.items() if k != "E"}, old)
    with pytest.raises(ValueError, match="without its encoder E"):
        load_generator(old)


def test_ship_swapae_keeps_only_e_and_g_of_the_final_snapshot_and_refuses_an_unfinished_run(swapae_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import ship_swapae

    from cutlib.runs import load_checkpoint

    evaluate_run(swapae_run, device="cpu", epochs="final")
    assert ship_swapae.main(["--run", str(swapae_run), "--out", str(tmp_path / "shipped")]) == 0
    shipped = load_checkpoint(tmp_path / "shipped" / ship_swapae.WEIGHTS)
    assert set(shipped) == {"E", "G", "config", "epoch", "step"} and shipped["step"] == 8
    _, model = load_run(swapae_run)
    assert all(torch.equal(v, model.G.state_dict()[k]) for k, v in shipped["G"].items())
    assert json.loads((tmp_path / "shipped" / "eval.json").read_text())["final"]["step"] == 8
    partial = tmp_path / "partial"
    shutil.copytree(swapae_run, partial)
    (partial / "epochs" / "G_epoch002.pt").unlink()  # the last snapshot is no longer the final weights
    with pytest.raises(SystemExit, match="not the final weights"):
        ship_swapae.main(["--run", str(partial), "--out", str(tmp_path / "no")])
    assert not (tmp_path / "no").exists()
