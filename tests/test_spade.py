"""SPADE (cutlib/models/spade.py): the normalisation of thesis Eq. 2.1 against an explicit formula, the
colour -> one-hot conversion, the hinge and feature-matching losses by hand, the paired city data (the
target is the photo of the same layout; the files the renderer wrote before are byte for byte the same),
the preset and its checks, 2 steps from the command line, evaluate and bench at tiny size."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cutlib import config as C
from cutlib.data import PairedImageFolder, load_dataset
from cutlib.data.city import CITY_PALETTE, _city_layout, _city_photo
from cutlib.data.drawing import SPLITS
from cutlib.data.synthetic import generator_version, make_dataset
from cutlib.models import build_model, check_discriminator
from cutlib.models.spade import (SPADE, MultiscaleDiscriminator, SPADEGenerator, SPADEModel, colour_to_onehot,
                                 feature_matching_loss, hinge_d_loss, hinge_g_loss, init_xavier)
from cutlib.runs import CHECKPOINT, load_run

TINY = dict(dataset="city", load_size=32, crop_size=32, ngf=4, ndf=4, num_upsampling=3, spade_nhidden=8, n_layers_D=2,
            device="cpu", log_every=1, num_samples=2)
PALETTE = torch.tensor(CITY_PALETTE, dtype=torch.float32) / 127.5 - 1  # (19, 3) in [-1, 1]


def colour_maps(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class ids -> (B, 3, H, W) colour label maps in [-1, 1], as trainA/ holds them."""
    return PALETTE[labels].permute(0, 3, 1, 2)


def random_labels(b=2, size=8, seed=0) -> torch.Tensor:
    return torch.randint(0, len(CITY_PALETTE), (b, size, size), generator=torch.Generator().manual_seed(seed))


# --- the normalisation -----------------------------------------------------------------------------


def by_hand_spade(layer: SPADE, h: torch.Tensor, labels: torch.Tensor, per_image: bool) -> torch.Tensor:
    """Eq. 2.1 with explicit sums: mu, sigma per channel over (n, y, x) (per_image: over (y, x)), the label map
    resized by picking pixels (nearest), gamma and beta from the two convolutions, then norm * (1 + gamma) + beta."""
    n, c, hh, ww = h.shape
    step = labels.shape[-1] // ww
    m = labels[:, :, ::step, ::step]  # nearest downsampling by an integer factor
    hidden = F.relu(F.conv2d(m, layer.shared[0].weight, layer.shared[0].bias, padding=1))
    gamma = F.conv2d(hidden, layer.gamma.weight, layer.gamma.bias, padding=1)
    beta = F.conv2d(hidden, layer.beta.weight, layer.beta.bias, padding=1)
    out = torch.empty_like(h)
    for k in range(c):
        groups = [(i,) for i in range(n)] if per_image else [tuple(range(n))]
        for g in groups:
            values = h[list(g), k]
            mu = values.sum() / values.numel()  # Eq. 2.2
            sigma = torch.sqrt((values**2).sum() / values.numel() - mu**2 + 1e-5)  # Eq. 2.3 (+ the layer's eps)
            out[list(g), k] = (values - mu) / sigma
    return out * (1 + gamma) + beta


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_spade_is_equation_2_1_computed_by_hand(norm):
    torch.manual_seed(0)
    layer = SPADE(channels=3, label_nc=4, hidden=5, norm=norm)
    for conv in (layer.gamma, layer.beta):  # non-zero biases, so that a missing bias would show
        torch.nn.init.normal_(conv.bias)
    h = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    labels = F.one_hot(torch.randint(0, 4, (2, 8, 8)), 4).permute(0, 3, 1, 2).double()  # (2, 4, 8, 8)
    layer = layer.double().train()
    assert torch.allclose(layer(h, labels), by_hand_spade(layer, h, labels, per_image=norm == "instance"), atol=1e-8)


def test_normalisation_washes_out_a_uniform_label_map_and_spade_does_not():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(19, 4, 3, padding=1, padding_mode="replicate")
    one_class = [F.one_hot(torch.full((1, 8, 8), k), 19).permute(0, 3, 1, 2).float() for k in (0, 10)]  # road, sky
    washed = [F.instance_norm(conv(m)) for m in one_class]
    assert all(w.abs().max() < 1e-5 for w in washed)  # whatever the label: zeros
    layer = SPADE(4, 19, hidden=8, norm="instance")
    h = torch.randn(1, 4, 8, 8)
    road, sky = (layer(h, m) for m in one_class)
    assert (road - sky).abs().max() > 1e-2  # the label still changes the output


def test_spade_refuses_an_unknown_norm():
    with pytest.raises(ValueError, match="'batch' or 'instance'"):
        SPADE(4, 19, norm="group")


# --- colour maps -> one-hot ------------------------------------------------------------------------


def test_colour_to_onehot_takes_the_nearest_palette_colour():
    labels = random_labels()
    onehot = colour_to_onehot(colour_maps(labels), PALETTE)
    assert onehot.shape == (2, 19, 8, 8) and torch.equal(onehot.argmax(1), labels) and torch.equal(onehot.sum(1), torch.ones(2, 8, 8))
    blurred = colour_maps(labels) + 0.03 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(colour_to_onehot(blurred, PALETTE).argmax(1), labels)  # a little noise: still the same class
    colours = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1  # any colour at all
    found = colour_to_onehot(colours, PALETTE).argmax(1)
    for y in range(4):
        for x in range(4):  # the plain loop: the palette entry at the smallest squared distance
            d = [sum((colours[0, c, y, x].item() - PALETTE[k, c].item()) ** 2 for c in range(3)) for k in range(19)]
            assert found[0, y, x] == d.index(min(d))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        colour_to_onehot(torch.zeros(1, 19, 8, 8), PALETTE)


def test_the_generator_takes_colour_maps_and_equals_synthesis_from_the_one_hot_map():
    torch.manual_seed(0)
    G = init_xavier(SPADEGenerator(ngf=4, num_upsampling=2, hidden=8)).eval()
    labels = random_labels(size=16)
    x = colour_maps(labels)
    with torch.no_grad():
        out = G(x)
        assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1
        assert torch.equal(out, G.synthesize(F.one_hot(labels, 19).permute(0, 3, 1, 2).float()))
        wide = G(colour_maps(random_labels(1, 16))[:, :, :8])  # (1, 3, 8, 16): H and W multiples of 4
        assert wide.shape == (1, 3, 8, 16)
    with pytest.raises(ValueError, match="multiples of 2"):
        G.synthesize(torch.zeros(1, 19, 10, 12))
    assert not any("palette" in k for k in G.state_dict())  # not saved: it is CITY_PALETTE


# --- the losses ------------------------------------------------------------------------------------


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = 0, 0.5, 2 -> 2.5 / 3; relu(1 + fake) = 0, 1, 2 -> 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_d_loss(real, None).item() == pytest.approx(2.5 / 3)
    assert hinge_d_loss(None, fake).item() == pytest.approx(1.0)
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)  # -mean(-2, 0, 1)
    with pytest.raises(ValueError, match="both are None"):
        hinge_d_loss(None, None)


def test_feature_matching_is_the_mean_over_discriminators_of_summed_l1_without_the_logits():
    g = torch.Generator().manual_seed(0)
    fake = [[torch.randn(1, 2, 4, 4, generator=g) for _ in range(3)] for _ in range(2)]
    real = [[torch.randn(1, 2, 4, 4, generator=g) for _ in range(3)] for _ in range(2)]
    by_hand = 0.0
    for k in range(2):
        for j in range(2):  # layer 2 is the logits: left out
            by_hand += (fake[k][j] - real[k][j]).abs().sum().item() / fake[k][j].numel()
    assert feature_matching_loss(fake, real).item() == pytest.approx(by_hand / 2, rel=1e-6)
    with pytest.raises(ValueError, match="same discriminators"):
        feature_matching_loss(fake, real[:1])


def test_the_model_losses_equal_the_hand_computation():
    torch.manual_seed(0)
    model = build_model(C.preset("spade", **TINY)).eval()  # eval: spectral norm's power iteration holds still
    labels = F.one_hot(random_labels(1, 32), 19).permute(0, 3, 1, 2).float()
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fake = model.G.synthesize(labels)
        losses = model.generator_losses(labels, fake, y)
        d_losses = model.discriminator_losses(labels, fake, y)
        both = model.D(torch.cat([torch.cat([labels, fake], 1), torch.cat([labels, y], 1)]))  # as the authors: one batch
    pred_fake = [[t[:1] for t in scale] for scale in both]
    pred_real = [[t[1:] for t in scale] for scale in both]
    assert len(both) == 2  # two scales
    assert losses["G_GAN"].item() == pytest.approx(sum(-p[-1].mean().item() for p in pred_fake) / 2, abs=1e-6)
    feat = sum((f - r).abs().mean().item() for fk, rk in zip(pred_fake, pred_real) for f, r in zip(fk[:-1], rk[:-1])) / 2
    assert losses["G_feat"].item() == pytest.approx(10 * feat, rel=1e-5)
    assert d_losses["D_real"].item() == pytest.approx(sum(F.relu(1 - p[-1]).mean().item() for p in pred_real) / 2, abs=1e-6)
    assert d_losses["D_fake"].item() == pytest.approx(sum(F.relu(1 + p[-1]).mean().item() for p in pred_fake) / 2, abs=1e-6)


def test_the_multiscale_discriminator_halves_the_image_between_scales():
    D = MultiscaleDiscriminator(22, ndf=4, n_layers=2, num_D=3)
    out = D(torch.zeros(1, 22, 32, 32))
    assert len(out) == 3 and all(len(scale) == 3 for scale in out)  # 2 conv blocks, then the logits
    D4 = MultiscaleDiscriminator(22, ndf=4, n_layers=4, num_D=1)  # the preset's depth: 32 -> 17 -> 9 -> 5 (s2), 6 (s1), 7
    assert [t.shape[-1] for t in D4(torch.zeros(1, 22, 32, 32))[0]] == [17, 9, 5, 6, 7]
    assert [t.shape[1] for t in D4(torch.zeros(1, 22, 32, 32))[0]] == [4, 8, 16, 32, 1]
    sizes = [scale[-1].shape[-1] for scale in out]
    assert sizes[0] > sizes[1] > sizes[2] and out[0][-1].shape[1] == 1


def test_a_training_step_changes_both_networks_and_returns_finite_losses():
    torch.manual_seed(0)
    model = build_model(C.preset("spade", **TINY))
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in model.networks.items()}
    x, y = colour_maps(random_labels(1, 32)), torch.rand(1, 3, 32, 32) * 2 - 1
    losses = model.training_step({"A": x, "B": y})
    assert {"G_GAN", "G_feat", "D_real", "D_fake", "G", "D"} <= set(losses) and all(np.isfinite(list(losses.values())))
    for name, net in model.networks.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    assert model.optimizers["G"].param_groups[0]["lr"] == 1e-4 and model.optimizers["D"].param_groups[0]["lr"] == 4e-4
    assert model.translate(x).shape == (1, 3, 32, 32)


# --- the preset and its checks ---------------------------------------------------------------------


def test_the_preset_has_the_authors_values():
    cfg = C.preset("spade")
    assert (cfg.model, cfg.dataset, cfg.paired, cfg.gan_mode, cfg.lambda_feat) == ("spade", "city", True, "hinge", 10.0)
    assert (cfg.lr, cfg.lr_D, cfg.beta1, cfg.beta2, cfg.batch_size) == (1e-4, 4e-4, 0.0, 0.999, 1)
    assert (cfg.num_D, cfg.n_layers_D, cfg.num_upsampling, cfg.spade_nhidden, cfg.spade_norm) == (2, 4, 5, 128, "batch")
    assert C.PRESETS["spade"] is C.SPADE and isinstance(build_model(C.preset("spade", **TINY)), SPADEModel)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="hinge"):
        C.preset("cut", gan_mode="hinge")
    with pytest.raises(ValueError, match="paired=True"):
        C.preset("spade", paired=False)
    with pytest.raises(ValueError, match="num_upsampling"):
        C.preset("spade", crop_size=32, load_size=32)  # 32 / 2**5 = 1 px
    with pytest.raises(ValueError, match="lr_D"):
        C.preset("spade", lr_D=-1)
    with pytest.raises(ValueError, match="paired=True gives"):
        C.preset("sincut", paired=True)
    with pytest.raises(ValueError, match="fp32"):
        build_model(C.preset("spade", **TINY, precision="bf16"))


def test_the_runner_sets_a_4px_start_at_small_scales():
    from cutlib.runner import runner_config

    cfg = runner_config("spade", "city", "tiny")
    assert cfg.num_upsampling == 3 and cfg.n_layers_D == 4 and cfg.crop_size == 32  # the preset's own D depth
    check_discriminator(cfg)  # SPADE's multiscale D of depth 4 fits 32 px (padded k4 convs) ...
    with pytest.raises(ValueError, match="does not fit crop_size 32"):  # ... where the course's PatchGAN does not
        check_discriminator(C.preset("cut", crop_size=32, load_size=32, n_layers_D=4))
    assert runner_config("spade", "city", "tiny", overrides={"num_upsampling": 2}).num_upsampling == 2


# --- paired city data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def city32(tmp_path_factory):
    return make_dataset("city", root=tmp_path_factory.mktemp("data"), size=32, n_train=3, n_test=2)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_the_files_written_before_the_paired_targets_are_byte_for_byte_unchanged(city32):
    # the digest of every file of this render made by the city writer before trainA_target existed (generator 1)
    h = hashlib.sha256()
    for p in sorted(p for p in city32.rglob("*.png") if not p.parent.name.startswith("trainA_target")):
        h.update(p.relative_to(city32).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    assert h.hexdigest() == "9ca6a1713b57bbe4a48838c0cd6a270d937084506ee81805f0a6cbbfd2646d6b"


def test_every_training_map_has_the_photo_of_its_own_layout(city32):
    for i in range(3):
        name = f"{i:05d}.png"
        labels = _png(city32 / "trainA_labels" / name)
        assert (_png(city32 / "trainA_target_labels" / name) == labels).all()
        rng = np.random.default_rng([0, SPLITS["trainA"], i])  # the scene drawn again from its own stream
        scene = _city_layout(rng, 32)
        assert (scene.labels == labels).all() and (CITY_PALETTE[scene.labels] == _png(city32 / "trainA" / name)).all()
        assert (_city_photo(scene, rng) == _png(city32 / "trainA_target" / name)).all()
    assert not (_png(city32 / "trainA_target" / "00000.png") == _png(city32 / "trainA_target" / "00001.png")).all()
    assert "paired_target" in json.loads((city32 / "meta.json").read_text())


def test_a_cached_city_folder_of_the_old_writer_is_made_again(tmp_path):
    path = make_dataset("city", root=tmp_path, size=32, n_train=2, n_test=1)
    shutil.rmtree(path / "trainA_target")  # what the old writer left
    meta = json.loads((path / "meta.json").read_text())
    assert meta["generator_version"] == generator_version("city") == 2 and generator_version("stripes") == 1
    (path / "meta.json").write_text(json.dumps({**meta, "generator_version": 1}))
    assert make_dataset("city", root=tmp_path, size=32, n_train=2, n_test=1) == path
    assert len(list((path / "trainA_target").glob("*.png"))) == 2


def test_paired_items_crop_and_flip_the_target_as_the_label_map(city32, tmp_path):
    root = tmp_path / "same"
    shutil.copytree(city32, root)
    shutil.rmtree(root / "trainA_target")
    shutil.copytree(root / "trainA", root / "trainA_target")  # targets identical to the inputs: A == B iff same crop and flip
    ds = PairedImageFolder(root, load_size=40, crop_size=32, flip=True)
    flips = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert torch.equal(item["A"], item["B"])
            flips.add(item["A"].sum().item())
    assert len(flips) > 3  # the crops and flips did vary
    real = PairedImageFolder(city32, load_size=32, crop_size=32, flip=False)
    assert len(real) == 3 and [p.name for p in real.paths_B] == [p.name for p in real.paths_A]
    assert real[1]["B_path"].endswith("trainA_target/00001.png")
    assert torch.equal(real[1]["B"], torch.from_numpy(np.array(_png(city32 / "trainA_target" / "00001.png"))).permute(2, 0, 1) / 127.5 - 1)


def test_paired_data_without_targets_is_a_clear_error(city32, tmp_path):
    root = tmp_path / "unpaired"
    shutil.copytree(city32, root)
    (root / "trainA_target" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002.png"):
        PairedImageFolder(root)
    shutil.rmtree(root / "trainA_target")
    with pytest.raises(FileNotFoundError, match="paired=False"):
        PairedImageFolder(root)


def test_load_dataset_gives_pairs_when_the_config_says_paired(city32):
    cfg = C.preset("spade", **{**TINY, "dataset": str(city32)})
    ds = load_dataset(cfg)
    assert isinstance(ds, PairedImageFolder) and len(ds) == 3
    assert not isinstance(load_dataset(C.preset("cut", **{**TINY, "dataset": str(city32)})), PairedImageFolder)


# --- the command line, evaluate, bench --------------------------------------------------------------


def test_command_line_trains_two_steps_and_evaluate_scores_the_run(tmp_path, city32):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "spade", "--dataset", str(city32), "--out", str(out),
            "--load-size", "32", "--crop-size", "32", "--ngf", "4", "--ndf", "4", "--num-upsampling", "3",
            "--spade-nhidden", "8", "--n-layers-D", "2", "--max-steps", "2", "--num-samples", "2", "--device", "cpu",
            "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"G_GAN", "G_feat", "D_real", "D_fake"} <= set(rows[-1])
    cfg, model = load_run(out)
    assert cfg.model == "spade" and cfg.paired and isinstance(model, SPADEModel)
    assert (out / "samples" / "latest.png").is_file() and (out / CHECKPOINT).is_file()
    from cutlib.translate import load_generator, translate_image

    G = load_generator(out)
    assert isinstance(G, SPADEGenerator) and G.multiple == 8
    x = colour_maps(random_labels(1, 48))[:, :, :44, :36]  # any size: padded to multiples of 8, cropped back
    assert translate_image(G, x[0]).shape == (3, 44, 36)
    from cutlib.evaluate import evaluate_run

    report = evaluate_run(out, epochs="final", evaluator_steps=3)
    assert report["benchmark"] == "city" and report["model"] == "spade"
    assert {"seg_pixel_acc", "seg_class_acc", "seg_mean_iou"} <= set(report["final"]["metrics"])


def test_command_line_refuses_spade_on_unpaired_data(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cutlib", "train", "--preset", "spade", "--paired", "false",
                           "--out", str(tmp_path / "r"), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 1 and "paired=True" in done.stderr


def test_bench_measures_spade_at_tiny_size():
    from cutlib.bench import measure

    row = measure("spade", size=32, steps=1, warmup=0, device="cpu", ngf=4, ndf=4, num_upsampling=3, spade_nhidden=8,
                  n_layers_D=2)
    assert row["model"] == "spade" and row["median_s"] > 0 and row["params_m"] > 0
    # at 64 px the preset's 1/32 start is 2 px; its 32 px warm-up copy would be 1 px: it warms up at 64 px
    row = measure("spade", size=64, steps=1, warmup=0, device="cpu", ngf=4, ndf=4, spade_nhidden=8, n_layers_D=2)
    assert row["size"] == 64 and row["median_s"] > 0


def test_a_run_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, city32):
    from cutlib.runs import load_checkpoint
    from cutlib.train import train

    cfg = C.preset("spade", **{**TINY, "dataset": str(city32), "n_epochs": 2, "n_epochs_decay": 0, "save_epoch_freq": 0})
    train(cfg, tmp_path / "straight", progress=False)  # 2 epochs of 3 pairs: 6 steps
    train(C.override(cfg, max_steps=4), tmp_path / "stopped", progress=False)
    train({"max_steps": 0}, tmp_path / "stopped", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / run / CHECKPOINT) for run in ("straight", "stopped"))
    assert a["step"] == b["step"] == 6
    for name in ("G", "D"):  # weights, spectral norm's u and v, BatchNorm's running statistics
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
