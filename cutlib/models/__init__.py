"""The training objectives, one class per method, and the registry that names them.

    cut       CUTModel       CUT and FastCUT: GAN + multilayer PatchNCE (cutlib/models/cut.py)
    cyclegan  CycleGANModel  the baseline of the paper's Table 1 (cutlib/models/cyclegan.py)
    sincut    SinCUTModel    CUT on one image per domain (cutlib/models/sincut.py)
    dclgan    DCLGANModel    two generators, two embeddings, PatchNCE both ways (cutlib/models/dclgan.py)
    swapae    SwappingAutoencoderModel  structure and texture codes, swapped (cutlib/models/swapae.py)
    spade     SPADEModel     paired label maps -> photos, spatially-adaptive normalisation (cutlib/models/spade.py)
    cycada    CyCADAModel    CycleGAN + semantic consistency through a frozen source segmenter (cutlib/models/cycada.py)

``TrainConfig.model`` names the class; ``build_model(cfg)`` builds it with its networks.
"""

from __future__ import annotations

import torch
from torch import nn

from cutlib.config import TrainConfig
from cutlib.models.cut import CUTModel
from cutlib.models.cycada import CyCADAModel
from cutlib.models.cyclegan import CycleGANModel
from cutlib.models.dclgan import DCLGANModel
from cutlib.models.sincut import SinCUTModel
from cutlib.models.spade import SPADEModel
from cutlib.models.swapae import SwappingAutoencoderModel
from cutlib.networks import build_discriminator

MODELS: dict[str, type[nn.Module]] = {"cut": CUTModel, "cyclegan": CycleGANModel, "sincut": SinCUTModel,
                                      "dclgan": DCLGANModel, "swapae": SwappingAutoencoderModel, "spade": SPADEModel,
                                      "cycada": CyCADAModel}


def model_class(name: str) -> type[nn.Module]:
    """The objective class called ``name``: cut (CUT, FastCUT and the PatchNCE follow-ups), cyclegan, sincut, dclgan,
    swapae, spade."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The objective for ``cfg.model`` with its networks on ``device``."""
    return model_class(cfg.model)(cfg, device)


def check_discriminator(cfg: TrainConfig) -> None:
    """Pass one crop-sized zero image through a discriminator built from ``cfg`` alone, so that one
    too deep for the crop (n_layers_D 6 on 32 px) is refused before anything is written. The discriminator
    is the model's own where its class has ``make_discriminator(cfg) -> (D, input channels)`` (SPADE's
    multiscale D on labels + image), else the course's (cutlib.networks.build_discriminator)."""
    make = getattr(model_class(cfg.model), "make_discriminator", None)
    D, channels = make(cfg) if make else (build_discriminator(cfg), cfg.output_nc)
    try:
        with torch.no_grad():
            D(torch.zeros(1, channels, cfg.crop_size, cfg.crop_size))
    except (RuntimeError, ValueError) as err:  # a kernel larger than its input, or a 1x1 map for InstanceNorm
        raise ValueError(f"the discriminator (netD={cfg.netD}, n_layers_D={cfg.n_layers_D}) does not fit crop_size "
                         f"{cfg.crop_size} ({str(err).splitlines()[0]}); lower --n-layers-D or raise --crop-size") from None


def compile_networks(model: nn.Module) -> tuple[str, ...]:
    """torch.compile, in place, the convolutional networks ``model.compiled_networks`` names (default: G and D),
    for training with ``TrainConfig.compile``. In place (``nn.Module.compile``): the state dicts keep their
    keys, so checkpoints of compiled and eager runs are the same. A network's ``encode`` method (the generator's
    pass for the PatchNCE queries and FastCUT's flipped keys) is compiled too: left eager, in bf16 NHWC it paid
    the layout copies compiling removes elsewhere. The projection heads, which gather random patches, stay
    eager. The first step of each input shape compiles (about a minute on a CPU). Returns the names."""
    names = tuple(getattr(model, "compiled_networks", ("G", "D")))
    for name in names:
        net = getattr(model, name)
        net.compile()
        if callable(getattr(net, "encode", None)):  # the PatchNCE queries' (and flipped keys') pass: compiled too
            net.encode = torch.compile(net.encode)
    return names


__all__ = ["MODELS", "CUTModel", "CyCADAModel", "CycleGANModel", "DCLGANModel", "SinCUTModel", "SPADEModel", "SwappingAutoencoderModel", "build_model",
           "check_discriminator", "compile_networks", "model_class"]
