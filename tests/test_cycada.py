"""CyCADA (cutlib/models/cycada.py), the flat-shaded city_synth source (cutlib/data/city_synthetic.py) and the
adaptation experiment (cutlib/adaptation.py): each piece against a hand computation or a property that a
wrong implementation breaks."""

from __future__ import annotations

import hashlib
import os
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cutlib import config as C
from cutlib.adaptation import adaptation_table, generator_translator, run_translator, target_scores
from cutlib.bench import bench, bench_config
from cutlib.benchmarks import benchmark_scores
from cutlib.data import city
from cutlib.data.city_synthetic import synthetic_render
from cutlib.data.drawing import SPLITS
from cutlib.data.synthetic import BUILTIN, make_dataset
from cutlib.models import CyCADAModel, build_model
from cutlib.models.cycada import FrozenSegmenter, pseudo_labels, semantic_consistency_loss
from cutlib.runs import CHECKPOINT, load_run
from cutlib.segmentation import predict_labels, train_segmenter

# city's files at 32 px, 2 + 2 images, seed 0, before city_synth existed (commit 9311adf): sha256 over names and bytes
CITY_FOLDERS = ("testA", "testA_labels", "testA_target", "testA_target_labels", "testB", "testB_labels",
                "trainA", "trainA_labels", "trainB", "trainB_labels")
CITY_SHA256 = "5a04a95faa63d35982defc66a9b33a196aabbd8c549ec14502184cf137f8f85f"
TINY = dict(load_size=40, crop_size=32, ngf=4, ndf=4, n_blocks=2, device="cpu", num_samples=2, log_every=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_dataset("city_synth", root=tmp_path_factory.mktemp("data"), size=40, n_train=8, n_test=4)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --- the synthetic style ------------------------------------------------------------------------------------


def test_city_synth_is_a_builtin_with_labels_for_both_domains(synth):
    assert "city_synth" in BUILTIN
    meta = json.loads((synth / "meta.json").read_text())
    assert meta["name"] == "city_synth" and meta["classes"] == city.CITY_CLASSES
    for folder in ("trainA", "trainA_labels", "trainB", "trainB_labels", "testA", "testA_labels", "testB", "testB_labels",
                   "testA_target"):
        assert len(list((synth / folder).glob("*.png"))) == (8 if folder.startswith("train") else 4), folder


def test_the_labels_are_the_layouts_of_the_same_generator(synth):
    for split in ("trainA", "testB"):
        for i in range(3):
            scene = city._city_layout(np.random.default_rng([0, SPLITS[split], i]), 40)
            assert np.array_equal(_png(synth / f"{split}_labels" / f"{i:05d}.png"), scene.labels)


def test_the_target_images_are_the_city_photos_byte_for_byte(synth, tmp_path):
    reference = make_dataset("city", root=tmp_path, size=40, n_train=8, n_test=4)
    for folder in ("trainB", "testB", "trainB_labels"):
        for i in range(4):
            name = f"{folder}/{i:05d}.png"
            assert (synth / name).read_bytes() == (reference / name).read_bytes(), name
    assert (synth / "trainA/00000.png").read_bytes() != (reference / "trainA/00000.png").read_bytes()


def test_the_synthetic_style_is_flat_and_differs_from_the_photo_of_the_same_layout(synth):
    """Inside regions (away from label edges) the flat style barely changes from pixel to pixel; the photos
    (textures, noise) do; and the two renders of one layout differ in colour."""
    def roughness(img: np.ndarray, labels: np.ndarray) -> float:
        x = img.astype(float)
        dx, dy = np.abs(np.diff(x, axis=1)).sum(2), np.abs(np.diff(x, axis=0)).sum(2)  # (S, S-1), (S-1, S)
        same_x, same_y = labels[:, 1:] == labels[:, :-1], labels[1:] == labels[:-1]
        return float(np.concatenate([dx[same_x], dy[same_y]]).mean())

    flat, photo, gap = [], [], []
    for i in range(4):
        labels = _png(synth / f"testA_labels/{i:05d}.png")
        a, target = _png(synth / f"testA/{i:05d}.png"), _png(synth / f"testA_target/{i:05d}.png")
        flat.append(roughness(a, labels))
        photo.append(roughness(target, labels))
        gap.append(np.abs(a.astype(float) - target).mean())
    assert np.mean(flat) < 2.0 and np.mean(photo) > 8.0, (flat, photo)
    assert np.mean(gap) > 20, gap


def test_synthetic_render_paints_each_instance_in_one_colour_or_a_gradient():
    scene = city._city_layout(np.random.default_rng(5), 48)
    img = synthetic_render(scene, np.random.default_rng(6))
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    for i, obj in enumerate(scene.objects):
        mask = scene.inst == i
        if mask.any() and obj["cls"] in (city.BUILDING, city.CAR, city.SIGN, city.VEGETATION, city.POLE):
            assert len(np.unique(img[mask], axis=0)) == 1, obj["cls"]


def test_the_existing_city_renderer_writes_the_same_bytes(tmp_path):
    d = make_dataset("city", root=tmp_path, size=32, n_train=2, n_test=2)
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*.png") if p.parent.name in CITY_FOLDERS):
        h.update(str(f.relative_to(d)).encode())
        h.update(f.read_bytes())
    assert h.hexdigest() == CITY_SHA256


# --- the semantic-consistency loss --------------------------------------------------------------------------


def test_semantic_consistency_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    f = torch.nn.Conv2d(3, 4, 1)  # a 4-class "segmenter"
    real, translated = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5, requires_grad=True)
    labels = f(real).argmax(dim=1)  # p(f, x): (2, 5, 5)
    log_p = f(translated).log_softmax(dim=1)  # (2, 4, 5, 5)
    by_hand = -torch.stack([log_p[n, labels[n, i, j], i, j] for n in range(2) for i in range(5) for j in range(5)]).mean()
    loss = semantic_consistency_loss(f, real, translated)
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert torch.equal(pseudo_labels(f, real), labels)
    loss.backward()
    assert translated.grad is not None and translated.grad.abs().sum() > 0  # the generator learns from it
    assert semantic_consistency_loss(f, real, real.clone()) < loss  # its own labels fit best (argmax)
    with pytest.raises(ValueError, match="same shape"):
        semantic_consistency_loss(f, real, translated[:1])


def test_the_cycada_model_adds_both_sem_terms_to_cyclegans_loss(synth):
    cfg = C.preset("cycada", dataset=str(synth), sem_pretrain_steps=2, **TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    model.pretrain_segmenter()
    terms = model.extra_generator_losses(x, y, model.G(x), model.F(y))
    assert set(terms) == {"sem_ST", "sem_TS"}
    assert torch.allclose(terms["sem_ST"], semantic_consistency_loss(model.f_S, x, model.G(x)))
    losses = model.training_step({"A": x, "B": y})
    assert {"sem_ST", "sem_TS", "cycle_X", "idt_G"} <= set(losses)
    assert losses["G"] == pytest.approx(sum(v for k, v in losses.items() if k not in ("G", "D_X", "D_Y")), rel=1e-5)
    off = build_model(C.preset("cycada", dataset=str(synth), sem_pretrain_steps=0, lambda_sem=0.0, **TINY))
    assert off.extra_generator_losses(x, y, x, y) == {}


def test_the_source_segmenter_is_pretrained_once_then_frozen(synth):
    cfg = C.preset("cycada", dataset=str(synth), sem_pretrain_steps=3, **TINY)
    model = build_model(cfg)
    assert not bool(model.f_S.pretrained)
    before = {k: v.clone() for k, v in model.f_S.state_dict().items()}
    batch = {"A": torch.rand(1, 3, 32, 32) * 2 - 1, "B": torch.rand(1, 3, 32, 32) * 2 - 1}
    model.train()
    model.training_step(batch)
    assert bool(model.f_S.pretrained) and model.f_S_info["steps"] == 3
    pretrained = {k: v.clone() for k, v in model.f_S.state_dict().items()}
    assert any(not torch.equal(before[k], pretrained[k]) for k in before if k != "pretrained")  # it was trained
    model.train()  # the trainer's mode must not reach f_S (BatchNorm statistics)
    assert not model.f_S.training
    for _ in range(2):
        model.training_step(batch)
    assert all(p.grad is None and not p.requires_grad for p in model.f_S.parameters())
    assert all(torch.equal(pretrained[k], v) for k, v in model.f_S.state_dict().items())  # weights and BN stats
    assert "f_S" in model.networks


def test_a_source_without_labels_is_refused_with_a_message(tmp_path):
    for folder in ("trainA", "trainB"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / folder / "a.png")
    model = build_model(C.preset("cycada", dataset=str(tmp_path), sem_pretrain_steps=2, **TINY))
    with pytest.raises(FileNotFoundError, match="trainA_labels"):
        model.pretrain_segmenter()


def test_the_cycada_fields_are_checked():
    cfg = C.preset("cycada")
    assert (cfg.model, cfg.dataset, cfg.lambda_sem, cfg.lambda_identity, cfg.sem_classes) == ("cycada", "city_synth", 1.0, 1.0, 19)
    with pytest.raises(ValueError, match="lambda_sem"):
        C.preset("cycada", lambda_sem=-1)
    with pytest.raises(ValueError, match="needs model='cycada'"):
        C.preset("cyclegan", lambda_sem=1)
    with pytest.raises(ValueError, match="sem_classes"):
        C.preset("cycada", sem_classes=1)
    assert isinstance(FrozenSegmenter(3).train(), FrozenSegmenter) and not FrozenSegmenter(3).train().training


# --- command line, evaluation, bench ------------------------------------------------------------------------


def test_command_line_trains_two_steps_and_evaluate_scores_it(synth, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "cycada", "--dataset", str(synth), "--out", str(out),
            "--load-size", "40", "--crop-size", "32", "--ngf", "4", "--ndf", "4", "--n-blocks", "2",
            "--sem-pretrain-steps", "3", "--max-steps", "2", "--num-samples", "2", "--device", "cpu", "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"sem_ST", "sem_TS", "cycle_X"} <= set(rows[-1])
    cfg, model = load_run(out)
    assert cfg.model == "cycada" and isinstance(model, CyCADAModel) and bool(model.f_S.pretrained)
    assert (out / CHECKPOINT).is_file()
    done = subprocess.run([sys.executable, "-m", "cutlib", "evaluate", str(out), "--epochs", "final",
                           "--evaluator-steps", "5", "--device", "cpu", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    final = json.loads((out / "eval.json").read_text())["final"]["metrics"]
    assert 0 <= final["seg_mean_iou"] <= 1 and 0 <= final["seg_pixel_acc"] <= 1
    translate = run_translator(out)
    x = torch.rand(2, 3, 32, 32)
    assert translate(x).shape == x.shape and 0 <= float(translate(x).min()) and float(translate(x).max()) <= 1


def test_benchmark_scores_of_city_synth_are_the_segmentation_scores():
    class Fixed:
        classes = city.CITY_CLASSES

        def segment(self, images):
            return torch.zeros(len(images), 8, 8, dtype=torch.long)  # everything is road

    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :4] = city.SKY
    scores = benchmark_scores("city_synth", Fixed(), torch.rand(2, 3, 8, 8), {"input_labels": labels})
    assert scores["seg_pixel_acc"] == pytest.approx(0.5) and scores["seg_mean_iou"] == pytest.approx(0.25)


def test_bench_times_cycada_without_pretraining_its_segmenter():
    assert bench_config("cycada", 32).sem_pretrain_steps == 0
    assert bench_config("cycada", 32, sem_pretrain_steps=4).sem_pretrain_steps == 4
    rows = bench("cycada", size=32, steps=1, warmup=0, device="cpu", isolate=False, ngf=4, ndf=4, n_blocks=2)
    assert rows[0]["model"] == "cycada" and rows[0]["median_s"] > 0 and rows[0]["params_m"] > 0


# --- segmenters and the adaptation experiment -----------------------------------------------------------------


def test_train_segmenter_learns_a_trivial_task_and_checks_its_input():
    images = torch.rand(8, 3, 16, 16)
    labels = (images[:, 0] > 0.5).long()  # class = is the red channel bright
    net = train_segmenter(images, labels, 2, steps=60, batch_size=8, width=4, lr=1e-2)
    assert (predict_labels(net, images) == labels).float().mean() > 0.9
    again = train_segmenter(images, labels, 2, steps=60, batch_size=8, width=4, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))  # seeded
    with pytest.raises(ValueError, match="lie in"):
        train_segmenter(images, labels + 5, 2, steps=1)
    with pytest.raises(ValueError, match="multiples of 4"):
        train_segmenter(images[..., :14, :14], labels[..., :14, :14], 2, steps=1)
    with pytest.raises(ValueError, match="labels must be"):
        train_segmenter(images, labels[:, :8], 2, steps=1)


def test_adaptation_table_identity_is_source_only_and_the_oracle_wins(synth):
    table = adaptation_table(synth, {"identity": lambda x: x, "grey": lambda x: x.mean(1, keepdim=True).expand_as(x)},
                             size=32, steps=40, seed=0)
    rows = table["rows"]
    assert list(rows) == ["source only", "identity", "grey", "target oracle"]
    assert rows["identity"] == rows["source only"]
    assert rows["grey"] != rows["source only"]
    for scores in [*rows.values(), table["source_on_source"]]:
        assert all(0 <= scores[k] <= 1 for k in ("mean_iou", "pixel_acc", "class_acc"))
    assert rows["target oracle"]["pixel_acc"] > rows["source only"]["pixel_acc"]
    assert table["settings"]["n_train"] == 8 and table["settings"]["num_classes"] == 19
    with pytest.raises(ValueError, match="returned"):
        adaptation_table(synth, {"bad": lambda x: x[:1]}, size=32, steps=1)


def test_adaptation_needs_labels_on_both_sides(tmp_path):
    (tmp_path / "trainA").mkdir()
    with pytest.raises(FileNotFoundError, match="trainB_labels"):
        adaptation_table(tmp_path)


def test_generator_translator_maps_unit_images_through_a_minus_one_one_generator():
    G = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        G.weight.copy_(torch.eye(3)[:, :, None, None])
        G.bias.zero_()
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(generator_translator(G, batch_size=2)(x), x, atol=1e-6)  # identity in, identity out
    net = train_segmenter(x, torch.zeros(3, 8, 8, dtype=torch.long), 2, steps=2, batch_size=2, width=2)
    assert target_scores(net, x, torch.zeros(3, 8, 8, dtype=torch.long), 2)["pixel_acc"] <= 1


def test_the_papermill_runner_and_a_grid_dry_run_accept_cycada(tmp_path):
    from cutlib.runner import runner_config

    cfg = runner_config("cycada", "city_synth", scale="tiny", device="cpu")
    assert (cfg.model, cfg.dataset, cfg.lambda_sem, cfg.crop_size) == ("cycada", "city_synth", 1.0, 32)
    grid = {"description": "CyCADA beside CycleGAN", "out": "cycada_dry", "seeds": [0],
            "base": {"scale": "tiny", "device": "cpu", "dataset": "city_synth"},
            "variants": {"CycleGAN": {"preset": "cyclegan"}, "CyCADA": {"preset": "cycada", "overrides": {"lambda_sem": 2}}}}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    done = subprocess.run([sys.executable, "-m", "cutlib", "grid", str(tmp_path / "grid.json"), "--dry-run"],
                          capture_output=True, text=True, env={**os.environ, "CUTLIB_RUNS": str(tmp_path / "runs")})
    assert done.returncode == 0, done.stderr
    assert "CyCADA" in done.stdout
    grid["variants"]["CyCADA"]["overrides"] = {"lambda_sem": -1}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    done = subprocess.run([sys.executable, "-m", "cutlib", "grid", str(tmp_path / "grid.json"), "--dry-run"],
                          capture_output=True, text=True, env={**os.environ, "CUTLIB_RUNS": str(tmp_path / "runs")})
    assert done.returncode != 0 and "lambda_sem" in done.stdout + done.stderr


def test_fit_segmenter_applies_mix_to_every_batch_before_the_flips():
    import torch

    from cutlib.segmentation import SmallUNet, fit_segmenter

    seen = []

    def mix(x, y, generator):  # every batch becomes one class-2 map: the net must learn to say 2
        seen.append(tuple(x.shape))
        return x, torch.full_like(y, 2)

    torch.manual_seed(0)
    net = SmallUNet(3, 4)
    images, labels = torch.rand(6, 3, 16, 16), torch.zeros(6, 16, 16, dtype=torch.long)
    loss = fit_segmenter(net, images, labels, steps=150, batch_size=2, lr=3e-2, generator=torch.Generator().manual_seed(0), mix=mix)
    assert seen == [(2, 3, 16, 16)] * 150 and loss < 0.5 and net.training
    assert (net.eval()(images).argmax(dim=1) == 2).float().mean() > 0.9  # it learnt the mixed labels, not the given ones
