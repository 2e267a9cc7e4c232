"""Where the course keeps datasets and runs.

Inside a clone of the repository these are ``<repo>/data`` and ``<repo>/runs``; an installed package
(a wheel, not editable) uses ``~/.cache/cutlib/data`` and ``~/.cache/cutlib/runs``. The environment
variables ``CUTLIB_DATA`` and ``CUTLIB_RUNS`` override both (e.g. on a GPU server with a big disk).
Files the library itself reads (the dataset catalog, the grid's runner notebook) are package data.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The repository root when cutlib runs from a clone (editable install or PYTHONPATH), else None
    (an installed wheel: its parent is site-packages, which has no pyproject.toml and notebooks/)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def _default(sub: str) -> Path:
    root = repo_root()
    return root / sub if root is not None else Path.home() / ".cache" / "cutlib" / sub


def data_root() -> Path:
    """Folder of the dataset cache (built-in datasets are generated here, real ones downloaded)."""
    return Path(os.environ.get("CUTLIB_DATA") or _default("data"))


def runs_root() -> Path:
    """Folder where training runs are written by default."""
    return Path(os.environ.get("CUTLIB_RUNS") or _default("runs"))
