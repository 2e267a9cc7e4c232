"""Which device a run uses: the one resolver behind every ``device`` option of cutlib."""

from __future__ import annotations

import warnings

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


# ----------------------------------------------------------------------------------------------
# precision: which dtype the networks' forward passes run in (the weights and optimiser stay fp32)

RESOLVED_PRECISIONS = ("fp32", "bf16", "fp16")  # what "auto" resolves among, and what bench measures
PRECISIONS = ("auto", *RESOLVED_PRECISIONS)
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> set[str]:
    """The feature flags of this machine's CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def resolve_precision(precision: str, device: torch.device | str, flags: set[str] | None = None,
                      capability: tuple[int, int] | None = None) -> str:
    """"fp32", "bf16" or "fp16" for ``precision`` on ``device``. "auto" is bf16 where the hardware runs it fast: a
    CUDA GPU of compute capability >= 8.0 (A100 on), or a CPU with avx512_bf16 or amx_bf16; else fp32 (fp16, for
    the GPUs before the A100, is chosen explicitly: it needs loss scaling, see grad_scaler).
    ``flags`` / ``capability`` replace what this machine reports (for tests, or to plan for another machine)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu":
        warnings.warn("fp16 on a CPU runs on slow reference kernels (a 3x3 convolution about 450 times slower "
                      "than in bf16 on a Xeon with AMX, tools/conv_dtypes.py): it is there for tests; use --precision bf16 or fp32 "
                      "on a CPU", stacklevel=2)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        capability = capability or torch.cuda.get_device_capability(device)
        return "bf16" if tuple(capability) >= (8, 0) else "fp32"
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


def autocast(precision: str, device: torch.device | str):
    """The autocast context of a resolved precision: bf16 or fp16 autocast on the device's type, a no-op for fp32."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=HALF_DTYPES.get(precision, torch.bfloat16), enabled=precision in HALF_DTYPES)


def fp16_autocast(device_type: str) -> bool:
    """Whether fp16 autocast is on for ``device_type`` now (the modules whose gradients exceed fp16's
    range, 65504, run in fp32 under it: the PatchNCE heads)."""
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """The loss scaler of a resolved precision. fp16 keeps 5 exponent bits, so small gradients of its
    forward passes would flush to zero: its losses are multiplied by a dynamic scale before backward
    and the gradients divided by it before the step, and a step whose gradients overflowed is skipped
    (the scale halves). bf16 has fp32's exponent range and fp32 needs nothing: for them the scaler is
    disabled, ``scale`` returns the loss as it is and ``step`` is the optimiser's own step."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """An image batch on ``device`` (non-blocking from pinned memory), NHWC when ``channels_last``."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
