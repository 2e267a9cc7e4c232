"""The follow-ups of PatchNCE (cutlib.followups, the hooks of cutlib.nce) against plain loops of their
equations, CUT's path unchanged by the hooks, and a 2-step command-line training per preset."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from cutlib import config as C
from cutlib import followups as FU
from cutlib.models import CUTModel
from cutlib.nce import NCEHooks, ProjectionHeads, l2_normalize, multilayer_patch_nce, patch_nce, sample_patches

TAU = 0.07


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=g, dtype=torch.float64))


def dot(a, b) -> float:
    return float((a * b).sum().detach())


def softmax_list(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


# ------------------------------------------------------------------------------ Hneg-SRC: hDCE


def loop_weights(k, groups: int, gamma: float) -> torch.Tensor:
    """w_ij = softmax_j(k_i.k_j / gamma) / its row maximum, k_i.k_i := -10, group by group."""
    size = k.shape[0] // groups
    out = torch.zeros(groups, size, size, dtype=torch.float64)
    for g in range(groups):
        for i in range(size):
            s = [-10.0 if j == i else dot(k[g * size + i], k[g * size + j]) for j in range(size)]
            w = softmax_list([v / gamma for v in s])
            out[g, i] = torch.tensor([v / max(w) for v in w])
    return out


def loop_hdce(q, k, w, groups: int) -> torch.Tensor:
    """-log( e^{l_ii/tau} / sum_{j != i} e^{w_ij l_ij / tau} ) with Python floats."""
    size = q.shape[0] // groups
    out = []
    for n in range(q.shape[0]):
        g, i = divmod(n, size)
        pos = dot(q[n], k[n]) / TAU
        negs = [w[g, i, j].item() * dot(q[n], k[g * size + j]) / TAU for j in range(size) if j != i]
        out.append(-(pos - math.log(sum(math.exp(v) for v in negs))))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("groups", [1, 2])
def test_hard_negative_weights_and_hdce_match_loops(groups):
    q, k = unit(8, 5, seed=1), unit(8, 5, seed=2)
    w = FU.hard_negative_weights(k, gamma=0.5, groups=groups)
    torch.testing.assert_close(w, loop_weights(k, groups, 0.5))
    assert torch.allclose(w.amax(-1), torch.ones(groups, 8 // groups, dtype=torch.float64))
    torch.testing.assert_close(FU.hdce(q, k, w, TAU, groups), loop_hdce(q, k, w, groups))


def test_hdce_without_weights_is_patchnce_without_the_positive_in_the_denominator():
    q, k = unit(6, 4, seed=3), unit(6, 4, seed=4)
    ones = torch.ones(1, 6, 6, dtype=torch.float64)
    dce = FU.hdce(q, k, None, TAU)
    torch.testing.assert_close(dce, loop_hdce(q, k, ones, 1))
    nce = patch_nce(q, k, TAU)  # log(e^pos + S) > log S: the decoupled loss is the smaller one
    assert torch.all(dce < nce)


def test_large_gamma_gives_uniform_weights():
    w = FU.hard_negative_weights(unit(5, 3, seed=5), gamma=1e6)
    off = ~torch.eye(5, dtype=torch.bool)
    torch.testing.assert_close(w[0][off], torch.ones(20, dtype=torch.float64), rtol=0, atol=1e-5)


def test_hdce_gamma_curriculum_is_linear():
    assert FU.hdce_gamma(0, 400, 50.0, 10.0) == 50.0
    assert FU.hdce_gamma(200, 400, 50.0, 10.0) == 30.0
    assert FU.hdce_gamma(400, 400, 50.0, 10.0) == 10.0


# ------------------------------------------------------------------------------- Hneg-SRC: SRC


def loop_src(q, k, groups: int) -> float:
    """sum over patches i of JSD(softmax_j(q_i.q_j) || softmax_j(k_i.k_j))."""
    size, total = q.shape[0] // groups, 0.0
    for g in range(groups):
        rows = range(g * size, (g + 1) * size)
        for i in rows:
            p = softmax_list([dot(q[i], q[j]) for j in rows])
            r = softmax_list([dot(k[i], k[j]) for j in rows])
            m = [(a + b) / 2 for a, b in zip(p, r)]
            total += 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(r, m))
    return total


@pytest.mark.parametrize("groups", [1, 2])
def test_src_matches_a_loop_and_vanishes_for_equal_relations(groups):
    q, k = unit(8, 4, seed=6), unit(8, 4, seed=7)
    assert FU.src_loss(q, k, groups).item() == pytest.approx(loop_src(q, k, groups), rel=1e-10)
    assert FU.src_loss(k, k, groups).item() == pytest.approx(0.0, abs=1e-12)


def test_src_gives_gradient_to_the_output_only():
    q, k = unit(6, 4, seed=8).requires_grad_(), unit(6, 4, seed=9).requires_grad_()
    FU.src_loss(q, k).backward()
    assert q.grad.abs().sum() > 0 and k.grad is None


# ---------------------------------------------------------------------------------------- MoNCE


def loop_sinkhorn(kernel: torch.Tensor, iters: int) -> torch.Tensor:
    """u_i = a / sum_j K_ij v_j, v_j = 1 / sum_i u_i K_ij, plan = u_i K_ij v_j, element by element."""
    n, m = kernel.shape
    u, v = [1.0] * n, [1.0] * m
    for _ in range(iters):
        u = [(m / n) / sum(kernel[i, j].item() * v[j] for j in range(m)) for i in range(n)]
        v = [1.0 / sum(u[i] * kernel[i, j].item() for i in range(n)) for j in range(m)]
    return torch.tensor([[u[i] * kernel[i, j].item() * v[j] for j in range(m)] for i in range(n)], dtype=torch.float64)


def test_sinkhorn_matches_a_loop_and_balances_the_marginals():
    kernel = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    plan = FU.sinkhorn(kernel, iters=7)
    torch.testing.assert_close(plan[0], loop_sinkhorn(kernel[0], 7))
    long = FU.sinkhorn(kernel, iters=200)[0]
    torch.testing.assert_close(long.sum(0), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(long.sum(1), torch.ones(5, dtype=torch.float64))


def loop_monce(q, k, plan, neg_weight: float) -> torch.Tensor:
    """-log(e^{l_ii/tau} / (e^{l_ii/tau} + e^{-10/tau} + sum_{j != i} f_ij e^{l_ij/tau})), f = Q (P-1) plan + 1e-8."""
    p, out = q.shape[0], []
    for i in range(p):
        pos = math.exp(dot(q[i], k[i]) / TAU)
        negs = sum((neg_weight * (p - 1) * plan[i, j].item() + 1e-8) * math.exp(dot(q[i], k[j]) / TAU) for j in range(p) if j != i)
        out.append(-math.log(pos / (pos + math.exp(-10.0 / TAU) + negs)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("cost", ["hard", "easy"])
def test_ot_weights_and_monce_match_loops(cost):
    q, k = unit(6, 4, seed=10), unit(6, 4, seed=11)
    plan = FU.ot_negative_weights(q, k, eps=0.5, cost=cost, iters=50)
    score = [[-10.0 if i == j else (dot(q[i], k[j]) if cost == "hard" else 1 - dot(q[i], k[j])) for j in range(6)] for i in range(6)]
    kernel = torch.tensor(score, dtype=torch.float64).div(0.5).exp()
    torch.testing.assert_close(plan[0], loop_sinkhorn(kernel, 50))
    torch.testing.assert_close(FU.monce(q, k, plan, TAU, 2.0), loop_monce(q, k, plan[0], 2.0))


def test_monce_with_uniform_plan_is_patchnce():
    q, k = unit(2 * 5, 4, seed=12), unit(2 * 5, 4, seed=13)
    uniform = (1 - torch.eye(5, dtype=torch.float64)).expand(2, 5, 5) / 4  # (P - 1) * plan_ij = 1
    torch.testing.assert_close(FU.monce(q, k, uniform, TAU, 1.0, groups=2), patch_nce(q, k, TAU, batch_size=2), rtol=1e-6, atol=1e-6)


def test_hard_cost_puts_more_mass_on_similar_negatives():
    k = unit(6, 4, seed=14)
    q = l2_normalize(k + 0.05 * unit(6, 4, seed=15))
    sim = q @ k.t()
    hard = FU.ot_negative_weights(q, k, eps=0.1, cost="hard")[0]
    easy = FU.ot_negative_weights(q, k, eps=0.1, cost="easy")[0]
    uniform = (1 - torch.eye(6, dtype=torch.float64)) / 5
    assert (hard * sim).sum() > (uniform * sim).sum() > (easy * sim).sum(), "transport toward similar (hard) negatives"


# -------------------------------------------------------------------------------------- QS-Attn


def test_entropy_selection_and_routing_match_loops():
    g = torch.Generator().manual_seed(16)
    feat = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    other = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    rows, ids = FU.entropy_selection(feat, num_patches=4)
    for b in range(2):
        f = feat[b].flatten(1).t()  # (9, C)
        attn = [softmax_list([dot(f[i], f[j]) for j in range(9)]) for i in range(9)]
        entropy = [-sum(a * math.log(a) for a in row) for row in attn]
        assert ids[b].tolist() == sorted(range(9), key=lambda i: entropy[i])[:4]
        torch.testing.assert_close(rows[b], torch.tensor([attn[i] for i in ids[b].tolist()], dtype=torch.float64))
    routed = FU.route(other, rows)
    for b in range(2):
        o = other[b].flatten(1).t()
        for p in range(4):
            torch.testing.assert_close(routed[b * 4 + p], sum(rows[b, p, j] * o[j] for j in range(9)))


# --------------------------------------------------------------------------- the hooks of PatchNCE

CHANNELS = [3, 4, 8]


def maps(seed: int, b: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s, generator=g) for c, s in zip(CHANNELS, (6, 6, 4))]


def test_default_hooks_are_cut_exactly():
    torch.manual_seed(0)
    heads = ProjectionHeads(CHANNELS, dim=16)
    fk, fq = maps(0), maps(1)
    plain = multilayer_patch_nce(heads, fq, fk, num_patches=8, generator=torch.Generator().manual_seed(3))
    hooked = multilayer_patch_nce(heads, fq, fk, num_patches=8, generator=torch.Generator().manual_seed(3), hooks=NCEHooks())
    assert torch.equal(plain.loss, hooked.loss) and hooked.relation is None


@pytest.mark.parametrize("weighting", ["hard", "ot"])
def test_weighting_hooks_replace_the_per_layer_loss(weighting):
    torch.manual_seed(0)
    heads = ProjectionHeads(CHANNELS, dim=16)
    fk, fq = maps(2), maps(3)
    hooks = NCEHooks(weighting=weighting, hdce_gamma=2.0, ot_eps=0.5, lambda_src=0.3)
    res = multilayer_patch_nce(heads, fq, fk, num_patches=8, lambda_nce=2.0, hooks=hooks, generator=torch.Generator().manual_seed(4))
    k_s, _ = sample_patches(fk, 8, res.patch_ids)
    q_s, _ = sample_patches(fq, 8, res.patch_ids)
    by_hand, src = [], []
    for q, k in zip(heads(q_s), heads(k_s)):
        q, k = q.double(), k.double()
        if weighting == "hard":
            by_hand.append(loop_hdce(q, k, loop_weights(k, 2, 2.0), 2).mean())
        else:
            plan = FU.ot_negative_weights(q, k, 0.5, "hard", 50, groups=2)
            by_hand.append(torch.cat([loop_monce(q[g * 8:(g + 1) * 8], k[g * 8:(g + 1) * 8], plan[g], 1.0) for g in range(2)]).mean())
        src.append(loop_src(q, k, 2))
    torch.testing.assert_close(torch.stack(res.per_layer).double(), torch.stack(by_hand), rtol=1e-4, atol=1e-5)
    assert res.relation.item() == pytest.approx(sum(src) / 3, rel=1e-4)
    assert res.loss.item() == pytest.approx(2.0 * sum(by_hand).item() / 3 + 0.3 * sum(src) / 3, rel=1e-4)


def test_query_selection_hook_routes_the_deeper_layers():
    torch.manual_seed(0)
    heads = ProjectionHeads(CHANNELS, dim=16)
    fk, fq = maps(5), maps(6)
    res = multilayer_patch_nce(heads, fq, fk, num_patches=5, hooks=NCEHooks(queries="entropy", qs_from_layer=2),
                               generator=torch.Generator().manual_seed(7))
    rows, ids = FU.entropy_selection(fk[2], 5)
    assert torch.equal(res.patch_ids[2], ids) and res.patch_ids[0].shape == (5,)
    q = heads.mlps[2](FU.route(fq[2], rows))
    k = heads.mlps[2](FU.route(fk[2], rows))
    expected = patch_nce(l2_normalize(q), l2_normalize(k), TAU, batch_size=2).mean()
    torch.testing.assert_close(res.per_layer[2], expected)


def test_cut_model_default_path_is_multilayer_patch_nce_with_default_hooks():
    cfg = C.tiny_scale("cut", n_blocks=2, nce_layers=("rgb", "down1", "down2", "res1", "res2"))
    torch.manual_seed(0)
    model = CUTModel(cfg)
    assert model.hooks is None
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    keys = model.G.encode(x, model.taps)
    fake = model.G(x)
    state = model.rng.get_state()
    got = model.nce_loss(keys, fake, flipped=False)
    feats_q = model.G.encode(fake, model.taps)
    ref = multilayer_patch_nce(model.H, feats_q, keys, cfg.num_patches, cfg.nce_t, cfg.lambda_nce,
                               generator=torch.Generator().set_state(state), hooks=NCEHooks())
    assert torch.equal(got, ref.loss)


def test_hooks_refuse_what_they_do_not_support():
    heads = ProjectionHeads([3], dim=8)
    f = [torch.randn(1, 3, 4, 4)]
    with pytest.raises(ValueError, match="negatives='internal'"):
        multilayer_patch_nce(heads, f, f, 4, negatives="external", external=[torch.randn(2, 8)], hooks=NCEHooks(weighting="hard"))
    with pytest.raises(ValueError, match="weighting"):
        NCEHooks(weighting="soft")
    with pytest.raises(ValueError, match="qs_from_layer"):
        C.preset("qsattn", qs_from_layer=5)
    with pytest.raises(ValueError, match="model='cut'"):
        C.preset("sincut", nce_weighting="ot")
    with pytest.raises(ValueError, match="hdce_gamma"):
        C.preset("hneg_src", hdce_gamma=0.0)


def test_presets_take_the_papers_defaults():
    h = C.preset("hneg_src")
    assert (h.nce_weighting, h.lambda_nce, h.lambda_src, h.hdce_gamma, h.hdce_gamma_min, h.nce_idt) == ("hard", 0.1, 0.05, 50.0, 10.0, True)
    m = C.preset("monce")
    assert (m.nce_weighting, m.ot_cost, m.ot_eps, m.ot_neg_weight, m.ot_iters) == ("ot", "hard", 0.1, 1.0, 50)
    assert C.preset("qsattn").nce_queries == "entropy" and C.preset("qsattn").qs_from_layer == 3


def test_set_epoch_follows_the_hdce_curriculum():
    model = CUTModel(C.tiny_scale("hneg_src", n_epochs=2, n_epochs_decay=2))
    assert model.hooks.hdce_gamma == 50.0
    model.set_epoch(2)
    assert model.hooks.hdce_gamma == 30.0


# ---------------------------------------------------------------------- 2-step CLI training per preset

TINY_CLI = ["--load-size", "36", "--crop-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--num-patches", "16",
            "--nce-layers", "rgb,down1,down2,res1,res2", "--device", "cpu", "--max-steps", "2", "--no-progress"]


@pytest.mark.parametrize("preset", ["hneg_src", "monce", "qsattn"])
def test_preset_trains_two_steps_from_the_command_line(preset, tmp_path):
    args = [sys.executable, "-m", "cutlib", "train", "--preset", preset, "--dataset", "stripes", "--out", str(tmp_path / preset)]
    done = subprocess.run(args + TINY_CLI, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 2


# ---------------------------------------------------------------------------------------- DCLGAN


def test_dclgan_generator_loss_is_the_dual_objective():
    """L_G = 0.5 (GAN_G + GAN_F) + 0.5 lambda (NCE_1 + NCE_2) + 0.5 lambda_idt (L1_G + L1_F), each NCE across embeddings."""
    from cutlib.models import DCLGANModel, build_model

    cfg = C.tiny_scale("dclgan", n_blocks=2, nce_layers=("down1", "down2", "res1", "res2"), num_patches=8)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, DCLGANModel) and set(model.networks) == {"G", "G_B", "D", "D_B", "H", "H_B"}
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    state = model.rng.get_state()
    with torch.no_grad():  # the loss by hand, before the step changes the weights
        fake_y, fake_x = model.G(x), model.G_B(y)
        rng = torch.Generator().set_state(state)

        def nce(key_enc, key_heads, real, query_enc, query_heads, fake):
            k_s, ids = sample_patches(key_enc.encode(real, model.taps), 8, generator=rng)
            q_s, _ = sample_patches(query_enc.encode(fake, model.taps), 8, ids)
            return sum(patch_nce(q, k).mean() for q, k in zip(query_heads(q_s), key_heads(k_s))) / 4

        nce_1 = nce(model.G, model.H, x, model.G_B, model.H_B, fake_y)
        nce_2 = nce(model.G_B, model.H_B, y, model.G, model.H, fake_x)
        idt = 0.5 * ((model.G(y) - y).abs().mean() + (model.G_B(x) - x).abs().mean())
    losses = model.training_step({"A": x, "B": y})
    assert losses["NCE"] == pytest.approx(2.0 * nce_1.item(), rel=1e-5)
    assert losses["NCE_2"] == pytest.approx(2.0 * nce_2.item(), rel=1e-5)
    assert losses["idt"] == pytest.approx(idt.item(), rel=1e-5)
    assert losses["G"] == pytest.approx(losses["G_GAN"] + 0.5 * (losses["NCE"] + losses["NCE_2"]) + losses["idt"], rel=1e-5)
    assert all(p.grad is not None for p in model.G_B.parameters()), "the second generator learns"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.H_B.parameters())


def test_dclgan_refuses_what_it_does_not_have():
    from cutlib.models import DCLGANModel

    with pytest.raises(ValueError, match="nce_idt=False"):
        DCLGANModel(C.tiny_scale("dclgan", nce_idt=True, n_blocks=2, nce_layers=("down1", "res2")))
    with pytest.raises(ValueError, match="model='cut'"):
        C.preset("dclgan", nce_weighting="hard")


def test_dclgan_preset_takes_the_papers_defaults():
    d = C.preset("dclgan")
    assert (d.model, d.lambda_nce, d.lambda_idt_l1, d.nce_idt, d.nce_layers) == ("dclgan", 2.0, 1.0, False, ("down1", "down2", "res1", "res5"))


def test_dclgan_trains_two_steps_from_the_command_line(tmp_path):
    test_preset_trains_two_steps_from_the_command_line("dclgan", tmp_path)


def test_the_trainer_moves_hdce_temperature_along_its_curriculum(tmp_path):
    """Hneg-SRC's weighting temperature falls from hdce_gamma to hdce_gamma_min over the epochs: the
    trainer calls the model's set_epoch at the start of every epoch."""
    from cutlib import config as C
    from cutlib.data import make_dataset
    from cutlib.train import Trainer

    root = make_dataset("stripes", root=tmp_path / "data", size=40, n_train=2, n_test=2)
    tiny = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}
    cfg = C.preset("hneg_src", dataset=str(root), **{**tiny, "n_epochs": 2, "n_epochs_decay": 2, "save_epoch_freq": 0})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    seen = []
    original = trainer.model.set_epoch
    trainer.model.set_epoch = lambda epoch: (seen.append(epoch), original(epoch))[1]
    trainer.run()
    assert seen == [1, 2, 3, 4]
    assert trainer.model.hooks.hdce_gamma < cfg.hdce_gamma  # moved towards hdce_gamma_min
