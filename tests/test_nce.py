"""cutlib.nce against plain loops and the sanity figures of book/reference.md sections 1, 2 and 6."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cutlib.nce import (
    DIAGONAL_FILL,
    MomentumQueue,
    ProjectionHeads,
    info_nce,
    l2_normalize,
    multilayer_patch_nce,
    patch_nce,
    sample_patches,
)

TAU = 0.07


def unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random unit vectors along the last dimension (reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=g, dtype=dtype))


def loop_row_loss(q: torch.Tensor, pos: torch.Tensor, negs: list[torch.Tensor], tau: float = TAU) -> float:
    """Eq. 2 for one query, written with Python floats: -log(e^{q.k+/tau} / sum over all keys)."""
    s_pos = (q @ pos).item() / tau
    sims = [s_pos] + [(q @ k).item() / tau for k in negs]
    top = max(sims)
    return -(s_pos - top - math.log(sum(math.exp(s - top) for s in sims)))


def loop_patch_nce(q, k, groups: int, external=None, internal: bool = True, tau: float = TAU) -> torch.Tensor:
    """PatchNCE by hand: query i against key i (positive) and the keys j != i of its group."""
    n = q.shape[0]
    size = n // groups
    out = []
    for i in range(n):
        g = i // size
        negs = [k[j] for j in range(g * size, (g + 1) * size) if j != i] if internal else []
        negs += list(external) if external is not None else []
        out.append(loop_row_loss(q[i], k[i], negs, tau))
    return torch.tensor(out, dtype=q.dtype)


class TinyEncoder(nn.Module):
    """A real (small) conv encoder with the ``encode(x, taps)`` contract of the generator."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)  # receptive field 3
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)  # receptive field 7, half resolution

    def encode(self, x, taps):
        c1 = self.conv1(x)
        c2 = self.conv2(torch.relu(c1))
        available = {"rgb": x, "conv1": c1, "conv2": c2}
        return [available[t] for t in taps]


TINY_TAPS = ("rgb", "conv1", "conv2")
TINY_CHANNELS = (3, 4, 8)


# ----------------------------------------------------------------------------------- info_nce (Eq. 2)


@pytest.mark.parametrize("shared", [False, True], ids=["per-query (N,M,C)", "shared (M,C)"])
def test_info_nce_matches_a_per_row_loop(shared):
    n, m, c = 7, 5, 16
    q, pos = unit(n, c, seed=1), unit(n, c, seed=2)
    negatives = unit(m, c, seed=3) if shared else unit(n, m, c, seed=3)
    got = info_nce(q, pos, negatives, tau=TAU)
    assert got.shape == (n,)
    rows = [loop_row_loss(q[i], pos[i], list(negatives if shared else negatives[i])) for i in range(n)]
    torch.testing.assert_close(got, torch.tensor(rows, dtype=q.dtype), rtol=1e-10, atol=1e-10)


def test_info_nce_temperature_enters_as_a_divisor():
    q, pos, negs = unit(4, 8, seed=4), unit(4, 8, seed=5), unit(4, 6, 8, seed=6)
    for tau in (0.05, 0.5, 2.0):
        rows = [loop_row_loss(q[i], pos[i], list(negs[i]), tau) for i in range(4)]
        torch.testing.assert_close(info_nce(q, pos, negs, tau=tau), torch.tensor(rows, dtype=q.dtype))


def test_info_nce_gives_gradients_to_all_inputs():
    q, pos, negs = (t.requires_grad_() for t in (unit(3, 4, seed=7), unit(3, 4, seed=8), unit(5, 4, seed=9)))
    info_nce(q, pos, negs).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, pos, negs))


# --------------------------------------------------------------------------- patch_nce (section 1)


def test_patch_nce_equals_the_loop_that_excludes_the_diagonal():
    b, p, c = 2, 9, 12
    q, k = unit(b * p, c, seed=10), unit(b * p, c, seed=11)
    got = patch_nce(q, k, tau=TAU, negatives="image", batch_size=b)
    assert got.shape == (b * p,)
    torch.testing.assert_close(got, loop_patch_nce(q, k, groups=b), rtol=1e-9, atol=1e-9)


def test_the_masked_diagonal_is_what_makes_identical_features_cost_nothing():
    """Without the mask, key i would also be a negative of query i: the loss could not go below log 2."""
    p, c = 64, 64
    q = unit(p, c, seed=12)
    masked = patch_nce(q, q.clone())
    by_loop = loop_patch_nce(q, q, groups=1)  # excludes j == i
    with_duplicate = torch.tensor([loop_row_loss(q[i], q[i], [q[j] for j in range(p)]) for i in range(p)])
    assert masked.max() < 0.05 and torch.allclose(masked, by_loop, atol=1e-9)
    assert with_duplicate.min() > math.log(2) - 1e-9, "the duplicated positive alone costs log 2"
    assert math.exp(DIAGONAL_FILL / TAU) < 1e-50, "the fill value must give ~zero probability after / tau"


def test_patch_nce_batch_negatives_use_every_image_of_the_minibatch():
    b, p, c = 3, 5, 8
    q, k = unit(b * p, c, seed=13), unit(b * p, c, seed=14)
    per_image = patch_nce(q, k, negatives="image", batch_size=b)
    batch = patch_nce(q, k, negatives="batch", batch_size=b)
    torch.testing.assert_close(batch, loop_patch_nce(q, k, groups=1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(per_image, loop_patch_nce(q, k, groups=b), rtol=1e-9, atol=1e-9)
    assert (batch > per_image).all(), "more negatives (B*P-1 instead of P-1) can only raise each row's loss"


def test_patch_nce_with_external_keys_only_and_both():
    b, p, c, kk = 2, 4, 8, 6
    q, k, ext = unit(b * p, c, seed=15), unit(b * p, c, seed=16), unit(kk, c, seed=17)
    only = patch_nce(q, k, negatives=None, batch_size=b, external=ext)
    both = patch_nce(q, k, negatives="image", batch_size=b, external=ext)
    torch.testing.assert_close(only, loop_patch_nce(q, k, b, external=ext, internal=False), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(both, loop_patch_nce(q, k, b, external=ext, internal=True), rtol=1e-9, atol=1e-9)


def test_sanity_figure_identical_features_give_a_loss_near_zero():
    q = unit(256, 256, seed=18, dtype=torch.float32)
    loss = patch_nce(q, q.clone()).mean()
    assert loss < 0.01, f"q == k at P = 256, C = 256 should cost < 0.01, got {loss:.4f}"


def test_sanity_figure_independent_random_features_cost_a_little_more_than_log_p():
    """With 256 keys, logits q.k / tau have variance 1/(C tau^2); the loss is about ln 256 + 1/(2 C tau^2)."""
    p, c = 256, 256
    losses = torch.stack([patch_nce(unit(p, c, seed=s, dtype=torch.float32), unit(p, c, seed=100 + s, dtype=torch.float32)).mean() for s in range(4)])
    predicted = math.log(p) + 1 / (2 * c * TAU**2)
    assert (losses > math.log(p)).all(), f"every loss should exceed ln 256 = {math.log(p):.3f}, got {losses}"
    assert (losses - predicted).abs().max() < 0.15, f"expected about {predicted:.2f} (REFERENCE: ~5.9), got {losses}"


def test_no_gradient_reaches_the_keys():
    q = unit(8, 4, seed=19, dtype=torch.float32).requires_grad_()
    k = unit(8, 4, seed=20, dtype=torch.float32).requires_grad_()
    patch_nce(q, k, batch_size=2).mean().backward()
    assert k.requires_grad and k.grad is None, "keys are detached (MoCo-style): no gradient may reach them"
    assert q.grad is not None and q.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ sample_patches


def coordinate_maps(b: int, h: int, w: int, offset: float = 0.0) -> torch.Tensor:
    """(B, 3, H, W) whose channels at (y, x) of image n are (n + offset, y, x): values reveal locations."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([torch.stack([torch.full((h, w), n + offset), ys, xs]) for n in range(b)])


def test_sample_patches_takes_the_same_locations_in_every_image():
    b, h, w, p = 3, 6, 5, 7
    (samples,), (ids,) = sample_patches([coordinate_maps(b, h, w)], p, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (b * p, 3) and ids.shape == (p,)
    per_image = samples.view(b, p, 3)  # batch-major: rows n*P .. n*P+P-1 are image n
    for n in range(b):
        assert (per_image[n, :, 0] == n).all(), "rows of image n must come first-to-last in batch order"
        assert torch.equal(per_image[n, :, 1] * w + per_image[n, :, 2], ids.float())
    assert len(set(ids.tolist())) == p, "sampling is without replacement"


def test_returned_ids_put_queries_at_the_key_locations():
    keys = [coordinate_maps(2, 8, 8), coordinate_maps(2, 4, 4)]
    queries = [coordinate_maps(2, 8, 8, offset=10.0), coordinate_maps(2, 4, 4, offset=10.0)]
    k_samples, ids = sample_patches(keys, 5)
    q_samples, ids_again = sample_patches(queries, 5, patch_ids=ids)
    for layer in range(2):
        assert torch.equal(ids_again[layer], ids[layer])
        torch.testing.assert_close(q_samples[layer][:, 1:], k_samples[layer][:, 1:])  # same (y, x)
        torch.testing.assert_close(q_samples[layer][:, 0] - k_samples[layer][:, 0], torch.full((10,), 10.0))


def test_small_maps_give_every_location_once():
    (samples,), (ids,) = sample_patches([coordinate_maps(1, 3, 3)], 256)
    assert samples.shape == (9, 3) and sorted(ids.tolist()) == list(range(9))


def test_a_seeded_generator_makes_sampling_reproducible():
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8)]
    _, a = sample_patches(feats, 20, generator=torch.Generator().manual_seed(123))
    _, b = sample_patches(feats, 20, generator=torch.Generator().manual_seed(123))
    _, c = sample_patches(feats, 20, generator=torch.Generator().manual_seed(124))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c)), "another seed should give other locations"


# ---------------------------------------------------------------------------- ProjectionHeads (section 2)


def test_projection_heads_give_unit_vectors_of_the_head_dimension():
    heads = ProjectionHeads([3, 16, 32], dim=24)
    feats = [torch.randn(10, 3), torch.randn(10, 16), torch.randn(10, 32)]
    out = heads(feats)
    assert [o.shape for o in out] == [(10, 24)] * 3
    for mlp, feat, o in zip(heads.mlps, feats, out):
        raw = mlp(feat).norm(dim=1)  # tiny at init (gain 0.02), so the reference's + 1e-7 shows a little
        torch.testing.assert_close(o.norm(dim=1), raw / (raw + 1e-7))
        # unit length up to that + 1e-7: the shortfall is 1e-7 / (raw + 1e-7), large only for a tiny raw
        sure = raw > 1e-4
        assert sure.any()
        torch.testing.assert_close(o.norm(dim=1)[sure], torch.ones(int(sure.sum())), rtol=0, atol=1e-3)
        torch.testing.assert_close(l2_normalize(10 * feat).norm(dim=1), torch.ones(10))


def test_projection_heads_parameter_count_and_init():
    channels = [3, 128, 256, 256, 256]  # the reference's five NCE taps (book/reference.md section 3)
    heads = ProjectionHeads(channels)
    expected = sum(c * 256 + 256 + 256 * 256 + 256 for c in channels)  # Linear(C, 256), Linear(256, 256)
    count = sum(p.numel() for p in heads.parameters())
    assert count == expected
    assert 0.55e6 < count < 0.57e6, "book/reference.md section 2: the 5 heads have about 0.56 M parameters"
    assert all(m.bias.abs().max() == 0 for m in heads.modules() if isinstance(m, nn.Linear))
    big = heads.mlps[2][2].weight  # 256 x 256, xavier-normal with gain 0.02: std = 0.02 * sqrt(2 / 512)
    assert abs(big.std().item() / (0.02 * math.sqrt(2 / 512)) - 1) < 0.05


def test_projection_heads_are_built_eagerly():
    heads = ProjectionHeads([3, 5])
    assert len(list(heads.parameters())) == 8, "all weights exist before the first forward"


# ------------------------------------------------------------------------------ MomentumQueue (section 6)


def make_queue(size: int = 5, momentum: float = 0.9, dim: int = 4):
    torch.manual_seed(0)
    encoder, heads = TinyEncoder(), ProjectionHeads(TINY_CHANNELS, dim=dim)
    return encoder, heads, MomentumQueue(encoder, heads, size=size, momentum=momentum)


def numbered_keys(start: int, n: int, layers: int = 3, dim: int = 4) -> list[torch.Tensor]:
    """Keys whose every entry is its insertion number (layer l adds 1000 * l), to read the order back."""
    numbers = torch.arange(start, start + n, dtype=torch.float32)
    return [(numbers + 1000 * layer)[:, None].expand(n, dim).clone() for layer in range(layers)]


def first_column(keys: list[torch.Tensor]) -> list[list[int]]:
    return [k[:, 0].long().tolist() for k in keys]


def test_queue_is_fifo_and_reads_oldest_first_across_the_wrap_around():
    _, _, queue = make_queue(size=5)
    assert first_column(queue.read()) == [[], [], []]
    queue.enqueue(numbered_keys(0, 2))
    assert int(queue.count) == 2 and first_column(queue.read())[0] == [0, 1]
    queue.enqueue(numbered_keys(2, 2))
    queue.enqueue(numbered_keys(4, 2))  # 6 keys in 5 slots: key 0 is overwritten, the write wraps
    assert int(queue.count) == 5, "count is capped at the queue size"
    assert first_column(queue.read()) == [[1, 2, 3, 4, 5], [1001, 1002, 1003, 1004, 1005], [2001, 2002, 2003, 2004, 2005]]
    queue.enqueue(numbered_keys(6, 3))
    assert first_column(queue.read())[0] == [4, 5, 6, 7, 8]


def test_queue_keeps_only_the_newest_when_given_more_keys_than_slots():
    _, _, queue = make_queue(size=5)
    queue.enqueue(numbered_keys(0, 3))
    queue.enqueue(numbered_keys(3, 7))
    assert int(queue.count) == 5 and first_column(queue.read())[0] == [5, 6, 7, 8, 9]


def test_momentum_update_follows_the_formula_on_every_parameter():
    encoder, heads, queue = make_queue(momentum=0.9)
    before = [p.clone() for p in queue.parameters()]
    with torch.no_grad():  # the live networks move on (as after an optimiser step)
        for p in list(encoder.parameters()) + list(heads.parameters()):
            p.add_(torch.randn_like(p))
    live = [p.clone() for p in list(encoder.parameters()) + list(heads.parameters())]
    assert all(torch.equal(a, b) for a, b in zip(before, queue.parameters())), "copies must not share storage"
    queue.update(encoder, heads)
    after = list(queue.parameters())
    assert len(after) == len(live) == len(before)
    for k_old, q_now, k_new in zip(before, live, after):
        torch.testing.assert_close(k_new, 0.9 * k_old + 0.1 * q_now)
        assert not k_new.requires_grad


def test_queue_key_features_come_from_the_momentum_copies():
    encoder, heads, queue = make_queue(size=20, dim=4)
    x = torch.randn(2, 3, 8, 8)
    got = queue.key_features(x, TINY_TAPS, num_patches=6, generator=torch.Generator().manual_seed(5))
    samples, _ = sample_patches(queue.encoder.encode(x, TINY_TAPS), 6, generator=torch.Generator().manual_seed(5))
    expected = queue.heads(samples)
    assert [g.shape for g in got] == [(12, 4)] * 3
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert all(not g.requires_grad for g in got)
    queue.enqueue(got)
    assert all(torch.equal(r, g) for r, g in zip(queue.read(), got))


# ---------------------------------------------------------------------- multilayer_patch_nce (Eq. 5)


def layer_maps(seed: int, b: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s, generator=g) for c, s in zip(TINY_CHANNELS, (8, 8, 4))]


def test_multilayer_loss_is_lambda_times_the_mean_over_layers_of_per_layer_means():
    torch.manual_seed(1)
    heads = ProjectionHeads(TINY_CHANNELS, dim=16)
    feats_k = layer_maps(0)
    feats_q = [f + 0.5 * g for f, g in zip(feats_k, layer_maps(1))]
    res = multilayer_patch_nce(heads, feats_q, feats_k, num_patches=10, lambda_nce=3.0, generator=torch.Generator().manual_seed(2))
    k_s, ids = sample_patches(feats_k, 10, generator=torch.Generator().manual_seed(2))
    q_s, _ = sample_patches(feats_q, 10, patch_ids=ids)
    by_hand = [loop_patch_nce(q.double(), k.double(), groups=2).mean() for q, k in zip(heads(q_s), heads(k_s))]
    assert all(torch.equal(a, b) for a, b in zip(res.patch_ids, ids))
    torch.testing.assert_close(torch.stack(res.per_layer).double(), torch.stack(by_hand), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.loss.double(), 3.0 * sum(by_hand) / 3, rtol=1e-5, atol=1e-5)


def test_multilayer_loss_reuses_given_patch_ids_and_batch_negatives():
    heads = ProjectionHeads(TINY_CHANNELS, dim=16)
    feats_k, feats_q = layer_maps(3), layer_maps(4)
    first = multilayer_patch_nce(heads, feats_q, feats_k, num_patches=6, batch_negatives=True)
    again = multilayer_patch_nce(heads, feats_q, feats_k, num_patches=6, batch_negatives=True, patch_ids=first.patch_ids)
    torch.testing.assert_close(again.loss, first.loss)
    k_s, _ = sample_patches(feats_k, 6, patch_ids=first.patch_ids)
    q_s, _ = sample_patches(feats_q, 6, patch_ids=first.patch_ids)
    by_hand = [loop_patch_nce(q.double(), k.double(), groups=1).mean() for q, k in zip(heads(q_s), heads(k_s))]
    torch.testing.assert_close(torch.stack(first.per_layer).double(), torch.stack(by_hand), rtol=1e-5, atol=1e-5)


def test_multilayer_loss_with_separate_query_heads():
    """The "no weight sharing" ablation: queries go through their own heads, keys through ``heads``."""
    torch.manual_seed(3)
    heads, query_heads = ProjectionHeads(TINY_CHANNELS, dim=16), ProjectionHeads(TINY_CHANNELS, dim=16)
    feats_k, feats_q = layer_maps(7), layer_maps(8)
    res = multilayer_patch_nce(heads, feats_q, feats_k, num_patches=6, query_heads=query_heads)
    k_s, _ = sample_patches(feats_k, 6, patch_ids=res.patch_ids)
    q_s, _ = sample_patches(feats_q, 6, patch_ids=res.patch_ids)
    by_hand = [loop_patch_nce(q.double(), k.double(), groups=2).mean() for q, k in zip(query_heads(q_s), heads(k_s))]
    shared = multilayer_patch_nce(heads, feats_q, feats_k, num_patches=6, patch_ids=res.patch_ids)
    torch.testing.assert_close(torch.stack(res.per_layer).double(), torch.stack(by_hand), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(res.loss, shared.loss), "query_heads must change which heads project the queries"


@pytest.mark.parametrize("mode", ["external", "both"])
def test_multilayer_loss_with_external_negatives(mode):
    encoder, heads, queue = make_queue(size=20, dim=16)
    x = torch.randn(2, 3, 8, 8)
    queue.enqueue(queue.key_features(x, TINY_TAPS, num_patches=7))  # 14 keys per layer
    feats_k = encoder.encode(x, TINY_TAPS)
    feats_q = encoder.encode(x.flip(-1), TINY_TAPS)
    ext = queue.read()
    res = multilayer_patch_nce(heads, feats_q, feats_k, num_patches=5, negatives=mode, external=ext)
    k_s, _ = sample_patches(feats_k, 5, patch_ids=res.patch_ids)
    q_s, _ = sample_patches(feats_q, 5, patch_ids=res.patch_ids)
    by_hand = [
        loop_patch_nce(q.double(), k.double(), groups=2, external=e.double(), internal=(mode == "both")).mean()
        for q, k, e in zip(heads(q_s), heads(k_s), ext)
    ]
    torch.testing.assert_close(torch.stack(res.per_layer).double(), torch.stack(by_hand), rtol=1e-5, atol=1e-5)


def test_multilayer_external_only_with_an_empty_queue_has_nothing_to_contrast():
    encoder, heads, queue = make_queue(dim=16)
    feats = encoder.encode(torch.randn(1, 3, 8, 8), TINY_TAPS)
    res = multilayer_patch_nce(heads, feats, feats, num_patches=4, negatives="external", external=queue.read())
    assert res.loss.item() == 0.0, "a query with only its positive is classified correctly with certainty"


def test_multilayer_gives_no_gradient_to_the_key_features_and_trains_the_heads():
    heads = ProjectionHeads(TINY_CHANNELS, dim=16)
    feats_k = [f.requires_grad_() for f in layer_maps(5)]
    feats_q = [f.requires_grad_() for f in layer_maps(6)]
    multilayer_patch_nce(heads, feats_q, feats_k, num_patches=6).loss.backward()
    assert all(f.grad is None for f in feats_k)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats_q)
    assert all(p.grad is not None for p in heads.parameters())


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: info_nce(torch.randn(4), torch.randn(4, 3), torch.randn(2, 3)), ["query", "(N, C)"]),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 2), torch.randn(2, 3)), ["positive", "(4, 3)"]),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 5)), ["negatives", "(4, M, 3) or (M, 3)"]),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 2, 3)), ["negatives", "(4, M, 3)"]),
        (lambda: info_nce(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3), torch.randn(2, 3)), ["query", "floating"]),
        (lambda: patch_nce(torch.randn(8, 4), torch.randn(8, 5)), ["feat_q", "feat_k", "(B*P, C)"]),
        (lambda: patch_nce(torch.randn(8, 4, 1), torch.randn(8, 4)), ["feat_q", "(B*P, C)"]),
        (lambda: patch_nce(torch.randn(9, 4), torch.randn(9, 4), batch_size=2), ["batch_size", "(B*P, C)"]),
        (lambda: patch_nce(torch.randn(8, 4), torch.randn(8, 4), negatives="images"), ["negatives", "'image'"]),
        (lambda: patch_nce(torch.randn(8, 4), torch.randn(8, 4), negatives=None), ["external", "(K, C)"]),
        (lambda: patch_nce(torch.randn(8, 4), torch.randn(8, 4), external=torch.randn(3, 5)), ["external", "(K, 4)"]),
        (lambda: sample_patches([torch.randn(3, 8, 8)], 4), ["features[0]", "(B, C, H, W)"]),
        (lambda: sample_patches([torch.randn(1, 3, 2, 2)], 4, patch_ids=[torch.tensor([7])]), ["patch_ids[0]", "2x2", "0..3"]),
        (lambda: sample_patches([torch.randn(1, 3, 2, 2)], 0), ["num_patches"]),
        (lambda: ProjectionHeads([3, 5])([torch.randn(2, 3)]), ["2 feature tensors"]),
        (lambda: ProjectionHeads([3, 5])([torch.randn(2, 3), torch.randn(2, 4)]), ["features[1]", "(N, 5)"]),
        (lambda: make_queue()[2].enqueue([torch.randn(2, 4)]), ["3 layers"]),
        (lambda: make_queue()[2].enqueue([torch.randn(2, 5)] * 3), ["(N, 4)"]),
        (lambda: MomentumQueue(TinyEncoder(), ProjectionHeads([3]), size=0), ["size"]),
        (lambda: multilayer_patch_nce(ProjectionHeads([3]), [torch.randn(1, 3, 4, 4)], [torch.randn(1, 3, 4, 4)], negatives="ext"), ["negatives", "'external'"]),
        (lambda: multilayer_patch_nce(ProjectionHeads([3]), [torch.randn(1, 3, 4, 4)], [torch.randn(1, 3, 4, 4)], negatives="both"), ["external", "read()"]),
        (lambda: multilayer_patch_nce(ProjectionHeads([3]), [torch.randn(1, 3, 4, 4)] * 2, [torch.randn(1, 3, 4, 4)]), ["feats_q", "feats_k"]),
        (lambda: multilayer_patch_nce(ProjectionHeads([3]), [], []), ["feats_k", "(B, C, H, W)"]),
        (lambda: multilayer_patch_nce(ProjectionHeads([3, 3]), [torch.randn(1, 3, 4, 4)] * 2, [torch.randn(1, 3, 4, 4)] * 2, negatives="both", external=[torch.randn(5, 256)]), ["external", "per layer"]),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3).double(), torch.randn(2, 3)), ["positive", "dtype", "query"]),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3).double()), ["negatives", "dtype", "query"]),
        (lambda: patch_nce(torch.randn(4, 3), torch.randn(4, 3).double()), ["feat_k", "dtype", "feat_q"]),
        (lambda: patch_nce(torch.randn(4, 3), torch.randn(4, 3), external=torch.randn(2, 3).double()), ["external", "dtype"]),
        (lambda: sample_patches([torch.randn(1, 3, 4, 4)], 2, patch_ids=[torch.tensor([-20])]), ["patch_ids[0]", "0..15"]),
        (lambda: sample_patches([torch.randn(1, 3, 4, 4)], 2, patch_ids=[torch.tensor([1.0])]), ["patch_ids[0]", "integer"]),
    ],
)
def test_bad_input_names_the_argument_and_the_expected_shape(call, words):
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    for word in words:
        assert word in str(err.value), f"{word!r} missing from the message: {err.value}"


def test_patch_gradients_through_instance_norm_match_a_dense_loss_for_one_image():
    """sample_patches must hand the encoder gradients that torch's CPU instance norm handles for B == 1
    (channels-last gradients get a wrong backward there): compare with the same loss written densely."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64)
    feat = torch.nn.functional.instance_norm(x)
    ids = torch.randperm(64)[:16]
    sampled, _ = sample_patches([feat], 16, [ids])
    (sampled[0] @ w).pow(2).sum().backward()
    grad_sampled = x.grad.clone()
    x.grad = None
    feat = torch.nn.functional.instance_norm(x)
    dense = torch.stack([feat[0, :, i // 8, i % 8] for i in ids.tolist()])  # (P, C), one location at a time
    (dense @ w).pow(2).sum().backward()
    torch.testing.assert_close(grad_sampled, x.grad)
