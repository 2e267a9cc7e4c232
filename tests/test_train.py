"""The CUT objective and the training loop: key reuse, exact resume, NaN handling, checkpoints, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.models import CUTModel
from cutlib.runs import CHECKPOINT, load_checkpoint, load_run
from cutlib.train import Trainer, TrainingDiverged, epoch_batches, train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}  # the datasets come from fixtures


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=40, n_train=4, n_test=2)


def tiny(stripes, preset="cut", **kw):
    return C.preset(preset, dataset=str(stripes), **{**TINY, **kw})


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "B": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1}


class SecondEncoderPass(CUTModel):
    """The reference's order: the keys always come from a second encoder pass over the real images."""

    def nce_keys(self, taps_real, x, y, flipped):
        return self.G.encode(torch.cat([x, y]) if self.identity_pass else x, self.taps)


@pytest.mark.parametrize("preset", ["cut", "fastcut"])
def test_reusing_forward_taps_as_keys_equals_recomputing_them(stripes, preset):
    """Losses and every parameter's gradient match the reference's second encoder pass; FastCUT's
    flipped iterations recompute the keys on the unflipped input, so they match too."""
    cfg = tiny(stripes, preset, batch_size=2)
    torch.manual_seed(0)
    fast = CUTModel(cfg)
    torch.manual_seed(0)
    slow = SecondEncoderPass(cfg)
    flips = []
    for step in range(4):  # several steps: FastCUT flips on some of them
        state = fast.rng.get_state()
        flips.append(bool(torch.rand((), generator=torch.Generator().set_state(state)) < 0.5))
        lf, ls = fast.training_step(_batch(step)), slow.training_step(_batch(step))
        assert lf.keys() == ls.keys()
        for k in lf:
            assert lf[k] == pytest.approx(ls[k], rel=1e-5, abs=1e-6), k
        for (name, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters()):
            assert (pf.grad is None) == (ps.grad is None), name
            if pf.grad is not None:
                torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-4, atol=1e-7, msg=name)
    if preset == "fastcut":
        assert any(flips) and not all(flips), "the test should see flipped and unflipped iterations"


def test_identity_branch_and_loss_names(stripes):
    losses = CUTModel(tiny(stripes)).training_step(_batch())
    assert set(losses) == {"D", "G_GAN", "NCE", "NCE_Y", "G"}
    assert losses["G"] == pytest.approx(losses["G_GAN"] + 0.5 * (losses["NCE"] + losses["NCE_Y"]), rel=1e-5)
    fast = CUTModel(tiny(stripes, "fastcut")).training_step(_batch())
    assert set(fast) == {"D", "G_GAN", "NCE", "G"}


@pytest.mark.parametrize("overrides", [
    dict(negatives="external", queue_size=64), dict(negatives="both", queue_size=64),
    dict(nce_decoder_grad=False), dict(share_encoder=False), dict(nce_layers=("res5",)), dict(num_patches=4),
])
def test_ablation_switches_train(stripes, overrides):
    model = CUTModel(tiny(stripes, **overrides))
    for step in range(2):
        losses = model.training_step(_batch(step))
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    if "negatives" in overrides:
        assert int(model.queue.count) == min(64, 2 * 2 * 16)  # 2 steps x 2 images x 16 patches, capped


def test_no_decoder_gradient_from_nce(stripes):
    """With nce_decoder_grad=False and no GAN term, the decoder receives no gradient at all."""
    model = CUTModel(tiny(stripes, nce_decoder_grad=False, lambda_gan=0.0))
    model.training_step(_batch())
    decoder = [p for n, p in model.G.named_parameters() if n.startswith(("decoder", "up"))] or \
              [p for n, p in model.G.named_parameters()][-2:]  # the last conv is decoder either way
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in decoder)


def test_epoch_batches_are_fixed_by_seed_and_epoch():
    assert epoch_batches(10, 3, 0, 1) == epoch_batches(10, 3, 0, 1)
    assert epoch_batches(10, 3, 0, 1) != epoch_batches(10, 3, 0, 2)
    assert len(epoch_batches(10, 3, 0, 1)) == 3  # the last partial batch is dropped
    assert epoch_batches(10, 3, 0, 1, size=10) == epoch_batches(10, 3, 0, 1)  # a full epoch: unchanged
    # short epochs (dataset_len 4 of 10 items) walk through the dataset: epochs 1, 2, 3 take 0-3, 4-7, 8-9+0-1
    seen = [sorted(i for b in epoch_batches(4, 1, 0, e, size=10) for i in b) for e in (1, 2, 3)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 8, 9]]


def test_run_folder_and_checkpoint_contents(stripes, tmp_path):
    summary = train(tiny(stripes, max_steps=3), tmp_path / "run", progress=False)
    assert summary["step"] == 3
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert {"G", "D", "H", "optimizers", "schedulers", "rng", "step", "epoch", "config"} <= set(ckpt)
    assert ckpt["step"] == 3 and C.from_dict(ckpt["config"]).max_steps == 3
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "run" / "samples" / "step000000.png").exists()
    assert (tmp_path / "run" / "samples" / "latest.png").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["crop_size"] == 32
    cfg, model = load_run(tmp_path / "run")
    assert torch.equal(model.G.state_dict()["model.1.weight"] if "model.1.weight" in model.G.state_dict() else
                       next(iter(model.G.state_dict().values())), next(iter(ckpt["G"].values())))


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(stripes, tmp_path):
    """6 steps straight vs 3 + 3 with a restart in the middle of epoch 1 (and a crossing into the
    decay epoch): identical weights, optimiser states and lr."""
    cfg = tiny(stripes, max_steps=6)
    train(cfg, tmp_path / "straight", progress=False)
    train(C.override(cfg, max_steps=3), tmp_path / "split", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg, tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"]
    for net in ("G", "D", "H"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    assert a["optimizers"]["G"]["param_groups"][0]["lr"] == b["optimizers"]["G"]["param_groups"][0]["lr"]
    assert a["optimizers"]["G"]["param_groups"][0]["lr"] < cfg.lr  # the decay epoch was reached
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_resume_refuses_a_different_config(stripes, tmp_path):
    train(tiny(stripes, max_steps=1), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="lambda_nce"):
        train(tiny(stripes, max_steps=2, lambda_nce=3.0), tmp_path / "run", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(stripes, tmp_path):
    out = tmp_path / "run"
    train(tiny(stripes, max_steps=2, save_every=1), out, progress=False)
    good = load_checkpoint(out / CHECKPOINT)
    trainer = Trainer(tiny(stripes, max_steps=4, save_every=1), out, resume=True, progress=False)
    with torch.no_grad():
        next(trainer.model.G.parameters()).fill_(float("nan"))  # poison the network
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.run()
    kept = load_checkpoint(out / CHECKPOINT)
    assert kept["step"] == good["step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["G"].values() if v.is_floating_point())


def test_batch_larger_than_dataset_is_a_clear_error(stripes, tmp_path):
    with pytest.raises(ValueError, match="batch"):
        train(tiny(stripes, batch_size=64), tmp_path / "run", progress=False)


def test_command_line_train_and_resume(stripes, tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "cutlib", "train", "--preset", "fastcut", "--dataset", str(stripes), "--out", str(out),
            "--load-size", "40", "--crop-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "5", "--num-patches", "16",
            "--netF_nc", "32", "--n-epochs", "1", "--n-epochs-decay", "0", "--device", "cpu", "--no-progress"]
    done = subprocess.run(args + ["--max-steps", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2
    more = subprocess.run(args[:10] + ["--resume", "--max-steps", "3", "--no-progress"], capture_output=True, text=True)
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["step"] == 3
    assert C.from_dict(load_checkpoint(out / CHECKPOINT)["config"]).lambda_nce == 10.0
    bad = subprocess.run(args + ["--lamda-nce", "2"], capture_output=True, text=True)
    assert bad.returncode != 0
    bad = subprocess.run(args[:8] + ["--batch-size", "two", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 1 and "batch_size" in bad.stderr


def test_without_weight_sharing_both_head_sets_learn_and_keys_stay_detached(stripes):
    model = CUTModel(tiny(stripes, share_encoder=False, lambda_gan=0.0))
    model.training_step(_batch())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.H.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.H_q.parameters())


def test_dataset_len_sets_the_epoch_length_and_snapshots_follow(stripes, tmp_path):
    summary = train(tiny(stripes, dataset_len=2, save_epoch_freq=1), tmp_path / "run", progress=False)
    assert summary["step"] == 4  # 2 epochs (1 + 1 decay) of 2 steps, although the data has 4 images
    assert sorted(p.name for p in (tmp_path / "run" / "epochs").glob("*.pt")) == ["G_epoch001.pt", "G_epoch002.pt"]
    lrs = [json.loads(l)["lr"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[:2] == [2e-4, 2e-4] and lrs[2] < 2e-4  # the decay epoch starts at step 3


def test_run_progress(stripes, tmp_path):
    from cutlib.runs import run_progress

    assert run_progress(tmp_path / "none") == (0, 0)
    train(tiny(stripes, max_steps=2), tmp_path / "run", progress=False)
    assert run_progress(tmp_path / "run") == (2, 2)
    Trainer(tiny(stripes, dataset_len=2), tmp_path / "part", progress=False).save()  # saved, never trained
    assert run_progress(tmp_path / "part") == (0, 4)  # 2 epochs of 2 steps planned
