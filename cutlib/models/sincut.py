"""SinCUT: CUT trained on a single image per domain (paper Sec. 4.3, Fig. 9; book/reference.md section 7).

The same iteration as CUT (forward G on cat(x, y), D step, then G and H step with the updated D);
what changes is the objective:

    D:  non-saturating GAN  +  0.5 * lambda_R1 * R1(y)            (R1 on the real crops, every step)
    G:  non-saturating GAN  +  0.5 * (PatchNCE(x, G(x)) + PatchNCE(y, G(y)))  +  lambda_idt * |G(y) - y|_1

PatchNCE samples ONE location per layer per crop and contrasts it with the same location in the
other crops of the minibatch (``negatives_from_batch``): with 16 crops, 15 negatives per query.
The networks are the StyleGAN2 ones of cutlib.stylegan2, built by the CUT model from the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cutlib.config import TrainConfig
from cutlib.losses import d_loss, full_precision, r1_penalty
from cutlib.models.cut import CUTModel


class SinCUTModel(CUTModel):
    """CUT's networks, heads, optimisers and PatchNCE, with SinCUT's D loss (+ R1) and G loss (+ L1 identity).

    The generator's noise injection draws from torch's default RNG of the device, which the trainer
    checkpoints with ``model.rng`` (patch locations): a resumed run repeats the same draws.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        unsupported = {  # name: (set, what to do instead)
            "flip_equivariance": (cfg.flip_equivariance, "use model='cut' for this ablation"),  # a FastCUT regulariser
            "negatives != 'internal'": (cfg.negatives != "internal", "use model='cut' for this ablation"),  # no queue on one image
            # R1 differentiates D through autograd.grad, outside the loss scaler: its fp16 gradients would underflow
            "precision='fp16' with lambda_r1 > 0": (cfg.precision == "fp16" and cfg.lambda_r1 > 0, "use --precision bf16 or fp32"),
        }
        bad = [f"{name} ({hint})" for name, (on, hint) in unsupported.items() if on]
        if bad:
            raise ValueError(f"SinCUTModel does not support {'; '.join(bad)}")
        super().__init__(cfg, device)

    @torch.no_grad()
    def translate(self, x: Tensor) -> Tensor:
        """G(x) with the noise drawn from a generator seeded afresh (cfg.seed) at each call: sample
        grids are comparable across steps, and writing them leaves the training RNG untouched
        (otherwise a resumed run would draw different noise than an uninterrupted one)."""
        noise = torch.Generator(device=x.device).manual_seed(self.cfg.seed)
        return self.G(x, generator=noise)

    def discriminator_loss(self, y: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, float]]:
        """GAN loss of D on (y real, G(x) fake) plus 0.5 * lambda_R1 * R1 on the real crops."""
        cfg = self.cfg
        y = y.detach().requires_grad_(cfg.lambda_r1 > 0)  # R1 differentiates D(y) w.r.t. y
        real_logits = self.D(y)  # (B, 1)
        loss_gan = d_loss(real_logits, self.D(fake.detach()), cfg.gan_mode)
        if cfg.lambda_r1 <= 0:
            return loss_gan, {"D": loss_gan.item()}
        loss_r1 = r1_penalty(real_logits, y)
        return loss_gan + 0.5 * cfg.lambda_r1 * loss_r1, {"D": loss_gan.item(), "D_R1": loss_r1.item()}

    @property
    def identity_pass(self) -> bool:
        return self.cfg.nce_idt or self.cfg.lambda_idt_l1 > 0  # G(y) is needed by either identity term

    def generator_extra_loss(self, y: Tensor, idt: Tensor) -> tuple[Tensor | float, dict[str, float]]:
        """L1 identity: G should leave an image of the target domain unchanged (weight lambda_idt_l1)."""
        if self.cfg.lambda_idt_l1 <= 0:
            return 0.0, {}
        loss_idt = F.l1_loss(full_precision(idt), y) * self.cfg.lambda_idt_l1
        return loss_idt, {"idt": loss_idt.item()}
