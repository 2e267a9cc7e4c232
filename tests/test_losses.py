"""GAN losses and the R1 penalty against their formulas written out by hand (book/reference.md sections 5, 7)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from cutlib.losses import d_loss, g_loss, r1_penalty
from cutlib.networks import PatchGANDiscriminator

REAL = [[0.5, 1.5], [1.0, -0.2]]  # hand-made logit maps, (2, 2): two images, two patches each
FAKE = [[0.0, 0.3], [-1.0, 2.0]]


def flat(rows):
    return [v for row in rows for v in row]


def mean(values):
    return sum(values) / len(values)


def softplus(v):
    return math.log1p(math.exp(v))


def test_lsgan_discriminator_loss_is_half_the_two_squared_errors():
    expected = 0.5 * (mean([(v - 1) ** 2 for v in flat(REAL)]) + mean([v**2 for v in flat(FAKE)]))
    assert d_loss(torch.tensor(REAL), torch.tensor(FAKE)).item() == pytest.approx(expected, rel=1e-6)
    assert d_loss(torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4), "lsgan").item() == 0.0  # the perfect D


def test_lsgan_generator_loss():
    expected = mean([(v - 1) ** 2 for v in flat(FAKE)])
    assert g_loss(torch.tensor(FAKE)).item() == pytest.approx(expected, rel=1e-6)
    assert g_loss(torch.ones(2, 1, 3, 3)).item() == 0.0


def test_nonsaturating_losses_are_log_sigmoid_cross_entropies():
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected_d = 0.5 * (mean([-math.log(sigmoid(v)) for v in flat(REAL)]) + mean([-math.log(1 - sigmoid(v)) for v in flat(FAKE)]))
    expected_g = mean([softplus(-v) for v in flat(FAKE)])
    assert d_loss(torch.tensor(REAL), torch.tensor(FAKE), mode="nonsaturating").item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss(torch.tensor(FAKE), mode="nonsaturating").item() == pytest.approx(expected_g, rel=1e-6)


def test_losses_accept_maps_of_different_sizes_for_real_and_fake():
    real, fake = torch.full((1, 1, 2, 2), 1.0), torch.full((3, 1, 5, 5), 0.5)
    assert d_loss(real, fake).item() == pytest.approx(0.5 * 0.25)


@pytest.mark.parametrize("mode", ["LSGAN", "vanilla", "wgan"])
def test_unknown_mode_is_an_error_listing_the_modes(mode):
    with pytest.raises(ValueError, match=r"mode must be one of \('lsgan', 'nonsaturating'\)"):
        d_loss(torch.zeros(1), torch.zeros(1), mode=mode)
    with pytest.raises(ValueError, match="mode must be one of"):
        g_loss(torch.zeros(1), mode=mode)


def tiny_discriminator() -> PatchGANDiscriminator:
    torch.manual_seed(0)
    D = PatchGANDiscriminator(input_nc=1, ndf=2, n_layers=1).double()
    for p in D.parameters():  # the reference init (std ~0.02) gives tiny gradients; make them O(1)
        torch.nn.init.normal_(p, std=0.5)
    return D


def test_r1_equals_a_finite_difference_estimate_of_the_gradient_norm():
    D = tiny_discriminator()
    x = torch.randn(2, 1, 10, 10, dtype=torch.float64)
    eps = 1e-6
    grad_fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):  # central differences of sum D(x), one pixel at a time
            step = torch.zeros(x.numel(), dtype=x.dtype)
            step[i] = eps
            step = step.view_as(x)
            grad_fd.view(-1)[i] = (D(x + step).sum() - D(x - step).sum()) / (2 * eps)
    expected = mean([float(grad_fd[b].pow(2).sum()) for b in range(2)])  # mean over the batch of ||grad||^2

    x.requires_grad_(True)
    penalty = r1_penalty(D(x), x)
    assert expected > 1e-3  # a real gradient, not a trivial zero
    assert penalty.item() == pytest.approx(expected, rel=1e-5)


def test_r1_is_differentiable_with_respect_to_the_discriminator():
    """create_graph=True: the penalty's gradient w.r.t. D's weights is right (checked by gradcheck)."""
    D = tiny_discriminator()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    name = "model.6.weight"  # the last conv (3: conv, 4: norm, 5: LeakyReLU, 6: conv -> 1)

    def penalty_of(weight):
        return r1_penalty(functional_call(D, {name: weight}, (x,)), x)

    weight = dict(D.named_parameters())[name].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(penalty_of, (weight,), eps=1e-6, atol=1e-6)
    penalty_of(weight).backward()
    assert weight.grad.abs().sum() > 0


def test_r1_needs_images_that_require_grad():
    D = tiny_discriminator()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"requires_grad_\(True\) BEFORE real_logits = D\(real_images\)"):
        r1_penalty(D(x), x)
