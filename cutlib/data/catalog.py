"""The dataset catalog (catalog.json, package data beside this module) and how a name becomes a folder.

Each entry has: name, kind ("dataset" | "pretrained" | "instructions"), url, sha256 (null when
unknown), size_bytes, licence, citation, layout; optionally md5, files, rearrange, instructions.
"""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path

from cutlib.data.folders import LAYOUT
from cutlib.images import list_images
from cutlib.data.synthetic import BUILTIN, PAIRS, make_dataset
from cutlib.paths import PACKAGE_DIR, data_root

KINDS = ("dataset", "pretrained", "instructions")


def catalog_path() -> Path:
    """catalog.json beside this module (package data: a clone and an installed wheel both have it)."""
    return PACKAGE_DIR / "data" / "catalog.json"


@lru_cache(maxsize=None)
def _load(path: str) -> dict[str, dict]:
    entries = json.loads(Path(path).read_text())["entries"]
    out = {}
    for entry in entries:
        missing = {"name", "kind", "url", "sha256", "licence", "citation", "layout"} - set(entry)
        if missing or entry["kind"] not in KINDS:
            raise ValueError(f"catalog entry {entry.get('name')!r} in {path} is malformed: missing {sorted(missing)} "
                             f"or kind {entry.get('kind')!r} not in {KINDS}")
        out[entry["name"]] = entry
    return out


def load_catalog(path: str | Path | None = None) -> dict[str, dict]:
    """All catalog entries by name."""
    return dict(_load(str(path or catalog_path())))


def get_entry(name: str, path: str | Path | None = None) -> dict:
    """One catalog entry, or an error listing the names there are."""
    catalog = load_catalog(path)
    if name not in catalog:
        raise KeyError(f"{name!r} is not in the dataset catalog; known: {', '.join(sorted(catalog))}")
    return catalog[name]


def has_layout(folder: Path) -> bool:
    """True when ``folder`` has the unaligned layout (trainA+trainB or testA+testB, with images)."""
    return any(all((folder / f"{p}{d}").is_dir() and list_images(folder / f"{p}{d}") for d in "AB")
               for p in ("train", "test"))


def resolve_dataset(name_or_path: str | Path, root: str | Path | None = None, size: int = 64, seed: int = 0) -> Path:
    """Turn a built-in name, a catalog name or a folder into a dataset folder.

    Built-in ("stripes" and "city" at ``size`` px, and the single-image pair "sincut_pair"): generated
    on first use. An existing folder: used as it is (it must have the A/B layout; the catalog is not
    read). Catalog name: its downloaded folder under ``root`` (default ``cutlib.paths.data_root()``).
    """
    name = str(name_or_path)
    if name in BUILTIN:
        return make_dataset(name, root=root, size=size, seed=seed)
    if name in PAIRS:
        return PAIRS[name](root)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not has_layout(folder):
            raise FileNotFoundError(f"{folder} is not a dataset folder.\n{LAYOUT}")
        return folder
    catalog = load_catalog()
    if name in catalog:
        entry = catalog[name]
        folder = Path(root or data_root()) / name
        if has_layout(folder):
            return folder
        if entry["kind"] == "instructions":
            steps = "\n  ".join(entry.get("instructions", [entry["url"]]))
            raise FileNotFoundError(f"dataset {name!r} is not at {folder}. It cannot be downloaded for you:\n  {steps}")
        root_flag = f" --root {root}" if root is not None else ""
        raise FileNotFoundError(f"dataset {name!r} is not downloaded yet (looked in {folder}); "
                                f"run: python -m cutlib download {name}{root_flag}")
    raise FileNotFoundError(f"no dataset {name!r}: not a built-in ({', '.join((*BUILTIN, *PAIRS))}), "
                            f"not in the catalog ({', '.join(sorted(catalog))}), and not an existing folder")


def cli(argv: list[str]) -> int:
    """``python -m cutlib datasets``: list the built-in and catalog datasets."""
    parser = argparse.ArgumentParser(prog="python -m cutlib datasets", description=cli.__doc__)
    parser.add_argument("--root", default=None, help="dataset folder (default: cutlib.paths.data_root())")
    args = parser.parse_args(argv)
    root = Path(args.root or data_root())
    print("built-in (generated on first use): " + ", ".join(BUILTIN) + "; single-image pair (SinCUT): "
          + ", ".join(PAIRS))
    for name, entry in sorted(load_catalog().items()):
        if entry["kind"] == "pretrained":
            present = all((root / name / m["path"]).is_file() for m in entry.get("models", []))
        else:
            present = has_layout(root / name)
        state = "present" if present else ("instructions" if entry["kind"] == "instructions" else "-")
        print(f"  {name:<28} {entry['kind']:<12} {state:<12} {entry.get('description', '')}")
    return 0
