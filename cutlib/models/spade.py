"""SPADE (Park et al., CVPR 2019; Park's thesis ch. 2): semantic image synthesis, label map -> photo,
learnt from aligned pairs, small and in one file.

A normalisation layer with a learnt affine map (BatchNorm, InstanceNorm) "washes out" a label map: a
region of one label is a constant, and a constant minus its mean is zero. SPADE normalises the
activations h without parameters and takes the scale and the bias, per pixel, from the label map m
(thesis Eq. 2.1, with mu and sigma of Eqs. 2.2-2.3 over (n, y, x) for BatchNorm):

    out_{n,c,y,x} = gamma_{c,y,x}(m) * (h_{n,c,y,x} - mu_c) / sigma_c + beta_{c,y,x}(m)          (2.1)

gamma and beta come from a two-layer conv net on m resized (nearest) to h's size: 3x3 conv to
``spade_nhidden`` + ReLU, then one 3x3 conv each. The authors' code multiplies by (1 + gamma), so
that a freshly initialised layer is the plain normalisation; we do the same:

    out = norm(h) * (1 + gamma(m)) + beta(m)

The generator (thesis Fig. 2.12) has no encoder: it starts from m resized to crop_size / 2**num_upsampling,
a 3x3 conv, then SPADE ResBlocks with nearest x2 upsampling (the authors' "normal" layout: a block,
up, two blocks, then up + block halving the width, until full size), LeakyReLU, a 3x3 conv to RGB and
tanh. Spectral norm on every conv of G (the thesis) and on D's middle convs (the authors' code). No VAE
image encoder (the multi-modal and style-guided synthesis of the thesis' Sec. 2.3): G is deterministic.

The discriminator is pix2pixHD's multiscale PatchGAN on (one-hot labels, image): ``num_D`` PatchGANs
of depth ``n_layers_D`` (k4 convs, stride 2 but the last two, InstanceNorm), the image halved (3x3
average pooling) between them. Objective (pix2pixHD's with hinge in place of LSGAN, book/reference.md):

    L_D = mean_k [ mean relu(1 - D_k(m, y)) + mean relu(1 + D_k(m, G(m))) ]
    L_G = lambda_gan * mean_k [ -mean D_k(m, G(m)) ]
          + lambda_feat * mean_k sum_j |D_k^(j)(m, G(m)) - D_k^(j)(m, y)|_1        (feature matching)

where D_k^(j) are the outputs of D_k's intermediate layers (the last, the logits, excluded). The VGG
perceptual loss of the authors (x10) needs ImageNet weights that are not available offline: left out.

The generator's input is what every generator of the course gets on ``city``: the COLOUR label map in
[-1, 1] (trainA/); ``SPADEGenerator`` turns it into a one-hot map (nearest colour of CITY_PALETTE), so
that ``G(x)`` works in evaluate, translate and the trainer's sample grids unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from cutlib.config import TrainConfig
from cutlib.data.city import CITY_PALETTE
from cutlib.device import HALF_DTYPES, to_device
from cutlib.losses import full_precision

LABEL_NC = len(CITY_PALETTE)  # 19 Cityscapes train ids


def colour_to_onehot(x: Tensor, palette: Tensor) -> Tensor:
    """(B, 3, H, W) colour label maps in [-1, 1] -> (B, K, H, W) one-hot maps: every pixel takes the class
    of the nearest colour of ``palette`` (K, 3) in [-1, 1] (bicubic resizing blurs the colours at edges)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"SPADE's generator takes colour label maps (B, 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
    dist = (x[:, None] - palette[None, :, :, None, None].to(x)).pow(2).sum(dim=2)  # (B, K, H, W)
    return F.one_hot(dist.argmin(dim=1), len(palette)).permute(0, 3, 1, 2).to(x.dtype)  # (B, K, H, W)


def init_xavier(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The authors' initialisation (xavier-normal(gain) weights, zero biases) of every conv, spectral-normed ones
    included (their raw weight, ``parametrizations.weight.original``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
            nn.init.xavier_normal_(w, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def hinge_d_loss(real_logits: Tensor | None, fake_logits: Tensor | None) -> Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017; Miyato et al. 2018): mean relu(1 - D(y)) + mean relu(1 + D(G(m))).
    None leaves a term out (the trainer logs the real and the fake term apart)."""
    if real_logits is None and fake_logits is None:
        raise ValueError("hinge_d_loss needs the logits of real or of fake images (both are None)")
    real = F.relu(1 - full_precision(real_logits)).mean() if real_logits is not None else 0.0
    fake = F.relu(1 + full_precision(fake_logits)).mean() if fake_logits is not None else 0.0
    return real + fake


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """The generator's hinge loss: -mean D(G(m))."""
    return -full_precision(fake_logits).mean()


def feature_matching_loss(fake_feats: list[list[Tensor]], real_feats: list[list[Tensor]]) -> Tensor:
    """pix2pixHD's GAN feature matching: the mean over discriminators k of sum_j |fake_kj - real_kj|_1 (each
    an L1 mean), real features detached; every list's last item (the logits) is left out."""
    if len(fake_feats) != len(real_feats) or not fake_feats:
        raise ValueError(f"need the features of the same discriminators, got {len(fake_feats)} and {len(real_feats)}")
    total = sum(F.l1_loss(full_precision(f), full_precision(r).detach()) for fk, rk in zip(fake_feats, real_feats)
                for f, r in zip(fk[:-1], rk[:-1]))
    return total / len(fake_feats)


# ---------------------------------------------------------------------------------------------- G
class SPADE(nn.Module):
    """Eq. 2.1: norm(h) * (1 + gamma(m)) + beta(m), norm parameter-free (batch or instance), m resized to h (nearest)."""

    def __init__(self, channels: int, label_nc: int, hidden: int = 128, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        self.norm = nn.BatchNorm2d(channels, affine=False) if norm == "batch" else nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def modulation(self, labels: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(gamma, beta), each (B, C, h, w), from the one-hot labels (B, K, H, W) resized to ``size`` (nearest)."""
        m = F.interpolate(labels, size=size, mode="nearest")
        hidden = self.shared(m)  # (B, hidden, h, w)
        return self.gamma(hidden), self.beta(hidden)

    def forward(self, h: Tensor, labels: Tensor) -> Tensor:
        gamma, beta = self.modulation(labels, h.shape[2:])
        return self.norm(h) * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
    """Thesis Fig. 2.11: [SPADE, LeakyReLU(0.2), 3x3 conv] x 2 (width min(in, out) between), plus a skip that is
    the identity, or SPADE + 1x1 conv (no bias) when the width changes."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int, norm: str):
        super().__init__()
        fmid = min(fin, fout)
        self.norm_0, self.conv_0 = SPADE(fin, label_nc, hidden, norm), spectral_norm(nn.Conv2d(fin, fmid, 3, padding=1))
        self.norm_1, self.conv_1 = SPADE(fmid, label_nc, hidden, norm), spectral_norm(nn.Conv2d(fmid, fout, 3, padding=1))
        self.learned_skip = fin != fout
        if self.learned_skip:
            self.norm_s, self.conv_s = SPADE(fin, label_nc, hidden, norm), spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        skip = self.conv_s(self.norm_s(x, labels)) if self.learned_skip else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, labels), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, labels), 0.2))
        return skip + dx


class SPADEGenerator(nn.Module):
    """Colour label map (B, 3, S, S) in [-1, 1] -> photo (B, output_nc, S, S) in [-1, 1]. Widths: ngf * 2**(n_up - 1)
    at the start (S / 2**n_up), halved by each of the last n_up - 1 stages down to ngf (authors: 16 ngf ... ngf)."""

    def __init__(self, ngf: int = 64, num_upsampling: int = 5, output_nc: int = 3, hidden: int = 128, norm: str = "batch"):
        super().__init__()
        if ngf < 1 or num_upsampling < 1:
            raise ValueError(f"ngf and num_upsampling must be at least 1, got {ngf} and {num_upsampling}")
        self.num_upsampling, self.label_nc = num_upsampling, LABEL_NC
        self.multiple = 2**num_upsampling  # the sides it takes (cutlib.translate pads to them)
        self.input_nc, self.output_nc = 3, output_nc  # colour label maps in, photos out
        self.register_buffer("palette", torch.tensor(CITY_PALETTE, dtype=torch.float32) / 127.5 - 1, persistent=False)
        top = ngf * 2 ** (num_upsampling - 1)
        block = lambda fin, fout: SPADEResBlock(fin, fout, LABEL_NC, hidden, norm)  # noqa: E731
        self.head = spectral_norm(nn.Conv2d(LABEL_NC, top, 3, padding=1))  # the label map at the start size
        self.head_0 = block(top, top)
        self.middle = nn.ModuleList([block(top, top), block(top, top)])  # after the first upsampling
        self.ups = nn.ModuleList([block(top // 2**i, top // 2 ** (i + 1)) for i in range(num_upsampling - 1)])
        self.to_rgb = spectral_norm(nn.Conv2d(ngf, output_nc, 3, padding=1))

    def onehot(self, x: Tensor) -> Tensor:
        """Colour label maps (B, 3, H, W) in [-1, 1] -> one-hot (B, 19, H, W)."""
        return colour_to_onehot(x, self.palette)

    def synthesize(self, labels: Tensor) -> Tensor:
        """One-hot label maps (B, 19, H, W), H and W multiples of 2**num_upsampling -> images (B, output_nc, H, W)."""
        m = self.multiple
        if labels.dim() != 4 or labels.shape[1] != self.label_nc or min(labels.shape[2:]) < m or \
                labels.shape[2] % m or labels.shape[3] % m:
            raise ValueError(f"need one-hot labels (B, {self.label_nc}, H, W) with H and W multiples of 2**{self.num_upsampling}"
                             f" = {m}, got {tuple(labels.shape)}")
        start = (labels.shape[2] // m, labels.shape[3] // m)
        h = self.head_0(self.head(F.interpolate(labels, size=start, mode="nearest")), labels)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        for blk in self.middle:
            h = blk(h, labels)
        for blk in self.ups:
            h = blk(F.interpolate(h, scale_factor=2, mode="nearest"), labels)
        return torch.tanh(self.to_rgb(F.leaky_relu(h, 0.2)))

    def forward(self, x: Tensor) -> Tensor:
        return self.synthesize(self.onehot(x))


def spade_generator(cfg: TrainConfig) -> SPADEGenerator:
    """The generator a spade config builds (its weights come from a checkpoint's "G": cutlib.translate)."""
    return SPADEGenerator(cfg.ngf, cfg.num_upsampling, cfg.output_nc, cfg.spade_nhidden, cfg.spade_norm)


# ---------------------------------------------------------------------------------------------- D
class NLayerDiscriminator(nn.Module):
    """The authors' PatchGAN (pix2pixHD's): a k4 s2 conv + LeakyReLU(0.2), then n_layers - 1 k4 convs with spectral
    norm, InstanceNorm and LeakyReLU (stride 2, the last stride 1; widths doubling to 8 ndf), then a k4 s1 conv to
    one logit per patch; padding 2. ``forward`` returns every layer's output, the logits last."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        widths = [ndf * min(2**i, 8) for i in range(n_layers)]
        layers = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, 2, 2), nn.LeakyReLU(0.2))]
        for i in range(1, n_layers):
            stride = 2 if i < n_layers - 1 else 1
            layers.append(nn.Sequential(spectral_norm(nn.Conv2d(widths[i - 1], widths[i], 4, stride, 2)),
                                        nn.InstanceNorm2d(widths[i]), nn.LeakyReLU(0.2)))
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats  # intermediate maps, then the logits (B, 1, h, w)


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs on (labels, image) at full, half, ... resolution (3x3 average pooling, stride 2)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4, num_D: int = 2):
        super().__init__()
        self.scales = nn.ModuleList([NLayerDiscriminator(input_nc, ndf, n_layers) for _ in range(num_D)])

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        out = []
        for D in self.scales:
            out.append(D(x))
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return out


# ---------------------------------------------------------------------------------------------- the objective
class SPADEModel(nn.Module):
    """G (SPADEGenerator) and D (MultiscaleDiscriminator) with the trainer's interface: ``networks``,
    ``optimizers``, ``training_step(batch)``, ``translate(x)``. batch["A"]: colour label maps, batch["B"]:
    the photos of those very layouts (cfg.paired). One step as the authors' trainer: G steps against D,
    then D steps on a fake made again by the updated G (without gradients)."""

    @staticmethod
    def make_discriminator(cfg: TrainConfig) -> tuple[nn.Module, int]:
        """SPADE's D for ``cfg`` (not initialised) and its input channels (one-hot labels + image); the trainer's
        size check (cutlib.models.check_discriminator) runs it on a crop-sized zero input."""
        return MultiscaleDiscriminator(LABEL_NC + cfg.output_nc, cfg.ndf, cfg.n_layers_D, cfg.num_D), LABEL_NC + cfg.output_nc

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        super().__init__()
        if cfg.gan_mode != "hinge" or not cfg.paired:
            raise ValueError(f"SPADE trains with gan_mode='hinge' on paired data, got gan_mode={cfg.gan_mode!r}, "
                             f"paired={cfg.paired}: start from --preset spade")
        if cfg.input_nc != 3:
            raise ValueError(f"SPADE reads colour label maps (input_nc 3), got input_nc={cfg.input_nc}")
        if cfg.precision in HALF_DTYPES:
            raise ValueError(f"SPADE trains in fp32 only here, got precision {cfg.precision!r}: use --precision fp32")
        self.cfg = cfg
        self.G = init_xavier(spade_generator(cfg), cfg.init_gain)
        self.D = init_xavier(self.make_discriminator(cfg)[0], cfg.init_gain)
        self.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        self.precision = "fp32"
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {"G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas),
                           "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr_D or cfg.lr, betas=betas)}  # TTUR
        self.rng = torch.Generator().manual_seed(cfg.seed)  # nothing random in the objective; the trainer saves it

    ddp_networks = ("G", "D")

    def check_distributed(self) -> None:
        """Every configuration trains on several processes (BatchNorm statistics stay per process; the authors sync them)."""

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    @torch.no_grad()
    def translate(self, x: Tensor) -> Tensor:
        """Colour label maps -> synthesised photos."""
        return self.G(x)

    def discriminate(self, labels: Tensor, fake: Tensor, real: Tensor) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        """D's outputs on (labels, fake) and (labels, real), in one batch as the authors (one set of IN statistics each)."""
        out = self.D(torch.cat([torch.cat([labels, fake], 1), torch.cat([labels, real], 1)]))
        b = len(fake)
        return [[t[:b] for t in scale] for scale in out], [[t[b:] for t in scale] for scale in out]

    def generator_losses(self, labels: Tensor, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        pred_fake, pred_real = self.discriminate(labels, fake, real)
        gan = sum(hinge_g_loss(scale[-1]) for scale in pred_fake) / len(pred_fake)
        losses = {"G_GAN": gan * cfg.lambda_gan}
        if cfg.lambda_feat > 0:
            losses["G_feat"] = feature_matching_loss(pred_fake, pred_real) * cfg.lambda_feat
        return losses

    def discriminator_losses(self, labels: Tensor, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        pred_fake, pred_real = self.discriminate(labels, fake.detach(), real)
        n = len(pred_fake)
        return {"D_fake": sum(hinge_d_loss(None, s[-1]) for s in pred_fake) / n,
                "D_real": sum(hinge_d_loss(r[-1], None) for r in pred_real) / n}

    def training_step(self, batch: dict) -> dict[str, float]:
        """One iteration: G step (D frozen), then D step on G's new output. Returns the losses."""
        cfg = self.cfg
        device = next(self.G.parameters()).device
        x, y = (to_device(batch[k], device, cfg.channels_last) for k in ("A", "B"))  # (B, 3, H, W) each
        labels = self.G.onehot(x)  # (B, 19, H, W)

        self.D.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        fake = self.G.synthesize(labels)
        g_losses = self.generator_losses(labels, fake, y)
        loss_g = sum(g_losses.values())
        loss_g.backward()
        self.optimizers["G"].step()

        self.D.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = self.G.synthesize(labels)
        d_losses = self.discriminator_losses(labels, fake, y)
        loss_d = sum(d_losses.values())
        loss_d.backward()
        self.optimizers["D"].step()
        out = {k: v.item() for k, v in {**g_losses, **d_losses}.items()}
        out.update(G=loss_g.item(), D=loss_d.item())
        return out
