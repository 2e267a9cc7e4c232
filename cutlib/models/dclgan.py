"""DCLGAN (Han et al. CVPRW 2021): CUT's objective in both directions, no cycle loss.

Two generators G: X -> Y (``G``, the one the trainer samples and evaluates) and F: Y -> X (``G_B``),
two discriminators, and two embeddings: the encoder of G with heads H_X embeds domain-X images, the
encoder of F with heads H_Y embeds domain-Y images. Each PatchNCE compares an input with its translation
across the two embeddings:

    NCE_1 = PatchNCE(keys H_X(G_enc(x)), queries H_Y(F_enc(G(x))))
    NCE_2 = PatchNCE(keys H_Y(F_enc(y)), queries H_X(G_enc(F(y))))
    L_G = 0.5 (GAN(G) + GAN(F)) + 0.5 lambda_NCE (NCE_1 + NCE_2) + 0.5 lambda_idt (|G(y) - y|_1 + |F(x) - x|_1)

Keys are detached after their heads (as in CUT), so each head set learns through the queries it projects.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cutlib.config import TrainConfig
from cutlib.device import grad_scaler, resolve_precision, to_device
from cutlib.losses import d_loss, g_loss
from cutlib.models.cut import CUTModel
from cutlib.nce import ProjectionHeads, patch_nce, sample_patches
from cutlib.networks import build_discriminator, build_generator, build_optimizer


class DCLGANModel(CUTModel):
    """Dual contrastive learning: two CUTs sharing their embeddings crosswise (module docstring)."""

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        if cfg.negatives != "internal" or not cfg.share_encoder or cfg.flip_equivariance or cfg.nce_idt:
            raise ValueError("DCLGANModel supports negatives='internal', share_encoder=True, flip_equivariance=False, "
                             "and nce_idt=False only (its identity term is the L1 one, lambda_idt_l1)")
        nn.Module.__init__(self)
        self.cfg = cfg
        self.taps = tuple(cfg.nce_layers)
        self.G, self.G_B = build_generator(cfg), build_generator(cfg)
        self.D, self.D_B = build_discriminator(cfg), build_discriminator(cfg)
        channels = self.G.tap_channels(self.taps)
        self.H, self.H_B = (ProjectionHeads(channels, cfg.netF_nc, cfg.init_gain) for _ in range(2))
        self.queue, self.hooks, self.src_term = None, None, None
        self.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        self.precision = resolve_precision(cfg.precision, device)
        self.scaler = grad_scaler(self.precision, device)
        pairs = {"G": (self.G, self.G_B), "D": (self.D, self.D_B), "H": (self.H, self.H_B)}
        self.optimizers = {k: build_optimizer([p for net in nets for p in net.parameters()], cfg) for k, nets in pairs.items()}
        self.rng = torch.Generator().manual_seed(cfg.seed)

    ddp_networks = ()
    compiled_networks = ("G", "G_B", "D", "D_B")  # with cfg.compile (cutlib.models.compile_networks)

    def check_distributed(self) -> None:
        raise ValueError("DCLGANModel runs in one process: train it without torchrun")

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "G_B": self.G_B, "D": self.D, "D_B": self.D_B, "H": self.H, "H_B": self.H_B}

    def dual_nce(self, key_taps: list[Tensor], key_heads: ProjectionHeads, fake: Tensor,
                 query_encoder: nn.Module, query_heads: ProjectionHeads) -> Tensor:
        """lambda_NCE * PatchNCE between an input's taps (keys, its own embedding) and the other generator's
        encoding of its translation (queries, the other embedding); the mean over layers."""
        feats_q = query_encoder.encode(fake, self.taps)
        k_samples, ids = sample_patches(key_taps, self.cfg.num_patches, generator=self.rng)
        q_samples, _ = sample_patches(feats_q, self.cfg.num_patches, ids)
        b = fake.shape[0]
        per_layer = [patch_nce(q, k, self.cfg.nce_t, "image", b).mean() for q, k in zip(query_heads(q_samples), key_heads(k_samples))]
        return self.cfg.lambda_nce * torch.stack(per_layer).mean()

    def training_step(self, batch: dict) -> dict[str, float]:
        """Forward both generators, update both discriminators, then both generators and head sets."""
        cfg = self.cfg
        device = next(self.G.parameters()).device
        x, y = (to_device(batch[k], device, cfg.channels_last) for k in ("A", "B"))
        b = x.shape[0]
        identity = cfg.lambda_idt_l1 > 0
        with self.amp():  # G sees x (and y for its identity), F sees y (and x); the taps of the real inputs are the keys
            out_g, taps_x = self.G(torch.cat([x, y]) if identity else x, taps=self.taps)
            out_f, taps_y = self.G_B(torch.cat([y, x]) if identity else y, taps=self.taps)
        fake_y, fake_x = out_g[:b], out_f[:b]

        for d in (self.D, self.D_B):
            d.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.amp():
            loss_d_y = d_loss(self.D(y), self.D(fake_y.detach()), cfg.gan_mode)
            loss_d_x = d_loss(self.D_B(x), self.D_B(fake_x.detach()), cfg.gan_mode)
        self.scaler.scale(loss_d_y + loss_d_x).backward()
        self.scaler.step(self.optimizers["D"])

        for d in (self.D, self.D_B):
            d.requires_grad_(False)
        for k in ("G", "H"):
            self.optimizers[k].zero_grad(set_to_none=True)
        with self.amp():
            gan = 0.5 * (g_loss(self.D(fake_y), cfg.gan_mode) + g_loss(self.D_B(fake_x), cfg.gan_mode)) * cfg.lambda_gan
            nce_1 = self.dual_nce([t[:b] for t in taps_x], self.H, fake_y, self.G_B, self.H_B)
            nce_2 = self.dual_nce([t[:b] for t in taps_y], self.H_B, fake_x, self.G, self.H)
            idt = torch.zeros((), device=device)
            if identity:
                idt = 0.5 * cfg.lambda_idt_l1 * ((out_g[b:] - y).abs().mean() + (out_f[b:] - x).abs().mean())
        loss_g = gan + 0.5 * (nce_1 + nce_2) + idt
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.optimizers["G"])
        self.scaler.step(self.optimizers["H"])
        self.scaler.update()
        return {"D_Y": loss_d_y.item(), "D_X": loss_d_x.item(), "G_GAN": gan.item(), "NCE": nce_1.item(),
                "NCE_2": nce_2.item(), "idt": idt.item(), "G": loss_g.item()}
