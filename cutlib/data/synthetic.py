"""Built-in procedural datasets with ground truth, so every chapter runs offline in seconds.

``stripes`` is the horse->zebra analogue: smooth-coated animals (A) and striped animals (B) that
are about twice as large, mirroring the paper's distribution mismatch (Fig. 15: 18% vs 37% of
the pixels). ``city`` is the Cityscapes labels->photo analogue (paper Table 1), ``city_synth`` the
GTA5->Cityscapes analogue of CyCADA (flat-shaded renders -> photo-like ones). All write the
CycleGAN layout plus ground truth: ``X_labels/`` beside every image folder ``X``, ``testA_target/``
(the true domain-B rendering of each test scene of A) and ``meta.json``.
Same seed, same bytes: every image draws from its own generator seeded by (seed, split, index).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cutlib.data.city as city
import cutlib.data.city_synthetic as city_synthetic
import cutlib.data.pair as pair
import cutlib.data.stripes as stripes
from cutlib.files import staged_folder
from cutlib.paths import data_root

GENERATOR_VERSION = 1
VERSIONS = {"city": 2}  # a writer's own version where it changed (city 2: trainA_target added); else GENERATOR_VERSION
BUILTIN = ("stripes", "city", "city_synth")  # with ground truth: the benchmarks of cutlib.benchmarks
PAIRS = {"sincut_pair": pair.make_pair}  # one image per domain, for SinCUT: name -> make(root) -> folder
DEFAULTS = {"stripes": dict(n_train=400, n_test=100), "city": dict(n_train=400, n_test=100),
            "city_synth": dict(n_train=400, n_test=100)}
WRITERS = {"stripes": stripes.write, "city": city.write, "city_synth": city_synthetic.write}  # name -> write(out, size, n_train, n_test, seed) -> meta


def generator_version(name: str) -> int:
    """The version of the built-in dataset ``name``'s writer: a cached folder of another version is made again."""
    return VERSIONS.get(name, GENERATOR_VERSION)


def dataset_dir(name: str, root: str | Path | None = None, size: int = 64, seed: int = 0,
                n_train: int | None = None, n_test: int | None = None) -> Path:
    """Cache folder of a built-in dataset: ``<root>/<name>_<size>px_seed<seed>`` (+ counts if not default)."""
    root = Path(root) if root is not None else data_root()
    d = DEFAULTS[name]
    n_train = d["n_train"] if n_train is None else n_train
    n_test = d["n_test"] if n_test is None else n_test
    suffix = "" if (n_train, n_test) == (d["n_train"], d["n_test"]) else f"_n{n_train}-{n_test}"
    return root / f"{name}_{size}px_seed{seed}{suffix}"


def make_dataset(name: str, root: str | Path | None = None, size: int = 64, n_train: int | None = None,
                 n_test: int | None = None, seed: int = 0) -> Path:
    """Generate (or reuse from the cache) a built-in dataset and return its folder.

    Written to a temporary folder and renamed into place when complete, so an interrupted run
    leaves no half-made dataset. ``n_train``/``n_test`` are images per domain.
    """
    if name not in WRITERS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {sorted(WRITERS)}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}")
    d = DEFAULTS[name]
    n_train = int(d["n_train"] if n_train is None else n_train)
    n_test = int(d["n_test"] if n_test is None else n_test)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    final = dataset_dir(name, root, size, seed, n_train, n_test)
    meta_path = final / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("generator_version") == generator_version(name):
            return final
        shutil.rmtree(final)  # made by an older generator: rebuild

    def fill(tmp: Path) -> None:
        meta = WRITERS[name](tmp, size, n_train, n_test, seed)
        meta.update(name=name, size=size, seed=seed, n_train=n_train, n_test=n_test, generator_version=generator_version(name))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    staged_folder(final, fill, keep_existing=True)  # a concurrent writer that finished first wins
    return final
