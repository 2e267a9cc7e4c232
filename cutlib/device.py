"""Which device a run uses: the one resolver behind every ``device`` option of cutlib."""

from __future__ import annotations

import torch

VALID = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``name`` as a torch.device; "auto" or None: cuda when a GPU is visible, else cpu.

    A name torch does not know, a GPU that is not there or a GPU index past the last one is a
    ValueError that says what is valid.
    """
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; valid: {VALID}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; valid: {VALID}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) are visible (cuda:0 ...)")
    return device
