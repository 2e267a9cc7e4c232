"""The training objectives: one class per method, each with a ``training_step`` that does the
discriminator update, then the generator (and head) update (REFERENCE.md section 5).

    CUTModel       CUT and FastCUT (GAN + multilayer PatchNCE, optional NCE identity, flip equivariance)
    CycleGANModel  the baseline (cutlib/cyclegan.py)      SinCUTModel  single-image CUT (cutlib/sincut.py)

Every model exposes ``networks`` (name -> module, saved in checkpoints), ``optimizers`` (name ->
optimizer) and ``translate(x)``; the trainer in cutlib.train needs nothing else.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from cutlib.config import TrainConfig
from cutlib.losses import d_loss, g_loss
from cutlib.nce import MomentumQueue, ProjectionHeads, multilayer_patch_nce
from cutlib.networks import PatchGANDiscriminator, ResnetGenerator


def linear_decay(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Learning-rate factor in (1-based) epoch k: 1 - max(0, k - n_epochs) / (n_epochs_decay + 1)."""
    return 1.0 - max(0, epoch - n_epochs) / float(n_epochs_decay + 1)


def build_generator(cfg: TrainConfig) -> nn.Module:
    if cfg.netG == "resnet":
        return ResnetGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.n_blocks, antialias=cfg.antialias)
    from cutlib.stylegan2 import StyleGAN2Generator

    return StyleGAN2Generator(cfg.input_nc, cfg.output_nc, ngf=cfg.ngf)


def build_discriminator(cfg: TrainConfig) -> nn.Module:
    if cfg.netD == "patchgan":
        return PatchGANDiscriminator(cfg.output_nc, cfg.ndf, cfg.n_layers_D, antialias=cfg.antialias)
    from cutlib.stylegan2 import StyleGAN2Discriminator

    return StyleGAN2Discriminator(cfg.output_nc, ndf=cfg.ndf, size=cfg.crop_size)


def adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class CUTModel(nn.Module):
    """CUT / FastCUT (paper Sec. 3, Eq. 5): L_GAN + lambda_X PatchNCE(G, H, X) [+ lambda_Y PatchNCE(G, H, Y)]."""

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.G = build_generator(cfg)
        self.D = build_discriminator(cfg)
        self.taps = tuple(cfg.nce_layers)
        self.H = ProjectionHeads(self.G.tap_channels(self.taps), cfg.netF_nc, cfg.init_gain)
        if not cfg.share_encoder:  # thesis ablation: the output image gets its own encoder and heads
            self.G_q = copy.deepcopy(self.G)  # only its encoder is used (G_q.encode)
            self.H_q = ProjectionHeads(self.G.tap_channels(self.taps), cfg.netF_nc, cfg.init_gain)
        self.queue = MomentumQueue(self.G, self.H, cfg.queue_size, cfg.queue_momentum) if cfg.negatives != "internal" else None
        self.to(device)
        g_params = list(self.G.parameters())
        h_params = list(self.H.parameters())
        if not cfg.share_encoder:
            g_params += list(self.G_q.parameters())
            h_params += list(self.H_q.parameters())
        self.optimizers = {"G": adam(g_params, cfg), "D": adam(self.D.parameters(), cfg), "H": adam(h_params, cfg)}
        # randomness of the objective (patch locations, flips) has its own generator: checkpointed
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.reuse_key_taps = True  # False recomputes the keys with a second encoder pass (tests compare)

    @property
    def networks(self) -> dict[str, nn.Module]:
        nets = {"G": self.G, "D": self.D, "H": self.H}
        if not self.cfg.share_encoder:
            nets.update(G_q=self.G_q, H_q=self.H_q)
        if self.queue is not None:
            nets["queue"] = self.queue
        return nets

    @torch.no_grad()
    def translate(self, x: Tensor) -> Tensor:
        return self.G(x)

    def nce_loss(self, src_taps: list[Tensor], fake: Tensor, flipped: bool) -> Tensor:
        """PatchNCE between the input's taps (keys) and the taps of its translation (queries)."""
        encoder = self.G if self.cfg.share_encoder else self.G_q
        feats_q = encoder.encode(fake if self.cfg.nce_decoder_grad else fake.detach(), self.taps)
        if flipped:  # flip equivariance: bring the output's features back to the input's orientation
            feats_q = [f.flip(3) for f in feats_q]
        external = self.queue.read() if self.queue is not None else None
        result = multilayer_patch_nce(
            self.H, feats_q, src_taps, self.cfg.num_patches, self.cfg.nce_t, self.cfg.lambda_nce,
            self.cfg.negatives, self.cfg.negatives_from_batch, external, generator=self.rng,
            query_heads=None if self.cfg.share_encoder else self.H_q,
        )
        return result.loss

    @property
    def identity_pass(self) -> bool:
        """Whether G also translates y (for the NCE identity term)."""
        return self.cfg.nce_idt

    def discriminator_loss(self, y: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, float]]:
        """D's GAN loss on (y real, G(x) fake); subclasses add terms (SinCUT: R1)."""
        loss = d_loss(self.D(y), self.D(fake.detach()), self.cfg.gan_mode)
        return loss, {"D": loss.item()}

    def generator_extra_loss(self, y: Tensor, idt: Tensor) -> tuple[Tensor | float, dict[str, float]]:
        """Terms of G's loss beyond GAN + PatchNCE (none for CUT; SinCUT: L1 identity)."""
        return 0.0, {}

    def training_step(self, batch: dict) -> dict[str, float]:
        """One iteration: forward G, update D, update G and H (with the updated D). Returns the losses."""
        cfg = self.cfg
        device = next(self.G.parameters()).device
        x, y = batch["A"].to(device), batch["B"].to(device)
        b = x.shape[0]
        real = torch.cat([x, y]) if self.identity_pass else x  # (2B or B, C, H, W)
        flipped = cfg.flip_equivariance and bool(torch.rand((), generator=self.rng) < 0.5)
        if flipped:
            real = real.flip(3)
        fake_all, taps_real = self.G(real, taps=self.taps)  # taps of the input: the NCE keys
        fake, idt = fake_all[:b], fake_all[b:]

        # --- D step on (y real, G(x) fake)
        self.D.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d, losses = self.discriminator_loss(y, fake)
        loss_d.backward()
        self.optimizers["D"].step()

        # --- G and H step, D frozen and already updated
        self.D.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        self.optimizers["H"].zero_grad(set_to_none=True)
        loss_gan = g_loss(self.D(fake), cfg.gan_mode) * cfg.lambda_gan
        if flipped or not self.reuse_key_taps:
            # the forward pass saw the flipped input; the reference's keys come from the unflipped one
            keys = self.G.encode(torch.cat([x, y]) if self.identity_pass else x, self.taps)
        else:
            keys = taps_real
        loss_nce = loss_nce_x = self.nce_loss([k[:b] for k in keys], fake, flipped)
        losses.update(G_GAN=loss_gan.item(), NCE=loss_nce_x.item())
        if cfg.nce_idt:
            loss_nce_y = self.nce_loss([k[b:] for k in keys], idt, flipped)
            loss_nce = 0.5 * (loss_nce_x + loss_nce_y)
            losses["NCE_Y"] = loss_nce_y.item()
        extra, extra_logs = self.generator_extra_loss(y, idt)
        loss_g = loss_gan + loss_nce + extra
        losses.update(extra_logs)
        loss_g.backward()
        self.optimizers["G"].step()
        self.optimizers["H"].step()
        losses["G"] = loss_g.item()

        if self.queue is not None:  # momentum update, then enqueue this step's keys (MoCo order)
            self.queue.update(self.G, self.H)
            self.queue.enqueue(self.queue.key_features(x, self.taps, cfg.num_patches, self.rng))
        return losses


def model_class(name: str) -> type:
    """The objective class called ``name``: cut (CUT and FastCUT), cyclegan, sincut."""
    if name == "cut":
        return CUTModel
    if name == "cyclegan":
        from cutlib.cyclegan import CycleGANModel

        return CycleGANModel
    if name == "sincut":
        from cutlib.sincut import SinCUTModel

        return SinCUTModel
    raise ValueError(f"unknown model {name!r}; valid: cut, cyclegan, sincut")


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The objective for ``cfg.model`` with its networks on ``device``."""
    return model_class(cfg.model)(cfg, device)
