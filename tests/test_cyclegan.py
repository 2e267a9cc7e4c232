"""The CycleGAN baseline: losses against the formulas, update order, the image pool, exact resume, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from cutlib import config as C
from cutlib.models.cyclegan import CycleGANModel, ImagePool, normal_init
from cutlib.data import make_dataset
from cutlib.runs import CHECKPOINT, load_run
from cutlib.train import train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}  # the datasets come from fixtures


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=40, n_train=4, n_test=2)


def tiny(stripes, **kw):
    return C.preset("cyclegan", dataset=str(stripes), **{**TINY, **kw})


def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "B": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1}


def test_preset_is_the_original_cyclegan():
    cfg = C.preset("cyclegan")
    assert (cfg.model, cfg.antialias, cfg.lambda_cycle, cfg.lambda_identity, cfg.pool_size) == ("cyclegan", False, 10.0, 0.5, 50)
    model = CycleGANModel(C.preset("cyclegan", ngf=8, ndf=8, n_blocks=2, crop_size=32, load_size=32))
    assert set(model.networks) == {"G", "F", "D_X", "D_Y", "pool_X", "pool_Y"}
    assert set(model.optimizers) == {"G", "D"}
    assert model.pool_X.images.shape == (50, 3, 32, 32)


def test_losses_and_gradients_equal_the_formulas(stripes):
    """One step's losses are CycleGAN's formulas on the networks as they were before the step, and
    the gradients show the order: G and F against the not-yet-updated D, D on the pre-update fakes."""
    torch.manual_seed(0)
    model = CycleGANModel(tiny(stripes))
    before = copy.deepcopy(model)
    batch = _batch()
    losses = model.training_step(batch)

    x, y = batch["A"], batch["B"]
    G, F, D_X, D_Y = before.G, before.F, before.D_X, before.D_Y
    fake_y, fake_x = G(x), F(y)
    mse1 = lambda t: ((t - 1) ** 2).mean()  # noqa: E731  LSGAN, target "real"
    expect = {
        "G_GAN": mse1(D_Y(fake_y)),
        "F_GAN": mse1(D_X(fake_x)),
        "cycle_X": 10 * (F(fake_y) - x).abs().mean(),
        "cycle_Y": 10 * (G(fake_x) - y).abs().mean(),
        "idt_G": 10 * 0.5 * (G(y) - y).abs().mean(),  # lambda_identity multiplies lambda_cycle
        "idt_F": 10 * 0.5 * (F(x) - x).abs().mean(),
    }
    total_g = sum(expect.values())
    # the pool is empty at the first step, so D sees this step's fakes
    expect["D_Y"] = 0.5 * (mse1(D_Y(y)) + (D_Y(fake_y.detach()) ** 2).mean())
    expect["D_X"] = 0.5 * (mse1(D_X(x)) + (D_X(fake_x.detach()) ** 2).mean())
    expect["G"] = total_g
    assert set(losses) == set(expect)
    for name, value in expect.items():
        assert losses[name] == pytest.approx(value.item(), rel=1e-5), name

    before.zero_grad()
    total_g.backward(inputs=[*G.parameters(), *F.parameters()])
    (expect["D_Y"] + expect["D_X"]).backward(inputs=[*D_X.parameters(), *D_Y.parameters()])
    for name in ("G", "F", "D_X", "D_Y"):
        for (pname, p_model), (_, p_ref) in zip(getattr(model, name).named_parameters(), getattr(before, name).named_parameters()):
            torch.testing.assert_close(p_model.grad, p_ref.grad, rtol=1e-4, atol=1e-8, msg=f"{name}.{pname}")
            if p_ref.grad.abs().max() > 1e-6:  # (biases before an instance norm get no gradient)
                assert not torch.equal(p_model.detach(), p_ref.detach()), f"{name}.{pname} was not updated"


def test_identity_loss_can_be_switched_off(stripes):
    losses = CycleGANModel(tiny(stripes, lambda_identity=0.0)).training_step(_batch())
    assert "idt_G" not in losses and "idt_F" not in losses
    assert losses["G"] == pytest.approx(losses["G_GAN"] + losses["F_GAN"] + losses["cycle_X"] + losses["cycle_Y"], rel=1e-5)


def test_translate_is_G(stripes):
    model = CycleGANModel(tiny(stripes))
    x = _batch()["A"]
    out = model.translate(x)
    assert out.shape == x.shape and not out.requires_grad
    assert torch.equal(out, model.G(x).detach()) and not torch.equal(out, model.F(x).detach())


def test_normal_init_is_the_original_cyclegan_init():
    conv = normal_init(torch.nn.Conv2d(64, 64, 3), gain=0.02)
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(conv.weight.mean().item()) < 0.002 and torch.count_nonzero(conv.bias) == 0


def test_other_networks_are_a_clear_error(stripes):
    with pytest.raises(ValueError, match="netG"):
        CycleGANModel(tiny(stripes, netG="stylegan2"))


# ------------------------------------------------------------------ the image pool
def _images(start, n):
    """n distinct (1, 2, 2) images: image i is filled with the value i."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).clone()


def test_pool_fills_then_mixes_history_and_new_images():
    pool, g = ImagePool(3, 1, 2, 2), torch.Generator().manual_seed(0)
    first = pool.query(_images(0, 3), g)  # filling: every image comes back and is kept
    assert torch.equal(first, _images(0, 3)) and int(pool.count) == 3
    assert sorted(pool.images[:, 0, 0, 0].tolist()) == [0, 1, 2]
    returned = [pool.query(_images(i, 1), g)[0, 0, 0, 0].item() for i in range(3, 203)]
    old = sum(r != i for r, i in zip(returned, range(3, 203)))
    assert 0.35 < old / 200 < 0.65, f"a stored image should come back about half the time, got {old}/200"
    # nothing lost or duplicated: once full, every image went out exactly once or is still in the pool
    seen = sorted(returned + pool.images[:, 0, 0, 0].tolist())
    assert seen == list(range(203))
    assert int(pool.count) == 3


def test_pool_is_deterministic_with_the_seed_and_restores_from_its_state_dict():
    def run(pool, g, start, n):
        return torch.cat([pool.query(_images(i, 2), g) for i in range(start, start + 2 * n, 2)])

    a, b, c = ImagePool(4, 1, 2, 2), ImagePool(4, 1, 2, 2), ImagePool(4, 1, 2, 2)
    ga, gb, gc = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    out_a, out_b, out_c = run(a, ga, 0, 20), run(b, gb, 0, 20), run(c, gc, 0, 20)
    assert torch.equal(out_a, out_b) and not torch.equal(out_a, out_c)

    restored, g_restored = ImagePool(4, 1, 2, 2), torch.Generator().set_state(ga.get_state())
    restored.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(run(restored, g_restored, 100, 10), run(a, ga, 100, 10))


def test_pool_of_size_zero_passes_through_and_wrong_shapes_are_an_error():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = ImagePool(0, 3, 4, 4).query(images, g)
    assert torch.equal(out, images) and not out.requires_grad
    with pytest.raises(ValueError, match="crop_size"):
        ImagePool(2, 3, 4, 4).query(torch.randn(1, 3, 8, 8), g)
    with pytest.raises(ValueError, match="pool size"):
        ImagePool(-1, 3, 4, 4)


# ------------------------------------------------------------------ with the trainer
def test_resume_reaches_the_same_weights_and_pools_as_an_uninterrupted_run(stripes, tmp_path):
    """4 steps straight vs 2 + 2: identical networks, pools, optimiser states. A pool of 2 is full after
    2 steps, so the resumed half draws from the restored history with the restored random state."""
    cfg = tiny(stripes, max_steps=4, pool_size=2)
    train(cfg, tmp_path / "straight", progress=False)
    train(C.override(cfg, max_steps=2), tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"] == 4
    for net in ("G", "F", "D_X", "D_Y", "pool_X", "pool_Y"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    assert int(a["pool_Y"]["count"]) == 2 and a["pool_Y"]["images"].abs().sum() > 0
    for name in ("G", "D"):
        for k, state in a["optimizers"][name]["state"].items():
            assert torch.equal(state["exp_avg_sq"], b["optimizers"][name]["state"][k]["exp_avg_sq"])


def test_command_line_trains_cyclegan(stripes, tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "cyclegan", "--dataset", str(stripes), "--out", str(out),
            "--load-size", "40", "--crop-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "5",
            "--n-epochs", "1", "--n-epochs-decay", "0", "--device", "cpu", "--no-progress", "--max-steps", "2"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"G_GAN", "F_GAN", "cycle_X", "cycle_Y", "idt_G", "idt_F", "D_X", "D_Y"} <= set(rows[-1])
    cfg, model = load_run(out)
    assert cfg.model == "cyclegan" and isinstance(model, CycleGANModel)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert model.translate(x).shape == x.shape
