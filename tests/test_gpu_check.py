"""tools/gpu_check.sh and its helpers (tools/gpu_check.py), on a machine without a GPU: the budget, the
steps' results in the summary, the throughput projection, and the bundle for a GPU machine without internet."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.train import train

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)
ALL_STEPS = ["1", "2", "3-cut", "3-fastcut", "3-cyclegan", "4", "5", "5-grid", "6", "7"]


def run_check(tmp_path, *args, **env):
    environ = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path / "out"), "BUNDLE": str(tmp_path / "no_bundle"),
               "PYTHON": sys.executable, **env}
    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *args], env=environ, capture_output=True,
                          text=True, timeout=240)
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    return done, summary


def test_steps_the_budget_no_longer_fits_are_skipped_and_the_summary_is_still_written(tmp_path):
    done, summary = run_check(tmp_path, BUDGET="0")
    assert done.returncode == 1, done.stdout[-2000:]
    assert list(summary["steps"]) == ALL_STEPS
    assert {s["result"] for s in summary["steps"].values()} == {"skipped: out of time"}
    assert any(line.startswith("python ") and " torch " in line for line in summary["machine"]), summary["machine"]
    assert summary["h2z_cut"] is None and not any(k.startswith("bench") for k in summary)
    assert "skipped" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.slow
def test_a_chosen_step_runs_and_a_failing_one_is_reported_with_its_exit_status(tmp_path):
    done, summary = run_check(tmp_path, str(tmp_path / "no_such_photos"), STEPS="2 4 5-grid", BUDGET="300")
    assert done.returncode == 1  # step 2 failed: the data folder does not exist
    steps = summary["steps"]
    assert steps["4"]["result"] == "ok", steps["4"]  # torchrun, one process, 4 steps on stripes (gloo on a CPU)
    assert (tmp_path / "out" / "work" / "ddp" / "checkpoint.pt").is_file()
    assert steps["5-grid"]["result"] == "ok", steps["5-grid"]  # the grid (--jobs 1 here, --gpus 0 on a GPU)
    grid = tmp_path / "out" / "work" / "grid" / "cut"
    assert sorted(p.parent.name for p in grid.glob("seed*/eval.json")) == ["seed0", "seed1"]
    assert steps["2"]["result"].startswith("failed (exit "), steps["2"]
    assert "no_such_photos" in "\n".join(steps["2"]["tail"])  # the train command's own message reaches the summary
    assert {steps[s]["result"] for s in ALL_STEPS if s not in ("2", "4", "5-grid")} == {"not chosen (STEPS)"}


def test_throughput_projects_a_full_run_from_the_logged_steps_and_the_run_time(tmp_path):
    data = make_dataset("stripes", root=tmp_path / "data", size=40, n_train=6, n_test=2)
    tiny = {k: v for k, v in C.TINY_SCALE.items() if k not in ("dataset", "device")}
    cfg = C.preset("cut", dataset=str(data), device="cpu", **{**tiny, "max_steps": 6, "log_every": 1})
    summary = train(cfg, tmp_path / "run", progress=False)
    printed = "cutlib train: some log line\n" + json.dumps(summary, indent=2) + "\n"  # as `cutlib train` prints it
    got = gc.throughput(tmp_path / "run", printed)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["time"] for r in rows[2:])  # the first two logged steps are warm-up
    assert got["steps"] == 6 and got["median_step_s"] == round(step_s, 4)
    assert got["projected_full_run_hours_step"] == round(533_600 * step_s / 3600, 2)
    assert got["end_to_end_s_per_iter"] == round(summary["seconds"] / 6, 4)
    assert got["goal_4h_met"] == (got["projected_full_run_hours"] <= 4.0)
    assert gc.throughput(tmp_path / "run", "no summary printed")["steps"] == 6  # the step figures alone
    assert "end_to_end_s_per_iter" not in gc.throughput(tmp_path / "run", "no summary printed")
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]))
    assert gc.throughput(tmp_path / "short", printed) is None  # too few logged steps to leave out the warm-up


def test_the_last_printed_json_object_is_found_after_the_log():
    text = 'step 1\n{"not": "this"}\nmore log\n{\n  "step": 5,\n  "losses": {\n    "G": 1.0\n  }\n}\n'
    assert gc.last_json_object(text) == {"step": 5, "losses": {"G": 1.0}}
    assert gc.last_json_object("no json here\n{ broken") is None


def test_only_the_wheels_of_missing_distributions_are_listed(tmp_path):
    for name in ("pytest-9.2.0-py3-none-any.whl", "Pillow-13.0.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "surely_not_installed_pkg-1.0-py3-none-any.whl", "README.txt"):
        (tmp_path / name).write_bytes(b"")
    assert gc.missing_wheels(tmp_path) == [tmp_path / "surely_not_installed_pkg-1.0-py3-none-any.whl"]
    with pytest.raises(SystemExit, match="not a folder of wheels"):
        gc.missing_wheels(tmp_path / "absent")


def test_the_runner_packages_are_bundled_at_the_pins_of_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert gc.pins() == [d for n in gc.RUNNER_PACKAGES for d in deps if d.startswith(n + "==")]
    with pytest.raises(SystemExit, match="pins none of"):
        gc.pins(["no-such-package"])


def photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"p{i:02d}.png")


def test_the_photo_slice_takes_the_first_photos_by_name(tmp_path):
    for split, n in (("trainA", 5), ("trainB", 4), ("testA", 3)):
        photos(tmp_path / "src" / split, n)
    (tmp_path / "src" / "trainA" / "notes.txt").write_text("not a photo")
    counts = gc.photo_slice(tmp_path / "src", tmp_path / "dest", n_train=3, n_test=2)
    assert counts == {"trainA": 3, "trainB": 3, "testA": 2, "testB": 0}
    assert sorted(p.name for p in (tmp_path / "dest" / "trainA").iterdir()) == ["p00.png", "p01.png", "p02.png"]


def test_a_bundle_from_bad_input_leaves_nothing_behind_and_never_replaces_a_foreign_folder(tmp_path):
    with pytest.raises(SystemExit, match="no trainA/ and trainB/"):
        gc.bundle(tmp_path / "bundle", "3.12", tmp_path / "absent", 3, 1)
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="not a bundle made by this tool"):
        gc.bundle(tmp_path / "mine", "3.12", tmp_path / "absent", 3, 1)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "a user's file"
    with pytest.raises(SystemExit, match="X.Y"):
        gc.main(["bundle", "--python", "3", "--out", str(tmp_path / "b2")])


def test_a_new_bundle_replaces_the_old_one_only_once_it_is_complete(tmp_path):
    for name, text in (("bundle", "old"), ("bundle.partial", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / gc.MARKER).write_text(text)
    gc.put_in_place(tmp_path / "bundle.partial", tmp_path / "bundle")
    assert (tmp_path / "bundle" / gc.MARKER).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # neither the partial nor the old one is left
    (tmp_path / "first.partial").mkdir()
    gc.put_in_place(tmp_path / "first.partial", tmp_path / "first")  # no previous bundle
    assert (tmp_path / "first").is_dir() and not (tmp_path / "first.partial").exists()
