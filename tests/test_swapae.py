"""The Swapping Autoencoder (cutlib/models/swapae.py): the co-occurrence crops and every loss derived
by hand on small tensors, the codes' shapes, swap(), the preset, and 2 steps from the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cutlib import config as C
from cutlib.models import build_model
from cutlib.models.swapae import (CooccurrenceDiscriminator, SwappingAutoencoderModel, crops_at, gradient_penalty,
                                  fake_loss, normalize, random_crops, real_loss)
from cutlib.runs import CHECKPOINT, load_run

TINY = dict(crop_size=32, load_size=32, ngf=4, ndf=4, texture_nc=16, structure_nc=4, cooc_crops=2, batch_size=2,
            device="cpu", log_every=1, num_samples=2)


def tiny_model(**kw) -> SwappingAutoencoderModel:
    torch.manual_seed(0)
    return build_model(C.preset("swapping_autoencoder", **{**TINY, **kw}))


def images(n=4, size=32, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- the co-occurrence crops ---------------------------------------------------------------------


def test_a_window_on_whole_pixels_at_its_own_size_is_those_pixels():
    x = images(2, 32)
    # a quarter of the side (8 px): half-side 0.25; left edge at pixel 8 -> centre x = -1 + 2 * 12 / 32 = -0.25
    scale = torch.tensor([[[0.25, 0.25]]]).expand(2, 1, 2)
    offset = torch.tensor([[[-0.25, 0.5]]]).expand(2, 1, 2)  # rows: centre y 0.5 -> pixel 24, rows 20..27
    crop = crops_at(x, scale, offset, torch.zeros(2, 1, dtype=torch.bool), 8)
    assert crop.shape == (2, 1, 3, 8, 8)
    assert torch.allclose(crop[:, 0], x[:, :, 20:28, 8:16], atol=1e-6)
    mirrored = crops_at(x, scale, offset, torch.ones(2, 1, dtype=torch.bool), 8)
    assert torch.allclose(mirrored[:, 0], x[:, :, 20:28, 8:16].flip(3), atol=1e-6)
    # the same window resampled at half its size: each sample sits between 2 x 2 pixels -> their mean
    half = crops_at(x, scale, offset, torch.zeros(2, 1, dtype=torch.bool), 4)
    assert torch.allclose(half[:, 0], F.avg_pool2d(x[:, :, 20:28, 8:16], 2), atol=1e-6)


def test_random_crops_draw_sides_centres_and_flips_as_documented():
    x, g = images(3, 32), torch.Generator().manual_seed(5)
    crops = random_crops(x, 4, 8, 0.125, 0.25, torch.Generator().manual_seed(5))
    side = torch.rand(3, 4, 2, generator=g) * 0.125 + 0.125
    centre = (torch.rand(3, 4, 2, generator=g) * 2 - 1) * (1 - side)
    flip = torch.rand(3, 4, generator=g) < 0.5
    assert torch.equal(crops, crops_at(x, side, centre, flip, 8))
    assert crops.shape == (3, 4, 3, 8, 8)
    assert ((centre.abs() + side) <= 1).all() and ((side >= 0.125) & (side <= 0.25)).all()  # inside the image


def test_cooccurrence_discriminator_averages_the_reference_features():
    torch.manual_seed(0)
    D = CooccurrenceDiscriminator(8, ndf=4)
    q, ref = torch.randn(2, 3, 3, 8, 8), torch.randn(2, 5, 3, 8, 8)
    logits = D(q, ref)
    assert logits.shape == (2, 3)  # one prediction per query crop
    by_hand = D.classify(torch.cat([D.encode(q), D.encode(ref).mean(dim=1, keepdim=True).expand(-1, 3, -1)], 2)).squeeze(2)
    assert torch.allclose(logits, by_hand, atol=1e-6)
    assert torch.allclose(D(q, ref[:, torch.randperm(5)]), logits, atol=1e-5)  # the order of the references is irrelevant
    with pytest.raises(ValueError, match="power of 2"):
        CooccurrenceDiscriminator(12, ndf=4)


# --- the losses ----------------------------------------------------------------------------------


def test_nonsaturating_losses_are_minus_log_sigmoid():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    sig = [1 / (1 + math.exp(-v)) for v in logits.tolist()]
    assert real_loss(logits).item() == pytest.approx(sum(-math.log(s) for s in sig) / 3, rel=1e-6)
    assert fake_loss(logits).item() == pytest.approx(sum(-math.log(1 - s) for s in sig) / 3, rel=1e-6)


def test_gradient_penalty_of_a_linear_critic_is_its_squared_weights():
    w = torch.randn(3, 2, 2)
    x, y = torch.randn(4, 3, 2, 2, requires_grad=True), torch.randn(4, 1, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3)) + 2 * y[:, 0]  # d/dx = w per sample, d/dy = 2
    assert gradient_penalty(logits, [x, y]).item() == pytest.approx(w.pow(2).sum().item() + 4, rel=1e-5)


def _by_hand_generator(m, real, rec, mix, g):
    cfg, s = m.cfg, m.cooc_size
    crop = lambda x: random_crops(x, cfg.cooc_crops, s, cfg.cooc_min_scale, cfg.cooc_max_scale, g)  # noqa: E731
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    nll_real = lambda logits: sum(sp(-v) for v in logits.flatten().tolist()) / logits.numel()  # noqa: E731
    cooc = m.D_patch(crop(mix), crop(real))  # mix crops are drawn first, then the references
    return {"G_L1": (rec - real).abs().mean().item(), "G_GAN_rec": 0.5 * nll_real(m.D(rec)),
            "G_GAN_mix": nll_real(m.D(mix)), "G_cooc": nll_real(cooc)}


def test_generator_losses_equal_the_hand_computation():
    m = tiny_model(lambda_cooc=2.0)
    real = images(4)
    with torch.no_grad():
        rec, mix = m.forward_pass(real)
        state = m.rng.get_state()
        got = {k: v.item() for k, v in m.generator_losses(real, rec, mix).items()}
        g = torch.Generator()
        g.set_state(state)
        want = _by_hand_generator(m, real, rec, mix, g)
    want["G_cooc"] *= 2.0
    assert got == pytest.approx(want, rel=1e-5)


def test_discriminator_losses_with_lazy_r1_equal_the_hand_computation():
    m = tiny_model(lambda_r1=10.0, lambda_r1_cooc=1.0, r1_every=4)
    real = images(4)
    with torch.no_grad():
        rec, mix = m.forward_pass(real)
    g = torch.Generator()
    g.set_state(m.rng.get_state())
    got = {k: v.item() for k, v in m.discriminator_losses(real, rec, mix, r1=True).items()}
    cfg, s = m.cfg, m.cooc_size
    crop = lambda x: random_crops(x, cfg.cooc_crops, s, cfg.cooc_min_scale, cfg.cooc_max_scale, g)  # noqa: E731
    q, ref = crop(real).requires_grad_(True), crop(real).requires_grad_(True)
    mix_crops = crop(mix)
    x = real.clone().requires_grad_(True)
    d_real, p_real = m.D(x), m.D_patch(q, ref)
    (gx,) = torch.autograd.grad(d_real.sum(), x)
    gq, gref = torch.autograd.grad(p_real.sum(), [q, ref])
    sq = lambda t: t.pow(2).flatten(1).sum(1).mean().item()  # noqa: E731
    want = {"D_real": -F.logsigmoid(d_real).mean().item(),
            "D_rec": 0.5 * -torch.log1p(-torch.sigmoid(m.D(rec))).mean().item(),
            "D_mix": 0.5 * -torch.log1p(-torch.sigmoid(m.D(mix))).mean().item(),
            "Dpatch_real": -F.logsigmoid(p_real).mean().item(),
            "Dpatch_mix": -torch.log1p(-torch.sigmoid(m.D_patch(mix_crops, ref))).mean().item(),
            "D_R1": 0.5 * 10.0 * sq(gx) * 4, "Dpatch_R1": 0.25 * 1.0 * (sq(gq) + sq(gref)) * 4}
    assert got == pytest.approx(want, rel=1e-4)


def test_r1_comes_every_r1_every_steps():
    m = tiny_model(r1_every=2)
    batch = {"A": images(2, seed=1), "B": images(2, seed=2)}
    logged = [m.training_step(batch) for _ in range(4)]
    assert ["D_R1" in row for row in logged] == [False, True, False, True]
    assert int(m.counter.d_steps) == 4 and "counter" in m.networks  # the count travels in the checkpoint
    assert all(math.isfinite(v) for row in logged for v in row.values())


# --- codes and swaps -----------------------------------------------------------------------------


def test_the_codes_have_the_documented_shapes_and_unit_length():
    m = tiny_model()
    with torch.no_grad():
        structure, texture = m.E(images(3))
    assert structure.shape == (3, 4, 8, 8) and texture.shape == (3, 16)  # (B, Cs, H/4, W/4), (B, Ct)
    assert torch.allclose(structure.norm(dim=1), torch.ones(3, 8, 8), atol=1e-4)
    assert torch.allclose(texture.norm(dim=1), torch.ones(3), atol=1e-4)
    assert torch.allclose(normalize(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))


def test_swap_takes_the_structure_from_the_first_argument_and_the_texture_from_the_second():
    m = tiny_model()
    a, b = images(2, seed=1), images(2, seed=2)
    with torch.no_grad():
        out = m.swap(a, b)
        assert torch.allclose(out, m.G(m.E(a)[0], m.E(b)[1]), atol=1e-6)
        assert not torch.allclose(out, m.G(m.E(b)[0], m.E(a)[1]), atol=1e-3)
        assert torch.allclose(m.swap(a, a), m.translate(a), atol=1e-6)  # a swap with itself reconstructs
        real = torch.cat([a, b])
        rec, mix = m.forward_pass(real)  # training pairs image i with image i + B
        assert torch.allclose(mix, m.swap(torch.cat([b, a]), real), atol=1e-5)
        assert torch.allclose(rec, m.translate(real), atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        m.swap(a, b[:1])


# --- preset, errors, command line ----------------------------------------------------------------


def test_the_preset_has_the_authors_values():
    cfg = C.preset("swapping_autoencoder")
    assert C.preset("swapping-autoencoder") == cfg and C.PRESETS["swapping_autoencoder"] is C.SwappingAutoencoder
    assert (cfg.model, cfg.netD, cfg.gan_mode, cfg.lr, cfg.beta1, cfg.beta2) == ("swapae", "stylegan2", "nonsaturating", 0.002, 0.0, 0.99)
    assert (cfg.structure_nc, cfg.texture_nc, cfg.lambda_r1, cfg.lambda_r1_cooc, cfg.r1_every) == (8, 2048, 10.0, 1.0, 16)
    assert (cfg.cooc_crops, cfg.cooc_min_scale, cfg.cooc_max_scale, cfg.cooc_size) == (8, 0.125, 0.25, 0)
    assert build_model(C.override(cfg, crop_size=64, load_size=64, ngf=4, ndf=4)).cooc_size == 16  # a quarter


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="cooc_min_scale <= cooc_max_scale"):
        C.preset("swapping_autoencoder", cooc_min_scale=0.5, cooc_max_scale=0.25)
    with pytest.raises(ValueError, match="cooc_size"):
        C.preset("swapping_autoencoder", cooc_size=4)
    with pytest.raises(ValueError, match="netD='stylegan2'"):
        build_model(C.preset("swapping_autoencoder", **TINY, netD="patchgan"))
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model(C.preset("swapping_autoencoder", **{**TINY, "crop_size": 24, "load_size": 24}))


def test_command_line_trains_two_steps_and_the_run_loads(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "swapping_autoencoder", "--dataset", "stripes",
            "--out", str(out), "--load-size", "32", "--crop-size", "32", "--ngf", "4", "--ndf", "4", "--texture-nc", "16",
            "--cooc-crops", "2", "--batch-size", "2", "--max-steps", "2", "--num-samples", "2", "--device", "cpu",
            "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"G_L1", "G_cooc", "D_mix", "Dpatch_real"} <= set(rows[-1])
    cfg, model = load_run(out)
    assert cfg.model == "swapae" and isinstance(model, SwappingAutoencoderModel) and int(model.counter.d_steps) == 2
    assert (out / "samples" / "latest.png").is_file() and (out / CHECKPOINT).is_file()


# --- ground-truth hybrids and the swap evaluator ------------------------------------------------


@pytest.fixture(scope="module")
def stripes32(tmp_path_factory):
    from cutlib.data.synthetic import make_dataset

    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=32, n_train=6, n_test=3)


def _png(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path))


def test_scenes_drawn_again_render_the_dataset_images_and_targets(stripes32):
    import numpy as np

    from cutlib.data.stripes import render, scene_of

    for split in ("trainA", "testB"):
        image, mask = render(scene_of(split, 1, 32))
        assert np.array_equal(image, _png(stripes32 / split / "00001.png"))
        assert np.array_equal(mask, _png(stripes32 / f"{split}_labels" / "00001.png"))
    target, _ = render(scene_of("testA", 2, 32), coat="B")  # A's scene striped: the dataset's true translation
    assert np.array_equal(target, _png(stripes32 / "testA_target" / "00002.png"))


def test_a_hybrid_has_the_structure_sources_animal_and_background_and_the_texture_sources_coat(stripes32):
    import numpy as np
    import scipy.ndimage

    from cutlib.data.stripes import render, scene_of

    a, b = scene_of("testA", 0, 32), scene_of("testB", 0, 32)
    zebra, mask = render(a, b)  # A's horse in B's stripes
    image_a, mask_a = render(a)
    assert np.array_equal(mask, mask_a)
    outside = ~scipy.ndimage.binary_dilation(mask_a == 1)  # the 1 px anti-aliased edge mixes coat and ground
    assert np.abs(zebra[outside].astype(int) - image_a[outside]).max() <= 1  # the background is A's
    fur = zebra[mask_a == 1].astype(float)
    assert fur.std() > 40 and (fur.max(axis=1) - fur.min(axis=1)).mean() < 10  # black and white bands, grey
    horse, _ = render(b, a)  # B's zebra in A's smooth coat: A's colour, no bands
    coat = horse[_png(stripes32 / "testB_labels" / "00000.png") == 1].astype(float)
    assert np.abs(coat.mean(axis=0) - a.coat_base).max() < 60 and coat.std(axis=0).max() < 40
    with pytest.raises(ValueError, match="coat must be"):
        render(a, coat="C")
    with pytest.raises(ValueError, match="split must be"):
        scene_of("valA", 0, 32)


def test_hybrids_at_the_evaluators_size_and_clear_errors(stripes32, tmp_path):
    from cutlib.swaps import hybrids

    images_, masks = hybrids(stripes32, [("testA", 0), ("testB", 1)], [("testB", 0), ("testA", 2)], size=16)
    assert images_.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16)
    assert 0 <= images_.min() and images_.max() <= 1 and set(masks.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="pair up"):
        hybrids(stripes32, [("testA", 0)], [])
    with pytest.raises(ValueError, match="not the built-in stripes"):
        hybrids(tmp_path, [("testA", 0)], [("testB", 0)])


@pytest.fixture(scope="module")
def evaluator32(stripes32):
    from cutlib.benchmarks import train_evaluator

    return train_evaluator(stripes32, size=32, steps=3, batch_size=8)  # barely trained: the scores are checked by hand


def test_swap_scores_equal_the_hand_computation(stripes32, evaluator32):
    from cutlib.swaps import reconstruction_scores, swap_data, swap_scores

    data = swap_data(stripes32, n=3, size=32)
    assert torch.equal(data["AB_masks"], data["A_labels"]) and torch.equal(data["BA_masks"], data["B_labels"])
    outputs, striped = data["AB"].flip(3), torch.tensor([True, False, True])
    got = swap_scores(evaluator32, outputs, data["A_labels"], striped, data["AB"])
    probs = evaluator32.probabilities(outputs)
    ious, tex = [], []
    for k in range(3):
        found, truth = probs[k].argmax(0) > 0, data["A_labels"][k] > 0
        ious.append(((found & truth).sum() / (found | truth).sum()).item())
        cls = 2 if striped[k] else 1
        tex.append((probs[k, cls][truth].sum() / truth.sum()).item())
    assert got == pytest.approx({"structure_iou": sum(ious) / 3, "texture_score": sum(tex) / 3,
                                 "hybrid_l1": (outputs - data["AB"]).abs().mean().item()}, rel=1e-5)
    assert swap_scores(evaluator32, data["AB"], data["A_labels"], striped, data["AB"])["hybrid_l1"] == 0
    x = data["A"]
    rec = reconstruction_scores((x + 0.1).clamp(0, 1), x)
    mse = ((x + 0.1).clamp(0, 1) - x).pow(2).flatten(1).mean(1)
    assert rec == pytest.approx({"rec_l1": ((x + 0.1).clamp(0, 1) - x).abs().mean().item(),
                                 "rec_psnr": (10 * torch.log10(1 / mse)).mean().item()}, rel=1e-5)
    with pytest.raises(ValueError, match="one length"):
        swap_scores(evaluator32, outputs, data["A_labels"][:2], striped)


def test_evaluate_swaps_scores_a_model_both_ways(stripes32, evaluator32):
    from cutlib.swaps import evaluate_swaps, swap_data

    data = swap_data(stripes32, n=2, size=32)
    result = evaluate_swaps(tiny_model().eval(), data, evaluator32)
    assert set(result) == {"AB", "BA", "reconstruction", "outputs"}
    assert set(result["AB"]) == {"structure_iou", "texture_score", "hybrid_l1"} and set(result["reconstruction"]) == {"rec_l1", "rec_psnr"}
    assert all(0 <= result[k][m] <= 1 for k in ("AB", "BA") for m in result[k])
    assert result["outputs"]["AB"].shape == (2, 3, 32, 32)
