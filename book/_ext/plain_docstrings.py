"""Sphinx extension: show cutlib's docstrings as the plain text they are.

cutlib writes docstrings for readers of the code (shapes like ``(B*P, C)``, formulas with ``*`` and
``|``), not in reStructuredText; parsed as RST they would raise warnings, which the book treats as
errors. Each docstring becomes a plain-text block instead (no highlighting; _static/docstrings.css wraps
long lines), so it reads exactly as in the source.
"""


def _as_literal(app, what, name, obj, options, lines):
    if any(line.strip() for line in lines):
        lines[:] = [".. code-block:: text", ""] + ["    " + line for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _as_literal)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
