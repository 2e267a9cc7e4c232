"""CUT and FastCUT (paper Sec. 3, Eq. 5): the discriminator update, then the generator and head
update against the updated discriminator (book/reference.md section 5).

The model exposes what the trainer needs and nothing else: ``networks`` (name -> module, saved in
checkpoints), ``optimizers`` (name -> optimizer), ``training_step(batch)``, ``translate(x)``, and
``ddp_networks`` / ``check_distributed()`` for several processes (cutlib.distributed).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from cutlib.config import TrainConfig
from cutlib.device import autocast, grad_scaler, resolve_precision, to_device
from cutlib.losses import d_loss, g_loss
from cutlib.followups import hdce_gamma
from cutlib.nce import MomentumQueue, NCEHooks, ProjectionHeads, multilayer_patch_nce
from cutlib.networks import build_discriminator, build_generator, build_optimizer


def nce_hooks(cfg: TrainConfig, epoch: int = 0) -> NCEHooks | None:
    """The follow-ups of PatchNCE that ``cfg`` turns on (None: CUT), hDCE's temperature at ``epoch``."""
    if cfg.nce_weighting == "uniform" and cfg.nce_queries == "random" and cfg.lambda_src == 0:
        return None
    gamma = hdce_gamma(epoch, cfg.n_epochs + cfg.n_epochs_decay, cfg.hdce_gamma, cfg.hdce_gamma_min)
    return NCEHooks(cfg.nce_weighting, gamma, cfg.ot_eps, cfg.ot_cost, cfg.ot_neg_weight, cfg.ot_iters,
                    cfg.nce_queries, cfg.qs_from_layer, cfg.lambda_src)


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
        self.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        self.precision = resolve_precision(cfg.precision, device)  # "fp32", "bf16" or "fp16": the forward passes' dtype
        self.scaler = grad_scaler(self.precision, device)  # fp16's loss scaling (a pass-through otherwise)
        g_params = list(self.G.parameters())
        h_params = list(self.H.parameters())
        if not cfg.share_encoder:
            g_params += list(self.G_q.parameters())
            h_params += list(self.H_q.parameters())
        self.optimizers = {"G": build_optimizer(g_params, cfg), "D": build_optimizer(self.D.parameters(), cfg),
                           "H": build_optimizer(h_params, cfg)}
        # randomness of the objective (patch locations, flips) has its own generator: checkpointed
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.hooks = nce_hooks(cfg)  # the follow-ups of PatchNCE (Hneg-SRC, MoNCE, QS-Attn); None for CUT

    def set_epoch(self, epoch: int) -> None:
        """Follow the epoch-dependent settings (hDCE's temperature curriculum) to the 1-based ``epoch``."""
        self.hooks = nce_hooks(self.cfg, epoch)

    ddp_networks = ("G", "D", "H")  # wrapped in DistributedDataParallel under torchrun

    def check_distributed(self) -> None:
        """Refuse the configurations whose state would drift apart between processes."""
        if self.cfg.negatives != "internal" or not self.cfg.share_encoder:
            raise ValueError(
                "several processes support negatives='internal' with share_encoder=True only: the momentum queue "
                "(external negatives) and the separate query encoder (used through encode() alone) would not be "
                "synchronised. Run these ablations in one process"
            )

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

    def nce_loss(self, src_taps: list[Tensor], fake: Tensor, flipped: bool, relation: bool = True) -> Tensor:
        """PatchNCE between the input's taps (keys) and the taps of its translation (queries).
        relation=False leaves out the SRC term (Hneg-SRC uses it on x -> G(x) only)."""
        encoder = self.G if self.cfg.share_encoder else self.G_q
        feats_q = encoder.encode(fake if self.cfg.nce_decoder_grad else fake.detach(), self.taps)
        if flipped:  # flip equivariance: bring the output's features back to the input's orientation
            feats_q = [f.flip(3) for f in feats_q]
        external = self.queue.read() if self.queue is not None else None
        result = multilayer_patch_nce(
            self.H, feats_q, src_taps, self.cfg.num_patches, self.cfg.nce_t, self.cfg.lambda_nce,
            self.cfg.negatives, self.cfg.negatives_from_batch, external, generator=self.rng,
            query_heads=None if self.cfg.share_encoder else self.H_q,
            hooks=self.hooks if relation or self.hooks is None else dataclasses.replace(self.hooks, lambda_src=0.0),
        )
        self.src_term = None if result.relation is None else self.hooks.lambda_src * result.relation
        return result.loss

    def amp(self):
        """Autocast of the forward passes (bf16, fp16 or off); the losses upcast to fp32 (cutlib.losses.full_precision)."""
        return autocast(self.precision, next(self.G.parameters()).device)

    def nce_keys(self, taps_real: list[Tensor], x: Tensor, y: Tensor, flipped: bool) -> list[Tensor]:
        """The NCE keys: the input's taps, reused from the forward pass (the reference encodes the input
        a second time, with the same result). On a flipped iteration the forward pass saw the flipped
        input, while the reference's keys come from the unflipped one: they are computed again."""
        if not flipped:
            return taps_real
        return self.G.encode(torch.cat([x, y]) if self.identity_pass else x, self.taps)

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
        x, y = (to_device(batch[k], device, cfg.channels_last) for k in ("A", "B"))
        b = x.shape[0]
        real = torch.cat([x, y]) if self.identity_pass else x  # (2B or B, C, H, W)
        flipped = cfg.flip_equivariance and bool(torch.rand((), generator=self.rng) < 0.5)
        if flipped:
            real = real.flip(3)
        with self.amp():
            fake_all, taps_real = self.G(real, taps=self.taps)  # taps of the input: the NCE keys
        fake, idt = fake_all[:b], fake_all[b:]

        # --- D step on (y real, G(x) fake)
        self.D.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.amp():
            loss_d, losses = self.discriminator_loss(y, fake)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.optimizers["D"])

        # --- G and H step, D frozen and already updated
        self.D.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        self.optimizers["H"].zero_grad(set_to_none=True)
        with self.amp():
            loss_gan = g_loss(self.D(fake), cfg.gan_mode) * cfg.lambda_gan
            keys = self.nce_keys(taps_real, x, y, flipped)
            loss_nce = loss_nce_x = self.nce_loss([k[:b] for k in keys], fake, flipped)
            losses.update(G_GAN=loss_gan.item(), NCE=loss_nce_x.item())
            src_term = self.src_term if cfg.lambda_src > 0 else None  # Hneg-SRC: lambda_src * SRC, inside NCE
            if src_term is not None:
                losses["SRC"] = src_term.item()
            if cfg.nce_idt:
                loss_nce_y = self.nce_loss([k[b:] for k in keys], idt, flipped, relation=False)
                loss_nce = 0.5 * (loss_nce_x + loss_nce_y)
                if src_term is not None:  # the SRC term is not averaged with the identity term (Hneg-SRC)
                    loss_nce = loss_nce + 0.5 * src_term
                losses["NCE_Y"] = loss_nce_y.item()
            extra, extra_logs = self.generator_extra_loss(y, idt)
        loss_g = loss_gan + loss_nce + extra
        losses.update(extra_logs)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.optimizers["G"])
        self.scaler.step(self.optimizers["H"])
        self.scaler.update()  # once per iteration, after every optimiser's step (a skipped step lowers the scale)
        losses["G"] = loss_g.item()

        if self.queue is not None:  # momentum update, then enqueue this step's keys (MoCo order)
            self.queue.update(self.G, self.H)
            with self.amp():
                self.queue.enqueue(self.queue.key_features(x, self.taps, cfg.num_patches, self.rng))
        return losses
