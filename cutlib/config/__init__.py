"""Every hyper-parameter of a training run in one dataclass, and the presets (book/reference.md section 5).

    fields.py   TrainConfig, override (rejects unknown names and ill-typed values), validate, from_dict
    presets.py  one function per method (CUT, FastCUT, CycleGAN, ...), PRESETS, the CPU and tiny scales

A preset is a plain function returning a TrainConfig; overrides go through ``override(cfg, **kw)``.
The command line and the papermill runner both end in ``override(PRESETS[name](), **overrides)``.
"""

from cutlib.config.fields import FIELDS, TrainConfig, field_type, from_dict, override, validate
from cutlib.config.presets import (CPU_SCALE, DCLGAN, PRESETS, TINY_SCALE, CUT, CyCADA, CycleGAN, FastCUT, HnegSRC, Laptop, MoNCE,
                                   QSAttn, SinCUT, SPADE, SwappingAutoencoder, cpu_scale, preset, tiny_scale)

__all__ = ["FIELDS", "TrainConfig", "field_type", "from_dict", "override", "validate", "CPU_SCALE", "TINY_SCALE", "PRESETS",
           "CUT", "FastCUT", "CycleGAN", "SinCUT", "HnegSRC", "MoNCE", "QSAttn", "DCLGAN", "SwappingAutoencoder", "Laptop", "SPADE", "CyCADA",
           "cpu_scale", "preset", "tiny_scale"]
