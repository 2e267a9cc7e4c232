"""cutlib.viz helpers for chapter 9 (paper Fig. 7): patch similarity and PCA of encoder features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cutlib.nce import ProjectionHeads, patch_nce
from cutlib.networks import ResnetGenerator
from cutlib.viz import feature_pca, patch_similarity

TAPS = ("rgb", "down1", "down2", "res1")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    G = ResnetGenerator(ngf=8, n_blocks=2).eval()
    H = ProjectionHeads(G.tap_channels(TAPS), dim=32, init_gain=1.0)
    x, out = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    return G, H, x, out


def test_patch_similarity_is_a_distribution_over_the_input_grid(nets):
    G, H, x, out = nets
    maps = patch_similarity(G, H, x, out, (3, 20), TAPS)
    grids = [tuple(f.shape[2:]) for f in G.encode(x, TAPS)]
    assert [tuple(m.shape) for m in maps] == grids
    for m in maps:
        assert (m > 0).all() and torch.isclose(m.sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("query", [(0, 0), (5, 9), (31, 17)])
def test_patch_similarity_at_the_query_cell_is_the_patchnce_probability(nets, query):
    """-log(similarity of the positive) is PatchNCE's loss for that query when every location is sampled."""
    G, H, x, out = nets
    maps = patch_similarity(G, H, x, out, query, TAPS, tau=0.07)
    feats_k, feats_q = G.encode(x, TAPS), G.encode(out, TAPS)
    for layer, (fk, fq, m) in enumerate(zip(feats_k, feats_q, maps)):
        h, w = fk.shape[2:]
        stride, pad = (1, 3) if h == 38 else (32 // h, 0)  # "rgb" is the input reflect-padded by 3
        r, c = query[0] // stride + pad, query[1] // stride + pad
        k, q = H.mlps[layer](fk[0].flatten(1).t()), H.mlps[layer](fq[0].flatten(1).t())
        k, q = k / k.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True)
        loss = patch_nce(q, k, tau=0.07)[r * w + c]
        prob = m[r, c]
        assert torch.isclose(-prob.log(), loss, rtol=1e-3, atol=1e-4), f"layer {TAPS[layer]}"


def test_patch_similarity_rejects_bad_input(nets):
    G, H, x, out = nets
    with pytest.raises(ValueError, match="outside the 32x32"):
        patch_similarity(G, H, x, out, (32, 0), TAPS)
    with pytest.raises(ValueError, match="x and out"):
        patch_similarity(G, H, x, out[:, :, :16], (0, 0), TAPS)


def test_feature_pca_first_component_follows_the_largest_variation():
    torch.manual_seed(1)
    ramp = torch.linspace(-5, 5, 8).view(1, 8, 1).expand(1, 8, 6)  # varies along rows only
    feat = torch.cat([ramp, 0.01 * torch.randn(4, 8, 6)])  # (5, 8, 6): channel 0 dominates
    (img,) = feature_pca([feat])
    assert img.shape == (8, 6, 3) and img.min() >= 0 and img.max() <= 1
    r = np.corrcoef(img[..., 0].ravel(), ramp.expand(1, 8, 6).ravel().numpy())[0, 1]
    assert abs(r) > 0.999


def test_feature_pca_uses_one_basis_for_all_maps():
    feat = torch.randn(6, 5, 7)
    a, b = feature_pca([feat, feat])
    np.testing.assert_allclose(a, b)
    c, d = feature_pca([feat, -feat])  # the same direction, opposite signs: opposite colours
    np.testing.assert_allclose(c + d, np.ones_like(c), atol=1e-5)


def test_feature_pca_rejects_bad_input():
    with pytest.raises(ValueError, match="same C"):
        feature_pca([torch.randn(4, 3, 3), torch.randn(5, 3, 3)])
    with pytest.raises(ValueError, match="at least 3 channels"):
        feature_pca([torch.randn(2, 3, 3)])
    with pytest.raises(ValueError, match="at least one"):
        feature_pca([])
