"""SinCUT: the preset, the objective checked against a hand computation, training through the
ordinary trainer with exact resume, the real Monet/Etretat pair and full-resolution translation
(book/reference.md section 7). The R1 finite-difference check lives in tests/test_losses.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cutlib import config as C
from cutlib.data import SingleImagePair
from cutlib.models import build_model, model_class
from cutlib.nce import sample_patches
from cutlib.models.sincut import SinCUTModel
from cutlib.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from cutlib.runs import CHECKPOINT, load_run
from cutlib.train import train
from cutlib.translate import load_generator, translate_image

# small networks, few crops: every SinCUT code path at a fraction of a second per step
TINY = dict(ngf=2, ndf=2, batch_size=4, crop_size=32, netF_nc=32, device="cpu", log_every=1, num_samples=1)


def tiny(**kw) -> C.TrainConfig:
    return C.SinCUT(**{**TINY, **kw})


def _crops(b=4, size=32, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(b, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(b, 3, size, size, generator=g) * 2 - 1}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A single-image pair in the trainA/ trainB/ layout: two smooth random colour fields."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    for domain, size in (("A", (120, 96)), ("B", (100, 84))):
        small = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        (root / f"train{domain}").mkdir()
        Image.fromarray(small).resize(size, Image.BICUBIC).save(root / f"train{domain}" / f"{domain}.png")
    return root


# --- the preset -------------------------------------------------------------------------------


def test_sincut_preset_has_the_reference_values():
    cfg = C.SinCUT()
    assert (cfg.model, cfg.netG, cfg.netD, cfg.ngf, cfg.ndf) == ("sincut", "stylegan2", "stylegan2", 10, 8)
    assert (cfg.gan_mode, cfg.lambda_gan, cfg.lambda_r1) == ("nonsaturating", 1.0, 1.0)
    assert (cfg.lambda_nce, cfg.nce_layers, cfg.num_patches, cfg.negatives_from_batch) == (4.0, StyleGAN2Generator.DEFAULT_TAPS, 1, True)
    assert (cfg.nce_idt, cfg.lambda_idt_l1, cfg.nce_t, cfg.netF_nc) == (True, 1.0, 0.07, 256)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.batch_size) == (0.002, 0.0, 0.99, 16)
    assert (cfg.crop_size, cfg.flip, cfg.n_epochs, cfg.n_epochs_decay, cfg.dataset_len) == (64, True, 8, 8, 100_000)
    assert cfg.dataset_len // cfg.batch_size == 6250  # steps per "epoch"
    assert cfg.dataset == "single_image_monet_etretat" and cfg.negatives == "internal" and not cfg.flip_equivariance


def test_sincut_preset_by_name_with_overrides():
    cfg = C.preset("SinCUT", ngf="4", batch_size=8)
    assert (cfg.ngf, cfg.batch_size, cfg.lambda_nce) == (4, 8, 4.0)
    assert C.PRESETS["sincut"] is C.SinCUT
    with pytest.raises(ValueError, match="crop_size"):
        C.SinCUT(crop_size=62)


def test_preset_builds_the_stylegan2_networks_and_heads():
    assert model_class("sincut") is SinCUTModel
    model = build_model(C.SinCUT(), "cpu")
    assert isinstance(model, SinCUTModel)
    assert isinstance(model.G, StyleGAN2Generator) and isinstance(model.D, StyleGAN2Discriminator)
    assert model.D.size == 64  # one logit per 64x64 crop
    assert model.H.channels == [3, 160, 160]  # rgb, down1, res2 at ngf 10
    assert set(model.networks) == {"G", "D", "H"} and set(model.optimizers) == {"G", "D", "H"}
    for opt in model.optimizers.values():
        assert opt.param_groups[0]["lr"] == 0.002 and opt.param_groups[0]["betas"] == (0.0, 0.99)


def test_unsupported_options_are_clear_errors():
    with pytest.raises(ValueError, match="flip_equivariance"):
        SinCUTModel(tiny(flip_equivariance=True))
    with pytest.raises(ValueError, match="negatives"):
        SinCUTModel(tiny(negatives="external"))


# --- the objective ----------------------------------------------------------------------------


def _nce_by_hand(H, feats_q, feats_k, generator, tau=0.07, lambda_nce=4.0):
    """One location per layer per crop; the other crops' patches at that location are the negatives:
    a (B, B) similarity matrix whose diagonal holds the positives. Average over layers, times lambda."""
    _, ids = sample_patches(feats_k, 1, generator=generator)  # the locations, drawn as the model draws them
    unit = lambda v: v / (v.norm(dim=1, keepdim=True) + 1e-7)  # noqa: E731  (book/reference.md section 1)
    per_layer = []
    for mlp, fq, fk, loc in zip(H.mlps, feats_q, feats_k, ids):
        q = unit(mlp(fq.flatten(2)[:, :, loc[0]]))  # (B, dim): one location per crop
        k = unit(mlp(fk.flatten(2)[:, :, loc[0]])).detach()
        per_layer.append(F.cross_entropy(q @ k.t() / tau, torch.arange(q.shape[0])))
    return lambda_nce * torch.stack(per_layer).mean()


def _assert_grads_close(got, expected, name, rel=1e-3):
    """Equal up to float32 round-off, measured against the gradient's own scale."""
    assert got is not None, f"{name} received no gradient"
    err, scale = float((got - expected).abs().max()), float(expected.abs().max())
    assert scale > 0 and err <= rel * scale, f"{name}: max difference {err:.3g} for gradients up to {scale:.3g}"


def test_one_step_equals_the_hand_computed_objective():
    """Every reported loss and every gradient (G, D, H) equals an independent computation of
    D: NS-GAN + 0.5 * R1(y);  G: NS-GAN(updated D) + 0.5 * (NCE_X + NCE_Y) + |G(y) - y|_1."""
    torch.manual_seed(0)
    model = SinCUTModel(tiny(lambda_r1=3.0))  # lambda_R1 != 1 so that the factor 0.5 * lambda shows
    for p in model.G.parameters():  # make the noise gains non-zero so that the noise draws matter
        if p.numel() == 1:
            torch.nn.init.constant_(p, 0.3)
    model.training_step(_crops(seed=1))  # one step first: Adam moments and weights away from init
    G0, H0, D0 = copy.deepcopy(model.G), copy.deepcopy(model.H), copy.deepcopy(model.D).requires_grad_(True)
    rng_state = model.rng.get_state()
    batch = _crops(seed=2)
    torch.manual_seed(5)
    losses = model.training_step(batch)

    x, y = batch["A"], batch["B"]
    torch.manual_seed(5)  # the same noise as the model's forward pass
    fake_all, taps = G0(torch.cat([x, y]), taps=StyleGAN2Generator.DEFAULT_TAPS)
    fake, idt = fake_all[:4], fake_all[4:]
    # D step, by hand
    y_r = y.clone().requires_grad_(True)
    real_logits = D0(y_r)
    gan_d = 0.5 * (F.softplus(-real_logits).mean() + F.softplus(D0(fake.detach())).mean())
    (grad_y,) = torch.autograd.grad(real_logits.sum(), y_r, create_graph=True)
    r1 = grad_y.pow(2).sum(dim=(1, 2, 3)).mean()
    D0.zero_grad()
    (gan_d + 0.5 * 3.0 * r1).backward()
    assert losses["D"] == pytest.approx(gan_d.item(), rel=1e-5)
    assert losses["D_R1"] == pytest.approx(r1.item(), rel=1e-4)
    for (name, p0), p in zip(D0.named_parameters(), model.D.parameters()):
        _assert_grads_close(p.grad, p0.grad, f"D.{name}")
    # G and H step, by hand, with the discriminator as updated by the model
    gen = torch.Generator().set_state(rng_state)
    gan_g = F.softplus(-model.D(fake)).mean()
    nce_x = _nce_by_hand(H0, G0.encode(fake, StyleGAN2Generator.DEFAULT_TAPS), [t[:4] for t in taps], gen)
    nce_y = _nce_by_hand(H0, G0.encode(idt, StyleGAN2Generator.DEFAULT_TAPS), [t[4:] for t in taps], gen)
    l1 = (idt - y).abs().mean()
    total = gan_g + 0.5 * (nce_x + nce_y) + l1
    G0.zero_grad()
    H0.zero_grad()
    total.backward()
    expected = {"G_GAN": gan_g, "NCE": nce_x, "NCE_Y": nce_y, "idt": l1, "G": total}
    assert set(losses) == set(expected) | {"D", "D_R1"}
    for k, v in expected.items():
        assert losses[k] == pytest.approx(v.item(), rel=1e-4), k
    for net0, net, label in ((G0, model.G, "G"), (H0, model.H, "H")):
        for (name, p0), p in zip(net0.named_parameters(), net.parameters()):
            _assert_grads_close(p.grad, p0.grad, f"{label}.{name}")


def test_switching_terms_off_removes_them():
    losses = SinCUTModel(tiny(lambda_r1=0.0, lambda_idt_l1=0.0)).training_step(_crops())
    assert set(losses) == {"D", "G_GAN", "NCE", "NCE_Y", "G"}
    losses = SinCUTModel(tiny(nce_idt=False)).training_step(_crops())
    assert set(losses) == {"D", "D_R1", "G_GAN", "NCE", "idt", "G"}
    assert losses["G"] == pytest.approx(losses["G_GAN"] + losses["NCE"] + losses["idt"], rel=1e-5)
    losses = SinCUTModel(tiny(nce_idt=False, lambda_idt_l1=0.0)).training_step(_crops())
    assert losses["G"] == pytest.approx(losses["G_GAN"] + losses["NCE"], rel=1e-5)


@pytest.mark.parametrize("overrides", [dict(share_encoder=False), dict(nce_decoder_grad=False), dict(nce_layers=("down1",))])
def test_cut_ablation_switches_carry_over(overrides):
    """The PatchNCE ablations of CUTModel.nce_loss work unchanged in SinCUT."""
    model = SinCUTModel(tiny(**overrides))
    losses = model.training_step(_crops())
    assert all(np.isfinite(v) for v in losses.values())
    assert ("G_q" in model.networks) == (not model.cfg.share_encoder)


def test_noise_draws_follow_torch_seed():
    """The generator's noise comes from torch's RNG (checkpointed by the trainer): same seed, same
    step; another seed, another step once the noise gains are non-zero."""
    torch.manual_seed(0)
    base = SinCUTModel(tiny())
    for p in base.G.parameters():
        if p.numel() == 1:  # the noise gain
            torch.nn.init.constant_(p, 0.5)
    runs = []
    for seed in (1, 1, 2):
        model = copy.deepcopy(base)
        torch.manual_seed(seed)
        runs.append(model.training_step(_crops()))
    assert runs[0] == runs[1]
    assert runs[0]["idt"] != runs[2]["idt"]


def test_translate_is_deterministic_and_leaves_the_training_rng_alone():
    """Sample grids use fresh noise seeded with cfg.seed: the same picture at every call, and the
    trainer's RNG (checkpointed for exact resume) is not advanced by writing them."""
    torch.manual_seed(0)
    model = SinCUTModel(tiny())
    for p in model.G.parameters():
        if p.numel() == 1:  # the noise gain
            torch.nn.init.constant_(p, 0.5)
    x = _crops()["A"]
    state = torch.get_rng_state()
    first, second = model.translate(x), model.translate(x)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        other = model.G(x, generator=torch.Generator().manual_seed(model.cfg.seed + 1))
    assert not torch.equal(first, other)  # the noise does reach the output


# --- the trainer --------------------------------------------------------------------------------


def test_trains_through_the_ordinary_trainer_and_resumes_exactly(pair, tmp_path):
    """4 steps straight vs 2 + 2 with a restart that crosses into the decay epoch: same weights,
    optimiser states, patch-sampling RNG and log."""
    cfg = tiny(dataset=str(pair), dataset_len=8, n_epochs=1, n_epochs_decay=1)  # 2 steps per epoch
    summary = train(cfg, tmp_path / "straight", progress=False)
    assert summary["step"] == 4 and set(summary["losses"]) == {"D", "D_R1", "G_GAN", "NCE", "NCE_Y", "idt", "G"}
    train(C.override(cfg, max_steps=2), tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"] == 4
    for net in ("G", "D", "H"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    assert torch.equal(a["rng"]["model"], b["rng"]["model"]) and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["optimizers"]["D"]["param_groups"][0]["lr"] == b["optimizers"]["D"]["param_groups"][0]["lr"] < cfg.lr
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("D_R1" in r and "idt" in r for r in rows)
    _, model = load_run(tmp_path / "split")
    assert isinstance(model, SinCUTModel)


def test_command_line_trains_the_sincut_preset(pair, tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "sincut", "--dataset", str(pair), "--out", str(out),
            "--ngf", "2", "--ndf", "2", "--batch-size", "4", "--crop-size", "32", "--netF-nc", "32",
            "--dataset-len", "8", "--max-steps", "2", "--device", "cpu", "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2
    assert C.from_dict(torch.load(out / CHECKPOINT, weights_only=False)["config"]).model == "sincut"


# --- the real pair and full-resolution translation -----------------------------------------------


def test_a_few_steps_on_monet_etretat_then_translate_the_whole_painting(monet_etretat, tmp_path):
    """The paper's pair at small scale on CPU: finite losses, then the 1200x966 painting translated
    at full resolution by `python -m cutlib translate` keeps its size (966 is padded to 968 and cropped back)."""
    cfg = tiny(dataset=str(monet_etretat), crop_size=64, dataset_len=12, n_epochs=1, n_epochs_decay=0)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 3
    assert all(np.isfinite(v) for v in summary["losses"].values())
    painting = next((monet_etretat / "trainA").iterdir())
    assert Image.open(painting).size == (1200, 966)
    done = subprocess.run([sys.executable, "-m", "cutlib", "translate", "--checkpoint", str(tmp_path / "run"),
                           "--input", str(painting), "--output", str(tmp_path / "out"), "--device", "cpu", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = Image.open(tmp_path / "out" / (painting.stem + ".png"))
    assert result.size == (1200, 966) and result.mode == "RGB"
    # the run's crops are real 64x64 tiles of the two images
    crops = SingleImagePair(monet_etretat, crop_size=64, length=2)[0]
    assert crops["A"].shape == crops["B"].shape == (3, 64, 64) and crops["A"].std() > 0.05


def test_a_1200x966_image_keeps_its_size_whole_and_tiled(tmp_path):
    """Fully convolutional: any size in, the same size out (no crop to a multiple of 4), whole or in tiles."""
    torch.manual_seed(0)
    model = SinCUTModel(tiny(ngf=2))
    G = model.G.eval()
    image = torch.rand(3, 966, 1200) * 2 - 1  # (C, H, W): 966 is not a multiple of 4
    whole = translate_image(G, image)
    tiled = translate_image(G, image, tile=256, overlap=32)
    assert whole.shape == tiled.shape == (3, 966, 1200)
    assert torch.isfinite(whole).all() and torch.isfinite(tiled).all()
    assert not torch.equal(whole, torch.zeros_like(whole))
    # a saved SinCUT run loads back as the same generator for translation
    torch.save({"G": G.state_dict(), "config": model.cfg.to_dict()}, tmp_path / "G.pt")
    loaded = load_generator(tmp_path / "G.pt")
    assert isinstance(loaded, StyleGAN2Generator)
    for (name, p), q in zip(G.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
