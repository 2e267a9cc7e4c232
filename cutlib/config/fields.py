"""Every hyper-parameter of a training run in one dataclass (book/reference.md section 5), and the
checks: ``override(cfg, **kw)`` rejects unknown names and ill-typed values with a message that lists the
valid choices; ``validate`` rejects values that cannot go together.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args, get_origin

from cutlib.networks import ResnetGenerator


@dataclass(frozen=True)
class TrainConfig:
    """All settings of a run. Defaults are the reference's CUT settings (book/reference.md section 5).

    A TrainConfig checks its values when it is made (``__post_init__``), so every config that exists
    is valid; ``override`` also parses strings and checks types.
    """

    # --- what is trained
    model: Literal["cut", "cyclegan", "sincut", "dclgan", "swapae", "spade", "cycada"] = "cut"  # objective class in cutlib.models
    dataset: str = "stripes"  # built-in name, catalog name (downloaded) or a folder path
    # --- networks (reference page sections 3, 4)
    netG: Literal["resnet", "stylegan2"] = "resnet"  # generator: CycleGAN's ResNet (CUT) or StyleGAN2's (SinCUT)
    netD: Literal["patchgan", "stylegan2"] = "patchgan"  # discriminator: PatchGAN (CUT) or StyleGAN2's (SinCUT)
    input_nc: int = 3  # channels of the input images (1: grayscale)
    output_nc: int = 3  # channels of the output images
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    n_blocks: int = 9  # residual blocks of the ResNet generator
    n_layers_D: int = 3  # PatchGAN depth (3 = 70x70 receptive field)
    antialias: bool = True  # blur down/upsampling (the reference default) vs strided convs
    init_gain: float = 0.02  # xavier-normal gain
    # --- the objective (reference page sections 1, 5, 6)
    gan_mode: Literal["lsgan", "nonsaturating", "hinge"] = "lsgan"  # GAN loss: least squares (CUT), non-saturating (SinCUT) or hinge (SPADE)
    lambda_gan: float = 1.0  # weight of the GAN loss
    lambda_nce: float = 1.0  # weight of PatchNCE (CUT 1, FastCUT 10)
    nce_idt: bool = True  # the identity term PatchNCE(y, G(y))
    nce_layers: tuple[str, ...] = ResnetGenerator.DEFAULT_TAPS  # encoder taps that PatchNCE compares
    num_patches: int = 256  # sampled locations per layer per image (P)
    nce_t: float = 0.07  # temperature tau
    netF_nc: int = 256  # projection head output size
    flip_equivariance: bool = False  # FastCUT: flip the input with p = 0.5, flip features back
    negatives: Literal["internal", "external", "both"] = "internal"  # other patches of the image, a momentum queue, or both
    negatives_from_batch: bool = False  # negatives from every image of the minibatch (SinCUT)
    queue_size: int = 16384  # external negatives per layer
    queue_momentum: float = 0.999  # momentum of the key encoder that fills the queue
    nce_decoder_grad: bool = True  # False: the decoder learns from the GAN loss only (thesis ablation)
    share_encoder: bool = True  # False: separate encoder and heads for the output image (thesis ablation)
    lambda_r1: float = 0.0  # R1 penalty on real images (SinCUT: 1.0, applied with weight 0.5 * lambda_r1)
    lambda_idt_l1: float = 0.0  # L1 identity loss on (y, G(y)) (SinCUT: 1.0; DCLGAN: 1.0, on both generators)
    # --- follow-ups of PatchNCE (cutlib.followups; reference page, last section); the defaults are CUT
    nce_weighting: Literal["uniform", "hard", "ot"] = "uniform"  # negatives: uniform (CUT), hDCE hard negatives (Hneg-SRC), Sinkhorn OT (MoNCE)
    hdce_gamma: float = 50.0  # hDCE weight temperature in epoch 0 (Hneg-SRC: 50)
    hdce_gamma_min: float = 10.0  # hDCE temperature after the last epoch: linear curriculum (Hneg-SRC: 10; = hdce_gamma: constant)
    lambda_src: float = 0.0  # weight of the semantic-relation consistency loss SRC (Hneg-SRC: 0.05 on horse2zebra)
    ot_eps: float = 0.1  # MoNCE: entropic regularisation of the Sinkhorn plan (its horse2zebra script: 0.1)
    ot_cost: Literal["hard", "easy"] = "hard"  # MoNCE: similar negatives weigh more (hard) or less (easy)
    ot_neg_weight: float = 1.0  # MoNCE: Q, the weight of the negative term
    ot_iters: int = 50  # MoNCE: Sinkhorn iterations
    nce_queries: Literal["random", "entropy"] = "random"  # queries: random locations (CUT) or QS-Attn's low-entropy selection
    qs_from_layer: int = 3  # QS-Attn: index of the first NCE layer that selects and routes its queries (3: the residual taps)
    # --- CycleGAN baseline
    lambda_cycle: float = 10.0  # weight of the cycle-consistency L1 loss
    lambda_identity: float = 0.5  # identity loss weight, as a fraction of lambda_cycle
    pool_size: int = 50  # generated images kept for the discriminators (0: no pool)
    # --- CyCADA (model cycada: CycleGAN + semantic consistency; cutlib/models/cycada.py)
    lambda_sem: float = 0.0  # weight of the semantic-consistency loss L_sem (thesis Eq. 3.13; cycada preset: 1, as the authors' code adds it)
    sem_pretrain_steps: int = 300  # steps of f_S's pretraining on the source labels (trainA_labels) before it is frozen (0: none, f_S stays random: timing only)
    sem_classes: int = 19  # classes of the frozen source segmenter f_S (Cityscapes' 19 train ids)
    # --- Swapping Autoencoder (model swapae)
    structure_nc: int = 8  # channels of the structure code (a map at 1/4 of the image size)
    texture_nc: int = 2048  # length of the texture code (a vector)
    lambda_rec: float = 1.0  # weight of the L1 reconstruction loss
    lambda_cooc: float = 1.0  # weight of the co-occurrence patch GAN loss
    lambda_r1_cooc: float = 1.0  # R1 weight of the co-occurrence discriminator (lambda_r1: the image discriminator's)
    r1_every: int = 16  # lazy R1: the penalties every this many steps, times this many (Swapping Autoencoder only)
    cooc_crops: int = 8  # random crops per image for the co-occurrence discriminator
    cooc_min_scale: float = 0.125  # smallest crop side, as a fraction of the image side
    cooc_max_scale: float = 0.25  # largest crop side, as a fraction of the image side
    cooc_size: int = 0  # crops are resized to this many pixels (0: a quarter of crop_size, as the thesis)
    # --- SPADE (model spade; cutlib/models/spade.py)
    paired: bool = False  # each item's B is the photo of A's own layout ({phase}A_target/, same crop and flip): SPADE
    lambda_feat: float = 10.0  # weight of the GAN feature-matching loss (SPADE: 10)
    lr_D: float = 0.0  # the discriminator's learning rate (0: lr; SPADE's TTUR: 4e-4 beside lr 1e-4)
    num_D: int = 2  # SPADE: discriminators on the image at full, half, ... resolution (multiscale, 2)
    num_upsampling: int = 5  # SPADE: the generator starts at crop_size / 2**num_upsampling and doubles that often
    spade_nhidden: int = 128  # SPADE: width of the conv net mapping the label map to gamma and beta
    spade_norm: Literal["batch", "instance"] = "batch"  # SPADE: the parameter-free normalisation before the modulation
    # --- optimisation
    lr: float = 2e-4  # the paper's appendix says 0.002; the authors ran 2e-4 (paper vs code)
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    batch_size: int = 1  # images per step (the global batch under torchrun)
    n_epochs: int = 200  # epochs at the initial learning rate
    n_epochs_decay: int = 200  # epochs of linear decay to zero
    max_steps: int = 0  # stop after this many optimisation steps in total (0: run all epochs)
    # --- data
    load_size: int = 286  # images are resized to this square size first
    crop_size: int = 256  # then randomly cropped to this size (the training resolution)
    flip: bool = True  # random horizontal flip of the training images
    decay_no_jitter: bool = True  # decay epochs load at crop size, no random crop (as the reference)
    num_workers: int | Literal["auto"] = "auto"  # DataLoader worker processes (0: in the training process; auto: 0 on CPU, spare cores on a GPU)
    dataset_len: int = 0  # items per epoch (0: max(|A|, |B|)); SinCUT draws 100000 crops per "epoch"
    # --- run
    seed: int = 0  # seeds the networks, the data order and the objective's randomness
    device: str = "auto"  # "auto": cuda when available, else cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # forward passes in autocast ("auto": bf16 where fast; fp16 loss-scaled); weights fp32
    channels_last: bool = False  # NHWC memory layout of the networks and images
    compile: bool = False  # torch.compile the convolutional networks while training (first step compiles: about a minute)
    log_every: int = 10  # steps between lines of metrics.jsonl
    sample_every: int = 0  # steps between sample grids (0: once per epoch and at the end)
    save_every: int = 0  # steps between checkpoints (0: once per epoch and at the end)
    save_epoch_freq: int = 5  # keep a generator snapshot every this many epochs (for best-epoch eval)
    num_samples: int = 4  # test images in each sample grid

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ------------------------------------------------------------------ overrides
FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def field_type(name: str):
    return _HINTS[name]


def _number(name: str, value: Any, kind: type) -> int | float:
    """``value`` as an int or a float for field ``name``; strings are parsed, bools refused."""
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            raise TypeError(f"{name} must be {what}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    allowed = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return kind(value)


def _coerce(name: str, value: Any) -> Any:
    """Check (and for strings, parse) a value for field ``name``; raise a clear error if it is wrong."""
    hint = _HINTS[name]
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # int | Literal["auto"]: the word, else an integer
        words = [w for arg in get_args(hint) if get_origin(arg) is Literal for w in get_args(arg)]
        if value in words:
            return value
        try:
            return _number(name, value, int)
        except TypeError:
            raise TypeError(f"{name} must be an integer or one of {words}, got {value!r}") from None
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} must be a list of names (or a comma-separated string), got {value!r}")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        return _number(name, value, hint)
    if hint is str:
        if not isinstance(value, str):
            value = str(value) if isinstance(value, (int, float)) or hasattr(value, "__fspath__") else value
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r}")
        return value
    return value


def override(cfg: TrainConfig, **overrides) -> TrainConfig:
    """A copy of ``cfg`` with fields replaced; unknown names or wrong types raise a clear error."""
    unknown = [k for k in overrides if k not in FIELDS]
    if unknown:
        hints = {k: difflib.get_close_matches(k, FIELDS, n=1) for k in unknown}
        near = "; ".join(f"{k!r}: did you mean {v[0]!r}?" for k, v in hints.items() if v)
        raise ValueError(
            f"unknown TrainConfig field(s) {unknown}. {near + '. ' if near else ''}"
            f"Valid names: {', '.join(FIELDS)}"
        )
    checked = {k: _coerce(k, v) for k, v in overrides.items()}
    return replace(cfg, **checked)  # replace() runs __post_init__: the new config is validated


def validate(cfg: TrainConfig) -> None:
    """Value checks that a type alone cannot express (called by TrainConfig.__post_init__)."""
    problems = [f"{f.name} must be a finite number, got {getattr(cfg, f.name)!r}" for f in fields(cfg)
                if isinstance(getattr(cfg, f.name), float) and not math.isfinite(getattr(cfg, f.name))]
    if cfg.crop_size > cfg.load_size:
        problems.append(f"crop_size ({cfg.crop_size}) must not exceed load_size ({cfg.load_size})")
    if cfg.crop_size % 4:
        problems.append(f"crop_size ({cfg.crop_size}) must be a multiple of 4 (two down/up-sampling stages)")
    for name in ("batch_size", "num_patches", "ngf", "ndf", "netF_nc", "queue_size", "structure_nc", "texture_nc",
                 "r1_every", "cooc_crops"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("n_epochs", "n_epochs_decay", "max_steps", "log_every", "sample_every", "save_every", "num_workers",
                 "dataset_len", "save_epoch_freq"):
        if getattr(cfg, name) != "auto" and getattr(cfg, name) < 0:
            problems.append(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.n_epochs + cfg.n_epochs_decay < 1:
        problems.append("n_epochs + n_epochs_decay must be at least 1")
    if cfg.lr <= 0 or cfg.nce_t <= 0:
        problems.append("lr and nce_t must be positive")
    if not 0 < cfg.cooc_min_scale <= cfg.cooc_max_scale <= 1:
        problems.append(f"need 0 < cooc_min_scale <= cooc_max_scale <= 1, got {cfg.cooc_min_scale} and {cfg.cooc_max_scale}")
    if cfg.cooc_size < 0 or 0 < cfg.cooc_size < 8:
        problems.append(f"cooc_size must be 0 (a quarter of crop_size) or at least 8 pixels, got {cfg.cooc_size}")
    if not cfg.nce_layers:
        problems.append("nce_layers must name at least one encoder tap")
    problems += _followup_problems(cfg)
    if cfg.lambda_sem < 0 or cfg.sem_pretrain_steps < 0 or cfg.sem_classes < 2:
        problems.append(f"lambda_sem and sem_pretrain_steps must be >= 0 and sem_classes >= 2, got {cfg.lambda_sem}, "
                        f"{cfg.sem_pretrain_steps}, {cfg.sem_classes}")
    if cfg.lambda_sem > 0 and cfg.model != "cycada":
        problems.append(f"lambda_sem (the semantic-consistency loss) needs model='cycada', got model={cfg.model!r}")
    problems += _spade_problems(cfg)
    if problems:
        raise ValueError("invalid TrainConfig: " + "; ".join(problems))


def _followup_problems(cfg: TrainConfig) -> list[str]:
    """What the follow-ups of PatchNCE (nce_weighting, nce_queries, lambda_src) cannot be combined with."""
    problems = [f"{name} must be positive, got {getattr(cfg, name)}" for name in ("hdce_gamma", "hdce_gamma_min", "ot_eps", "ot_iters")
                if getattr(cfg, name) <= 0]
    if cfg.lambda_src < 0:
        problems.append(f"lambda_src must be >= 0, got {cfg.lambda_src}")
    if cfg.nce_queries == "entropy" and not 0 <= cfg.qs_from_layer < len(cfg.nce_layers):
        problems.append(f"qs_from_layer must index one of the {len(cfg.nce_layers)} nce_layers (0..{len(cfg.nce_layers) - 1}), got {cfg.qs_from_layer}")
    if cfg.nce_weighting != "uniform" or cfg.nce_queries != "random" or cfg.lambda_src > 0:
        if cfg.model != "cut" or cfg.negatives != "internal" or not cfg.share_encoder:
            problems.append("nce_weighting, nce_queries and lambda_src work with model='cut', negatives='internal' and "
                            "share_encoder=True only: reset the follow-up fields or these ablations")
    if cfg.model == "dclgan" and cfg.netG != "resnet":
        problems.append("model='dclgan' needs netG='resnet' (two ResNet generators)")
    return problems


def _spade_problems(cfg: TrainConfig) -> list[str]:
    """What SPADE's fields (hinge loss, paired data, lr_D, the generator's start size) cannot be combined with."""
    problems = [f"{name} must be at least 1, got {getattr(cfg, name)}" for name in ("num_D", "spade_nhidden")
                if getattr(cfg, name) < 1]
    if cfg.lr_D < 0 or cfg.lambda_feat < 0:
        problems.append(f"lr_D and lambda_feat must be >= 0, got {cfg.lr_D} and {cfg.lambda_feat}")
    if cfg.gan_mode == "hinge" and cfg.model != "spade":
        problems.append("gan_mode='hinge' is SPADE's loss (model='spade'); the other models use lsgan or nonsaturating")
    if cfg.paired and cfg.model in ("sincut", "swapae"):
        problems.append(f"paired=True gives aligned pairs of a folder dataset; model={cfg.model!r} reads its data otherwise")
    if cfg.model == "spade":
        side = cfg.crop_size // 2 ** max(cfg.num_upsampling, 0)
        if not 1 <= cfg.num_upsampling <= 8 or cfg.crop_size % 2**cfg.num_upsampling or side < 2:
            problems.append(f"SPADE's generator starts at crop_size / 2**num_upsampling, which must be a whole number of at "
                            f"least 2 pixels (1 <= num_upsampling <= 8): crop_size {cfg.crop_size}, num_upsampling "
                            f"{cfg.num_upsampling}; lower --num-upsampling")
        if not cfg.paired:
            problems.append("model='spade' learns from aligned pairs: set paired=True (--paired true; start from --preset spade)")
    return problems


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with to_dict() (e.g. from a checkpoint or config.json)."""
    return override(TrainConfig(), **data)
