"""Feeding the trainer: one DataLoader for the whole run, whose worker processes (where they pay,
``num_workers="auto"``) decode and resize off the critical path and live from the first epoch to the
last (persistent workers), with pinned memory on a GPU.

Each epoch hands the loader its batches of item keys ``(epoch, jitter, index)``: a worker sets its copy
of the dataset to that epoch and jitter before it reads the item, so the workers never need to hear of
a new epoch, and an item is the same with any number of workers (its randomness is a function of
(seed, epoch, index): cutlib.data.folders.item_rng).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


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


class EpochItems(Dataset):
    """``dataset`` read by keys ``(epoch, jitter, index)``: item ``index`` as that epoch draws it, with or
    without the random crop (``jitter``; False in the decay epochs). Datasets without jitter ignore it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool, int]) -> dict:
        epoch, jitter, index = key
        self.dataset.set_epoch(epoch)
        if hasattr(self.dataset, "jitter"):
            self.dataset.jitter = jitter
        return self.dataset[index]


class EpochBatches:
    """The batch sampler of the run's loader: the current epoch's batches of keys (set by TrainLoader.epoch)."""

    def __init__(self):
        self.batches: list[list[tuple[int, bool, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TrainLoader:
    """The trainer's data: one DataLoader over ``dataset`` for the whole run. ``epoch(batches, epoch, jitter)``
    iterates that epoch's ``batches`` (lists of item indices). Its workers start once and persist across
    epochs (``persistent_workers``); pinned memory and a prefetch of 4 batches per worker on a GPU."""

    def __init__(self, dataset, cfg, device: torch.device | str):
        self.workers = resolve_num_workers(cfg.num_workers, device)
        self.sampler = EpochBatches()
        cuda = torch.device(device).type == "cuda"
        # its own seeded generator: a DataLoader without one draws from the global RNG, which a resume would change
        self.loader = DataLoader(EpochItems(dataset), batch_sampler=self.sampler, num_workers=self.workers,
                                 pin_memory=cuda, persistent_workers=self.workers > 0,
                                 prefetch_factor=4 if self.workers else None,
                                 generator=torch.Generator().manual_seed(cfg.seed * 100_003))

    def epoch(self, batches: list[list[int]], epoch: int, jitter: bool = True) -> Iterator[dict]:
        """The batches of one epoch, collated (dict of stacked tensors and path lists)."""
        self.sampler.batches = [[(int(epoch), bool(jitter), int(i)) for i in batch] for batch in batches]
        return iter(self.loader)

    def close(self) -> None:
        """Stop the persistent workers now (else they stop when the loader is garbage-collected)."""
        iterator = getattr(self.loader, "_iterator", None)  # DataLoader keeps its persistent iterator here
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None
