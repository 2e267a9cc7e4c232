"""Shared test set-up: one torch thread per xdist worker, every test seeded, and the real image slices."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same random state, whichever xdist worker runs it and whatever ran
    before it there: a test that draws random tensors sees the same draws in every run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def shared_dataset(name: str) -> Path:
    """Path of a real image slice in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real test images not found at {path} (../shared/data is absent in a plain clone)")
    return path


@pytest.fixture
def horse2zebra_mini() -> Path:
    return shared_dataset("horse2zebra_mini")


@pytest.fixture
def monet_etretat() -> Path:
    return shared_dataset("single_image_monet_etretat")


@pytest.fixture
def afhq_mini() -> Path:
    return shared_dataset("afhq_cat2dog_mini")
