"""House rules of the repository: pins in sync, notebooks stripped and parameterised, CI wiring."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(dep.split("==") for dep in deps)


def _environment_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "environment.yml").read_text().splitlines():
        match = re.match(r"^\s*-\s*([A-Za-z0-9_.\-]+)==(\S+)\s*$", line)
        if match:
            pins[match[1]] = match[2]
    return pins


def test_every_dependency_is_pinned():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    unpinned = [dep for dep in deps if "==" not in dep]
    assert not unpinned, f"pin these in pyproject.toml: {unpinned}"


def test_environment_yml_matches_pyproject_pins():
    assert _environment_pins() == _pyproject_pins(), "environment.yml and pyproject.toml pins differ"


def test_torch_pins_are_the_course_pins():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["jupyter-book"].startswith("1."), "Jupyter Book 2 needs the internet to build"


def test_ci_calls_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_pyproject_ships_every_subpackage_and_its_data():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "cutlib").rglob("__init__.py")}
    assert on_disk <= set(setup["packages"]), (
        f"add {sorted(on_disk - set(setup['packages']))} to [tool.setuptools] packages in pyproject.toml")
    for package, patterns in setup["package-data"].items():
        folder = REPO / setup.get("package-dir", {}).get(package, package.replace(".", "/"))
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"package data of {package}: {pattern} matches nothing in {folder}"


def test_a_clone_is_detected_and_the_grid_runs_the_course_notebook(monkeypatch):
    from cutlib.data.catalog import catalog_path
    from cutlib.grid import default_notebook
    from cutlib.paths import data_root, repo_root, runs_root

    assert repo_root() == REPO
    assert default_notebook() == REPO / "notebooks" / "run_experiment.ipynb"
    assert catalog_path() == REPO / "cutlib" / "data" / "catalog.json"
    monkeypatch.delenv("CUTLIB_DATA", raising=False)
    monkeypatch.delenv("CUTLIB_RUNS", raising=False)
    assert (data_root(), runs_root()) == (REPO / "data", REPO / "runs")
    monkeypatch.setenv("CUTLIB_DATA", "/big/disk/data")
    assert data_root() == Path("/big/disk/data")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_parameters_cell(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_no_personal_paths_in_tracked_text():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    bad = []
    for name in files:
        path = REPO / name
        if name == "tests/test_repository.py":
            continue  # this file spells the patterns it looks for
        if path.suffix in {".py", ".md", ".ipynb", ".toml", ".yml", ".json", ".cfg"} and path.is_file():
            text = path.read_text(errors="ignore")
            if re.search(r"/(home|Users)/[a-z]|/work/main|/root/", text):
                bad.append(name)
    assert not bad, f"personal or machine paths in {bad}"


def test_every_test_starts_from_the_seeded_random_state():
    """conftest's autouse fixture: the first draws of a test are those after seeding 0, whatever ran
    before it in this worker (unseeded, torch's default seed and numpy's and random's would differ)."""
    import random

    import numpy as np
    import torch

    drawn = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    assert drawn[0] == random.random() and drawn[1] == np.random.rand()
    assert torch.equal(drawn[2], torch.rand(3))
