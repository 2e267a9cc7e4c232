"""The CycleGAN baseline of the paper's Table 1 (Zhu et al. 2017; Park's thesis Sec. 3.2), named as in
the CycleGAN paper, with the original code's names beside them:

    G    X -> Y  ResNet generator   (code: G_A)    the one the trainer samples and translates with
    F    Y -> X  ResNet generator   (code: G_B)
    D_Y  PatchGAN on domain Y       (code: D_A: it judges G(x) against real y)
    D_X  PatchGAN on domain X       (code: D_B: it judges F(y) against real x)

Objective (CycleGAN Eq. 3 plus the identity loss of its Sec. 5.2), LSGAN, L1 distances:
    L_GAN(G, D_Y) + L_GAN(F, D_X)
    + lambda_cycle * (|F(G(x)) - x| + |G(F(y)) - y|)
    + lambda_cycle * lambda_identity * (|G(y) - y| + |F(x) - x|)
The original code's lambda_identity (0.5) multiplies lambda_A = lambda_B = lambda_cycle (10): the
identity weight is 5. Each discriminator trains on a history of 50 generated images (ImagePool).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import l1_loss

from cutlib.config import TrainConfig
from cutlib.device import autocast, grad_scaler, resolve_precision, to_device
from cutlib.losses import d_loss, full_precision, g_loss
from cutlib.networks import build_discriminator, build_generator, build_optimizer


def normal_init(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The original CycleGAN code's initialisation ("normal"): conv weights ~ N(0, gain), biases 0.
    (CUT's code uses xavier-normal instead; cutlib.networks.init_weights.)"""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class ImagePool(nn.Module):
    """History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN Sec. 4).

    Until it holds ``size`` images, each new image is stored and returned as is. Once full, with
    probability 0.5 a random stored image is returned and replaced by the new one, else the new one
    is returned. The images live in a buffer of fixed shape (size, C, H, W), so the pool's contents
    are part of the state dict and a resumed run draws from exactly the same history.
    """

    def __init__(self, size: int, channels: int, height: int, width: int):
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0 (0 switches the pool off), got {size}")
        self.size = size
        self.register_buffer("images", torch.zeros(size, channels, height, width))  # (size, C, H, W)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # how many slots are filled

    def query(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """(B, C, H, W) new fakes -> (B, C, H, W) images for D, detached; draws from ``generator`` (CPU)."""
        if self.size == 0:
            return images.detach()
        if images.shape[1:] != self.images.shape[1:]:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} do not fit this pool of {tuple(self.images.shape[1:])} "
                "images; the pool is built for crop_size x crop_size training images"
            )
        out = []
        for image in images.detach():  # (C, H, W), one image at a time as the original
            n = int(self.count)
            if n < self.size:  # still filling: keep it, hand it back
                self.images[n] = image
                self.count += 1
                out.append(image)
            elif torch.rand((), generator=generator) < 0.5:  # hand back an old image, keep the new one
                slot = int(torch.randint(self.size, (), generator=generator))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)


class CycleGANModel(nn.Module):
    """CycleGAN (Zhu et al. 2017, Eq. 3 + identity), the baseline of CUT's Table 1.

    Iteration order, as the original CycleGAN code: forward both cycles; update G and F with D_X, D_Y
    frozen; then update D_X and D_Y on pooled fakes made before the G update. CUT's reference code
    does the reverse (D first, then G against the updated D; book/reference.md section 5). Both alternate
    one step each; we keep each method's own order so that its behaviour and timings are the original's.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        super().__init__()
        if cfg.netG != "resnet" or cfg.netD != "patchgan":
            raise ValueError(f"CycleGAN uses netG='resnet' and netD='patchgan', got netG={cfg.netG!r}, netD={cfg.netD!r}")
        if cfg.input_nc != cfg.output_nc:
            raise ValueError(f"CycleGAN's identity loss needs input_nc == output_nc, got {cfg.input_nc} and {cfg.output_nc}")
        self.cfg = cfg
        self.G = normal_init(build_generator(cfg), cfg.init_gain)  # X -> Y
        self.F = normal_init(build_generator(cfg), cfg.init_gain)  # Y -> X
        self.D_Y = normal_init(build_discriminator(cfg), cfg.init_gain)  # real y vs G(x)
        self.D_X = normal_init(build_discriminator(cfg), cfg.init_gain)  # real x vs F(y)
        self.pool_Y = ImagePool(cfg.pool_size, cfg.output_nc, cfg.crop_size, cfg.crop_size)  # history of G(x) for D_Y
        self.pool_X = ImagePool(cfg.pool_size, cfg.input_nc, cfg.crop_size, cfg.crop_size)  # history of F(y) for D_X
        self.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        self.precision = resolve_precision(cfg.precision, device)  # "fp32", "bf16" or "fp16": the forward passes' dtype
        self.scaler = grad_scaler(self.precision, device)  # fp16's loss scaling (a pass-through otherwise)
        # one optimiser for both generators and one for both discriminators, as the original code
        self.optimizers = {
            "G": build_optimizer([*self.G.parameters(), *self.F.parameters()], cfg),
            "D": build_optimizer([*self.D_Y.parameters(), *self.D_X.parameters()], cfg),
        }
        self.rng = torch.Generator().manual_seed(cfg.seed)  # the pools' draws: checkpointed by the trainer

    compiled_networks = ("G", "F", "D_X", "D_Y")  # with cfg.compile (cutlib.models.compile_networks)
    ddp_networks = ("G", "F", "D_X", "D_Y")  # under torchrun; the image pools stay per process (own history)

    def check_distributed(self) -> None:
        """Every CycleGAN configuration trains on several processes."""

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "F": self.F, "D_X": self.D_X, "D_Y": self.D_Y, "pool_X": self.pool_X, "pool_Y": self.pool_Y}

    @torch.no_grad()
    def translate(self, x: Tensor) -> Tensor:
        """X -> Y with G."""
        return self.G(x)

    def extra_generator_losses(self, x: Tensor, y: Tensor, fake_y: Tensor, fake_x: Tensor) -> dict[str, Tensor]:
        """Terms a subclass adds to the generators' loss (CyCADA: semantic consistency); CycleGAN has none."""
        return {}

    def training_step(self, batch: dict) -> dict[str, float]:
        """One iteration: both cycles forward, G and F step (D frozen), then D_Y and D_X step. Returns the losses."""
        cfg = self.cfg
        device = next(self.G.parameters()).device
        x, y = (to_device(batch[k], device, cfg.channels_last) for k in ("A", "B"))  # (B, C, H, W) each
        amp = lambda: autocast(self.precision, device)  # noqa: E731  (forward passes; losses in fp32)
        l1 = lambda a, b: l1_loss(full_precision(a), b)  # noqa: E731
        with amp():
            fake_y = self.G(x)
            rec_x = self.F(fake_y)  # F(G(x)) ~ x
            fake_x = self.F(y)
            rec_y = self.G(fake_x)  # G(F(y)) ~ y

        # --- G and F step, discriminators frozen
        for D in (self.D_X, self.D_Y):
            D.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with amp():
            losses = {
                "G_GAN": g_loss(self.D_Y(fake_y), cfg.gan_mode) * cfg.lambda_gan,
                "F_GAN": g_loss(self.D_X(fake_x), cfg.gan_mode) * cfg.lambda_gan,
                "cycle_X": l1(rec_x, x) * cfg.lambda_cycle,
                "cycle_Y": l1(rec_y, y) * cfg.lambda_cycle,
            }
            if cfg.lambda_identity > 0:  # G should leave a real y alone, F a real x
                losses["idt_G"] = l1(self.G(y), y) * cfg.lambda_cycle * cfg.lambda_identity
                losses["idt_F"] = l1(self.F(x), x) * cfg.lambda_cycle * cfg.lambda_identity
            losses.update(self.extra_generator_losses(x, y, fake_y, fake_x))
        loss_g = sum(losses.values())
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.optimizers["G"])

        # --- D_Y and D_X step on fakes drawn from the history pools (loss halved, losses.d_loss)
        for D in (self.D_X, self.D_Y):
            D.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        pooled_y, pooled_x = (self.pool_Y.query(full_precision(fake_y), self.rng),
                              self.pool_X.query(full_precision(fake_x), self.rng))  # the pools keep fp32 images
        with amp():
            loss_d_y = d_loss(self.D_Y(y), self.D_Y(pooled_y), cfg.gan_mode)
            loss_d_x = d_loss(self.D_X(x), self.D_X(pooled_x), cfg.gan_mode)
        self.scaler.scale(loss_d_y + loss_d_x).backward()
        self.scaler.step(self.optimizers["D"])
        self.scaler.update()

        out = {name: value.item() for name, value in losses.items()}
        out.update(G=loss_g.item(), D_Y=loss_d_y.item(), D_X=loss_d_x.item())
        return out
