"""Feeding the trainer (cutlib.data.loader): how many workers "auto" means, and that workers change nothing."""

from __future__ import annotations

import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.data.loader import epoch_loader, resolve_num_workers
from cutlib.runs import load_checkpoint
from cutlib.train import train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}


def test_auto_workers_are_none_on_cpu_and_the_spare_cores_on_a_gpu():
    assert resolve_num_workers("auto", "cpu", cpu_count=16) == 0
    assert resolve_num_workers("auto", "cuda", cpu_count=16) == 8
    assert resolve_num_workers("auto", "cuda", cpu_count=4) == 3
    assert resolve_num_workers("auto", "cuda", cpu_count=1) == 0
    assert resolve_num_workers(3, "cpu") == 3 and resolve_num_workers("2", "cuda") == 2


def test_the_epoch_loader_yields_the_asked_batches_and_pins_only_for_a_gpu(tmp_path):
    root = make_dataset("stripes", root=tmp_path, size=40, n_train=6, n_test=2)
    cfg = C.preset("cut", dataset=str(root), **TINY)
    from cutlib.data import load_dataset

    ds = load_dataset(cfg)
    loader = epoch_loader(ds, [[0, 1], [2, 3]], cfg, epoch=1, device=torch.device("cpu"))
    assert not loader.pin_memory and loader.num_workers == 0
    batches = list(loader)
    assert [b["A"].shape[0] for b in batches] == [2, 2]
    assert torch.equal(batches[1]["A"][0], ds[2]["A"])


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
