"""The generator, its taps, blur sampling, the PatchGAN and receptive fields (book/reference.md sections 3-4)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import nn

from cutlib.nce import ProjectionHeads
from cutlib.networks import (
    BlurDownsample,
    BlurUpsample,
    PatchGANDiscriminator,
    ResnetGenerator,
    init_weights,
    receptive_field,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def small_G() -> ResnetGenerator:
    torch.manual_seed(0)
    return ResnetGenerator(ngf=8, n_blocks=5)


# ----- parameter counts: the figures of book/reference.md sections 2-4 (within 0.5 %) -------------------------------------


@pytest.mark.parametrize("antialias", [True, False])
def test_generator_has_about_11_38_million_parameters(antialias):
    assert n_params(ResnetGenerator(antialias=antialias)) == pytest.approx(11.38e6, rel=0.005)


@pytest.mark.parametrize("antialias", [True, False])
def test_discriminator_has_about_2_77_million_parameters(antialias):
    assert n_params(PatchGANDiscriminator(antialias=antialias)) == pytest.approx(2.77e6, rel=0.005)  # 2.765 M


def test_five_heads_have_about_0_56_million_parameters():
    G = ResnetGenerator()
    assert G.tap_channels() == [3, 128, 256, 256, 256]
    assert n_params(ProjectionHeads(G.tap_channels())) == pytest.approx(0.56e6, rel=0.005)


# ----- layer structure and sizes --------------------------------------------------------------------


def test_default_taps_sit_at_the_reference_indices_0_4_8_12_16():
    G = ResnetGenerator(ngf=4)
    assert [G.tap_names.index(t) for t in ResnetGenerator.DEFAULT_TAPS] == [0, 4, 8, 12, 16]
    layers = list(G.layers.values())
    assert len(layers) == 32  # indices 0..31 of the reference's list
    assert isinstance(layers[0], nn.ReflectionPad2d) and isinstance(layers[4], nn.Conv2d)
    assert isinstance(layers[7], BlurDownsample) and isinstance(layers[11], BlurDownsample)
    assert isinstance(layers[21], BlurUpsample) and isinstance(layers[25], BlurUpsample)
    assert isinstance(layers[31], nn.Tanh)


def test_norms_have_no_affine_parameters_and_convs_have_bias():
    G = ResnetGenerator(ngf=4, n_blocks=2)
    norms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    convs = [m for m in G.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert all(m.bias is not None for m in convs)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [(32, 32), (36, 52)])
def test_output_has_the_input_size_for_multiples_of_4(antialias, size):
    G = ResnetGenerator(ngf=4, n_blocks=2, antialias=antialias)
    y = G(torch.randn(2, 3, *size))
    assert y.shape == (2, 3, *size)
    assert y.abs().max() <= 1.0  # tanh output


def test_other_channel_counts():
    G = ResnetGenerator(input_nc=1, output_nc=2, ngf=4, n_blocks=1)
    assert G(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


@pytest.mark.parametrize("antialias", [True, False])
def test_discriminator_maps_256_to_30x30_logits(antialias):
    D = PatchGANDiscriminator(ndf=4, antialias=antialias)
    assert D(torch.randn(2, 3, 256, 256)).shape == (2, 1, 30, 30)


@pytest.mark.parametrize("antialias", [True, False])
def test_tap_shapes_and_channels(antialias):
    G = ResnetGenerator(ngf=8, n_blocks=5, antialias=antialias)
    feats = G.encode(torch.randn(2, 3, 64, 64))
    # anti-aliased: the down convs run at full resolution and the blur after them halves it;
    # strided: the down convs themselves halve it, so "down1"/"down2" are half the size
    d1, d2 = (64, 32) if antialias else (32, 16)
    assert [tuple(f.shape) for f in feats] == [(2, 3, 70, 70), (2, 16, d1, d1), (2, 32, d2, d2), (2, 32, 16, 16), (2, 32, 16, 16)]
    assert [f.shape[1] for f in feats] == G.tap_channels() == [3, 16, 32, 32, 32]


def test_taps_are_the_outputs_of_the_reference_indices(small_G):
    """Running the layer list by hand: the taps are the outputs of layers 0, 4, 8, 12 and 16."""
    x = torch.randn(1, 3, 32, 32)
    outputs, h = [], x
    for layer in small_G.layers.values():
        h = layer(h)
        outputs.append(h)
    for tap, feat in zip(ResnetGenerator.DEFAULT_TAPS, small_G.encode(x)):
        assert torch.equal(feat, outputs[small_G.tap_names.index(tap)])
    assert torch.equal(outputs[0], F.pad(x, (3, 3, 3, 3), mode="reflect"))  # "rgb" is the padded input
    assert torch.equal(outputs[-1], small_G(x))


def test_forward_with_taps_returns_the_image_and_the_same_features(small_G):
    x = torch.randn(2, 3, 32, 32)
    taps = ("res5", "rgb", "down2")  # any order; features come back in the order asked
    image, feats = small_G(x, taps)
    assert torch.equal(image, small_G(x))
    assert all(torch.equal(a, b) for a, b in zip(feats, small_G.encode(x, taps)))
    assert [f.shape[1] for f in feats] == small_G.tap_channels(taps)


def test_encode_stops_after_the_last_tap(small_G):
    ran = []
    for name, layer in small_G.layers.items():
        layer.register_forward_hook(lambda *_, name=name: ran.append(name))
    small_G.encode(torch.randn(1, 3, 16, 16), ("rgb", "down1"))
    assert ran == ["rgb", "conv_in", "norm_in", "relu_in", "down1"]
    ran.clear()
    small_G(torch.randn(1, 3, 16, 16), ("rgb", "down1"))
    assert ran == list(small_G.tap_names)  # forward runs everything


def test_gradients_flow_into_every_parameter(small_G):
    image, feats = small_G(torch.randn(1, 3, 16, 16), ResnetGenerator.DEFAULT_TAPS)
    (image.sum() + sum(f.sum() for f in feats)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in small_G.parameters())


# ----- errors ---------------------------------------------------------------------------------------


def test_unknown_tap_lists_the_valid_names(small_G):
    with pytest.raises(ValueError, match="unknown tap.*'nope'.*valid names.*'rgb'.*'down1'.*'res5'"):
        small_G.encode(torch.randn(1, 3, 16, 16), ("rgb", "nope"))
    with pytest.raises(ValueError, match="unknown tap"):
        small_G.tap_channels(("bogus",))


def test_default_taps_with_fewer_than_5_blocks_say_so():
    G = ResnetGenerator(ngf=4, n_blocks=3)
    with pytest.raises(ValueError, match=r"n_blocks=3.*needs n_blocks >= 5.*'res3'"):
        G.encode(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="needs n_blocks >= 5"):
        G.tap_channels()
    assert len(G.encode(torch.randn(1, 3, 16, 16), ("rgb", "down1", "down2", "res1", "res3"))) == 5


def test_a_single_string_is_not_a_tap_list(small_G):
    with pytest.raises(ValueError, match="sequence of layer names"):
        small_G.encode(torch.randn(1, 3, 16, 16), "rgb")


def test_wrong_input_shape_is_a_clear_error(small_G):
    with pytest.raises(ValueError, match=r"x must be an image batch of shape \(B, 3, H, W\), got \(1, 4, 16, 16\)"):
        small_G(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PatchGANDiscriminator(ndf=4)(torch.randn(3, 16, 16))


@pytest.mark.parametrize("kwargs", [dict(ngf=0), dict(n_blocks=-1), dict(input_nc=2.5)])
def test_bad_constructor_arguments_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ResnetGenerator(**kwargs)


# ----- initialisation and blur sampling ---------------------------------------------------------------


def test_init_is_xavier_normal_gain_0_02_with_zero_bias():
    G = ResnetGenerator(n_blocks=1)
    conv = G.layers["res1"].conv_block[1]  # 256 -> 256, 3x3: fan_in = fan_out = 2304
    expected_std = 0.02 * (2.0 / (2304 + 2304)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    assert abs(conv.weight.mean().item()) < 0.05 * expected_std
    assert all(torch.all(m.bias == 0) for m in G.modules() if isinstance(m, nn.Conv2d))


def test_init_weights_helper_reinitialises_and_returns_the_module():
    net = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Linear(512, 512))
    nn.init.ones_(net[0].bias)
    assert init_weights(net, gain=0.5) is net
    assert torch.all(net[0].bias == 0) and torch.all(net[1].bias == 0)
    assert abs(net[1].weight.std().item() / (0.5 * (2 / 1024) ** 0.5) - 1) < 0.02


def test_blur_downsample_is_a_mirrored_121_blur_then_every_other_pixel():
    x = torch.randn(2, 3, 7, 10)
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    expected = np.stack([[scipy.ndimage.correlate(c, k, mode="mirror")[::2, ::2] for c in img] for img in x.numpy()])
    y = BlurDownsample(3)(x)
    assert y.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)


def test_blur_upsample_is_bilinear_upsampling():
    """4 * [1,3,3,1]/8 per axis is the 0.25/0.75 bilinear kernel; replicate padding is its edge clamp."""
    x = torch.randn(2, 3, 5, 8)
    y = BlurUpsample(3)(x)
    assert y.shape == (2, 3, 10, 16)
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def test_blur_filters_are_buffers_named_filt():
    G = ResnetGenerator(ngf=4, n_blocks=1)
    keys = G.state_dict().keys()
    assert {"layers.down1_blur.filt", "layers.down2_blur.filt", "layers.up1_blur.filt", "layers.up2_blur.filt"} <= keys
    assert not any(name.endswith("filt") for name, _ in G.named_parameters())


# ----- receptive fields -----------------------------------------------------------------------------


def measured_receptive_field(net: nn.Module, run, size: int) -> int:
    """Width of the input region with a non-zero gradient for the centre output pixel, on a copy of
    ``net`` whose instance norms are removed (their statistics are global) and whose weights are positive
    (so no ReLU cuts a path)."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                setattr(parent, name, nn.Identity())
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0 / p[0].numel() if p.dim() > 1 else 0.01)
    x = (torch.rand(1, net.input_nc, size, size) + 0.5).requires_grad_(True)
    out = run(net, x)  # (1, C, h, w)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum(dim=(0, 2)) > 0)
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("antialias", [True, False])
def test_receptive_fields_of_the_taps_match_a_gradient_measurement(antialias):
    G = ResnetGenerator(ngf=2, n_blocks=5, antialias=antialias)
    for tap in ResnetGenerator.DEFAULT_TAPS:
        measured = measured_receptive_field(G, lambda net, x: net.encode(x, (tap,))[0], size=160)
        assert receptive_field(G, tap) == measured, tap


def test_receptive_fields_are_the_papers_1_9_15_35_99():
    G = ResnetGenerator(ngf=2, n_blocks=9)
    assert [receptive_field(G, t) for t in ResnetGenerator.DEFAULT_TAPS] == [1, 9, 15, 35, 99]


@pytest.mark.parametrize("antialias", [True, False])
def test_discriminator_receptive_field_matches_a_gradient_measurement(antialias):
    D = PatchGANDiscriminator(ndf=2, antialias=antialias)
    measured = measured_receptive_field(D, lambda net, x: net(x), size=160)
    assert receptive_field(D) == measured
    if not antialias:
        assert measured == 70  # the classic "70x70 PatchGAN"


def test_receptive_field_errors(small_G):
    with pytest.raises(ValueError, match="encoder layers only"):
        receptive_field(small_G, "up1")
    with pytest.raises(ValueError, match="needs a tap name"):
        receptive_field(small_G)
    with pytest.raises(ValueError, match="unknown tap"):
        receptive_field(small_G, "res7")
    with pytest.raises(ValueError, match="only meaningful for a ResnetGenerator"):
        receptive_field(PatchGANDiscriminator(ndf=2), "rgb")
