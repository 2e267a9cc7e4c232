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


__all__ = ["MODELS", "CUTModel", "CyCADAModel", "CycleGANModel", "DCLGANModel", "SinCUTModel", "SPADEModel", "SwappingAutoencoderModel", "build_model",
           "model_class"]
