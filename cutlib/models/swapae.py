"""The Swapping Autoencoder (Park et al., NeurIPS 2020; Park's thesis ch. 4), small and in one file.

An encoder E splits an image x into a structure code z_s (a map: where things are) and a texture
code z_t (a vector: what they are made of); a generator G turns any pair of codes back into an image:

    E(x) = (z_s, z_t)     z_s: (B, structure_nc, H/4, W/4), unit length at every location
                          z_t: (B, texture_nc), unit length
    G(z_s, z_t)           (B, 3, H, W); z_t modulates every convolution of G (StyleGAN2's weight
                          modulation and demodulation)

Objective of E and G (thesis Eqs. 4.1-4.4; weights of the authors' code, see book/reference.md):

    L_rec           = E_x |x - G(E(x))|_1                                               (4.1)
    L_GAN,rec       = E_x -log D(G(z_s, z_t))                                           (4.2)
    L_GAN,swap      = E_{x1,x2} -log D(G(z_s^1, z_t^2))                                 (4.3)
    L_CooccurGAN    = E_{x1,x2} -log D_patch(crop(G(z_s^1, z_t^2)), crops(x2))          (4.4)
    L_total         = lambda_rec L_rec + lambda_gan (0.5 L_GAN,rec + 1.0 L_GAN,swap) + lambda_cooc L_CooccurGAN

(the thesis writes 0.5 L_GAN,swap; the authors' code weighs it 1.0). The discriminators minimise
the non-saturating losses -log D(real) - log(1 - D(fake)), with 0.5 on each of the two kinds of fake
image, and lazy R1 every ``r1_every`` steps: 0.5 lambda_r1 |grad D(x)|^2 on real images and
0.25 lambda_r1_cooc (|grad_query|^2 + |grad_refs|^2) for D_patch on real crops, times r1_every.

``crop`` takes a random crop whose sides are 1/8 to 1/4 of the image's (each side drawn on its own),
flips it horizontally with p = 0.5, and resamples it to cooc_size pixels (``random_crops``). D_patch
encodes every crop alone; the features of the reference crops of an image are averaged and set beside
the feature of the crop in question, and three dense layers say whether the two come from one image.

A batch of the trainer holds batch["A"] and batch["B"]; both are training images (x = cat(A, B)),
and image i swaps with image i + B (every swap pairs an image of A with one of B). LPIPS, which the
paper's code offers beside L1, needs pretrained weights and is left out (no downloads offline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cutlib.config import TrainConfig
from cutlib.device import HALF_DTYPES, to_device
from cutlib.losses import full_precision
from cutlib.networks import build_optimizer
from cutlib.stylegan2 import BiasLeakyReLU, ConvLayer, EqualConv2d, EqualLinear, ResBlock, StyleGAN2Discriminator


def normalize(x: Tensor, dim: int = 1) -> Tensor:
    """x / |x| along ``dim`` (the codes live on the unit sphere, as the authors' encoder makes them)."""
    return x * torch.rsqrt(x.pow(2).sum(dim=dim, keepdim=True) + 1e-8)


# ---------------------------------------------------------------------------------------------- E
class Encoder(nn.Module):
    """x (B, 3, H, W) -> (z_s (B, Cs, H/4, W/4), z_t (B, Ct)). Widths ngf, 2 ngf, 4 ngf; the texture
    branch downsamples twice more (8 ngf, 16 ngf), averages over positions and ends in a dense layer:
    z_t sees the feature statistics, not where they are (the thesis' inductive bias)."""

    def __init__(self, ngf: int, structure_nc: int, texture_nc: int, input_nc: int = 3):
        super().__init__()
        self.from_rgb = ConvLayer(input_nc, ngf, 1)
        self.down = nn.Sequential(ResBlock(ngf, 2 * ngf, downsample=True), ResBlock(2 * ngf, 4 * ngf, downsample=True))
        self.to_structure = nn.Sequential(ConvLayer(4 * ngf, 4 * ngf, 1), EqualConv2d(4 * ngf, structure_nc, 1))
        self.texture_down = nn.Sequential(ConvLayer(4 * ngf, 8 * ngf, 3, downsample=True),
                                          ConvLayer(8 * ngf, 16 * ngf, 3, downsample=True))
        self.to_texture = EqualLinear(16 * ngf, texture_nc)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.down(self.from_rgb(x))  # (B, 4 ngf, H/4, W/4)
        structure = normalize(self.to_structure(h))  # (B, Cs, H/4, W/4)
        texture = normalize(self.to_texture(self.texture_down(h).mean(dim=(2, 3))))  # (B, Ct)
        return structure, texture


# ---------------------------------------------------------------------------------------------- G
class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: per sample b, w'_oik = w_oik * s_bi with s = A(z_t) (A a dense
    layer, bias 1), then (``demodulate``) w''_oik = w'_oik / sqrt(sum_ik w'_oik^2 + 1e-8)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.affine = EqualLinear(style_dim, in_ch)
        nn.init.ones_(self.affine.bias)  # s starts near 1: the identity modulation
        self.demodulate, self.padding = demodulate, kernel_size // 2

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.affine(style)  # (B, in)
        weight = self.scale * self.weight[None] * s[:, None, :, None, None]  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight.flatten(0, 1), padding=self.padding, groups=b)  # one group per sample
        return out.view(b, -1, h, w)


class StyledConv(nn.Module):
    """[bilinear x2 upsampling ->] modulated 3x3 conv -> bias + leaky ReLU x sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv, self.act, self.upsample = ModulatedConv2d(in_ch, out_ch, 3, style_dim), BiasLeakyReLU(out_ch), upsample

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.act(self.conv(x, style))


class StyledResBlock(nn.Module):
    """Two StyledConvs plus a skip (1x1 conv when the width changes, bilinear x2 when upsampling); / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv1, self.conv2 = StyledConv(in_ch, out_ch, style_dim, upsample), StyledConv(out_ch, out_ch, style_dim)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()
        self.upsample = upsample

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        skip = self.skip(x)
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return (self.conv2(self.conv1(x, style), style) + skip) / math.sqrt(2)


class Generator(nn.Module):
    """G(z_s, z_t) -> (B, output_nc, H, W): z_s * a(z_t) + b(z_t), two StyledResBlocks at H/4 (width 4 ngf),
    two upsampling ones (2 ngf, ngf), and a modulated 1x1 conv to RGB without demodulation, plus a bias."""

    def __init__(self, ngf: int, structure_nc: int, texture_nc: int, output_nc: int = 3):
        super().__init__()
        self.code_scale, self.code_bias = EqualLinear(texture_nc, structure_nc), EqualLinear(texture_nc, structure_nc)
        nn.init.ones_(self.code_scale.bias)
        self.blocks = nn.ModuleList([StyledResBlock(structure_nc, 4 * ngf, texture_nc), StyledResBlock(4 * ngf, 4 * ngf, texture_nc),
                                     StyledResBlock(4 * ngf, 2 * ngf, texture_nc, upsample=True),
                                     StyledResBlock(2 * ngf, ngf, texture_nc, upsample=True)])
        self.to_rgb = ModulatedConv2d(ngf, output_nc, 1, texture_nc, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(1, output_nc, 1, 1))

    def forward(self, structure: Tensor, texture: Tensor) -> Tensor:
        if structure.dim() != 4 or texture.dim() != 2 or structure.shape[0] != texture.shape[0]:
            raise ValueError(f"need a structure code (B, Cs, h, w) and a texture code (B, Ct) of one batch size, got "
                             f"{tuple(structure.shape)} and {tuple(texture.shape)}")
        h = structure * self.code_scale(texture)[:, :, None, None] + self.code_bias(texture)[:, :, None, None]
        for block in self.blocks:
            h = block(h, texture)
        return self.to_rgb(h, texture) + self.rgb_bias


class SwapTranslator(nn.Module):
    """E and G as one image-to-image module, for cutlib.translate: x -> G(z_s(x), z_t) where z_t is the
    texture code of a reference image once ``set_texture`` is called, else x's own (the reconstruction).
    Inputs are padded to a multiple of 16 (the texture branch halves the side four times)."""

    multiple = 16

    def __init__(self, E: Encoder, G: Generator, crop_size: int, input_nc: int = 3):
        super().__init__()
        self.E, self.G, self.crop_size, self.input_nc = E, G, crop_size, input_nc
        self.texture: Tensor | None = None

    @torch.no_grad()
    def set_texture(self, image: Tensor) -> None:
        """Take the texture code of ``image`` (C, H, W) in [-1, 1], seen at the training crop size."""
        x = F.interpolate(image[None].to(self.G.rgb_bias.device), size=(self.crop_size,) * 2, mode="bilinear",
                          antialias=True, align_corners=False)
        self.texture = self.E(x)[1]  # (1, Ct)

    def forward(self, x: Tensor) -> Tensor:
        structure, texture = self.E(x)
        return self.G(structure, texture if self.texture is None else self.texture.expand(len(x), -1))


# ---------------------------------------------------------------------------------------------- D_patch
def crops_at(images: Tensor, scale: Tensor, offset: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crops of images (N, C, H, W): for every (image n, crop t) the window centred at offset[n, t]
    (x, y in [-1, 1], image corners at +-1) with half-sides scale[n, t] (x, y, fractions of the image
    side), mirrored where flip[n, t], resampled bilinearly at size x size pixel centres -> (N, T, C, size, size).
    A window on whole pixels resampled at its own size gives those pixels exactly."""
    n, t = scale.shape[:2]
    centres = (torch.arange(size, device=images.device, dtype=images.dtype) * 2 + 1) / size - 1  # (size,) in (-1, 1)
    gx = centres.view(1, 1, 1, size).expand(n, t, size, size)
    gy = centres.view(1, 1, size, 1).expand(n, t, size, size)
    sign = 1 - 2 * flip.to(images.dtype)  # (N, T): -1 mirrors
    gx = gx * (scale[..., 0] * sign)[..., None, None] + offset[..., 0, None, None]
    gy = gy * scale[..., 1][..., None, None] + offset[..., 1, None, None]
    grid = torch.stack([gx, gy], dim=-1).flatten(0, 1)  # (N*T, size, size, 2)
    repeated = images.repeat_interleave(t, dim=0)  # (N*T, C, H, W): image n for its t crops
    out = F.grid_sample(repeated, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(n, t, *out.shape[1:])


def random_crops(images: Tensor, num_crops: int, size: int, min_scale: float, max_scale: float,
                 generator: torch.Generator) -> Tensor:
    """``num_crops`` random crops per image (the thesis' crop()): each side s ~ U(min_scale, max_scale)
    of the image side, drawn on its own (the aspect ratio varies, as the authors' code), the window
    anywhere inside the image, mirrored with p = 0.5, resized to size x size -> (N, T, C, size, size)."""
    n = images.shape[0]
    side = torch.rand(n, num_crops, 2, generator=generator) * (max_scale - min_scale) + min_scale  # fraction of the side
    centre = (torch.rand(n, num_crops, 2, generator=generator) * 2 - 1) * (1 - side)  # the window stays inside
    flip = torch.rand(n, num_crops, generator=generator) < 0.5
    dev = dict(device=images.device, dtype=images.dtype)
    return crops_at(images, side.to(**dev), centre.to(**dev), flip.to(images.device), size)


class CooccurrenceDiscriminator(nn.Module):
    """D_patch(query crops (N, T, C, s, s), reference crops (N, T', C, s, s)) -> logits (N, T): does each
    query crop come from the image of the references? (thesis Fig. 4.10). Features: 3x3 conv, one
    downsampling ResBlock per halving from s to 4, a ResBlock, a 3x3 conv without padding (4 -> 2);
    the T' reference features of an image are averaged; classifier: 3 dense layers on [query, mean ref]."""

    def __init__(self, size: int, ndf: int, input_nc: int = 3):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"the co-occurrence crops must be a power of 2 of at least 8 pixels, got {size}: set cooc_size")
        cap = min(384, 6 * ndf)  # the authors' widths at ndf 64: 32 at 128 px ... 384 at 8 and 4 px
        width = lambda res: max(1, min(cap, ndf * 64 // res))  # noqa: E731
        self.size = size
        layers, res = [ConvLayer(input_nc, width(size), 3)], size
        while res > 4:
            layers.append(ResBlock(width(res), width(res // 2), downsample=True))
            res //= 2
        layers += [ResBlock(width(4), 2 * cap), EqualConv2d(2 * cap, cap, 3), BiasLeakyReLU(cap)]
        self.features = nn.Sequential(*layers)  # (M, cap, 2, 2)
        hidden = 32 * ndf
        self.classify = nn.Sequential(EqualLinear(2 * 4 * cap, hidden, activate=True), EqualLinear(hidden, hidden, activate=True),
                                      EqualLinear(hidden, hidden // 2, activate=True), EqualLinear(hidden // 2, 1))

    def encode(self, crops: Tensor) -> Tensor:
        """(N, T, C, s, s) -> (N, T, F) features of every crop."""
        n, t = crops.shape[:2]
        return self.features(crops.flatten(0, 1)).view(n, t, -1)

    def forward(self, query: Tensor, reference: Tensor) -> Tensor:
        q, ref = self.encode(query), self.encode(reference).mean(dim=1, keepdim=True)  # (N, T, F), (N, 1, F)
        return self.classify(torch.cat([q, ref.expand_as(q)], dim=2)).squeeze(2)  # (N, T)


# ---------------------------------------------------------------------------------------------- losses
def real_loss(logits: Tensor) -> Tensor:
    """-log sigmoid(l) = softplus(-l), averaged: the non-saturating loss of "this is real"."""
    return F.softplus(-full_precision(logits)).mean()


def fake_loss(logits: Tensor) -> Tensor:
    """-log(1 - sigmoid(l)) = softplus(l), averaged: the discriminator's loss of "this is fake"."""
    return F.softplus(full_precision(logits)).mean()


def gradient_penalty(logits: Tensor, inputs: list[Tensor]) -> Tensor:
    """sum over ``inputs`` of the batch mean of |d sum(logits) / d input|^2 (R1 on real inputs)."""
    grads = torch.autograd.grad(full_precision(logits).sum(), inputs, create_graph=True)
    return sum(g.pow(2).flatten(1).sum(dim=1).mean() for g in grads)


class StepCounter(nn.Module):
    """The number of discriminator updates, as a buffer (it travels in the checkpoint)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))


class SwappingAutoencoderModel(nn.Module):
    """E, G, D (StyleGAN2's image discriminator) and D_patch, with the trainer's interface:
    ``networks``, ``optimizers``, ``training_step(batch)``, ``translate(x)`` (the reconstruction
    G(E(x))), and ``swap(structure_images, texture_images)``. One step: encode and decode once, update
    D and D_patch on the detached outputs, then E and G against the updated discriminators."""

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        super().__init__()
        if cfg.netD != "stylegan2" or cfg.gan_mode != "nonsaturating":
            raise ValueError(f"the Swapping Autoencoder uses netD='stylegan2' and gan_mode='nonsaturating', got "
                             f"{cfg.netD!r} and {cfg.gan_mode!r}: start from --preset swapping_autoencoder")
        if cfg.precision in HALF_DTYPES:
            raise ValueError(f"the Swapping Autoencoder trains in fp32 only, got precision {cfg.precision!r}: use --precision fp32")
        if cfg.crop_size % 16:
            raise ValueError(f"crop_size ({cfg.crop_size}) must be a multiple of 16 (E downsamples the texture branch 4 times)")
        self.cfg = cfg
        self.cooc_size = cfg.cooc_size or cfg.crop_size // 4
        self.E = Encoder(cfg.ngf, cfg.structure_nc, cfg.texture_nc, cfg.input_nc)
        self.G = Generator(cfg.ngf, cfg.structure_nc, cfg.texture_nc, cfg.output_nc)
        self.D = StyleGAN2Discriminator(cfg.output_nc, ndf=cfg.ndf, size=cfg.crop_size, max_channels=min(384, 16 * cfg.ndf))
        self.D_patch = CooccurrenceDiscriminator(self.cooc_size, cfg.ndf, cfg.output_nc)
        self.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        self.precision = "fp32"  # grouped modulated convs: no half-precision path here
        self.optimizers = {"G": build_optimizer([*self.E.parameters(), *self.G.parameters()], cfg),
                           "D": build_optimizer([*self.D.parameters(), *self.D_patch.parameters()], cfg)}
        self.rng = torch.Generator().manual_seed(cfg.seed)  # crop windows and flips: checkpointed by the trainer
        self.counter = StepCounter()  # D updates so far, for lazy R1: checkpointed with the networks

    ddp_networks = compiled_networks = ("E", "G", "D", "D_patch")
    snapshot_networks = ("E", "G")  # what an epoch snapshot keeps: a swap needs both

    def check_distributed(self) -> None:
        """Every configuration trains on several processes (each swaps within its share of the batch)."""

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"E": self.E, "G": self.G, "D": self.D, "D_patch": self.D_patch, "counter": self.counter}

    @torch.no_grad()
    def translate(self, x: Tensor) -> Tensor:
        """The reconstruction G(E(x)) (the trainer's sample grids show how well the codes keep x)."""
        return self.G(*self.E(x))

    @torch.no_grad()
    def swap(self, structure_images: Tensor, texture_images: Tensor) -> Tensor:
        """Hybrids G(z_s(structure_images[i]), z_t(texture_images[i])), both (B, C, H, W) -> (B, C, H, W)."""
        if structure_images.shape != texture_images.shape:
            raise ValueError(f"structure_images and texture_images must have one shape, got {tuple(structure_images.shape)} "
                             f"and {tuple(texture_images.shape)}; repeat one of them to pair every image")
        return self.G(self.E(structure_images)[0], self.E(texture_images)[1])

    def crops(self, images: Tensor) -> Tensor:
        cfg = self.cfg
        return random_crops(images, cfg.cooc_crops, self.cooc_size, cfg.cooc_min_scale, cfg.cooc_max_scale, self.rng)

    @staticmethod
    def partners(n: int) -> Tensor:
        """Image i takes its structure from image partners[i] = (i + n/2) mod n (A[i] <-> B[i])."""
        return torch.roll(torch.arange(n), n // 2)

    def forward_pass(self, real: Tensor) -> tuple[Tensor, Tensor]:
        """(rec, mix): G(E(x)) and the hybrids mix[i] = G(z_s[partner i], z_t[i]) (texture of real[i])."""
        structure, texture = self.E(real)
        return self.G(structure, texture), self.G(structure[self.partners(len(real)).to(real.device)], texture)

    def discriminator_losses(self, real: Tensor, rec: Tensor, mix: Tensor, r1: bool) -> dict[str, Tensor]:
        cfg = self.cfg
        rec, mix = rec.detach(), mix.detach()
        real_crops, ref_crops = self.crops(real), self.crops(real)  # query and reference crops of one image
        if r1:
            real, real_crops, ref_crops = (t.detach().requires_grad_(True) for t in (real, real_crops, ref_crops))
        real_logits, cooc_real = self.D(real), self.D_patch(real_crops, ref_crops)
        losses = {"D_real": real_loss(real_logits) * cfg.lambda_gan,
                  "D_rec": fake_loss(self.D(rec)) * 0.5 * cfg.lambda_gan,
                  "D_mix": fake_loss(self.D(mix)) * 0.5 * cfg.lambda_gan,
                  "Dpatch_real": real_loss(cooc_real) * cfg.lambda_cooc,
                  "Dpatch_mix": fake_loss(self.D_patch(self.crops(mix), ref_crops)) * cfg.lambda_cooc}
        if r1:  # lazy: every r1_every steps, r1_every times the penalty
            losses["D_R1"] = gradient_penalty(real_logits, [real]) * 0.5 * cfg.lambda_r1 * cfg.r1_every
            losses["Dpatch_R1"] = gradient_penalty(cooc_real, [real_crops, ref_crops]) * 0.25 * cfg.lambda_r1_cooc * cfg.r1_every
        return losses

    def generator_losses(self, real: Tensor, rec: Tensor, mix: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        return {"G_L1": F.l1_loss(full_precision(rec), real) * cfg.lambda_rec,
                "G_GAN_rec": real_loss(self.D(rec)) * 0.5 * cfg.lambda_gan,
                "G_GAN_mix": real_loss(self.D(mix)) * cfg.lambda_gan,
                "G_cooc": real_loss(self.D_patch(self.crops(mix), self.crops(real))) * cfg.lambda_cooc}

    def training_step(self, batch: dict) -> dict[str, float]:
        """One iteration on x = cat(batch["A"], batch["B"]): D and D_patch step, then E and G step."""
        cfg = self.cfg
        device = next(self.G.parameters()).device
        real = torch.cat([to_device(batch[k], device, cfg.channels_last) for k in ("A", "B")])  # (2B, C, H, W)
        rec, mix = self.forward_pass(real)

        nets_d = (self.D, self.D_patch)
        for net in nets_d:
            net.requires_grad_(True)
        self.counter.d_steps += 1
        r1 = (cfg.lambda_r1 > 0 or cfg.lambda_r1_cooc > 0) and int(self.counter.d_steps) % cfg.r1_every == 0
        self.optimizers["D"].zero_grad(set_to_none=True)
        d_losses = self.discriminator_losses(real, rec, mix, r1)
        sum(d_losses.values()).backward()
        self.optimizers["D"].step()

        for net in nets_d:
            net.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        g_losses = self.generator_losses(real, rec, mix)
        loss_g = sum(g_losses.values())
        loss_g.backward()
        self.optimizers["G"].step()
        for net in nets_d:
            net.requires_grad_(True)
        out = {k: v.item() for k, v in {**d_losses, **g_losses}.items()}
        out.update(D=sum(v for k, v in out.items() if k.startswith("D")), G=loss_g.item())
        return out
