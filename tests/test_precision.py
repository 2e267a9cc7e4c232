"""Mixed precision: which precision "auto" picks, bf16 and fp16 steps against an fp32 step on the same
batch, fp16's loss scaler (skipped steps, checkpointed scale), fp32 checkpoints that resume across
precisions, and bench's rows per precision."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.device import autocast, grad_scaler, resolve_precision
from cutlib.losses import full_precision
from cutlib.models import build_model
from cutlib.runs import load_checkpoint
from cutlib.train import Trainer, train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}
pytestmark = pytest.mark.filterwarnings("ignore:fp16 on a CPU:UserWarning")  # the tests' fp16 runs are tiny


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=40, n_train=8, n_test=4)


def test_auto_precision_follows_the_cpu_flags_and_the_cuda_capability():
    assert resolve_precision("auto", "cpu", flags={"avx2", "avx512f"}) == "fp32"
    assert resolve_precision("auto", "cpu", flags={"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", flags={"amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_precision("auto", "cuda", capability=(7, 5)) == "fp32"  # Turing: no fast bf16
    assert resolve_precision("auto", "cuda", capability=(8, 0)) == "bf16"  # A100
    assert resolve_precision("auto", "cuda", capability=(9, 0)) == "bf16"  # H100 / H200
    assert resolve_precision("fp32", "cpu", flags={"amx_bf16"}) == "fp32"  # explicit choices are kept
    assert resolve_precision("bf16", "cpu", flags=set()) == "bf16"
    assert resolve_precision("fp16", "cuda", capability=(7, 0)) == "fp16"  # V100: fp16 is asked for, never auto
    assert {resolve_precision("auto", "cuda", capability=c) for c in ((6, 1), (7, 0), (7, 5), (8, 6))} == {"fp32", "bf16"}
    with pytest.warns(UserWarning, match="fp16 on a CPU runs on slow reference kernels.*use --precision bf16 or fp32"):
        assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        C.preset("cut", precision="half")


def test_autocast_runs_convolutions_in_bf16_and_full_precision_upcasts():
    conv = torch.nn.Conv2d(3, 4, 3)
    with autocast("bf16", "cpu"):
        out = conv(torch.randn(1, 3, 8, 8))
    assert out.dtype == torch.bfloat16 and full_precision(out).dtype == torch.float32
    with autocast("fp16", "cpu"):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float16
    with autocast("fp32", "cpu"):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float32
    assert grad_scaler("fp16", "cpu").is_enabled()
    assert not grad_scaler("bf16", "cpu").is_enabled() and not grad_scaler("fp32", "cpu").is_enabled()
    double = torch.zeros(2, dtype=torch.float64)
    assert full_precision(double) is double  # only half types are upcast


def _random_batch(size: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"A": torch.rand(1, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(1, 3, size, size, generator=g) * 2 - 1}


@pytest.mark.parametrize("preset", ["cut", "fastcut", "cyclegan", "dclgan"])
def test_bf16_and_fp16_steps_are_finite_and_close_to_fp32_on_the_same_batch(stripes, preset):
    batch = _random_batch()
    losses = {}
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        extra = {} if preset == "dclgan" else {"flip_equivariance": False}
        model = build_model(C.preset(preset, dataset=str(stripes), precision=precision, **extra, **TINY))
        losses[precision] = model.training_step(batch)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
        assert model.scaler.is_enabled() == (precision == "fp16")
    for precision in ("bf16", "fp16"):
        assert losses["fp32"].keys() == losses[precision].keys()
        for k, v in losses[precision].items():
            assert torch.isfinite(torch.tensor(v)), (precision, k)
            assert v == pytest.approx(losses["fp32"][k], rel=0.05, abs=0.02), (precision, k)  # bf16 keeps ~3 digits, fp16 ~4


@pytest.mark.parametrize("preset", ["cut", "cyclegan"])
def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_lowers_the_scale(stripes, preset):
    torch.manual_seed(0)
    model = build_model(C.preset(preset, dataset=str(stripes), precision="fp16", flip_equivariance=False, **TINY))
    model.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # scaled gradients beyond fp16's 65504
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.training_step(_random_batch())
    assert model.scaler.get_scale() == 2.0**99  # one update per iteration, halved once
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters()), "a step was not skipped"
    assert all(not opt.state for opt in model.optimizers.values())  # no optimiser stepped: no Adam moments yet
    model.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # nothing overflows: every optimiser steps
    model.training_step(_random_batch())
    assert all(opt.state for opt in model.optimizers.values()) and model.scaler.get_scale() == 1.0
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())


def test_the_fp16_loss_scale_is_checkpointed_and_restored(stripes, tmp_path):
    cfg = C.preset("cut", dataset=str(stripes), save_epoch_freq=0, precision="fp16", max_steps=2, **TINY)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.run()
    path = tmp_path / "run" / "checkpoint.pt"
    saved = load_checkpoint(path)
    assert saved["scaler"]["scale"] == trainer.model.scaler.get_scale() <= 65536.0  # 2**16, halved at each overflow
    saved["scaler"]["scale"] = 1024.0
    torch.save(saved, path)
    resumed = Trainer(C.override(cfg, max_steps=4), tmp_path / "run", resume=True, progress=False)
    assert resumed.model.scaler.get_scale() == 1024.0 and resumed.step == 2
    train(C.override(cfg, precision="bf16"), tmp_path / "bf16", progress=False)
    assert "scaler" not in load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")  # bf16 and fp32 have no loss scale


def test_the_methods_without_an_fp16_path_refuse_it_and_say_what_to_use(stripes):
    with pytest.raises(ValueError, match="fp16.*lambda_r1.*use --precision bf16 or fp32"):
        build_model(C.preset("sincut", dataset=str(stripes), precision="fp16", **TINY))
    build_model(C.preset("sincut", dataset=str(stripes), precision="fp16", lambda_r1=0.0, **TINY))  # no R1: loss-scaled
    for preset, extra in (("spade", {"num_upsampling": 3}), ("swapping_autoencoder", {})):
        with pytest.raises(ValueError, match="fp32 only.*'fp16'"):
            build_model(C.preset(preset, precision="fp16", **{**TINY, **extra}))


def test_checkpoints_resume_across_precisions(stripes, tmp_path):
    cfg = C.preset("cut", dataset=str(stripes), save_epoch_freq=0, **TINY)
    for first, second in (("bf16", "fp32"), ("fp32", "bf16"), ("fp16", "fp32"), ("fp32", "fp16")):
        out = tmp_path / f"{first}_then_{second}"
        train(C.override(cfg, precision=first, max_steps=2), out, progress=False)
        saved = load_checkpoint(out / "checkpoint.pt")
        assert all(t.dtype == torch.float32 for t in saved["G"].values() if t.is_floating_point())
        summary = train(C.override(cfg, precision=second, max_steps=4), out, resume=True, progress=False)
        assert summary["step"] == 4
        assert json.loads((out / "config.json").read_text())["precision"] == second
        assert all(torch.isfinite(torch.tensor(v)) for v in summary["losses"].values())


def test_bench_prints_one_row_per_precision():
    done = subprocess.run([sys.executable, "-m", "cutlib", "bench", "--presets", "fastcut", "--size", "32", "--steps", "1",
                           "--warmup", "0", "--device", "cpu", "--precision", "fp32,bf16,fp16", "--in-process",
                           "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--num-patches", "8", "--netF-nc", "16",
                           "--nce-layers", "rgb,down1,down2,res1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("fastcut ")]
    assert [r[1] for r in rows] == ["fp32", "bf16", "fp16"]
    assert rows[0][7] == "1.00"  # the fp32 row is its own reference (x fp32 column)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_pads_stay_in_the_input_dtype_under_autocast_with_the_same_values_and_gradients(mode):
    from cutlib.networks import ReflectionPad2d, pad_same_dtype

    x = torch.randn(1, 4, 6, 7, dtype=torch.bfloat16, requires_grad=True)
    with autocast("bf16", "cpu"):
        assert torch.nn.functional.pad(x, (1, 1, 1, 1), mode=mode).dtype == torch.float32  # autocast's own rule
        y = pad_same_dtype(x, (1, 2, 1, 2), mode)  # (1, 4, 9, 10)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 4, 9, 10)
    ref = x.detach().float().requires_grad_()
    expected = torch.nn.functional.pad(ref, (1, 2, 1, 2), mode=mode)
    assert torch.equal(y.float(), expected)  # a pad copies values: nothing to round
    w = torch.randn(y.shape)
    (y.float() * w).sum().backward()
    (expected * w).sum().backward()
    torch.testing.assert_close(x.grad.float(), ref.grad, atol=0.05, rtol=0.02)  # the borders' summed grads, in bf16
    with autocast("bf16", "cpu"):
        assert ReflectionPad2d(2)(x).dtype == torch.bfloat16
    assert ReflectionPad2d(2)(ref).dtype == torch.float32 and torch.equal(ReflectionPad2d(2)(ref), torch.nn.ReflectionPad2d(2)(ref))


def test_the_generators_pads_run_in_bf16_under_autocast():
    from torch.utils._python_dispatch import TorchDispatchMode

    from cutlib.networks import ResnetGenerator

    pads = (torch.ops.aten.reflection_pad2d.default, torch.ops.aten.replication_pad2d.default)

    class PadDtypes(TorchDispatchMode):  # sees each op after autocast has chosen its dtype
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in pads:
                self.seen.append((func.__name__, out.dtype))
            return out

    G = ResnetGenerator(ngf=4, n_blocks=2, antialias=True)  # reflect pads, blur down (reflect) and up (replicate)
    with autocast("bf16", "cpu"), PadDtypes() as mode:
        G(torch.rand(1, 3, 16, 16) * 2 - 1)
    kinds = {name.split(".")[0] for name, _ in mode.seen}
    assert kinds == {"reflection_pad2d", "replication_pad2d"}, mode.seen
    # only the first pad, of the fp32 input image, is fp32; every other one pads a bf16 activation in bf16
    assert [d for _, d in mode.seen] == [torch.float32] + [torch.bfloat16] * (len(mode.seen) - 1), mode.seen


def test_the_conv_dtypes_benchmark_prints_every_dtype_and_layout():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "conv_dtypes.py"
    done = subprocess.run([sys.executable, str(script), "--channels", "8", "--size", "8", "--reps", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split(":")[0] for line in done.stdout.splitlines()[1:]]
    assert rows == [f"{d} {layout}" for d in ("fp32", "bf16", "fp16") for layout in ("NCHW", "NHWC")]
    assert "fp32 NCHW: " in done.stdout and "(1.00x fp32 NCHW)" in done.stdout.splitlines()[1]


def test_the_projection_heads_run_in_fp32_under_fp16_and_in_bf16_under_bf16():
    from cutlib.nce import ProjectionHeads

    heads = ProjectionHeads([8, 16], dim=32)
    seen = []
    for mlp in heads.mlps:
        mlp[0].register_forward_hook(lambda module, inputs, out: seen.append(out.dtype))
    feats = [torch.randn(5, 8), torch.randn(5, 16)]
    for precision, inside in (("fp16", torch.float32), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen.clear()
        with autocast(precision, "cpu"):
            out = heads(feats)
        assert seen == [inside, inside], precision  # fp16's range cannot hold these heads' gradients
        assert all(o.dtype == torch.float32 for o in out)  # the logits and softmax of PatchNCE: fp32 in every precision
        torch.testing.assert_close(torch.linalg.vector_norm(out[0], dim=1), torch.ones(5), atol=1e-3, rtol=0)  # unit length (+eps)
