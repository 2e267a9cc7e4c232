"""The SinCUT networks: a StyleGAN2-style generator without a style input, and the StyleGAN2
residual discriminator (paper Sec. 4.3 and Appendix B, single-image translation; book/reference.md section 7).

Building blocks, all from StyleGAN2 (Karras et al., CVPR 2020):
- equalised learning rate: weights are drawn N(0, 1) and multiplied by 1/sqrt(fan_in) at run time,
  so every layer learns at the same speed under Adam;
- blur [1, 3, 3, 1]: an anti-aliasing low-pass filter before every downsampling and after the
  upsampling (transposed) conv;
- residual blocks whose sum is divided by sqrt(2) to keep the signal's variance;
- bias + leaky ReLU(0.2) times sqrt(2) (variance-preserving activation);
- noise injection: per-pixel Gaussian noise times a learned gain (initialised to 0).
The channel widths follow the authors' code at its SinCUT settings (ngf 10, ndf 8, 64x64 crops).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def _check_image(name: str, x: Tensor, channels: int) -> None:
    """Raise a readable error unless ``x`` is a floating (B, channels, H, W) tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, {channels}, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


class Blur(nn.Module):
    """Zero-pad by ``pad`` = (before, after), then filter every channel with the normalised outer
    product of [1, 3, 3, 1] (times ``gain``; 4 after a stride-2 transposed conv keeps the mean)."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        taps = torch.tensor(BLUR_TAPS)
        kernel = torch.outer(taps, taps)
        self.register_buffer("kernel", kernel / kernel.sum() * gain, persistent=False)  # (4, 4)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        p0, p1 = self.pad
        x = F.pad(x, (p0, p1, p0, p1))  # (B, C, H + p0 + p1, W + p0 + p1)
        weight = self.kernel.to(x.dtype).expand(c, 1, *self.kernel.shape)  # one filter per channel
        return F.conv2d(x, weight, groups=c)  # (B, C, H + p0 + p1 - 3, W + p0 + p1 - 3)


class EqualConv2d(nn.Module):
    """Conv2d with N(0, 1) weights scaled by 1/sqrt(fan_in) at run time (equalised learning rate)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; ``activate`` adds bias + scaled leaky ReLU."""

    def __init__(self, in_features: int, out_features: int, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1.0 / math.sqrt(in_features)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight * self.scale) + self.bias  # (B, out_features)
        return F.leaky_relu(out, 0.2) * math.sqrt(2) if self.activate else out


class BiasLeakyReLU(nn.Module):
    """Add a learned per-channel bias, leaky ReLU(0.2), times sqrt(2) (StyleGAN2's fused lrelu)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


class ConvLayer(nn.Module):
    """[blur ->] equalised conv [-> bias + leaky ReLU]. ``downsample`` blurs then uses stride 2,
    halving even H and W; otherwise "same" padding keeps the size."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False, activate: bool = True):
        super().__init__()
        if downsample:
            p = (len(BLUR_TAPS) - 2) + (kernel_size - 1)  # total padding so the blur keeps H + 1
            self.blur = Blur(((p + 1) // 2, p // 2))
            self.conv = EqualConv2d(in_ch, out_ch, kernel_size, stride=2, bias=False)
        else:
            self.blur = nn.Identity()
            self.conv = EqualConv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        # with an activation the bias lives in the activation; without one the reference uses none
        self.act = BiasLeakyReLU(out_ch) if activate else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(self.blur(x)))


class ResBlock(nn.Module):
    """Two 3x3 ConvLayers plus a skip (1x1 conv when the shape changes); (out + skip) / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool = False):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=downsample)
        if downsample or in_ch != out_ch:
            self.skip = ConvLayer(in_ch, out_ch, 1, downsample=downsample, activate=False)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class NoiseInjection(nn.Module):
    """x + gain * n with n ~ N(0, 1) per pixel, shared across channels; gain starts at 0."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, _, h, w = x.shape
        noise = torch.randn(b, 1, h, w, generator=generator, device=x.device, dtype=x.dtype)  # (B, 1, H, W)
        return x + self.weight * noise


class UpConv(nn.Module):
    """Upsampling x2: demodulated 3x3 transposed conv (stride 2), blur x4, noise, bias + leaky ReLU.

    StyleGAN2's modulated conv with no style: modulation is the identity and demodulation scales
    each output filter to unit norm. The blur pads (1, 1) so the output is exactly 2H x 2W.
    """

    def __init__(self, in_ch: int, out_ch: int, inject_noise: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.blur = Blur((1, 1), gain=4.0)
        self.noise = NoiseInjection() if inject_noise else None
        self.act = BiasLeakyReLU(out_ch)

    def demodulated_weight(self) -> Tensor:
        """(out, in, 3, 3) filters scaled by 1/sqrt(fan_in), then each divided by its L2 norm."""
        w = self.weight / math.sqrt(self.weight[0].numel())
        return w * torch.rsqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        w = self.demodulated_weight().transpose(0, 1)  # (in, out, 3, 3): conv_transpose2d's layout
        out = self.blur(F.conv_transpose2d(x, w, stride=2))  # (B, out, 2H + 1, 2W + 1) -> (B, out, 2H, 2W)
        if self.noise is not None:
            out = self.noise(out, generator)
        return self.act(out)


class StyleGAN2Generator(nn.Module):
    """The SinCUT generator (book/reference.md section 7), fully convolutional, with named encoder taps.

    Encoder: rgb (the input itself) -> from_rgb (1x1 conv to 8*ngf) -> down1..downN (residual blocks
    that halve H, W and double the width) -> res1..resK (K = n_blocks // 2 residual blocks).
    Decoder: K residual blocks -> N upsampling convs with noise -> 1x1 conv to RGB with bias + leaky
    ReLU (the reference activates its output too). ngf 10: widths 80 then 160, about 3.07 M parameters.
    H and W must be multiples of 2 ** n_downsampling; the output has the input's size.
    """

    DEFAULT_TAPS = ("rgb", "down1", "res2")  # SinCUT's nce_layers "0,2,4" in the reference

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 10,
        n_downsampling: int = 1,
        n_blocks: int = 6,
        inject_noise: bool = True,
        max_channels: int = 512,
    ):
        super().__init__()
        if ngf < 1 or n_downsampling < 0 or n_blocks < 2 or n_blocks % 2:
            raise ValueError(
                f"need ngf >= 1, n_downsampling >= 0 and an even n_blocks >= 2 (half encoder, half decoder), "
                f"got ngf={ngf}, n_downsampling={n_downsampling}, n_blocks={n_blocks}"
            )
        self.input_nc, self.output_nc, self.n_downsampling = input_nc, output_nc, n_downsampling
        # the reference sizes its widths from the 64 px crop: 8*ngf at full resolution, doubling per
        # downsampling, capped at 512 below full resolution
        widths = [8 * ngf] + [min(8 * ngf * 2**i, max_channels) for i in range(1, n_downsampling + 1)]

        encoder: dict[str, nn.Module] = {"rgb": nn.Identity(), "from_rgb": ConvLayer(input_nc, widths[0], 1)}
        channels = {"rgb": input_nc, "from_rgb": widths[0]}
        for i in range(n_downsampling):
            encoder[f"down{i + 1}"] = ResBlock(widths[i], widths[i + 1], downsample=True)
            channels[f"down{i + 1}"] = widths[i + 1]
        for j in range(n_blocks // 2):
            encoder[f"res{j + 1}"] = ResBlock(widths[-1], widths[-1])
            channels[f"res{j + 1}"] = widths[-1]
        self.encoder = nn.ModuleDict(encoder)  # ordered: the tap names in the order they are computed
        self._tap_channels = channels

        self.decoder_blocks = nn.Sequential(*(ResBlock(widths[-1], widths[-1]) for _ in range(n_blocks // 2)))
        self.ups = nn.ModuleList(
            UpConv(widths[i + 1], widths[i], inject_noise) for i in reversed(range(n_downsampling))
        )
        self.to_rgb = ConvLayer(widths[0], output_nc, 1)

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Every encoder layer name, in the order the layers run; any of them can be tapped."""
        return tuple(self.encoder.keys())

    def tap_channels(self, taps: Sequence[str] | None = None) -> list[int]:
        """Channel count of each named tap (to build the projection heads eagerly)."""
        taps = self.DEFAULT_TAPS if taps is None else taps
        self._check_taps(taps)
        return [self._tap_channels[name] for name in taps]

    def encode(self, x: Tensor, taps: Sequence[str] | None = None) -> list[Tensor]:
        """Features at the named taps, list of (B, C_l, H_l, W_l); stops after the last one needed."""
        taps = self.DEFAULT_TAPS if taps is None else taps
        self._check_input(x)
        self._check_taps(taps)
        wanted, last = set(taps), max((self.tap_names.index(name) for name in taps), default=-1)
        feats, h = {}, x
        for name, layer in list(self.encoder.items())[: last + 1]:
            h = layer(h)
            if name in wanted:
                feats[name] = h
        return [feats[name] for name in taps]

    def tap_cell(self, tap: str, pixel: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
        """The cell (row, col) of ``tap``'s grid over input pixel (row, col): rgb and from_rgb are at full
        resolution, down_i at 1/2^i, the residual blocks at 1/2^n_downsampling (no padding)."""
        self._check_taps([tap])
        (row, col), (height, width) = pixel, image_size
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"pixel (row, col) = {tuple(pixel)} lies outside the {height}x{width} image")
        names = list(self.tap_names)
        scale = 2 ** sum(n.startswith("down") for n in names[: names.index(tap) + 1])
        return row // scale, col // scale

    def decode(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Bottleneck features (B, C, H / 2^N, W / 2^N) -> image (B, output_nc, H, W).

        The injected noise comes from ``generator`` if given, else from the default RNG of h's device.
        """
        h = self.decoder_blocks(h)
        for up in self.ups:
            h = up(h, generator)
        return self.to_rgb(h)

    def forward(
        self, x: Tensor, taps: Sequence[str] | None = None, generator: torch.Generator | None = None
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """x (B, input_nc, H, W) -> G(x) (B, output_nc, H, W); with ``taps``, also the encoder
        features of x at those taps, from the same pass (list of (B, C_l, H_l, W_l))."""
        self._check_input(x)
        if taps is not None:
            self._check_taps(taps)
        feats, h = {}, x
        for name, layer in self.encoder.items():
            h = layer(h)
            feats[name] = h
        image = self.decode(h, generator)
        return image if taps is None else (image, [feats[name] for name in taps])

    def _check_taps(self, taps: Sequence[str]) -> None:
        if isinstance(taps, str):
            raise ValueError(f"taps must be a sequence of names such as {self.DEFAULT_TAPS}, not the single string {taps!r}")
        unknown = [name for name in taps if name not in self._tap_channels]
        if unknown:
            raise ValueError(f"unknown tap(s) {unknown}; this generator's taps are {list(self.tap_names)}")

    def _check_input(self, x: Tensor) -> None:
        _check_image("x", x, self.input_nc)
        m = 2**self.n_downsampling
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(
                f"x has H x W = {x.shape[2]} x {x.shape[3]}; both must be multiples of {m} "
                f"(2 ** n_downsampling) for the output to match: pad or crop the image first"
            )


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: one logit per size x size crop, shape (B, 1).

    from_rgb (1x1 conv) -> one downsampling residual block per halving from ``size`` to 4 ->
    3x3 conv -> flatten the 4x4 map -> linear + leaky ReLU -> linear to one logit. The depth and
    widths follow from ``size`` (a power of 2, as in the reference, which sets it from the crop
    size): ndf 8 at 64x64 gives widths 32, 64, 128, 256, 384 and about 5.89 M parameters.
    Inputs must be exactly size x size; cut larger images into crops (or build another D).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 8, size: int = 64, max_channels: int = 384):
        super().__init__()
        if size < 4 or size > 1024 or size & (size - 1):
            raise ValueError(f"size must be a power of 2 between 4 and 1024 (the crop size), got {size}")
        if ndf * 256 // size < 1:
            raise ValueError(f"ndf={ndf} is too small for size={size}: the first width ndf*256/size is below 1")
        self.input_nc, self.size = input_nc, size

        def width(res: int) -> int:
            """The reference's table: 256 * ndf / res channels, capped at 384 from 32x32 down."""
            w = ndf * 256 // res
            return min(w, max_channels) if res <= 32 else w

        self.from_rgb = ConvLayer(input_nc, width(size), 1)
        resolutions = [size // 2**i for i in range(int(math.log2(size)) - 1)]  # size, size/2, ..., 4
        self.blocks = nn.Sequential(
            *(ResBlock(width(res), width(res // 2), downsample=True) for res in resolutions[:-1])
        )
        c4 = width(4)
        self.final_conv = ConvLayer(c4, c4, 3)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 4 * 4, c4, activate=True), EqualLinear(c4, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, input_nc, size, size) -> logits (B, 1)."""
        _check_image("x", x, self.input_nc)
        if tuple(x.shape[2:]) != (self.size, self.size):
            raise ValueError(
                f"x must be {self.size}x{self.size} crops (this discriminator's size), got "
                f"{x.shape[2]}x{x.shape[3]}: crop or tile the images, or build StyleGAN2Discriminator(size=...)"
            )
        h = self.final_conv(self.blocks(self.from_rgb(x)))  # (B, C4, 4, 4)
        return self.final_linear(h.flatten(1))  # (B, 1)
