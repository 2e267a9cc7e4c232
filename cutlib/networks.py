"""The networks of CUT: the ResNet generator with named encoder taps, blur down/upsampling, the
PatchGAN discriminator, and a loader for the authors' released generators (book/reference.md sections 3-4).

The generator is one ordered list of named layers, in exactly the order of the reference's
``nn.Sequential``. Its encoder is the first part of that list: the NCE layers ("taps") are the
outputs of named layers, so ``G.encode(x, ("rgb", "down1"))`` replaces the reference's magic
indices "0,4".

    layer (anti-aliased)  tap      output for a (B, 3, 256, 256) input, ngf = 64
    0  reflect-pad 3      rgb      (B, 3, 262, 262)
    4  conv 3x3           down1    (B, 128, 256, 256)   before its norm
    8  conv 3x3           down2    (B, 256, 128, 128)   before its norm
    12 .. 20 ResBlocks    res1..9  (B, 256, 64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Reference initialisation: xavier-normal(gain) weights, zero biases, for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _binomial_filter(taps: Sequence[float]) -> Tensor:
    """Normalised 2-D outer product of a 1-D binomial kernel, e.g. [1, 2, 1] -> (3, 3) summing to 1."""
    a = torch.tensor(taps, dtype=torch.float32)
    filt = a[:, None] * a[None, :]
    return filt / filt.sum()


def pad_same_dtype(x: Tensor, padding: tuple[int, ...], mode: str) -> Tensor:
    """F.pad(x, padding, mode) in x's own dtype. Autocast runs the reflect and replicate pads in fp32, so
    under bf16 every pad would cast its input up and the next conv cast it back down (and the backward
    again): a pad only copies values, so it needs no wider type. Same values as F.pad, fewer copies."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.pad(x, padding, mode=mode)
    return F.pad(x, padding, mode=mode)


class ReflectionPad2d(nn.ReflectionPad2d):
    """nn.ReflectionPad2d that pads in its input's dtype under autocast (see pad_same_dtype)."""

    def forward(self, x: Tensor) -> Tensor:
        return pad_same_dtype(x, self.padding, "reflect")


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad 1, depthwise [1,2,1]x[1,2,1] blur, keep every 2nd pixel.

    (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)). Low-pass first, then subsample (Zhang, ICML 2019).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.stride = 2
        # one (3, 3) filter per channel: (C, 1, 3, 3); named `filt` like the reference's buffer
        self.register_buffer("filt", _binomial_filter([1, 2, 1]).expand(channels, 1, 3, 3).clone())

    def forward(self, x: Tensor) -> Tensor:
        x = pad_same_dtype(x, (1, 1, 1, 1), "reflect")
        return F.conv2d(x, self.filt, stride=self.stride, groups=x.shape[1])


def replicate_pad1(x: Tensor) -> Tensor:
    """F.pad(x, (1, 1, 1, 1), mode="replicate") in x's dtype (pad_same_dtype); under torch.compile the same copy
    by indexing, as the compiler's shape rule for the replicate pad's backward gives wrong strides (torch 2.14:
    "expected size 128==128, stride 1==4096" in replication_pad2d_backward). (B, C, H, W) -> (B, C, H+2, W+2)."""
    if not torch.compiler.is_compiling():
        return pad_same_dtype(x, (1, 1, 1, 1), "replicate")
    h, w = x.shape[-2:]
    rows = torch.arange(-1, h + 1, device=x.device).clamp(0, h - 1)  # -1 .. h, clamped to the edge rows
    cols = torch.arange(-1, w + 1, device=x.device).clamp(0, w - 1)
    return x[:, :, rows][:, :, :, cols]


class BlurUpsample(nn.Module):
    """Anti-aliased 2x upsampling: replicate-pad 1, depthwise transposed conv with 4 * [1,3,3,1]x[1,3,3,1]
    (normalised), stride 2, cropped to exactly (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.stride = 2
        # x4 = stride**2 keeps a constant image constant (each output gets 1/4 of the filter's taps)
        self.register_buffer("filt", (4 * _binomial_filter([1, 3, 3, 1])).expand(channels, 1, 4, 4).clone())

    def forward(self, x: Tensor) -> Tensor:
        x = replicate_pad1(x)  # (B, C, H+2, W+2)
        y = F.conv_transpose2d(x, self.filt, stride=self.stride, padding=2, groups=x.shape[1])  # (B, C, 2H+2, 2W+2)
        return y[:, :, 1:-1, 1:-1]  # (B, C, 2H, 2W)


class ResnetBlock(nn.Module):
    """out = x + [reflect-pad 1, conv 3x3, IN, ReLU, reflect-pad 1, conv 3x3, IN](x); keys as the reference."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def tap_cell(pixel: tuple[int, int], image_size: tuple[int, int], tap_size: tuple[int, int]) -> tuple[int, int]:
    """Cell of a (h, w) feature grid over input pixel (row, col) of an (H, W) image: stride s = H / h
    (rounded), and a padded grid (h > H / s) is centred on the image."""
    (row, col), (height, width), (h, w) = pixel, image_size, tap_size
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"pixel (row, col) = {tuple(pixel)} lies outside the {height}x{width} image")
    s = max(1, round(height / h))
    return row // s + (h - height // s) // 2, col // s + (w - width // s) // 2


def _check_image(x: Tensor, channels: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be an image batch of shape (B, {channels}, H, W), got {got}")


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator as CUT uses it (book/reference.md section 3): 2 downsamplings, n_blocks
    residual blocks at 4*ngf channels, 2 upsamplings; instance norm without affine, reflect padding.

    antialias=True (the reference default): stride-1 convs followed by BlurDownsample, and BlurUpsample
    followed by a conv. antialias=False: stride-2 convs and stride-2 transposed convs.
    The output has the input's size when H and W are multiples of 4 (otherwise pad first).
    """

    DEFAULT_TAPS = ("rgb", "down1", "down2", "res1", "res5")  # the reference's nce_layers "0,4,8,12,16"

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9, antialias: bool = True):
        super().__init__()
        _check_positive(input_nc=input_nc, output_nc=output_nc, ngf=ngf)
        if not isinstance(n_blocks, int) or n_blocks < 0:
            raise ValueError(f"n_blocks must be a non-negative integer, got {n_blocks!r}")
        self.input_nc, self.output_nc, self.ngf, self.n_blocks, self.antialias = input_nc, output_nc, ngf, n_blocks, antialias
        layers: list[tuple[str, nn.Module, int]] = []  # (name, layer, output channels), in reference order
        layers += [
            ("rgb", ReflectionPad2d(3), input_nc),  # tap "rgb": the padded input itself
            ("conv_in", nn.Conv2d(input_nc, ngf, 7), ngf),
            ("norm_in", nn.InstanceNorm2d(ngf), ngf),
            ("relu_in", nn.ReLU(True), ngf),
        ]
        for i, c in ((1, ngf), (2, 2 * ngf)):  # c -> 2c channels, half the resolution; tap "down{i}" = the conv
            if antialias:
                layers += [
                    (f"down{i}", nn.Conv2d(c, 2 * c, 3, stride=1, padding=1), 2 * c),
                    (f"down{i}_norm", nn.InstanceNorm2d(2 * c), 2 * c),
                    (f"down{i}_relu", nn.ReLU(True), 2 * c),
                    (f"down{i}_blur", BlurDownsample(2 * c), 2 * c),
                ]
            else:
                layers += [
                    (f"down{i}", nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), 2 * c),
                    (f"down{i}_norm", nn.InstanceNorm2d(2 * c), 2 * c),
                    (f"down{i}_relu", nn.ReLU(True), 2 * c),
                ]
        layers += [(f"res{i}", ResnetBlock(4 * ngf), 4 * ngf) for i in range(1, n_blocks + 1)]
        for i, c in ((1, 4 * ngf), (2, 2 * ngf)):  # c -> c/2 channels, twice the resolution
            if antialias:
                layers += [(f"up{i}_blur", BlurUpsample(c), c), (f"up{i}", nn.Conv2d(c, c // 2, 3, padding=1), c // 2)]
            else:
                layers += [(f"up{i}", nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), c // 2)]
            layers += [(f"up{i}_norm", nn.InstanceNorm2d(c // 2), c // 2), (f"up{i}_relu", nn.ReLU(True), c // 2)]
        layers += [
            ("pad_out", ReflectionPad2d(3), ngf),
            ("conv_out", nn.Conv2d(ngf, output_nc, 7), output_nc),
            ("tanh", nn.Tanh(), output_nc),
        ]
        self.layers = nn.ModuleDict([(name, layer) for name, layer, _ in layers])
        self._channels = {name: c for name, _, c in layers}
        init_weights(self)

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Every layer name, in the order the layers run; any of them can be tapped."""
        return tuple(self.layers.keys())

    def _tap_positions(self, taps: Sequence[str]) -> list[int]:
        """Validate tap names; return their positions in the layer list."""
        if isinstance(taps, str):
            raise ValueError(f"taps must be a sequence of layer names such as {self.DEFAULT_TAPS}, not the single string {taps!r}")
        names = self.tap_names
        unknown = [t for t in taps if t not in names]
        if unknown:
            message = f"unknown tap(s) {unknown} for this generator; valid names are {list(names)}"
            if any(t.startswith("res") for t in unknown):
                n = self.n_blocks
                message += (
                    f". It has n_blocks={n} residual blocks (res1..res{n}); DEFAULT_TAPS {self.DEFAULT_TAPS} needs "
                    f"n_blocks >= 5: pass e.g. taps=('rgb', 'down1', 'down2', 'res1', 'res{max(n, 1)}')"
                )
            raise ValueError(message)
        return [names.index(t) for t in taps]

    def tap_channels(self, taps: Sequence[str] | None = None) -> list[int]:
        """Channel count C_l of each tap (e.g. 3, 2ngf, 4ngf, 4ngf, 4ngf): what the projection heads take."""
        taps = self.DEFAULT_TAPS if taps is None else taps
        self._tap_positions(taps)
        return [self._channels[t] for t in taps]

    def _run(self, x: Tensor, taps: Sequence[str], stop_after_last_tap: bool) -> tuple[Tensor, list[Tensor]]:
        last = max(self._tap_positions(taps), default=-1)
        _check_image(x, self.input_nc)
        found: dict[str, Tensor] = {}
        for position, (name, layer) in enumerate(self.layers.items()):
            if stop_after_last_tap and position > last:
                break
            x = layer(x)
            if name in taps:
                found[name] = x
        return x, [found[t] for t in taps]

    def encode(self, x: Tensor, taps: Sequence[str] | None = None) -> list[Tensor]:
        """Features of the requested taps, list of (B, C_l, H_l, W_l) in the order asked; stops after the last one."""
        taps = self.DEFAULT_TAPS if taps is None else taps
        return self._run(x, taps, stop_after_last_tap=True)[1]

    def tap_size(self, tap: str, height: int, width: int) -> tuple[int, int]:
        """(h_l, w_l) of the feature map of ``tap`` for an input of height x width, from the layers' geometry."""
        size = [height, width]
        for name, layer in self.layers.items():
            for i, n in enumerate(size):
                if isinstance(layer, nn.ReflectionPad2d):
                    size[i] = n + 2 * layer.padding[0]
                elif isinstance(layer, nn.Conv2d):
                    size[i] = (n + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
                elif isinstance(layer, nn.ConvTranspose2d):
                    k, st, pad, out = layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.output_padding[0]
                    size[i] = (n - 1) * st - 2 * pad + (k - 1) + out + 1
                elif isinstance(layer, BlurDownsample):
                    size[i] = -(-n // 2)
                elif isinstance(layer, BlurUpsample):
                    size[i] = 2 * n
            if name == tap:
                return size[0], size[1]
        raise ValueError(f"unknown tap {tap!r}; valid names are {list(self.tap_names)}")

    def tap_cell(self, tap: str, pixel: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
        """The cell (row, col) of ``tap``'s feature grid that sits over input pixel (row, col) of an image of
        image_size = (H, W): the pixel divided by the tap's stride, shifted by the tap's padding (rgb: 3)."""
        return tap_cell(pixel, image_size, self.tap_size(tap, *image_size))

    def forward(self, x: Tensor, taps: Sequence[str] | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """(B, input_nc, H, W) -> image (B, output_nc, H, W) in [-1, 1]; with taps, (image, features of
        the taps) from the same pass."""
        image, feats = self._run(x, taps or (), stop_after_last_tap=False)
        return image if taps is None else (image, feats)


class PatchGANDiscriminator(nn.Module):
    """The 70x70 PatchGAN (book/reference.md section 4): one real/fake logit per overlapping patch.

    (B, input_nc, 256, 256) -> (B, 1, 30, 30). antialias=True (reference default): k4 s1 convs followed by
    BlurDownsample; antialias=False: k4 s2 convs (the original pix2pix/CycleGAN network).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, antialias: bool = True):
        super().__init__()
        _check_positive(input_nc=input_nc, ndf=ndf, n_layers=n_layers)
        self.input_nc = input_nc

        def down(c_in: int, c_out: int, norm: bool) -> list[nn.Module]:
            """conv 4x4 [+ IN] + LeakyReLU, halving the resolution (blur after, or stride 2)."""
            conv = nn.Conv2d(c_in, c_out, 4, stride=1 if antialias else 2, padding=1)
            block = [conv] + ([nn.InstanceNorm2d(c_out)] if norm else []) + [nn.LeakyReLU(0.2, True)]
            return block + ([BlurDownsample(c_out)] if antialias else [])

        widths = [ndf * min(2**i, 8) for i in range(n_layers + 1)]  # 64, 128, 256, 512
        layers = down(input_nc, widths[0], norm=False)  # no norm on the first layer
        for c_in, c_out in zip(widths[:-2], widths[1:-1]):
            layers += down(c_in, c_out, norm=True)
        layers += [
            nn.Conv2d(widths[-2], widths[-1], 4, padding=1), nn.InstanceNorm2d(widths[-1]), nn.LeakyReLU(0.2, True),
            nn.Conv2d(widths[-1], 1, 4, padding=1),  # one logit per patch
        ]  # fmt: skip
        self.model = nn.Sequential(*layers)  # keys model.<index> as in the reference
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, input_nc, H, W) -> logits (B, 1, H', W'), e.g. 256 -> 30."""
        _check_image(x, self.input_nc)
        return self.model(x)


def _spatial_layers(module: nn.Module):
    """Yield (kernel, stride, dilation) of each layer that changes what a pixel sees, in run order."""
    if isinstance(module, nn.ConvTranspose2d | BlurUpsample):
        raise ValueError(
            f"receptive_field covers encoder layers only; {type(module).__name__} upsamples (decoder), pick a tap up to the last res block"
        )
    if isinstance(module, nn.Conv2d):
        yield module.kernel_size[0], module.stride[0], module.dilation[0]
    elif isinstance(module, BlurDownsample):
        yield module.filt.shape[-1], module.stride, 1
    else:  # containers (ModuleDict, Sequential, ResnetBlock); pads, norms and activations add nothing
        for child in module.children():
            yield from _spatial_layers(child)


def receptive_field(net: nn.Module, tap: str | None = None) -> int:
    """Side in input pixels of the square that one output pixel of ``tap`` sees, through the convolutions.

    Analytic: r <- r + (k - 1) * d * j, j <- j * s over the layers (j: input pixels per feature step).
    For a ResnetGenerator give a tap name (ResnetGenerator.DEFAULT_TAPS -> 1, 9, 15, 35, 99, paper Sec. 4 / App.);
    for any other network (e.g. PatchGANDiscriminator) tap=None means its output.
    Instance norm's statistics are global and are not counted, as in the paper.
    """
    if isinstance(net, ResnetGenerator):
        if tap is None:
            raise ValueError(f"receptive_field(G, tap) needs a tap name for a generator, e.g. one of {ResnetGenerator.DEFAULT_TAPS}")
        last = net._tap_positions([tap])[0]
        modules: nn.Module = nn.Sequential(*list(net.layers.values())[: last + 1])
    elif tap is not None:
        raise ValueError(f"tap={tap!r} is only meaningful for a ResnetGenerator, got a {type(net).__name__}")
    else:
        modules = net
    r, j = 1, 1
    for k, s, d in _spatial_layers(modules):
        r += (k - 1) * d * j
        j *= s
    return r


# ---------------------------------------------------------------------------------------------------
# The authors' released generators (book/reference.md section 3): keys "model.<index>.<rest>", where index
# is the position in their nn.Sequential. Our layers run in that same order, so index i is our i-th
# layer name: "model.12.conv_block.1.weight" <-> "layers.res1.conv_block.1.weight".


# ----------------------------------------------------------------------------------------------
# what a TrainConfig builds (cutlib.config): the networks and their optimiser


def build_generator(cfg) -> nn.Module:
    """The generator named by cfg.netG ("resnet" or "stylegan2") at the config's sizes."""
    if cfg.netG == "resnet":
        return ResnetGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.n_blocks, antialias=cfg.antialias)
    from cutlib.stylegan2 import StyleGAN2Generator

    return StyleGAN2Generator(cfg.input_nc, cfg.output_nc, ngf=cfg.ngf)


def build_discriminator(cfg) -> nn.Module:
    """The discriminator named by cfg.netD ("patchgan" or "stylegan2")."""
    if cfg.netD == "patchgan":
        return PatchGANDiscriminator(cfg.output_nc, cfg.ndf, cfg.n_layers_D, antialias=cfg.antialias)
    from cutlib.stylegan2 import StyleGAN2Discriminator

    return StyleGAN2Discriminator(cfg.output_nc, ndf=cfg.ndf, size=cfg.crop_size)


def build_optimizer(params, cfg) -> torch.optim.Adam:
    """Adam(lr, (beta1, beta2)) of the config: every network of every method trains with it."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
