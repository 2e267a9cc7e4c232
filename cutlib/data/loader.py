"""Feeding the trainer: one DataLoader per epoch over that epoch's batches, with worker processes that
decode and resize off the critical path where it pays (``num_workers="auto"``), pinned memory and
persistent workers on a GPU.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader


def resolve_num_workers(num_workers: int | str, device: torch.device | str, cpu_count: int | None = None) -> int:
    """Worker processes for ``num_workers``; "auto": none on a CPU device (the training step uses the cores
    and the decoding of a crop costs a few ms beside a step of tenths of a second: measured, workers
    only compete with it on a 2-core machine), and on a GPU one per spare core, at most 8."""
    if num_workers != "auto":
        return int(num_workers)
    if torch.device(device).type != "cuda":
        return 0
    cores = cpu_count if cpu_count is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def epoch_loader(dataset, batches: list[list[int]], cfg, epoch: int, device: torch.device) -> DataLoader:
    """The DataLoader of one epoch: ``batches`` (lists of item indices) of ``dataset``. Its own seeded
    generator: otherwise each DataLoader draws from the global RNG and a mid-epoch resume changes it.
    Items depend only on (seed, epoch, index), so any number of workers yields the same batches."""
    workers = resolve_num_workers(cfg.num_workers, device)
    cuda = torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=cuda,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
