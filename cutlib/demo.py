"""The course's main demo (``make demo``).

For now it executes chapter 2 (PatchNCE) through papermill into ``runs/demo/``; once the trainer
lands it trains CUT on the built-in data instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cutlib.paths import repo_root


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cutlib demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    args = parser.parse_args(argv)

    import papermill as pm

    root = repo_root()
    if root is None:
        raise SystemExit("cutlib demo runs the course notebooks and needs a clone of the repository.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(root / "notebooks" / "02_patchnce.ipynb"),
        str(out / "02_patchnce.ipynb"),
        kernel_name="python3",
        cwd=str(root / "notebooks"),
        progress_bar=True,
    )
    print(f"Executed notebook written to {out / '02_patchnce.ipynb'}")
    return 0
