"""The SinCUT generator and discriminator (cutlib.stylegan2; book/reference.md section 7)."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

from cutlib.stylegan2 import (
    Blur,
    ConvLayer,
    EqualConv2d,
    EqualLinear,
    NoiseInjection,
    ResBlock,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    UpConv,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def G() -> StyleGAN2Generator:
    torch.manual_seed(0)
    return StyleGAN2Generator()


# --- sizes -------------------------------------------------------------------------------------


def test_parameter_counts_match_the_reference_targets():
    G, D = StyleGAN2Generator(ngf=10), StyleGAN2Discriminator(ndf=8, size=64)
    assert n_params(G) == pytest.approx(3.07e6, rel=0.01)
    assert n_params(D) == pytest.approx(5.89e6, rel=0.01)


def test_parameter_counts_follow_the_layer_list():
    # count by hand from the architecture: 3x3 conv c->d with a bias = 9cd + d; a 1x1 skip has no bias
    c1, c2 = 80, 160  # ngf 10: 8 * ngf, then doubled by the one downsampling block
    conv = lambda c, d, k=3: k * k * c * d + d  # noqa: E731
    res_same = 2 * conv(c2, c2)
    g = (
        conv(3, c1, 1)  # from_rgb
        + conv(c1, c1) + conv(c1, c2) + c1 * c2  # down1 (conv1, conv2, 1x1 skip)
        + 6 * res_same  # 3 encoder + 3 decoder blocks
        + (9 * c2 * c1 + c1 + 1)  # upsampling conv: weight, bias, noise gain
        + conv(c1, 3, 1)  # to_rgb
    )
    assert n_params(StyleGAN2Generator(ngf=10)) == g
    w = [32, 64, 128, 256, 384]  # ndf 8 at 64, 32, 16, 8, 4 px
    d = conv(3, w[0], 1) + sum(conv(a, a) + conv(a, b) + a * b for a, b in zip(w, w[1:]))
    d += conv(w[-1], w[-1]) + (16 * w[-1] * w[-1] + w[-1]) + (w[-1] + 1)
    assert n_params(StyleGAN2Discriminator(ndf=8, size=64)) == d


@pytest.mark.parametrize("hw", [(64, 64), (60, 80), (62, 90)])
def test_generator_output_has_the_input_size(G, hw):
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert G(x).shape == x.shape


def test_generator_with_two_downsamplings_needs_multiples_of_4():
    G2 = StyleGAN2Generator(ngf=2, n_downsampling=2, n_blocks=2)
    assert G2.tap_names == ("rgb", "from_rgb", "down1", "down2", "res1")
    assert G2.tap_channels(("down1", "down2")) == [32, 64]
    with torch.no_grad():
        assert G2(torch.randn(1, 3, 20, 36)).shape == (1, 3, 20, 36)
    with pytest.raises(ValueError, match="multiples of 4"):
        G2(torch.randn(1, 3, 22, 36))


def test_generator_rejects_bad_inputs_and_settings(G):
    with pytest.raises(ValueError, match="multiples of 2"):
        G(torch.randn(1, 3, 63, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        G(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        G(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n_blocks"):
        StyleGAN2Generator(n_blocks=5)


@pytest.mark.slow
def test_full_resolution_forward_on_cpu(G):
    # 400x300 takes ~2 s with one thread; the 1200x968 version below takes ~50 s and ~4 GB
    x = torch.rand(1, 3, 300, 400) * 2 - 1
    start = time.perf_counter()
    with torch.no_grad():
        y = G(x)
    print(f"300x400 forward: {time.perf_counter() - start:.1f} s")
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("CUTLIB_FULLRES_TEST"), reason="~50 s and ~4 GB on one CPU thread; set CUTLIB_FULLRES_TEST=1"
)
def test_paper_resolution_forward_on_cpu(G):
    x = torch.rand(1, 3, 968, 1200) * 2 - 1
    with torch.no_grad():
        y = G(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


# --- taps --------------------------------------------------------------------------------------


def test_sincut_taps_are_pixels_down_block_and_second_encoder_block(G):
    assert StyleGAN2Generator.DEFAULT_TAPS == ("rgb", "down1", "res2")
    assert G.tap_names == ("rgb", "from_rgb", "down1", "res1", "res2", "res3")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = G.encode(x)
    assert [tuple(f.shape) for f in feats] == [(2, 3, 64, 64), (2, 160, 32, 32), (2, 160, 32, 32)]
    assert torch.equal(feats[0], x)  # the first tap is the image itself
    assert G.tap_channels() == [3, 160, 160]
    assert G.tap_channels(G.tap_names) == [f.shape[1] for f in G.encode(x, G.tap_names)]


def test_encode_matches_forward_and_stops_after_the_last_tap(G):
    x = torch.randn(2, 3, 32, 48)
    calls = []
    hook = G.encoder["res3"].register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            feats = G.encode(x, ("res2", "rgb"))  # any order; returned in the order asked
            assert not calls, "encode ran past its last tap"
            image, all_feats = G(x, taps=("res2", "rgb"))
            assert calls, "forward must run the whole encoder"
    finally:
        hook.remove()
    assert image.shape == x.shape
    assert [f.shape[1] for f in feats] == [160, 3]
    for a, b in zip(feats, all_feats):
        assert torch.equal(a, b)
    assert G.encode(x, ()) == []


def test_unknown_tap_names_the_valid_ones(G):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'res5'.*'rgb', 'from_rgb', 'down1'"):
        G.encode(x, ("rgb", "res5"))
    with pytest.raises(ValueError, match="single string"):
        G.tap_channels("res2")
    with pytest.raises(ValueError, match="unknown tap"):
        G(x, taps=("down2",))


# --- noise, seeds, gradients -------------------------------------------------------------------


def test_noise_gain_starts_at_zero_then_noise_follows_the_generator():
    torch.manual_seed(1)
    G = StyleGAN2Generator(ngf=2)
    x = torch.randn(2, 3, 16, 16)
    seeded = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    with torch.no_grad():
        assert torch.equal(G(x, generator=seeded(0)), G(x, generator=seeded(1)))  # gain 0: no effect
        G.ups[0].noise.weight.fill_(1.0)
        a, b, c = (G(x, generator=seeded(s)) for s in (0, 0, 1))
        torch.manual_seed(7)
        d = G(x)
        torch.manual_seed(7)
        e = G(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d, e)  # default RNG of x's device, reproducible under a seed


def test_noise_injection_is_one_map_per_pixel_shared_by_channels():
    noise = NoiseInjection()
    with torch.no_grad():
        noise.weight.fill_(2.0)
    x = torch.zeros(2, 5, 8, 8)
    out = noise(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :1].expand_as(out))  # same noise in every channel
    assert not torch.equal(out[0], out[1])  # a different map for each image
    expected = 2.0 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, :1], expected)


def test_construction_is_deterministic_under_a_seed():
    def build():
        torch.manual_seed(3)
        return StyleGAN2Generator(ngf=2), StyleGAN2Discriminator(ndf=8, size=16)

    (g1, d1), (g2, d2) = build(), build()
    for a, b in ((g1, g2), (d1, d2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(4)
    g3 = StyleGAN2Generator(ngf=2)
    assert not torch.equal(g1.encoder["from_rgb"].conv.weight, g3.encoder["from_rgb"].conv.weight)


def test_gradients_reach_every_generator_parameter():
    torch.manual_seed(0)
    G = StyleGAN2Generator(ngf=2)
    x = torch.randn(2, 3, 16, 16)
    image, feats = G(x, taps=StyleGAN2Generator.DEFAULT_TAPS)
    (image.square().mean() + sum(f.square().mean() for f in feats[1:])).backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_discriminator_gradients_and_r1_double_backward():
    torch.manual_seed(0)
    D = StyleGAN2Discriminator(ndf=8, size=16)
    real = torch.randn(3, 3, 16, 16, requires_grad=True)
    logits = D(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)  # R1 needs d(logit)/d(image)
    penalty = grad.pow(2).flatten(1).sum(1).mean()
    (F.softplus(-logits).mean() + penalty).backward()  # the D step: GAN loss + R1, second-order grads
    assert penalty > 0
    for name, p in D.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(p.grad.abs().sum() for p in D.parameters()) > 0


# --- discriminator -----------------------------------------------------------------------------


def test_discriminator_gives_one_logit_per_crop():
    D = StyleGAN2Discriminator()
    with torch.no_grad():
        out = D(torch.randn(5, 3, 64, 64))
    assert out.shape == (5, 1)
    assert len(D.blocks) == 4  # 64 -> 32 -> 16 -> 8 -> 4


@pytest.mark.parametrize("size", [4, 32, 128])
def test_discriminator_depth_follows_its_size(size):
    D = StyleGAN2Discriminator(ndf=8, size=size)
    assert len(D.blocks) == int(math.log2(size)) - 2
    first_width = min(8 * 256 // size, 384) if size <= 32 else 8 * 256 // size  # the reference's table
    assert D.from_rgb.conv.weight.shape[0] == first_width
    with torch.no_grad():
        assert D(torch.randn(2, 3, size, size)).shape == (2, 1)


def test_discriminator_rejects_other_sizes():
    D = StyleGAN2Discriminator(size=64)
    with pytest.raises(ValueError, match="64x64 crops.*got 128x128"):
        D(torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match="power of 2"):
        StyleGAN2Discriminator(size=48)
    with pytest.raises(ValueError, match="too small"):
        StyleGAN2Discriminator(ndf=1, size=1024)


# --- building blocks ---------------------------------------------------------------------------


def test_blur_is_a_normalised_low_pass_filter():
    x = torch.full((1, 2, 10, 10), 3.0)
    out = Blur((2, 1))(x)  # pads 3 in total, the 4x4 filter removes 3: same size
    assert out.shape == x.shape
    assert torch.allclose(out[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2])  # constants pass unchanged
    assert torch.allclose(Blur((1, 1), gain=4.0).kernel.sum(), torch.tensor(4.0))
    checker = (torch.arange(10)[:, None] + torch.arange(10)[None, :]) % 2 * 2.0 - 1  # highest frequency
    assert Blur((2, 1))(checker.view(1, 1, 10, 10))[..., 2:-2, 2:-2].abs().max() < 1e-6


def test_equalised_layers_scale_weights_by_fan_in():
    torch.manual_seed(0)
    conv, linear = EqualConv2d(64, 32, 3), EqualLinear(256, 8)
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.05)  # stored N(0, 1)
    x = torch.randn(8, 64, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight / math.sqrt(64 * 9), conv.bias), atol=1e-5)
    v = torch.randn(4, 256)
    assert torch.allclose(linear(v), v @ (linear.weight / 16.0).t() + linear.bias, atol=1e-5)


def test_downsampling_conv_equals_blur_conv_then_every_second_pixel():
    torch.manual_seed(0)
    layer = ConvLayer(4, 6, 3, downsample=True, activate=False)
    x = torch.randn(2, 4, 12, 16)
    w = layer.conv.weight * layer.conv.scale
    full = F.conv2d(layer.blur(x), w)  # the same filters at every pixel
    assert layer(x).shape == (2, 6, 6, 8)
    assert torch.allclose(layer(x), full[..., ::2, ::2], atol=1e-6)


def test_residual_sum_is_scaled_by_one_over_sqrt2():
    block = ResBlock(4, 4)
    with torch.no_grad():
        block.conv2.conv.weight.zero_()  # the residual branch now outputs 0
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(block(x), x / math.sqrt(2))


def test_upconv_is_zero_insertion_then_conv_with_unit_norm_filters():
    torch.manual_seed(0)
    up = UpConv(5, 3, inject_noise=False)
    w = up.demodulated_weight()  # (out, in, 3, 3)
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    x = torch.randn(2, 5, 6, 7)
    # a stride-2 transposed conv is: put a zero between pixels, pad by k-1, convolve with the flipped filter
    z = torch.zeros(2, 5, 11, 13)
    z[..., ::2, ::2] = x
    y = F.conv2d(F.pad(z, (2, 2, 2, 2)), w.flip(2, 3))  # (2, 3, 13, 15)
    expected = F.leaky_relu(up.blur(y) + up.act.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    assert up(x).shape == (2, 3, 12, 14)
    assert torch.allclose(up(x), expected, atol=1e-5)
    # the blur after it has gain 4: one pixel in four is non-zero, so a constant comes back unchanged
    ones = torch.zeros(1, 1, 13, 13)
    ones[..., ::2, ::2] = 1.0
    assert torch.allclose(up.blur(ones)[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))


def test_decode_of_the_last_encoder_tap_is_the_forward_pass(G):
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        (bottleneck,) = G.encode(x, (G.tap_names[-1],))  # (B, 160, 12, 16)
        image = G.decode(bottleneck, torch.Generator().manual_seed(0))
        assert bottleneck.shape == (2, 160, 12, 16)
        assert torch.equal(image, G(x, generator=torch.Generator().manual_seed(0)))
