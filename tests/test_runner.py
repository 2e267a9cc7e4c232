"""The runner notebook's settings (cutlib.runner.runner_config), and the README's papermill example run for real."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cutlib import config as C
from cutlib import runner as R

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "run_experiment.ipynb"
README_OVERRIDES = "-p overrides '{\"lambda_nce\": 2}'"  # as README.md writes it


def test_readme_papermill_overrides_example_runs(tmp_path):
    """papermill passes -p values as strings: the runner parses the JSON text of its overrides."""
    assert README_OVERRIDES in (REPO / "README.md").read_text(), "README.md's example changed: update this test"
    out_dir, executed = tmp_path / "run", tmp_path / "out.ipynb"
    command = (f"{shlex.quote(sys.executable)} -m papermill notebooks/run_experiment.ipynb {shlex.quote(str(executed))} "
               f"{README_OVERRIDES} -p scale tiny -p max_steps 2 -p evaluate False "
               f"-p out_dir {shlex.quote(str(out_dir))} -k python3 --no-progress-bar")
    done = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["lambda_nce"] == 2 and cfg["max_steps"] == 2 and cfg["crop_size"] == C.TINY_SCALE["crop_size"]


def test_overrides_as_dict_or_json_text_give_the_same_config():
    as_dict = R.runner_config("cut", scale="tiny", overrides={"lambda_nce": 2, "nce_idt": False})
    as_text = R.runner_config("cut", scale="tiny", overrides='{"lambda_nce": 2, "nce_idt": false}')
    assert as_dict == as_text and as_text.lambda_nce == 2.0 and as_text.nce_idt is False
    assert R.runner_config("cut", scale="tiny", overrides="{}") == R.runner_config("cut", scale="tiny")


@pytest.mark.parametrize("bad", ["lambda_nce=2", "[1, 2]", '"text"', "", 3, ["lambda_nce"]])
def test_overrides_that_are_not_an_object_are_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"overrides must be a dict of TrainConfig fields or the JSON text of one"):
        R.runner_config("cut", scale="tiny", overrides=bad)


def test_unknown_override_field_is_named():
    with pytest.raises(ValueError, match="nce_idt2"):
        R.runner_config("cut", scale="tiny", overrides='{"nce_idt2": false}')


def test_runner_config_defaults_are_the_notebooks():
    import inspect

    import papermill

    defaults = {name: eval(p["default"]) for name, p in papermill.inspect_notebook(str(NOTEBOOK)).items()}
    signature = inspect.signature(R.runner_config).parameters
    for name in ("preset", "dataset", "scale", "device", "seed"):
        assert signature[name].default == defaults[name], name
    assert defaults["overrides"] == {} and signature["overrides"].default is None
    assert set(R.RUNNER_ARGS) <= set(defaults)  # every argument is a parameter of the notebook


def test_scales_sizes_and_auto():
    tiny = R.runner_config("cut", scale="tiny")
    assert (tiny.crop_size, tiny.ngf, tiny.max_steps) == (C.TINY_SCALE["crop_size"], C.TINY_SCALE["ngf"], 20)
    assert R.runner_config("cut", scale="cpu").crop_size == C.CPU_SCALE["crop_size"]
    assert R.runner_config("cut", scale="paper", device="cuda").crop_size == C.CUT().crop_size == 256
    sized = R.runner_config("fastcut", scale="tiny", max_steps=None, crop_size=24, batch_size=2)
    assert (sized.max_steps, sized.crop_size, sized.batch_size) == (20, 24, 2)  # None: the scale's value
    assert R.runner_scale("auto", "cuda:1") == "paper" and R.runner_scale("auto", "cpu") == "tiny"
    with pytest.raises(ValueError, match="scale must be one of"):
        R.runner_scale("huge")


def test_sincut_at_the_small_scales_is_valid():
    cfg = R.runner_config("sincut", scale="tiny")
    assert cfg.crop_size == 64 and cfg.load_size >= 64


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'cutt'; valid presets"):
        R.runner_config("cutt", scale="tiny")
