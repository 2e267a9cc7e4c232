"""Sphinx extension: a book that reads offline, every script and font served by the book itself.

Sphinx loads MathJax from a CDN by default, so a book opened from disk without a network shows every
equation as TeX source. This extension copies MathJax 3.2.2 (its ``es5`` build, fonts and TeX
extensions included) from the pinned PyPI package ``django-static-mathjax`` (plain files under the
import name ``mathjax``; Django itself is not needed) into ``_static/mathjax/`` of the built HTML, and
points ``mathjax_path`` at it.

It also drops sphinx-thebe's scripts from the pages: the live-code button is off (``launch_buttons``),
yet Jupyter Book adds them anyway, twice (a JavaScript error on every page), naming thebe on a CDN.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util.fileutil import copy_asset

ENTRY = "tex-mml-chtml.js"       # Sphinx's default MathJax 3 component: TeX and MathML in, HTML-CSS out
TARGET = "mathjax"               # the folder under _static/ of the built HTML
MATHJAX_PATH = f"{TARGET}/{ENTRY}"  # relative paths in mathjax_path are relative to _static/


def mathjax_source() -> Path:
    """The folder of the installed MathJax es5 build (it holds ENTRY); a clear error when it is missing."""
    spec = importlib.util.find_spec("mathjax")
    folder = Path(spec.origin).parent / "static" / "mathjax" / "es5" if spec and spec.origin else None
    if folder is None or not (folder / ENTRY).is_file():
        raise ExtensionError(f"MathJax's {ENTRY} is not installed (looked in {folder}): the book serves its own "
                             "MathJax from the PyPI package django-static-mathjax; run `make setup` to install it")
    return folder


def _use_local_mathjax(app, config) -> None:
    mathjax_source()  # fail before the build, not after it
    config.mathjax_path = MATHJAX_PATH


def _copy_mathjax(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        copy_asset(str(mathjax_source()), str(Path(app.outdir) / "_static" / TARGET))


def _is_thebe(asset) -> bool:
    return "thebe" in str(getattr(asset, "filename", "") or "") or "THEBE_JS_URL" in str(
        getattr(asset, "attributes", {}).get("body", ""))


def _drop_thebe(app, pagename, templatename, context, doctree) -> None:
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if not _is_thebe(asset)]


def setup(app):
    app.connect("config-inited", _use_local_mathjax)
    app.connect("html-page-context", _drop_thebe)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
