"""The built book in a real browser: headless Chromium renders every page of book/_build/html.

A page fails on a Python traceback in an output, an image that did not load or is blank, TeX left
untypeset (or typeset as an error), a font that failed, or a request to another host. The checks are
first shown to catch each fault on small pages made here; then every page of the real book is checked
and a screenshot of it is written to book/_build/screenshots/ (not in git).

Needs Debian's chromium (`make browser`) and the built book (`make book`); `make check-book` runs this
after both (CI: .ci/run). Without them the tests skip, saying which command to run.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headless  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "book" / "_build" / "html"
SHOTS = REPO / "book" / "_build" / "screenshots"
spec = importlib.util.spec_from_file_location("build_book", REPO / "tools" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)
sys.path.insert(0, str(REPO / "book" / "_ext"))
import offline_book  # noqa: E402

CHROMIUM = headless.find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: run `make browser` (installs Debian's chromium)")


@pytest.fixture(scope="module")
def browser():
    with headless.Chromium(CHROMIUM) as chromium:
        yield chromium


def _png(colours) -> str:
    image = Image.new("RGB", (8, 8), "white")
    for x, colour in enumerate(colours):
        image.putpixel((x, 0), colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _page(folder: Path, body: str) -> str:
    """A page set up like the book's: MathJax from the local copy, typesetting elements of class math."""
    mathjax = (offline_book.mathjax_source() / offline_book.ENTRY).as_uri()
    page = folder / "page.html"
    page.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<script>window.MathJax = {{options: {{processHtmlClass: "math", ignoreHtmlClass: "document"}}}}</script>
<script defer src="{mathjax}"></script></head><body class="document"><article>{body}</article></body></html>""")
    return page.as_uri()


GOOD = (r'<p>The loss <span class="math">\(\ell = -\log \frac{e^{q \cdot k^+ / \tau}}{\sum_n e^{q \cdot k_n / \tau}}\)</span>.</p>'
        r'<div class="math">\[\mathcal{L}_{\mathrm{PatchNCE}}\]</div><pre>print(r"$\tau$ \frac")</pre>'
        f'<img src="{_png([(200, 0, 0), (0, 0, 200)])}">')


def test_a_good_page_has_no_problems_and_its_maths_is_typeset(browser, tmp_path):
    shot = tmp_path / "good.png"
    assert headless.page_problems(browser, _page(tmp_path, GOOD), shot) == []
    assert browser.evaluate("document.querySelectorAll('mjx-container').length") == 2
    assert browser.evaluate("[...document.fonts].some(f => f.family.startsWith('MJXTEX') && f.status === 'loaded')")
    with Image.open(shot) as image:
        assert image.width == headless.WIDTH and image.convert("L").getextrema()[0] < 128


@pytest.mark.parametrize("body, expected", [
    ('<div class="output traceback"><pre>ZeroDivisionError: division by zero</pre></div>', "Python traceback"),
    ('<div class="output stderr"><pre>Traceback (most recent call last):\n  File "x"</pre></div>', "Python traceback"),
    (f'<img src="{_png([])}">', "blank image"),
    ('<img src="missing.png">', "did not load"),
    (r"<p>Raw $$\mathcal{L}$$ in prose</p>", "untypeset TeX"),
    (r'<p>A broken formula <span class="math">\(\frac{1}\)</span></p>', "MathJax error"),
    (r'<p>An unknown macro <span class="math">\(\nosuchmacro{x}\)</span></p>', "undefined TeX macro"),
    ('<img src="https://example.org/logo.png">', "did not load"),
])
def test_each_fault_is_caught(browser, tmp_path, body, expected):
    problems = headless.page_problems(browser, _page(tmp_path, body))
    assert any(expected in problem for problem in problems), problems


def test_maths_without_mathjax_is_caught(browser, tmp_path):
    page = tmp_path / "nomathjax.html"
    page.write_text(r'<html><body><article><span class="math">\(x^2\)</span></article></body></html>')
    problems = headless.page_problems(browser, page.as_uri())
    assert any("MathJax did not load" in p for p in problems) and any("untypeset TeX" in p for p in problems)


def test_blank_means_one_flat_colour():
    assert headless.is_blank(headless.image_bytes(_png([])))
    assert not headless.is_blank(headless.image_bytes(_png([(0, 0, 0)])))
    assert headless.is_blank(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert headless.image_bytes("https://example.org/a.png") is None


def book_pages() -> list[Path]:
    """Every page of the book's table of contents, as built (skips when the book is not built)."""
    if not (HTML / "intro.html").exists():
        pytest.skip(f"the book is not built ({HTML} has no intro.html): run `make book`, then `make check-book`")
    toc = build_book.toc_yaml(build_book.chapter_notebooks())
    names = ["intro"] + [line.split("file:")[1].strip() for line in toc.splitlines() if "file:" in line]
    pages = [HTML / f"{name}.html" for name in names]
    missing = [p.name for p in pages if not p.exists()]
    assert not missing, f"pages of the toc not in the built book (stale build? run `make book`): {missing}"
    return pages


def test_every_page_of_the_built_book_renders(browser):
    failures = {}
    for page in book_pages():
        name = page.relative_to(HTML).with_suffix("").as_posix().replace("/", "_")
        problems = headless.page_problems(browser, page.as_uri(), SHOTS / f"{name}.png")
        if problems:
            failures[page.relative_to(HTML).as_posix()] = problems
    assert not failures, f"pages of the built book with problems (screenshots in {SHOTS}):\n" + "\n".join(
        f"{page}:\n  " + "\n  ".join(problems) for page, problems in failures.items())
