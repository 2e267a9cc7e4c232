"""Every citation a reader can follow: repository paths that exist, no issue numbers, the reference page.

The repository may only point at things a reader of the repository can open: its own files, the paper,
the authors' code (taesungp/contrastive-unpaired-translation, whose file names are written without our
repository's folders), or run-time locations that the code creates (git-ignored, like runs/ or data/...).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top-level folders of OUR repository: a token "folder/..." with one of these names a path here.
OUR_FOLDERS = ("cutlib", "notebooks", "tests", "tools", "book", "experiments", "data")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*?{}<>\[\]-]*)" % "|".join(OUR_FOLDERS))
BARE_MD = re.compile(r"(?<![\w./-])([A-Za-z][\w-]*\.md)\b")
TEMPLATE = re.compile(r"[*?{}<>\[\]]|(?:^|/)NN_")  # globs, f-string fields, placeholders such as NN_name
# Files of the authors' repository whose folders share a name with ours (data/, experiments/); a
# citation of one of these means the authors' file.
AUTHORS_FILES = {
    "data/__init__.py", "data/base_dataset.py", "data/unaligned_dataset.py", "data/singleimage_dataset.py",
    "data/image_folder.py", "experiments/pretrained_launcher.py", "experiments/singleimage_launcher.py",
}
GENERATED_PAGES = {"api.md"}  # written by tools/build_book.py into the staged book
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
SHIPPED_RESULTS = ".jsonl"  # the shipped metrics of the ablation results are data, not prose


def tracked_text_files() -> dict[str, str]:
    """Every tracked text file (binary files and the shipped .jsonl results left out): path -> text."""
    done = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"not a git checkout ({done.stderr.strip()}); the citation checks need `git ls-files`")
    texts = {}
    for name in filter(None, done.stdout.split("\0")):
        path = REPO / name
        if name.endswith(SHIPPED_RESULTS) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def ignored(paths: list[str]) -> set[str]:
    """The paths among ``paths`` that git ignores (run-time locations: runs/, the data cache, book/_build).

    A folder that does not exist here is asked about as ``folder/x`` too: a pattern such as
    ``book/_build/`` only matches what git knows to be a folder."""
    if not paths:
        return set()
    asked = [p.rstrip("/") for p in paths] + [p.rstrip("/") + "/x" for p in paths]
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(asked),
                          capture_output=True, text=True)
    hits = set(done.stdout.split())
    return {p for p in paths if p.rstrip("/") in hits or p.rstrip("/") + "/x" in hits}


def path_tokens(text: str) -> list[str]:
    """Tokens of ``text`` that look like paths of our repository, trailing punctuation removed."""
    tokens = [m.group(1).rstrip(".,:;)'\"`") for m in PATH.finditer(text)]
    return [t for t in tokens if t and not TEMPLATE.search(t)]


def missing_paths(texts: dict[str, str]) -> list[str]:
    """'file: token' for every cited repository path that does not exist and is not run-time or the authors'."""
    cited = {(name, tok) for name, text in texts.items() for tok in path_tokens(text)}
    unknown = sorted({tok for _, tok in cited if not (REPO / tok).exists() and tok not in AUTHORS_FILES})
    runtime = ignored(unknown)
    return sorted(f"{name}: {tok}" for name, tok in cited if tok in unknown and tok not in runtime)


def missing_md_names(texts: dict[str, str]) -> list[str]:
    """'file: name' for every bare *.md file name that no tracked file of the repository carries."""
    have = {Path(name).name for name in texts} | GENERATED_PAGES
    return sorted({f"{name}: {m.group(1)}" for name, text in texts.items()
                   for m in BARE_MD.finditer(text) if m.group(1) not in have})


def comments_and_docstrings(source: str) -> list[str]:
    """The comments and string literals of Python source (docstrings are string literals)."""
    import io
    import tokenize

    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            found.append(tok.string)
    return found


# ------------------------------------------------------------------ the helpers can fail
# (the bad examples below are glued together at run time, so that this file does not cite them itself)
def test_path_tokens_keep_real_paths_and_drop_templates():
    text = ("see tools/build_book.py, book/reference.md and (tests/test_citations.py). Also notebooks/{p.stem}, "
            "notebooks/NN_name.ipynb, data/*, and models/patchnce.py of the authors.")
    assert path_tokens(text) == ["tools/build_book.py", "book/reference.md", "tests/test_citations.py"]


def test_a_missing_path_and_a_missing_note_are_reported():
    gone, note = "cutlib/" + "no_such_module.py", "REFERENCE" + ".md"
    texts = {"README.md": f"read {gone} and {note} section 5; runs/demo is made; "
                          "data/unaligned_dataset.py is the authors' loader; book/_build/html is built"}
    assert missing_paths(texts) == [f"README.md: {gone}"]
    assert missing_md_names(texts) == [f"README.md: {note}"]


def test_issue_pattern():
    word = "issue"
    assert ISSUE.search(f"Inference ({word} 5 item 5)") and ISSUE.search(f"see {word.title()} #12")
    assert not ISSUE.search(f"the {word}'s own check") and not ISSUE.search(f"{word.upper()}_NAMES = [...]")


# ------------------------------------------------------------------ the repository
def test_every_cited_repository_path_exists():
    missing = missing_paths(tracked_text_files())
    assert not missing, ("these files name repository paths that do not exist (fix the path, or cite the "
                         "authors' file without our folder names):\n  " + "\n  ".join(missing))


def test_no_bare_markdown_name_points_outside_the_repository():
    missing = missing_md_names(tracked_text_files())
    assert not missing, ("these files cite notes that are not in the repository; cite the course's reference "
                         "page (book/reference.md), the paper or the authors' code instead:\n  " + "\n  ".join(missing))


def test_no_issue_numbers_in_code_comments_or_docstrings():
    hits = []
    for name, text in tracked_text_files().items():
        if name.endswith(".py") and name.split("/")[0] in ("cutlib", "tests"):
            hits += [f"{name}: {m.group(0)!r}" for s in comments_and_docstrings(text) for m in ISSUE.finditer(s)]
    assert not hits, ("comments/docstrings cite issue numbers, which a reader of the code cannot follow; say "
                      "what the code does instead:\n  " + "\n  ".join(hits))


def test_reference_page_has_sections_1_to_10_in_order_with_labels():
    page = REPO / "book" / "reference.md"
    assert page.is_file(), "book/reference.md (the course's reference page) is missing"
    text = page.read_text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. \S", text, re.MULTILINE)]
    assert numbers == list(range(1, 11)), f"sections of book/reference.md must be ## 1. ... ## 10. in order, got {numbers}"
    for number in range(1, 11):
        heading = re.search(rf"^\(([\w-]+)\)=\n## {number}\. ", text, re.MULTILINE)
        assert heading, f"section {number} of book/reference.md needs a MyST label line '(name)=' right above it"
    assert "taesungp/contrastive-unpaired-translation" in text and "Where the paper and the code differ" in text
