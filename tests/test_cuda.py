"""The GPU path: a training step, resume, translate and evaluate on ``cuda``, in fp32, bf16 and fp16.
Marked ``cuda``; skipped (with the reason) on machines without an NVIDIA GPU. tools/gpu_check.sh runs them."""

from __future__ import annotations

import json

import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.models import build_model
from cutlib.runs import load_checkpoint, load_run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh runs these on one)")]
TINY = {k: v for k, v in C.TINY_SCALE.items() if k not in ("dataset", "device")}


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=40, n_train=8, n_test=4)


@pytest.mark.parametrize("preset", ["cut", "fastcut", "cyclegan", "sincut"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_training_step_on_cuda_is_finite(stripes, preset, precision):
    extra = {"crop_size": 32, "batch_size": 2} if preset == "sincut" else {}
    if preset == "sincut" and precision == "fp16":
        extra["lambda_r1"] = 0.0  # SinCUT's R1 has no fp16 path (cutlib.models.sincut)
    model = build_model(C.preset(preset, dataset=str(stripes), device="cuda", precision=precision, **{**TINY, **extra}), "cuda")
    b = extra.get("batch_size", 1)
    batch = {k: torch.rand(b, 3, 32, 32) * 2 - 1 for k in "AB"}
    losses = model.training_step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert next(model.G.parameters()).is_cuda
    assert model.scaler.is_enabled() == (precision == "fp16")


def test_train_resume_translate_and_evaluate_on_cuda(stripes, tmp_path):
    from cutlib.evaluate import evaluate_run
    from cutlib.train import train
    from cutlib.translate import load_generator, translate_folder

    cfg = C.preset("cut", dataset=str(stripes), device="cuda", precision="bf16", save_epoch_freq=1, **TINY)
    out = tmp_path / "run"
    train(C.override(cfg, max_steps=3), out, progress=False)
    summary = train(C.override(cfg, max_steps=6), out, resume=True, progress=False)
    assert summary["step"] == 6 and load_checkpoint(out / "checkpoint.pt")["step"] == 6
    run_cfg, model = load_run(out, device="cuda")
    assert run_cfg.precision == "bf16"
    G = load_generator(out, device="cuda")
    written = translate_folder(G, stripes / "testA", tmp_path / "translated", progress=False)
    assert len(written) == 4 and all(p.is_file() for p in written)
    report = evaluate_run(out, device="cuda", evaluator_steps=20)
    assert json.loads((out / "eval.json").read_text())["final"]["step"] == 6
    assert report["final"]["metrics"]["fid"] >= 0
