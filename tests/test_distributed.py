"""Training on several processes: torchrun + DistributedDataParallel, here on CPU
with the gloo backend. Each process takes its share of every global batch and DDP averages the
gradients, so N processes must end with the weights of one process on the same global batch
(LSGAN and PatchNCE losses are means, instance norm is per image, patch locations are shared)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.models import CUTModel
from cutlib.runs import CHECKPOINT, load_run
from cutlib.distributed import distribute, no_buffer_sync, setup_distributed, unwrap
from cutlib.train import train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}  # the datasets come from fixtures


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=40, n_train=8, n_test=2)


def torchrun(cfg: C.TrainConfig, out, *extra: str, nproc: int = 2) -> dict:
    """``torchrun --nproc_per_node N -m cutlib train`` with the settings of ``cfg``; the summary it prints."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "cutlib", "train", "--preset", "cut", "--dataset", cfg.dataset, "--out", str(out),
            "--batch-size", str(cfg.batch_size), "--no-progress", *flags, *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def assert_same_run(a_dir, b_dir, steps: int, lr: float) -> None:
    """Every parameter and every logged loss of two runs agree. Parameters whose gradient is only
    rounding noise (conv biases cancelled by the instance norm after them: Adam still moves them by up
    to lr per step, in the noise's direction) may differ by that much; the images do not."""
    a = torch.load(a_dir / CHECKPOINT, weights_only=False)
    b = torch.load(b_dir / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"] == steps and a["epoch"] == b["epoch"]
    (_, ma), (_, mb) = load_run(a_dir), load_run(b_dir)
    for net in ("G", "D", "H"):
        params = [n for n, _ in mb.networks[net].named_parameters()]
        state = b["optimizers"][net]["state"]
        largest = max(float(s["exp_avg_sq"].max().sqrt()) for s in state.values())
        for i, name in enumerate(params):
            noise_only = float(state[i]["exp_avg_sq"].max().sqrt()) < 1e-4 * largest
            tol = 2 * lr * steps if noise_only else 1e-6
            diff = float((a[net][name] - b[net][name]).abs().max())
            assert diff <= tol, f"{net}.{name} differs by {diff:.3g} (tolerance {tol:.3g})"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(ma.G(x), mb.G(x), rtol=0, atol=1e-5)
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a_dir, b_dir)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == list(range(1, steps + 1))
    for ra, rb in zip(*rows):
        for key in ("D", "G_GAN", "NCE", "NCE_Y", "G", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-7), (ra["step"], key)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_exactly(stripes, tmp_path):
    """Global batch 4: 2 images per process vs 4 in one process, after 1 step and after a resume
    under torchrun to step 3 (into the decay epoch: 8 images = 2 steps per epoch)."""
    cfg = C.preset("cut", dataset=str(stripes), batch_size=4, save_epoch_freq=1, **TINY)
    summary = torchrun(cfg, tmp_path / "ddp", "--max-steps", "1", "--save-epoch-freq", "1")
    assert summary["processes"] == 2 and summary["step"] == 1
    train(C.override(cfg, max_steps=1), tmp_path / "one", progress=False)
    assert_same_run(tmp_path / "ddp", tmp_path / "one", steps=1, lr=cfg.lr)

    summary = torchrun(cfg, tmp_path / "ddp", "--resume", "--max-steps", "3", "--save-epoch-freq", "1")
    assert summary["processes"] == 2 and summary["step"] == 3
    shutil.rmtree(tmp_path / "one")
    train(C.override(cfg, max_steps=3), tmp_path / "one", progress=False)
    assert_same_run(tmp_path / "ddp", tmp_path / "one", steps=3, lr=cfg.lr)
    assert (tmp_path / "ddp" / "epochs" / "G_epoch001.pt").is_file()  # rank 0 wrote the epoch snapshot


@pytest.mark.slow
def test_one_image_per_process_matches_batch_two(stripes, tmp_path):
    """The decisive check: two processes with one image each vs one process with both."""
    cfg = C.preset("cut", dataset=str(stripes), batch_size=2, **TINY)
    torchrun(cfg, tmp_path / "ddp", "--max-steps", "1")
    train(C.override(cfg, max_steps=1), tmp_path / "one", progress=False)
    assert_same_run(tmp_path / "ddp", tmp_path / "one", steps=1, lr=cfg.lr)


def test_single_process_needs_no_process_group():
    assert setup_distributed("cpu") == (0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    net = torch.nn.Linear(2, 2)
    assert unwrap(net) is net


def test_the_buffer_sync_keyword_follows_the_torch_version():
    # torch >= 2.13 names it forward_sync_buffers (broadcast_buffers deprecated); torch 2.11, as on some GPU images, only
    # broadcast_buffers; this torch's own DDP accepts what it is given (the two-process tests above run it)
    assert no_buffer_sync({"self", "module", "broadcast_buffers", "forward_sync_buffers"}) == {"forward_sync_buffers": False}
    assert no_buffer_sync({"self", "module", "broadcast_buffers"}) == {"broadcast_buffers": False}
    import inspect
    assert set(no_buffer_sync()) <= set(inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters)


@pytest.mark.parametrize("overrides, word", [(dict(negatives="external", queue_size=64), "momentum queue"),
                                             (dict(share_encoder=False), "separate query encoder")])
def test_states_that_would_drift_apart_are_refused(stripes, overrides, word):
    model = CUTModel(C.preset("cut", dataset=str(stripes), **{**TINY, **overrides}))
    with pytest.raises(ValueError, match=word):
        distribute(model, torch.device("cpu"))
