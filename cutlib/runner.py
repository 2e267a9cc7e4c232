"""The settings of the papermill runner (notebooks/run_experiment.ipynb): its scales and the one function
that turns its parameters into a TrainConfig. The notebook calls it, and the grid's dry run checks every
run with it before anything is trained.
"""

from __future__ import annotations

import json

from cutlib import config as C
from cutlib.device import resolve_device

RUNNER_SCALES = {"tiny": dict(C.TINY_SCALE, max_steps=20), "cpu": dict(C.CPU_SCALE), "paper": {}}
RUNNER_SIZES = ("load_size", "crop_size", "n_epochs", "n_epochs_decay", "max_steps", "batch_size")
RUNNER_ARGS = ("preset", "dataset", "scale", "device", "seed", "overrides") + RUNNER_SIZES


def runner_scale(scale: str, device: str = "cpu") -> str:
    """The runner's scale: "auto" means paper on a cuda device (by name; "auto": if a GPU is visible), else tiny."""
    if scale == "auto":
        kind = resolve_device("auto").type if str(device) == "auto" else str(device).split(":")[0]
        return "paper" if kind == "cuda" else "tiny"
    if scale not in RUNNER_SCALES:
        raise ValueError(f"scale must be one of {list(RUNNER_SCALES)} or 'auto', got {scale!r}")
    return scale


def runner_config(preset: str = "cut", dataset="stripes", scale: str = "auto", device: str = "cpu", seed: int = 0,
                  overrides=None, **sizes) -> C.TrainConfig:
    """The TrainConfig run_experiment.ipynb trains (defaults: the notebook's): the scale's settings, then dataset,
    device and seed, then the ``sizes`` (RUNNER_SIZES) that are not None, then ``overrides`` (a dict or JSON text)."""
    try:  # papermill's -p passes the JSON text of a dict: -p overrides '{"lambda_nce": 2}'
        fields = json.loads(overrides) if isinstance(overrides, str) else ({} if overrides is None else overrides)
    except json.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise ValueError("overrides must be a dict of TrainConfig fields or the JSON text of one, e.g. "
                         f"-p overrides '{{\"lambda_nce\": 2}}'; got {overrides!r}")
    scale = runner_scale(scale, device)
    settings = {**RUNNER_SCALES[scale], "dataset": dataset, "device": device, "seed": seed,
                **{k: v for k, v in sizes.items() if v is not None}, **fields}
    if scale != "paper" and str(preset).lower() == "sincut":  # 64 px crops zoomed from the one image
        settings.update(load_size=max(settings.get("load_size", 64), 64), crop_size=64)
    if scale != "paper" and str(preset).lower() == "spade":  # a 4 px start at 32 px (the preset's 1/32: 256 px); its
        settings.setdefault("num_upsampling", 3)  # multiscale D of depth 4 fits 32 px (cutlib.models.check_discriminator)
    return C.preset(str(preset), **settings)
