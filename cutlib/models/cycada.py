"""CyCADA's pixel-level adaptation (Hoffman, Tzeng, Park, Zhu, Isola, Saenko, Efros, Darrell, ICML 2018;
Park's thesis Sec. 3.4): CycleGAN between a labelled source S and an unlabelled target T, plus a
semantic-consistency loss through a FROZEN source segmenter f_S (book/reference.md, CyCADA section).

The thesis's equations, in its numbering (G_ST = cutlib's G: S -> T, G_TS = F: T -> S, D_T = D_Y, D_S = D_X):

    L_task(f, X, Y) = -E_(x,y) sum_k 1[k = y] log softmax(f(x))_k                     (3.10)  cross-entropy
    L_GAN(G_ST, D_T, X_T, X_S) = E log D_T(x_t) + E log(1 - D_T(G_ST(x_s)))            (3.11)  (LSGAN here)
    L_cyc = E |G_TS(G_ST(x_s)) - x_s|_1 + E |G_ST(G_TS(x_t)) - x_t|_1                   (3.12)
    p(f, X) = argmax f(X)
    L_sem = L_task(f_S, G_TS(X_T), p(f_S, X_T)) + L_task(f_S, G_ST(X_S), p(f_S, X_S))   (3.13)
    L_CyCADA = L_task(f_T, G_ST(X_S), Y_S) + L_GAN(G_ST, ...) + L_GAN(G_TS, ...) + L_cyc  (3.14)
    f_T* = argmin_f_T min_G max_D L_CyCADA                                              (3.15)

Like the thesis ("we train our model in stages"), the generators are trained first (CycleGAN's loss with
identity + lambda_sem * L_sem) and the target model f_T afterwards on the translated source images with
the source labels (cutlib/adaptation.py). The feature-level GAN (the orange part of the thesis's Fig.
3.33) is left out. The thesis says L_sem was not used in its segmentation experiments (memory); the
authors' released semantic model (digits) trains its classifier alongside and uses the true source labels
in the S -> T term; here f_S is pretrained and frozen and both terms use p(f_S, .), as Eq. 3.13 writes.

f_S is pretrained at the start of training (``sem_pretrain_steps`` on trainA with trainA_labels, at the
crop size) and saved in the checkpoint with the other networks, so a resumed run does not train it again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_nn
from torch import Tensor, nn

from cutlib.config import TrainConfig
from cutlib.losses import full_precision
from cutlib.models.cyclegan import CycleGANModel
from cutlib.segmentation import SmallUNet, train_segmenter


def pseudo_labels(f: nn.Module, images: Tensor) -> Tensor:
    """p(f, X) = argmax f(X): (N, C, H, W) images -> (N, H, W) class ids, without gradient."""
    with torch.no_grad():
        return f(images).argmax(dim=1)


def semantic_consistency_loss(f: nn.Module, real: Tensor, translated: Tensor) -> Tensor:
    """One term of Eq. 3.13: L_task(f, translated, p(f, real)), the cross-entropy of f on the translated
    images against f's own labels of the untranslated ones (mean over pixels). Gradient reaches
    ``translated`` (the generator), never the labels."""
    if real.shape != translated.shape:
        raise ValueError(f"real and translated must have the same shape, got {tuple(real.shape)} and {tuple(translated.shape)}")
    return F_nn.cross_entropy(full_precision(f(translated)), pseudo_labels(f, real))


class FrozenSegmenter(nn.Module):
    """f_S: a SmallUNet (cutlib/segmentation.py) on images in [-1, 1], its weights frozen and always in eval mode
    (its BatchNorm statistics never move). The ``pretrained`` buffer records that it was trained."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.net = SmallUNet(num_classes, width)
        self.register_buffer("pretrained", torch.zeros((), dtype=torch.bool))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenSegmenter:
        return super().train(False)  # frozen: eval mode whatever the caller asks

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> logits (N, K, H, W)."""
        return self.net((x + 1) / 2)


class CyCADAModel(CycleGANModel):
    """CycleGAN (cutlib/models/cyclegan.py) + lambda_sem * L_sem (Eq. 3.13) with a frozen source segmenter f_S."""

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        super().__init__(cfg, device)
        self.f_S = FrozenSegmenter(cfg.sem_classes).to(next(self.G.parameters()).device)
        self.f_S_info: dict = {}

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {**super().networks, "f_S": self.f_S}

    def pretrain_segmenter(self) -> None:
        """Train f_S on the source (trainA, trainA_labels of cfg.dataset, at the crop size), then freeze it.
        With sem_pretrain_steps = 0 it keeps its random weights (timing only: cutlib/bench.py)."""
        cfg = self.cfg
        if cfg.sem_pretrain_steps > 0:
            from cutlib.data.catalog import resolve_dataset
            from cutlib.data.splits import read_images, read_labels

            root = resolve_dataset(cfg.dataset, size=cfg.load_size)
            if not (root / "trainA_labels").is_dir():
                raise FileNotFoundError(f"CyCADA pretrains its source segmenter f_S on {root / 'trainA_labels'}, which does not "
                                        "exist: give the source images' label maps (uint8 class ids) there, or use --dataset city_synth")
            images, labels = read_images(root / "trainA", cfg.crop_size), read_labels(root / "trainA_labels", cfg.crop_size)
            net = train_segmenter(images, labels, cfg.sem_classes, steps=cfg.sem_pretrain_steps, seed=cfg.seed)
            self.f_S.net.load_state_dict(net.state_dict())
            self.f_S_info = {"steps": cfg.sem_pretrain_steps, "images": len(images), "final_loss": net.final_loss}
        self.f_S.pretrained.fill_(True)

    def extra_generator_losses(self, x: Tensor, y: Tensor, fake_y: Tensor, fake_x: Tensor) -> dict[str, Tensor]:
        """lambda_sem * (L_task(f_S, G_ST(x_s), p(f_S, x_s)) + L_task(f_S, G_TS(x_t), p(f_S, x_t))): Eq. 3.13."""
        if self.cfg.lambda_sem == 0:
            return {}
        return {"sem_ST": semantic_consistency_loss(self.f_S, x, fake_y) * self.cfg.lambda_sem,
                "sem_TS": semantic_consistency_loss(self.f_S, y, fake_x) * self.cfg.lambda_sem}

    def training_step(self, batch: dict) -> dict[str, float]:
        """The first step pretrains f_S (stage 1); every step is then CycleGAN's with L_sem added to G's loss."""
        if not bool(self.f_S.pretrained):
            self.pretrain_segmenter()
        return super().training_step(batch)
