"""How much memory translating an image whole takes, estimated before it starts (cutlib.translate
refuses, with the tile size to use, what would not fit).
"""

from __future__ import annotations

import os
import weakref

import torch
from torch import Tensor, nn

# Peak memory of a forward pass, measured on CPU (ResNet generator, ngf 8, 256 to 2048 px squares):
# about twice the largest input + output of one layer (both live at once, plus the layer's own
# temporaries, e.g. instance norm's), i.e. ~260 bytes a pixel at ngf 8, ~10 GB for 6000 x 6000.
MEMORY_FACTOR = 2
PROBE = 64  # side of the probe image the per-pixel cost is measured on
_PER_PIXEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # generator -> bytes per pixel


class TooLargeError(ValueError):
    """A whole-image translation that would need more memory than the limit."""


def bytes_per_pixel(G: nn.Module) -> float:
    """Estimated peak memory of ``G`` per input pixel of one image: MEMORY_FACTOR x the largest input +
    output of one layer, plus the image in and out, measured by running G on a small probe image."""
    if G in _PER_PIXEL:
        return _PER_PIXEL[G]
    largest = 0

    def hook(module, inputs, output):
        nonlocal largest
        tensors = [t for t in (*inputs, *(output if isinstance(output, tuple) else (output,))) if isinstance(t, Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    handles = [m.register_forward_hook(hook) for m in G.modules() if not list(m.children())]
    try:
        device = next(G.parameters()).device
        # the probe must not move the caller's random state (a generator with noise injection draws from it)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x = torch.zeros(1, G.input_nc, PROBE, PROBE, device=device)
            out = G(x)
    finally:
        for handle in handles:
            handle.remove()
    ends = x.numel() * x.element_size() + out.numel() * out.element_size()
    _PER_PIXEL[G] = (MEMORY_FACTOR * largest + ends) / PROBE**2
    return _PER_PIXEL[G]


def whole_image_bytes(G: nn.Module, height: int, width: int, batch: int = 1, multiple: int = 4) -> int:
    """Estimated memory (bytes) of translating ``batch`` images of ``height`` x ``width`` whole (padded)."""
    h, w = (max(2 * multiple, -(-s // multiple) * multiple) for s in (height, width))
    return int(bytes_per_pixel(G) * batch * h * w)


def memory_limit(device: torch.device) -> tuple[int, str]:
    """The default limit (bytes) of a whole-image translation on ``device`` and how it was chosen:
    half the memory available now (the GPU's free memory; on CPU MemAvailable of /proc/meminfo)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free // 2, f"half the free memory of {device}"
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return free // 2, "half the memory available now"


def check_memory(G: nn.Module, height: int, width: int, batch: int = 1, max_memory: float | None = None,
                 name: str = "the image") -> None:
    """Raise TooLargeError, with the tile size to use, when translating whole needs more than
    ``max_memory`` bytes (None: ``memory_limit``)."""
    need = whole_image_bytes(G, height, width, batch)
    if max_memory is None:
        limit, why = memory_limit(next(G.parameters()).device)
    else:
        limit, why = int(max_memory), "set by max_memory / --max-memory"
    if need <= limit:
        return
    per_tile = bytes_per_pixel(G) * batch
    tile = next((t for t in (1024, 768, 512, 384, 256, 192, 128, 96, 64, 32, 16, 8) if per_tile * t * t <= limit), None)
    advice = (f"pass --tile {tile} (tile={tile} in Python; about {per_tile * tile * tile / 1e9:.2g} GB a tile; larger tiles "
              "keep colours more even)" if tile else "even the smallest tile does not fit: free memory")
    raise TooLargeError(f"translating {name} ({width}x{height} px) whole needs about {need / 1e9:.2g} GB, more than the "
                        f"limit of {limit / 1e9:.2g} GB ({why}): {advice}, or raise the limit with --max-memory GB")
