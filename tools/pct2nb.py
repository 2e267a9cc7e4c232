"""Turn a percent-format script into a clean notebook (no outputs, no execution counts).

    python tools/pct2nb.py chapter.py notebooks/NN_name.ipynb

Cells start with ``# %%`` (code), ``# %% [markdown]`` (markdown, each line prefixed by ``# ``),
and ``# %% tags=["parameters"]`` (a code cell tagged for papermill). The committed .ipynb is the
source of truth; this tool only saves authors from writing JSON by hand.
"""

from __future__ import annotations

import json
import re
import sys

import nbformat

HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def convert(text: str) -> nbformat.NotebookNode:
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        cell.pop("id", None)
        cells.append(cell)

    for line in text.splitlines():
        match = HEADER.match(line)
        if match:
            flush()
            kind = "markdown" if match["md"] else "code"
            tags = json.loads(match["tags"]) if match["tags"] else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nb.nbformat, nb.nbformat_minor = 4, 4
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    nb = convert(open(src, encoding="utf-8").read())
    nbformat.write(nb, dst)
    print(f"{dst}: {len(nb.cells)} cells")
