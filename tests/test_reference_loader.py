"""Loading generators saved in the authors' key layout (book/reference.md section 3).

The test builds its own network in the reference layout, straight from the layer list of book/reference.md
section 3 (an nn.Sequential called ``model``, so its keys are ``model.<index>.<...>``), independently
of cutlib's layer names, and checks that weights go both ways and give the same images.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cutlib.networks import ResnetGenerator
from cutlib.pretrained import load_reference_generator, to_reference_state_dict


def binomial(a: list[float]) -> torch.Tensor:
    t = torch.tensor(a)
    f = torch.outer(t, t)
    return f / f.sum()


class RefDownsample(nn.Module):
    """Reflect-pad 1, depthwise normalised [1,2,1] outer product, stride 2."""

    def __init__(self, c: int):
        super().__init__()
        self.register_buffer("filt", binomial([1, 2, 1]).repeat(c, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class RefUpsample(nn.Module):
    """Replicate-pad 1, depthwise transposed conv with 4 * normalised [1,3,3,1] outer product, stride 2,
    cropped to 2H x 2W (the full transposed output is 2H + 6: three rows and columns off each side)."""

    def __init__(self, c: int):
        super().__init__()
        self.register_buffer("filt", 4 * binomial([1, 3, 3, 1]).repeat(c, 1, 1, 1))

    def forward(self, x):
        y = F.conv_transpose2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), self.filt, stride=2, groups=x.shape[1])
        return y[:, :, 3:-3, 3:-3]


class RefResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c),
        )  # fmt: skip

    def forward(self, x):
        return x + self.conv_block(x)


class RefGenerator(nn.Module):
    """The reference's layer list, index by index (book/reference.md section 3)."""

    def __init__(self, ngf: int, n_blocks: int, antialias: bool, input_nc: int = 3, output_nc: int = 3):
        super().__init__()
        IN, L = nn.InstanceNorm2d, [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU()]
        for c in (ngf, 2 * ngf):
            if antialias:
                L += [nn.Conv2d(c, 2 * c, 3, 1, 1), IN(2 * c), nn.ReLU(), RefDownsample(2 * c)]
            else:
                L += [nn.Conv2d(c, 2 * c, 3, 2, 1), IN(2 * c), nn.ReLU()]
        L += [RefResBlock(4 * ngf) for _ in range(n_blocks)]
        for c in (4 * ngf, 2 * ngf):
            if antialias:
                L += [RefUpsample(c), nn.Conv2d(c, c // 2, 3, 1, 1), IN(c // 2), nn.ReLU()]
            else:
                L += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1), IN(c // 2), nn.ReLU()]
        L += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*L)
        for p in self.parameters():  # O(1) random weights, so that a wrong mapping shows in the output
            nn.init.normal_(p, std=0.2)

    def forward(self, x):
        return self.model(x)


def test_the_reference_layout_has_the_documented_keys():
    keys = RefGenerator(ngf=4, n_blocks=9, antialias=True).state_dict().keys()
    assert {"model.1.weight", "model.7.filt", "model.11.filt", "model.21.filt", "model.25.filt", "model.12.conv_block.1.weight"} <= keys
    assert "model.30.weight" in keys and "model.31.weight" not in keys  # the last conv is layer 30


@pytest.mark.parametrize("antialias", [True, False])
def test_reference_weights_give_the_same_images(antialias):
    torch.manual_seed(0)
    ref = RefGenerator(ngf=4, n_blocks=3, antialias=antialias).eval()
    G = load_reference_generator(ref.state_dict())  # ngf, n_blocks and antialias inferred from the keys
    assert (G.ngf, G.n_blocks, G.antialias) == (4, 3, antialias)
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        expected = ref(x)
        assert expected.std() > 0.1  # not a flat image: a wrong mapping would show
        torch.testing.assert_close(G(x), expected)


@pytest.mark.parametrize("antialias", [True, False])
def test_our_weights_round_trip_through_the_reference_layout(antialias):
    torch.manual_seed(1)
    G = ResnetGenerator(input_nc=1, output_nc=2, ngf=4, n_blocks=2, antialias=antialias)
    for p in G.parameters():
        nn.init.normal_(p, std=0.2)
    ref = RefGenerator(ngf=4, n_blocks=2, antialias=antialias, input_nc=1, output_nc=2)
    ref.load_state_dict(to_reference_state_dict(G), strict=True)  # every key and shape as the reference's
    x = torch.randn(1, 1, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), G(x))
        G2 = load_reference_generator(to_reference_state_dict(G))
        assert (G2.input_nc, G2.output_nc) == (1, 2)
        assert torch.equal(G2(x), G(x))


def test_a_dataparallel_checkpoint_file_loads(tmp_path):
    ref = RefGenerator(ngf=4, n_blocks=1, antialias=True)
    path = tmp_path / "latest_net_G.pth"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    for source in (path, str(path)):
        G = load_reference_generator(source)
        x = torch.randn(1, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(G(x), ref(x))


def test_stale_instance_norm_statistics_are_ignored():
    ref = RefGenerator(ngf=4, n_blocks=1, antialias=True)
    state = dict(ref.state_dict())
    state["model.2.running_mean"] = torch.zeros(4)  # written by old PyTorch versions, unused
    load_reference_generator(state)


def test_a_renamed_key_is_reported_by_name():
    state = dict(RefGenerator(ngf=4, n_blocks=2, antialias=True).state_dict())
    state["model.12.conv_block.6.weight"] = state.pop("model.12.conv_block.5.weight")
    with pytest.raises(ValueError) as err:
        load_reference_generator(state)
    message = str(err.value)
    assert "missing keys ['model.12.conv_block.5.weight']" in message
    assert "unexpected keys ['model.12.conv_block.6.weight']" in message


def test_a_heads_key_is_unexpected():
    state = dict(RefGenerator(ngf=4, n_blocks=1, antialias=True).state_dict())
    state["mlp_0.0.weight"] = torch.zeros(256, 3)
    with pytest.raises(ValueError, match=r"unexpected keys \['mlp_0.0.weight'\]"):
        load_reference_generator(state)


def test_wrong_architecture_arguments_name_the_shapes():
    state = RefGenerator(ngf=4, n_blocks=1, antialias=True).state_dict()
    with pytest.raises(ValueError, match=r"wrong shapes \['model.1.weight: \(4, 3, 7, 7\) but expected \(8, 3, 7, 7\)"):
        load_reference_generator(state, ngf=8)
    with pytest.raises(ValueError, match=r"missing keys \['model.13.conv_block.1.weight'.*suggest n_blocks=1"):
        load_reference_generator(state, n_blocks=3)


def test_mixed_antialiasing_is_a_clear_error():
    state = dict(RefGenerator(ngf=4, n_blocks=2, antialias=True).state_dict())
    del state["model.14.filt"]  # as if the upsampling were strided (--no_antialias_up)
    with pytest.raises(ValueError, match="mixes anti-aliased and strided"):
        load_reference_generator(state)


def test_not_a_generator_state_dict():
    with pytest.raises(ValueError, match=r"checkpoint\['G'\]"):
        load_reference_generator({"G": {}, "step": 3})
    with pytest.raises(ValueError, match="'model.1.weight'.*is missing"):
        load_reference_generator({"mlp_0.0.weight": torch.zeros(256, 3)})


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_reference_generator(tmp_path / "nothere.pth")
