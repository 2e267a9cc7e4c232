"""GAN losses of CUT (book/reference.md sections 5 and 7): least squares for CUT/FastCUT, non-saturating
(softplus) for SinCUT, and the R1 gradient penalty on real images.

Logits are whatever D returns: a (B, 1, h, w) PatchGAN map or (B, 1) per-image scores; every loss is
a mean over all of them. The discriminator's loss is halved for both modes, as in the reference
(loss_D = 0.5 * (loss_real + loss_fake)), which slows D relative to G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_MODES = ("lsgan", "nonsaturating")


def full_precision(x: Tensor) -> Tensor:
    """``x`` in fp32 when it is bf16/fp16 (an autocast output), else unchanged: losses are computed in fp32."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"mode must be one of {GAN_MODES} ('lsgan' for CUT/FastCUT, 'nonsaturating' for SinCUT), got {mode!r}")


def d_loss(real_logits: Tensor, fake_logits: Tensor, mode: str = "lsgan") -> Tensor:
    """Discriminator loss, to minimise.

    lsgan:          0.5 * [mean((D(y) - 1)^2) + mean(D(G(x))^2)]
    nonsaturating:  0.5 * [mean(softplus(-D(y))) + mean(softplus(D(G(x))))]  (= -log sigmoid, -log(1 - sigmoid))
    """
    _check_mode(mode)
    real_logits, fake_logits = full_precision(real_logits), full_precision(fake_logits)
    if mode == "lsgan":
        return 0.5 * ((real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean())
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def g_loss(fake_logits: Tensor, mode: str = "lsgan") -> Tensor:
    """Generator's GAN loss, to minimise: lsgan mean((D(G(x)) - 1)^2); nonsaturating mean(softplus(-D(G(x))))."""
    _check_mode(mode)
    fake_logits = full_precision(fake_logits)
    if mode == "lsgan":
        return (fake_logits - 1).pow(2).mean()
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): mean over the batch of ||grad_y sum D(y)||^2, differentiable w.r.t. D.

    ``real_images`` must have had requires_grad set before D ran on them. Unweighted: SinCUT adds it
    to D's loss times 0.5 * lambda_R1 (book/reference.md section 7).
    """
    if not real_images.requires_grad:
        raise ValueError(
            "real_images does not require grad, so D's gradient w.r.t. it cannot be taken: "
            "call real_images.requires_grad_(True) BEFORE real_logits = D(real_images)"
        )
    (grad,) = torch.autograd.grad(full_precision(real_logits).sum(), real_images, create_graph=True)  # (B, C, H, W)
    return grad.pow(2).flatten(1).sum(dim=1).mean()
