"""torch.compile (TrainConfig.compile): the compiler-safe replicate pad, networks compiled in place with
their state dicts unchanged, a compiled step against an eager one, the trainer's wiring and bench's rows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.models import build_model, compile_networks
from cutlib.networks import replicate_pad1
from cutlib.train import Trainer

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}
# the compiled step: two residual blocks instead of five, as compilation time grows with the graph (on a 2-core
# AMD EPYC, inside make test, this test took 127 s with five and 62 s with two)
SMALL = {**TINY, "n_blocks": 2, "nce_layers": ("rgb", "down1", "down2", "res1", "res2")}


def compiled(net: torch.nn.Module) -> bool:
    return getattr(net, "_compiled_call_impl", None) is not None  # what nn.Module.compile() sets


def test_the_replicate_pad_gives_the_same_values_and_gradients_compiled_and_eager():
    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    w = torch.randn(2, 3, 7, 9)  # (B, C, H+2, W+2): weights the gradient through every padded pixel
    eager = F.pad(x, (1, 1, 1, 1), mode="replicate")
    (grad_eager,) = torch.autograd.grad((eager * w).sum(), x)
    out = torch.compile(replicate_pad1, backend="aot_eager", fullgraph=True)(x)  # the compiler's path (is_compiling)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.equal(out, eager) and torch.allclose(grad, grad_eager)
    assert torch.equal(replicate_pad1(x), eager)  # and eager's own


ON_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh runs these on one)")]


@pytest.mark.slow
@pytest.mark.parametrize("device, precision", [("cpu", "fp32"), pytest.param("cuda", "fp32", marks=ON_CUDA),
                                               pytest.param("cuda", "bf16", marks=ON_CUDA)])
def test_a_compiled_step_matches_an_eager_one_and_the_weights_keep_their_names(device, precision):
    g = torch.Generator().manual_seed(0)
    batch = {"A": torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, "B": torch.rand(1, 3, 32, 32, generator=g) * 2 - 1}
    cfg = C.preset("fastcut", **{**SMALL, "device": device, "precision": precision})
    losses, states = {}, {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(cfg, device)
        if mode == "compiled":
            assert compile_networks(model) == ("G", "D")
            assert compiled(model.G) and compiled(model.D) and not compiled(model.H)  # the heads stay eager
            assert getattr(model.G.encode, "_torchdynamo_orig_callable", None) is not None  # the NCE queries' pass
        losses[mode] = [model.training_step(batch) for _ in range(2)]  # the second step: after one update of all
        states[mode] = model.G.state_dict()
    assert states["compiled"].keys() == states["eager"].keys()  # no "_orig_mod." prefix: checkpoints interchange
    # fp32: both steps agree to the summation order; bf16 (~3 significant digits): the first step agrees to
    # its rounding, which one Adam step on a tiny net then grows, so the second is only checked to be finite
    steps, rel, abs_ = (2, 1e-3, 1e-4) if precision == "fp32" else (1, 0.05, 0.02)
    for step in range(steps):
        for k, v in losses["eager"][step].items():
            assert losses["compiled"][step][k] == pytest.approx(v, rel=rel, abs=abs_), (step, k)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses["compiled"][-1].values())


def test_the_trainer_compiles_the_networks_each_model_names(tmp_path):
    root = make_dataset("stripes", root=tmp_path / "data", size=40, n_train=4, n_test=2)
    for preset, names in (("cut", ("G", "D")), ("cyclegan", ("G", "F", "D_X", "D_Y"))):
        for flag in (False, True):
            trainer = Trainer(C.preset(preset, dataset=str(root), compile=flag, **TINY), tmp_path / f"{preset}{flag}", progress=False)
            assert [compiled(getattr(trainer.model, n)) for n in names] == [flag] * len(names), (preset, flag)


def test_bench_refuses_compiled_rows_without_a_warm_up_step():
    done = subprocess.run([sys.executable, "-m", "cutlib", "bench", "--presets", "fastcut", "--size", "32", "--steps", "1",
                           "--warmup", "0", "--compile", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "warmup >= 1" in done.stderr
