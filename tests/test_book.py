"""The book (book/, tools/build_book.py): every notebook is in it, it builds offline, its API page imports,
and the built pages load nothing from another host (MathJax is the book's own)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_book", REPO / "tools" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)
sys.path.insert(0, str(REPO / "book" / "_ext"))
import offline_book  # noqa: E402

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


# --- the built book (book/_build/html, after `make book`): nothing is loaded from another host ---

HTML = REPO / "book" / "_build" / "html"
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //host/...


class _Assets(HTMLParser):
    """The URLs an HTML page loads by itself: scripts, stylesheets/fonts/icons, images, frames, media."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and attrs.get("rel", "") not in ("canonical", "next", "prev", "search", "index"):
            self.urls.append(attrs.get("href") or "")
        elif tag in ("script", "img", "iframe", "source", "audio", "video", "embed"):
            self.urls.append(attrs.get("src") or "")


def remote_assets(html: str) -> list[str]:
    """The remote URLs among what a page loads (a link a reader may click is not loaded)."""
    parser = _Assets()
    parser.feed(html)
    return [url for url in parser.urls if REMOTE.match(url.strip())]


def test_remote_assets_finds_only_what_a_page_loads():
    page = ('<script src="https://cdn.example/mathjax.js"></script><link rel="stylesheet" href="//fonts.example/a.css">'
            '<script src="_static/local.js"></script><a href="https://arxiv.org/abs/2007.15651">paper</a>'
            '<img src="data:image/png;base64,AAAA"><link rel="preload" as="font" href="http://x.example/f.woff2">')
    assert remote_assets(page) == ["https://cdn.example/mathjax.js", "//fonts.example/a.css", "http://x.example/f.woff2"]


def built_pages() -> list[Path]:
    pages = sorted(HTML.rglob("*.html")) if HTML.is_dir() else []
    if not (HTML / "intro.html").exists():
        pytest.skip(f"the book is not built ({HTML} has no intro.html): run `make book`")
    return pages


def test_no_built_page_loads_anything_from_another_host():
    offenders = {}
    for page in built_pages():
        found = remote_assets(page.read_text(errors="replace"))
        if found:
            offenders[page.relative_to(HTML).as_posix()] = found
    for css in HTML.joinpath("_static").rglob("*.css"):
        found = re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")\s]+)", css.read_text(errors="replace"))
        if found:
            offenders[css.relative_to(HTML).as_posix()] = found
    assert not offenders, f"built pages load from other hosts, so they break offline: {offenders}"


def test_the_built_book_serves_its_own_mathjax():
    pages = built_pages()
    entry = HTML / "_static" / offline_book.MATHJAX_PATH
    assert entry.is_file() and entry.stat().st_size > 100_000, f"MathJax is missing from the built book: {entry}"
    assert (HTML / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir(), "MathJax fonts missing"
    with_maths = [p for p in pages if 'class="math' in p.read_text(errors="replace")]
    assert with_maths, "no page of the book has maths"
    for page in with_maths:
        local = os.path.relpath(entry, page.parent)
        loads = re.search(f'src="{re.escape(local)}(?:\\?[^"]*)?"', page.read_text(errors="replace"))
        assert loads, f"{page.name} does not load {local}"


def test_mathjax_source_is_installed_and_its_absence_is_explained(tmp_path):
    assert (offline_book.mathjax_source() / offline_book.ENTRY).is_file()
    (tmp_path / "mathjax").mkdir()
    (tmp_path / "mathjax" / "__init__.py").write_text("")  # a 'mathjax' package without MathJax's files
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\nimport offline_book\n"
            "try:\n    offline_book.mathjax_source()\nexcept Exception as error:\n    print(error)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO / "book" / "_ext")],
                          capture_output=True, text=True, check=True)
    assert "django-static-mathjax" in done.stdout and "make setup" in done.stdout, done.stdout
