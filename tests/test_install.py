"""The package as a new user gets it: a wheel built from the repository, installed (not editable) and
used from a folder outside the clone. Everything the library reads at run time must be in the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# what the wheel must carry besides the modules: path in the wheel -> the file in the repository
PACKAGE_DATA = {"cutlib/data/catalog.json": REPO / "cutlib" / "data" / "catalog.json",
                "/".join(("cutlib", "notebooks", "run_experiment.ipynb")): REPO / "notebooks" / "run_experiment.ipynb"}
# not part of a build: the local dataset cache, runs, venv and build leftovers (slow or stale to copy)
TOP_LEVEL_SKIP = {".git", ".venv", "data", "runs", "build", "dist"}
ANYWHERE_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".ipynb_checkpoints", "_build")
TINY = ["--load-size", "36", "--crop-size", "32", "--ngf", "8", "--ndf", "8", "--n-blocks", "2",
        "--num-patches", "16", "--nce-layers", "rgb,down1,down2,res1,res2", "--device", "cpu"]

pytestmark = pytest.mark.slow


def _build_tools_or_skip() -> None:
    """pip wheel --no-build-isolation builds with this venv's setuptools (>= 77: SPDX licence, bdist_wheel)."""
    try:
        import setuptools
    except ImportError:
        pytest.skip(f"{sys.executable} has no setuptools: run `python -m pip install 'setuptools>=77'` to build the wheel")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than 77 (pyproject.toml's build requirement); "
                    "run `python -m pip install -U 'setuptools>=77'`")


def _not_sources(folder: str, names: list[str]) -> set[str]:
    skip = set(ANYWHERE_SKIP(folder, names))
    return skip | (TOP_LEVEL_SKIP & set(names)) if Path(folder) == REPO else skip


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _picture(rng: np.random.Generator, width: int, height: int, striped: bool) -> Image.Image:
    """A smooth background with a bright blob, striped in domain B: enough structure to train on."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([x, y, 1 - x], -1) * rng.uniform(60, 160, 3)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    blob = (y - cy) ** 2 + (x - cx) ** 2 < r**2
    colour = rng.uniform(150, 255, 3)
    if striped:
        colour = colour * (np.sin(x * 40)[..., None] > 0)
    base[blob] = colour[blob] if striped else colour
    return Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))


def _folder_dataset(root: Path, n: int = 6, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split in ("trainA", "trainB", "testA"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            _picture(rng, size, size, striped=split.endswith("B")).save(root / split / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the repository's sources, install it into a plain folder."""
    _build_tools_or_skip()
    tmp = tmp_path_factory.mktemp("install")
    shutil.copytree(REPO, tmp / "src", ignore=_not_sources)  # the clone itself stays free of build/ leftovers
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "wheels"), str(tmp / "src")],
         tmp)
    (wheel,) = (tmp / "wheels").glob("cutlib-*.whl")
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)], tmp)
    outside = tmp / "elsewhere"  # not the clone, so neither the cwd nor PYTHONPATH can find the clone's cutlib
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUTLIB_", "PYTHON"))}
    env.update(PYTHONPATH=str(tmp / "site"), CUTLIB_DATA=str(tmp / "cache" / "data"),
               CUTLIB_RUNS=str(tmp / "cache" / "runs"), HOME=str(tmp / "home"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return {"tmp": tmp, "wheel": wheel, "site": tmp / "site", "cwd": outside, "env": env}


def _python(installed: dict, *args: str) -> str:
    return _run([sys.executable, *args], installed["cwd"], installed["env"])


def test_wheel_carries_the_catalog_and_the_runner_notebook(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        missing = sorted(set(PACKAGE_DATA) - names)
        assert not missing, f"{missing} are not in {installed['wheel'].name}: declare them in [tool.setuptools.package-data]"
        for inside, source in PACKAGE_DATA.items():
            assert whl.read(inside) == source.read_bytes(), f"{inside} in the wheel differs from {source}"
        assert not [n for n in names if n.startswith(("data/", "notebooks/", "tests/"))], "the wheel must only hold cutlib/"


def test_installed_package_is_the_wheel_not_the_clone(installed):
    probe = ("import json, os, cutlib, cutlib.paths as P, cutlib.grid as G, cutlib.data.catalog as C\n"
             "out = dict(file=cutlib.__file__, repo=str(P.repo_root()), data=str(P.data_root()), runs=str(P.runs_root()),\n"
             "           notebook=str(G.default_notebook()), catalog=len(C.load_catalog()))\n"
             "del os.environ['CUTLIB_DATA'], os.environ['CUTLIB_RUNS']\n"
             "out.update(home_data=str(P.data_root()), home_runs=str(P.runs_root()))\n"
             "print(json.dumps(out))")
    got = json.loads(_python(installed, "-c", probe).splitlines()[-1])
    site, env = installed["site"], installed["env"]
    assert Path(got["file"]).resolve().is_relative_to(site.resolve()), f"imported {got['file']}, not the installed wheel"
    assert got["repo"] == "None", "an installed package must not think it runs from a clone"
    assert (got["data"], got["runs"]) == (env["CUTLIB_DATA"], env["CUTLIB_RUNS"])
    home = Path(env["HOME"]) / ".cache" / "cutlib"
    assert (got["home_data"], got["home_runs"]) == (str(home / "data"), str(home / "runs"))
    assert Path(got["notebook"]) == site / "cutlib" / "notebooks" / "run_experiment.ipynb" and got["catalog"] > 10
    assert not home.exists(), "the home cache must stay unused when CUTLIB_DATA/CUTLIB_RUNS are set"


def test_installed_package_lists_trains_and_translates(installed):
    out = _python(installed, "-m", "cutlib", "datasets")
    assert "stripes" in out and "horse2zebra" in out
    tmp = installed["tmp"]
    dataset, run, result = _folder_dataset(tmp / "folder"), tmp / "run", tmp / "translated"
    _python(installed, "-m", "cutlib", "train", "--dataset", str(dataset), "--out", str(run), "--max-steps", "2", *TINY)
    assert (run / "checkpoint.pt").is_file() and (run / "config.json").is_file()
    image = tmp / "odd_size.png"  # not square, sides not multiples of 4: the output must keep them
    _picture(np.random.default_rng(1), 46, 38, striped=False).save(image)
    _python(installed, "-m", "cutlib", "translate", "--checkpoint", str(run), "--input", str(image),
            "--output", str(result), "--no-progress")
    (written,) = result.iterdir()
    with Image.open(written) as translated:
        assert translated.size == (46, 38) and translated.mode == "RGB"
