"""Feeding the trainer (cutlib.data.loader): how many workers "auto" means, that each epoch gets the items it
asks for, that the workers persist across epochs, and that workers change nothing."""

from __future__ import annotations

import os

import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.data.loader import TrainLoader, resolve_num_workers
from cutlib.runs import load_checkpoint
from cutlib.train import train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}


def test_auto_workers_are_none_on_cpu_and_the_spare_cores_on_a_gpu():
    assert resolve_num_workers("auto", "cpu", cpu_count=16) == 0
    assert resolve_num_workers("auto", "cuda", cpu_count=16) == 8
    assert resolve_num_workers("auto", "cuda", cpu_count=4) == 3
    assert resolve_num_workers("auto", "cuda", cpu_count=1) == 0
    assert resolve_num_workers(3, "cpu") == 3 and resolve_num_workers("2", "cuda") == 2


def test_each_epoch_yields_its_batches_as_that_epoch_draws_them_and_pins_only_for_a_gpu(tmp_path):
    root = make_dataset("stripes", root=tmp_path, size=40, n_train=6, n_test=2)
    cfg = C.preset("cut", dataset=str(root), **{**TINY, "load_size": 40, "crop_size": 32})
    from cutlib.data import load_dataset

    ds, reference = load_dataset(cfg), load_dataset(cfg)
    loader = TrainLoader(ds, cfg, device=torch.device("cpu"))
    assert not loader.loader.pin_memory and loader.workers == 0
    first = list(loader.epoch([[0, 1], [2, 3]], epoch=1))
    assert [b["A"].shape[0] for b in first] == [2, 2]
    reference.set_epoch(1)
    assert torch.equal(first[1]["A"][0], reference[2]["A"])
    second = list(loader.epoch([[2]], epoch=2, jitter=False))  # another epoch: other draws; no jitter: a plain resize
    reference.set_epoch(2)
    reference.jitter = False
    assert torch.equal(second[0]["A"][0], reference[2]["A"]) and torch.equal(second[0]["B"][0], reference[2]["B"])
    assert not torch.equal(second[0]["A"][0], first[1]["A"][0])


class WhichProcess(torch.utils.data.Dataset):
    """Items that say which process read them (and the epoch it was set to)."""

    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {"pid": os.getpid(), "epoch": self.epoch, "index": index}


def test_the_workers_persist_from_one_epoch_to_the_next_and_know_each_epoch():
    cfg = C.preset("cut", num_workers=2)
    loader = TrainLoader(WhichProcess(), cfg, device="cpu")
    seen = []
    for epoch in (1, 2, 3):
        items = list(loader.epoch([[0, 1], [2, 3], [4, 5], [6, 7]], epoch))
        assert [int(i) for b in items for i in b["index"]] == list(range(8))
        assert all(int(e) == epoch for b in items for e in b["epoch"])  # the workers heard of the new epoch
        seen.append({int(p) for b in items for p in b["pid"]})
    assert os.getpid() not in seen[0] and len(seen[0]) == 2  # two worker processes
    assert seen[0] == seen[1] == seen[2]  # the same two in every epoch: not restarted
    loader.close()
    assert loader.loader._iterator is None


@pytest.mark.slow
def test_a_run_with_a_worker_process_equals_one_without(tmp_path):
    root = make_dataset("stripes", root=tmp_path / "data", size=40, n_train=6, n_test=2)
    cfg = C.preset("cut", dataset=str(root), max_steps=3, save_epoch_freq=0, **TINY)
    for workers in (0, 1):
        train(C.override(cfg, num_workers=workers), tmp_path / f"w{workers}", progress=False)
    a, b = (load_checkpoint(tmp_path / f"w{w}" / "checkpoint.pt") for w in (0, 1))
    for name in ("G", "D", "H"):
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)
