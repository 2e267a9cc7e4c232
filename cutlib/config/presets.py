"""The presets (book/reference.md section 5): one plain function per method returning a TrainConfig,
the registry PRESETS that names them, and the course's CPU and smoke-test scales.
"""

from __future__ import annotations

from cutlib.config.fields import TrainConfig, override
from cutlib.stylegan2 import StyleGAN2Generator


def CUT(**overrides) -> TrainConfig:
    """CUT: lambda_NCE 1, NCE identity on, no flip equivariance, 200 + 200 epochs."""
    return override(TrainConfig(), **overrides)


def FastCUT(**overrides) -> TrainConfig:
    """FastCUT: lambda_NCE 10, no NCE identity, flip equivariance on, 150 + 50 epochs."""
    base = TrainConfig(lambda_nce=10.0, nce_idt=False, flip_equivariance=True, n_epochs=150, n_epochs_decay=50)
    return override(base, **overrides)


def CycleGAN(**overrides) -> TrainConfig:
    """The CycleGAN baseline of the paper's Table 1 (Zhu et al. 2017): two ResNet generators (strided,
    as the original code), two PatchGANs, LSGAN, cycle L1 x10, identity x0.5, image pool of 50."""
    base = TrainConfig(model="cyclegan", antialias=False, lambda_cycle=10.0, lambda_identity=0.5, pool_size=50,
                       n_epochs=100, n_epochs_decay=100, decay_no_jitter=False)  # crop jitter all along, as the original
    return override(base, **overrides)


def SinCUT(**overrides) -> TrainConfig:
    """SinCUT (book/reference.md section 7): one image per domain, StyleGAN2 networks (ngf 10, ndf 8) on
    16 random 64x64 crops per step, non-saturating GAN + R1, PatchNCE x4 on one location per layer
    per crop with the other crops as negatives, NCE and L1 identity, Adam 0.002 (0, 0.99), 8 + 8
    "epochs" of 100,000 crops."""
    base = TrainConfig(
        model="sincut", dataset="single_image_monet_etretat", netG="stylegan2", netD="stylegan2", ngf=10, ndf=8,
        gan_mode="nonsaturating", lambda_gan=1.0, lambda_r1=1.0, lambda_nce=4.0, nce_idt=True, lambda_idt_l1=1.0,
        nce_layers=StyleGAN2Generator.DEFAULT_TAPS, num_patches=1, negatives_from_batch=True,
        lr=0.002, beta1=0.0, beta2=0.99, batch_size=16, n_epochs=8, n_epochs_decay=8, dataset_len=100_000,
        load_size=1024,  # the reference's value; unused: the crops are zoomed from the original image
        crop_size=64, flip=True,
        decay_no_jitter=False,  # the single-image data zooms and tiles in the decay epochs too
        save_epoch_freq=1,  # the reference keeps a generator every epoch (16 in all)
    )
    return override(base, **overrides)


def HnegSRC(**overrides) -> TrainConfig:
    """Hneg-SRC (Jung et al. CVPR 2022), its horse2zebra command: CUT with hDCE (hard negatives, positive
    decoupled) x0.1 in place of PatchNCE, SRC x0.05, hDCE temperature 50 -> 10 over training."""
    base = TrainConfig(nce_weighting="hard", lambda_nce=0.1, lambda_src=0.05, hdce_gamma=50.0, hdce_gamma_min=10.0)
    return override(base, **overrides)


def MoNCE(**overrides) -> TrainConfig:
    """MoNCE (Zhan et al. CVPR 2022), its horse2zebra script: CUT with the negatives reweighted by a
    Sinkhorn plan (hard cost, eps 0.1, Q 1, 50 iterations)."""
    base = TrainConfig(nce_weighting="ot", ot_eps=0.1, ot_cost="hard", ot_neg_weight=1.0, ot_iters=50)
    return override(base, **overrides)


def QSAttn(**overrides) -> TrainConfig:
    """QS-Attn (Hu et al. CVPR 2022), global mode: CUT whose last two NCE layers keep the queries of
    lowest attention entropy and route the features through their attention rows."""
    return override(TrainConfig(nce_queries="entropy", qs_from_layer=3), **overrides)


def DCLGAN(**overrides) -> TrainConfig:
    """DCLGAN (Han et al. CVPRW 2021): two generators and two sets of heads, PatchNCE x2 both ways, L1
    identity x1, no cycle loss, no NCE identity, taps 4,8,12,16 of the reference (no RGB layer)."""
    base = TrainConfig(model="dclgan", lambda_nce=2.0, nce_idt=False, lambda_idt_l1=1.0,
                       nce_layers=("down1", "down2", "res1", "res5"), pool_size=0)
    return override(base, **overrides)


def SwappingAutoencoder(**overrides) -> TrainConfig:
    """The Swapping Autoencoder (Park et al. 2020; thesis ch. 4; cutlib/models/swapae.py): an encoder to a
    structure code (8 channels) and a texture code (2048), a StyleGAN2-like generator, the StyleGAN2
    image discriminator and the co-occurrence patch discriminator; non-saturating GAN, lazy R1 (10 on
    D, 1 on the patch D, every 16 steps), Adam 0.002 (0, 0.99), 8 crops of 1/8-1/4 of the image side.
    Both domains' images are training images; a batch holds batch_size of each."""
    base = TrainConfig(
        model="swapae", netD="stylegan2", gan_mode="nonsaturating", lambda_gan=1.0, lambda_r1=10.0,
        lambda_r1_cooc=1.0, r1_every=16, lambda_rec=1.0, lambda_cooc=1.0, structure_nc=8, texture_nc=2048,
        lr=0.002, beta1=0.0, beta2=0.99, batch_size=8, load_size=256, crop_size=256, flip=True,
        n_epochs=100, n_epochs_decay=0, decay_no_jitter=False,  # constant learning rate, as the authors' code
    )
    return override(base, **overrides)


def SPADE(**overrides) -> TrainConfig:
    """SPADE (Park et al. CVPR 2019; thesis ch. 2; cutlib/models/spade.py): paired label maps -> photos (the
    built-in city), a SPADE generator from a 1/32 start, two-scale PatchGAN (depth 4) on (labels, image),
    hinge GAN + feature matching x10, TTUR: Adam lr 1e-4 for G and 4e-4 for D, betas (0, 0.999) as the
    thesis (the authors' code: 0.9), batch 1, 50 epochs at a constant rate (the code's default). No VGG
    loss (its weights are not available offline) and no VAE encoder."""
    base = TrainConfig(model="spade", dataset="city", paired=True, gan_mode="hinge", lambda_gan=1.0, lambda_feat=10.0,
                       lr=1e-4, lr_D=4e-4, beta1=0.0, beta2=0.999, n_layers_D=4, num_D=2, num_upsampling=5,
                       spade_nhidden=128, spade_norm="batch", batch_size=1, n_epochs=50, n_epochs_decay=0,
                       decay_no_jitter=False, pool_size=0, nce_idt=False)
    return override(base, **overrides)


def CyCADA(**overrides) -> TrainConfig:
    """CyCADA's pixel-level adaptation (Hoffman et al. ICML 2018; thesis Sec. 3.4; cutlib/models/cycada.py) on
    the built-in city_synth: CycleGAN as the authors' GTA5 script runs it (cycle L1 x10, identity x1.0 of
    it, pool 50, 100 + 100 epochs) plus the semantic-consistency loss x1 (their semantic model adds it with
    weight 1) through a source segmenter f_S pretrained for 300 steps on trainA_labels, then frozen."""
    base = TrainConfig(model="cycada", dataset="city_synth", antialias=False, lambda_cycle=10.0, lambda_identity=1.0,
                       pool_size=50, lambda_sem=1.0, sem_pretrain_steps=300, sem_classes=19,
                       n_epochs=100, n_epochs_decay=100, decay_no_jitter=False)
    return override(base, **overrides)


def Laptop(**overrides) -> TrainConfig:
    """CUT's objective (GAN + PatchNCE with its identity term) for real photos on one CPU thread in under
    40 minutes (experiments/laptop/README.md: every configuration tried): 64 px, a narrow generator
    (ngf 16, 6 blocks), a PatchGAN of depth 2 (34 px field: texture, not layout), lr 5e-4, bf16 where the
    CPU runs it fast, epochs of 500 images (any dataset size), 15 + 15 epochs = 15,000 steps."""
    base = TrainConfig(dataset="horse2zebra", load_size=72, crop_size=64, ngf=16, ndf=32, n_blocks=6, n_layers_D=2,
                       lr=5e-4, precision="auto", dataset_len=500, n_epochs=15, n_epochs_decay=15, save_epoch_freq=5)
    return override(base, **overrides)


PRESETS = {"cut": CUT, "fastcut": FastCUT, "cyclegan": CycleGAN, "sincut": SinCUT,
           "hneg_src": HnegSRC, "monce": MoNCE, "qsattn": QSAttn, "dclgan": DCLGAN,
           "swapping_autoencoder": SwappingAutoencoder, "laptop": Laptop, "cycada": CyCADA, "spade": SPADE}


# The course's laptop scale: 64 px crops of the built-in data, narrow networks, six residual blocks.
# Chapters 4-7 and `make demo` use it so that their runs are comparable; full runs use the presets as they are.
CPU_SCALE = dict(dataset="stripes", load_size=72, crop_size=64, ngf=16, ndf=16, n_blocks=6, num_patches=64,
                 n_epochs=5, n_epochs_decay=5, device="cpu", log_every=5)


# Seconds-long smoke runs: the tests, the runner's scale="tiny" and chapter 7's live run. Nothing is learnt.
TINY_SCALE = dict(dataset="stripes", load_size=40, crop_size=32, ngf=8, ndf=8, n_blocks=5, num_patches=16, netF_nc=32,
                  n_epochs=1, n_epochs_decay=1, device="cpu", log_every=1, num_samples=2)


def cpu_scale(name: str = "cut", **overrides) -> TrainConfig:
    """The preset ``name`` at the course's laptop scale (CPU_SCALE), then ``overrides``."""
    return preset(name, **{**CPU_SCALE, **overrides})


def tiny_scale(name: str = "cut", **overrides) -> TrainConfig:
    """The preset ``name`` at the smoke-test scale (TINY_SCALE), then ``overrides``."""
    return preset(name, **{**TINY_SCALE, **overrides})


def preset(name: str, **overrides) -> TrainConfig:
    """The preset called ``name`` (case-insensitive) with overrides applied."""
    squash = lambda n: n.lower().replace("-", "").replace("_", "")  # noqa: E731  (swapping-autoencoder == swapping_autoencoder)
    names = {squash(k): k for k in PRESETS}
    if squash(name) not in names:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[names[squash(name)]](**overrides)
