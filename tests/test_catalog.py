"""cutlib/data/catalog.json (honest, complete metadata; package data) and resolve_dataset (name or folder -> dataset folder)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cutlib.data.catalog as catalog_module
from cutlib.__main__ import main
from cutlib.data import get_entry, load_catalog, make_dataset, resolve_dataset
from cutlib.data.catalog import catalog_path

ISSUE_NAMES = ["horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo",
               "ukiyoe2photo", "vangogh2photo", "maps", "facades", "iphone2dslr_flower", "grumpifycat", "mini",
               "single_image_monet_etretat", "afhq_cat2dog", "cityscapes"]


def test_catalog_lists_the_papers_datasets_with_required_fields():
    catalog = load_catalog()
    raw = json.loads(catalog_path().read_text())["entries"]
    assert len({e["name"] for e in raw}) == len(raw), "names must be unique"
    assert set(ISSUE_NAMES) <= set(catalog)
    for name, e in catalog.items():
        assert e["kind"] in ("dataset", "pretrained", "instructions"), name
        assert e["licence"] and e["citation"] and e["layout"], name
        assert e["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), name
        assert e.get("size_bytes") is None or e["size_bytes"] > 0, name
        if e["kind"] == "dataset":
            urls = [e["url"]] if e["url"] else [f["url"] for f in e["files"]]
            assert urls and all(u.startswith(("http://", "https://")) for u in urls), name
    assert get_entry("cityscapes")["kind"] == "instructions"
    assert get_entry("horse2zebra")["url"].endswith("/horse2zebra.zip")


def test_catalog_is_package_data_beside_the_module():
    path = catalog_path()
    assert path.parent == Path(catalog_module.__file__).resolve().parent and path.is_file()


def test_a_plain_folder_resolves_without_the_catalog(tmp_path, monkeypatch):
    for split in ("trainA", "trainB"):
        (tmp_path / "mine" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "mine" / split / "x.png")
    monkeypatch.setattr(catalog_module, "catalog_path", lambda: tmp_path / "no_catalog_here.json")
    assert resolve_dataset(tmp_path / "mine") == tmp_path / "mine"
    assert resolve_dataset(str(tmp_path / "mine")) == tmp_path / "mine"
    with pytest.raises(FileNotFoundError, match="trainA"):  # a folder without the layout: its own error
        resolve_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_catalog_here"):  # a name does need the catalog
        resolve_dataset("horse2zebra")


def test_sincut_pair_checksums_match_the_real_files(monet_etretat):
    import hashlib

    for f in get_entry("single_image_monet_etretat")["files"]:
        data = (monet_etretat / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size_bytes"]


def test_unknown_entry_lists_the_names():
    with pytest.raises(KeyError, match="horse2zebra"):
        get_entry("horse2giraffe")


def test_resolve_builtin_catalog_and_folder(tmp_path):
    built = resolve_dataset("stripes", root=tmp_path, size=32)
    assert built == make_dataset("stripes", root=tmp_path, size=32) and (built / "trainA").is_dir()
    with pytest.raises(FileNotFoundError, match="python -m cutlib download horse2zebra --root"):
        resolve_dataset("horse2zebra", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare-cityscapes"):
        resolve_dataset("cityscapes", root=tmp_path)
    # a downloaded catalog dataset is found under the root
    for split in ("trainA", "trainB"):
        (tmp_path / "horse2zebra" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "horse2zebra" / split / "x.png")
    assert resolve_dataset("horse2zebra", root=tmp_path) == tmp_path / "horse2zebra"
    assert resolve_dataset(tmp_path / "horse2zebra") == tmp_path / "horse2zebra"
    (tmp_path / "loose").mkdir()
    with pytest.raises(FileNotFoundError, match="trainA"):
        resolve_dataset(tmp_path / "loose")
    with pytest.raises(FileNotFoundError, match="not a built-in"):
        resolve_dataset(tmp_path / "nowhere")


def test_resolve_real_slice(horse2zebra_mini):
    assert resolve_dataset(horse2zebra_mini) == horse2zebra_mini


def test_datasets_command_lists_everything(capsys, tmp_path):
    assert main(["datasets", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stripes" in out and all(name in out for name in ISSUE_NAMES)


def test_datasets_command_marks_downloaded_pretrained_models_present(capsys, tmp_path):
    entry = next(e for e in load_catalog().values() if e["kind"] == "pretrained")
    main(["datasets", "--root", str(tmp_path)])
    line = next(l for l in capsys.readouterr().out.splitlines() if entry["name"] in l)
    assert "present" not in line
    for model in entry["models"]:
        (tmp_path / entry["name"] / model["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / entry["name"] / model["path"]).write_bytes(b"weights")
    main(["datasets", "--root", str(tmp_path)])
    line = next(l for l in capsys.readouterr().out.splitlines() if entry["name"] in l)
    assert "present" in line
