"""The book (book/, tools/build_book.py): every notebook is in it, it builds offline, its API page imports."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_book", REPO / "tools" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)

URL = re.compile(r"\b(?:https?|ftp)://|//[a-z0-9.-]+\.[a-z]{2,}/", re.IGNORECASE)


def test_toc_lists_every_notebook_in_order():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    toc = yaml.safe_load(build_book.toc_yaml(build_book.chapter_notebooks()))
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    listed = [f for f in files if f.startswith("notebooks/")]
    missing = {f"notebooks/{p.stem}" for p in notebooks} - set(listed)
    assert not missing, f"notebooks missing from the book's toc: {sorted(missing)}"
    assert len(listed) == len(notebooks), "a notebook is listed twice"
    numbers = [int(Path(f).name[:2]) for f in listed if Path(f).name[:2].isdigit()]
    assert numbers == sorted(numbers), f"chapters out of order: {listed}"
    assert toc["root"] == "intro" and "api" in files


def test_chapter_order_numbered_first_then_by_name(tmp_path):
    for name in ("run_experiment", "10_late", "02_early", "appendix"):
        (tmp_path / f"{name}.ipynb").write_text(json.dumps({"cells": []}))
    assert [p.stem for p in build_book.chapter_notebooks(tmp_path)] == ["02_early", "10_late", "appendix", "run_experiment"]


def test_chapter_notebooks_rejects_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        build_book.chapter_notebooks(tmp_path)


def test_every_page_the_toc_names_exists_or_is_generated():
    toc = yaml.safe_load(build_book.toc_yaml(build_book.chapter_notebooks()))
    committed = {p.stem for p in (REPO / "book").glob("*.md")}
    generated = {"api"}
    pages = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for page in pages:
        if page.startswith("notebooks/"):
            assert (REPO / f"{page}.ipynb").exists(), page
        else:
            assert page in committed | generated, f"book page {page!r} is neither in book/ nor generated"


def test_config_is_offline():
    config_text = (REPO / "book" / "_config.yml").read_text()
    assert not URL.search(config_text), "book/_config.yml names a remote URL; the book must build offline"
    config = yaml.safe_load(config_text)
    assert config["execute"]["execute_notebooks"] == "off", "tools/build_book.py executes the notebooks, not jupyter-book"
    assert not config.get("launch_buttons", {}).get("thebe"), "thebe loads code from the internet"
    assert not config.get("bibtex_bibfiles") and "intersphinx" not in config_text, "intersphinx/bib fetch or need files"
    for page in (REPO / "book").rglob("*"):
        if page.is_file() and "_build" not in page.parts and page.suffix in (".md", ".py", ".yml"):
            text = page.read_text()
            assets = re.findall(r"(?:src|href)=[\"']https?://[^\"']+|!\[[^]]*]\(https?://[^)]+\)", text)
            assert not assets, f"{page.name} loads remote assets: {assets}"


def test_api_page_documents_the_existing_modules():
    modules = build_book.api_modules()
    assert {"cutlib.nce", "cutlib.models", "cutlib.train", "cutlib.viz"} <= set(modules)
    page = build_book.api_page(modules)
    for name in modules:
        assert f".. automodule:: {name}" in page


def test_api_modules_import_without_side_effects(tmp_path):
    """autodoc imports every module of the API page: each must import, print nothing and write nothing."""
    modules = build_book.api_modules()
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)"
    done = subprocess.run([sys.executable, "-c", code, *modules], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CUTLIB_RUNS": str(tmp_path / "runs"),
                               "CUTLIB_DATA": str(tmp_path / "data")})
    assert done.returncode == 0, f"importing the API modules failed:\n{done.stderr[-2000:]}"
    assert done.stdout == "", f"importing {modules} printed: {done.stdout[:500]}"
    assert list(tmp_path.iterdir()) == [], f"importing {modules} wrote {sorted(p.name for p in tmp_path.iterdir())}"


def test_docstrings_become_literal_blocks():
    sys.path.insert(0, str(REPO / "book" / "_ext"))
    try:
        from plain_docstrings import _as_literal
    finally:
        sys.path.pop(0)
    lines = ["feat_q: (B*P, C), the *query* rows", "", "  indented | text"]
    _as_literal(None, "function", "f", None, {}, lines)
    assert lines[:2] == [".. code-block:: text", ""] and lines[2] == "    feat_q: (B*P, C), the *query* rows" and lines[-1] == ""
    empty = ["", "  "]
    _as_literal(None, "function", "f", None, {}, empty)
    assert empty == ["", "  "]
