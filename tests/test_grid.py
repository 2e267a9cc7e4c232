"""Ablation grid: a tiny grid really executed through papermill, skip-if-done, collect's statistics, config errors."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cutlib import grid as G
from cutlib import runner as R


def write_grid(tmp_path: Path, grid: dict, name: str = "grid.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(grid))
    return path


TINY = {
    "seeds": [0, 1],
    "base": {"scale": "tiny", "max_steps": 2, "extractor": "builtin", "overrides": {"save_epoch_freq": 0, "log_every": 1}},
    "variants": {"CUT": {"preset": "cut"}, "no_id": {"preset": "cut", "overrides": {"nce_idt": False}}},
}


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """2 variants x 2 seeds at the tiny scale, 2 steps each, executed for real (two at a time)."""
    tmp = tmp_path_factory.mktemp("grid")
    grid = G.load_grid(write_grid(tmp, {**TINY, "out": str(tmp / "out")}))
    runs = G.run_grid(grid, jobs=2)
    return grid, runs


def test_tiny_grid_executes_every_run_with_its_parameters(tiny_grid):
    grid, runs = tiny_grid
    assert sorted((r["variant"], r["seed"], r["status"]) for r in runs) == [
        ("CUT", 0, "ok"), ("CUT", 1, "ok"), ("no_id", 0, "ok"), ("no_id", 1, "ok")]
    for r in runs:
        folder = Path(grid["out"]) / r["variant"] / f"seed{r['seed']}"
        assert (folder / "run.ipynb").is_file() and (folder / "eval.json").is_file()
        cfg = json.loads((folder / "config.json").read_text())  # what the runner really trained
        assert cfg["seed"] == r["seed"]
        assert cfg["nce_idt"] is (r["variant"] == "CUT")  # the variant's override reached TrainConfig
        assert cfg["log_every"] == 1  # the base overrides too
        executed = json.loads((folder / "run.ipynb").read_text())
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and f"out_dir = \"{folder}\"" in "".join(injected[0]["source"])


def test_second_call_skips_finished_runs(tiny_grid):
    grid, _ = tiny_grid
    files = sorted(Path(grid["out"]).glob("*/seed*/*.*"))
    before = {p: p.stat().st_mtime_ns for p in files if p.name in ("run.ipynb", "eval.json", "checkpoint.pt")}
    assert len(before) == 12
    assert all(r["done"] for r in G.plan_runs(grid))
    again = G.run_grid(grid, jobs=2, log=lambda *a: None)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_reevaluate_rewrites_every_eval_file(tiny_grid, tmp_path):
    grid, _ = tiny_grid
    files = sorted(Path(grid["out"]).glob("*/seed*/eval.json"))
    before = {p: json.loads(p.read_text()) for p in files}
    for p in files:  # pretend these were written by another evaluator
        p.write_text(json.dumps({**before[p], "final": {"metrics": {"fid": -1.0}}}))
    assert len(G.reevaluate(grid, log=lambda *a: None)) == 4
    for p in files:
        assert json.loads(p.read_text())["final"]["metrics"] == pytest.approx(before[p]["final"]["metrics"])


def test_collect_of_real_runs_matches_their_eval_files(tiny_grid):
    grid, _ = tiny_grid
    table = json.loads((Path(grid["out"]) / "results.json").read_text())  # written by run_grid
    assert list(table["variants"]) == ["CUT", "no_id"]
    for name, row in table["variants"].items():
        reports = [json.loads((Path(grid["out"]) / name / f"seed{s}" / "eval.json").read_text()) for s in (0, 1)]
        fid = [r["final"]["metrics"]["fid"] for r in reports]
        assert row["metrics"]["fid"]["mean"] == pytest.approx(np.mean(fid))
        assert row["metrics"]["fid"]["std"] == pytest.approx(np.std(fid, ddof=1))


def fake_eval(folder: Path, seed: int, metrics: dict) -> None:
    folder.mkdir(parents=True)
    info = {k: {"better": "lower", "what": k} for k in metrics}
    (folder / "eval.json").write_text(json.dumps({"run_seed": seed, "final": {"metrics": metrics},
                                                  "best": {"metrics": {k: v - 1 for k, v in metrics.items()}},
                                                  "metric_info": info}))


def test_collect_mean_and_spread_by_hand(tmp_path):
    values = {"A": {0: (10.0, 0.5), 1: (14.0, 0.25), 2: (15.0, 0.0)}, "B": {3: (7.0, 1.0)}}
    for variant, seeds in values.items():
        for seed, (fid, iou) in seeds.items():
            fake_eval(tmp_path / variant / f"seed{seed}", seed, {"fid": fid, "preservation_iou": iou})
    table = G.collect(tmp_path)
    a = table["variants"]["A"]
    fids = [10.0, 14.0, 15.0]
    assert a["n"] == 3 and a["seeds"] == [0, 1, 2]
    assert a["metrics"]["fid"]["mean"] == pytest.approx(sum(fids) / 3)
    assert a["metrics"]["fid"]["std"] == pytest.approx(math.sqrt(sum((f - 13.0) ** 2 for f in fids) / 2))
    assert (a["metrics"]["preservation_iou"]["min"], a["metrics"]["preservation_iou"]["max"]) == (0.0, 0.5)
    assert table["variants"]["B"]["metrics"]["fid"]["std"] is None  # one seed: no spread
    with open(tmp_path / "results.csv") as f:
        rows = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(rows["A", "fid"]["mean"]) == pytest.approx(13.0) and rows["B", "fid"]["std"] == ""
    text = G.format_table(table, ["fid"])
    assert "13 ± 2.6" in text and "7" in text.splitlines()[2]
    assert G.collect(tmp_path, which="best")["variants"]["A"]["metrics"]["fid"]["mean"] == pytest.approx(13.0 - 1)
    assert (tmp_path / "results_best.csv").is_file()
    assert list(G.collect(tmp_path, variants=["B", "A"])["variants"]) == ["B", "A"]


def test_ship_copies_small_files_and_thumbnails(tiny_grid, tmp_path):
    from PIL import Image

    grid, _ = tiny_grid
    dest = G.ship(grid["out"], tmp_path / "shipped", thumb_width=48)
    thumbs = sorted(dest.glob("*/seed*/samples.jpg"))
    assert len(thumbs) == 4 and all(Image.open(t).width == 48 for t in thumbs)
    report = json.loads((dest / "CUT" / "seed0" / "eval.json").read_text())
    assert "epochs" not in report and "final" in report
    assert report["run_dir"] == f"{Path(grid['out']).name}/CUT/seed0" and "/" not in report["dataset_dir"]
    assert str(Path(grid["out"]).parent) not in json.dumps(report)
    assert json.loads((dest / "results.json").read_text())["out"] == Path(grid["out"]).name
    best = json.loads((dest / "results_best.json").read_text())  # the run collected each run's best epoch too
    assert best["which"] == "best" and best["out"] == Path(grid["out"]).name and set(best["variants"]) == {"CUT", "no_id"}
    assert (dest / "no_id" / "seed1" / "metrics.jsonl").read_text() == \
        (Path(grid["out"]) / "no_id" / "seed1" / "metrics.jsonl").read_text()


def test_plan_merges_base_and_variant_overrides(tmp_path):
    grid = G.load_grid(write_grid(tmp_path, {**TINY, "out": "x"}))
    plan = G.plan_runs(grid)
    assert [(r["variant"], r["seed"]) for r in plan] == [("CUT", 0), ("CUT", 1), ("no_id", 0), ("no_id", 1)]
    no_id = plan[2]["parameters"]
    assert no_id["overrides"] == {"save_epoch_freq": 0, "log_every": 1, "nce_idt": False}
    assert no_id["out_dir"] == str(Path(grid["out"]) / "no_id" / "seed0") and no_id["seed"] == 0
    assert Path(grid["out"]).parent == G.runs_root()  # relative "out" lives under the runs folder
    assert not any(r["done"] for r in plan)


@pytest.mark.parametrize("change, key", [
    ({"out": None}, "'out'"),
    ({"seeds": [0, 0]}, "'seeds'"),
    ({"variants": {}}, "'variants'"),
    ({"colour": 1}, "colour"),
    ({"base": {"lr": 0.1}}, "base.'lr'"),
    ({"variants": {"A": {"overrides": {"nce_idt2": False}}}}, "variants.A.overrides"),
    ({"variants": {"A": {"seed": 3}}}, "variants.A.seed"),
    ({"variants": {"a/b": {}}}, "variants.a/b"),
    ({"base": {"evaluate": False}}, "base.evaluate"),
])
def test_bad_config_names_the_key(tmp_path, change, key):
    grid = {**TINY, "out": "x", **change}
    if change.get("out", 1) is None:
        del grid["out"]
    with pytest.raises(ValueError) as err:
        G.load_grid(write_grid(tmp_path, grid))
    assert key in str(err.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        G.load_grid(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        G.load_grid(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="run the grid first"):
        G.collect(tmp_path / "nothing")


def test_shipped_configs_load_and_plan_every_ablation():
    root = Path(__file__).resolve().parents[1]
    for name in ("ablations_cpu.json", "ablations_paper.json"):
        grid = G.load_grid(root / "experiments" / name)
        assert len(grid["variants"]) == 10
        assert len(G.plan_runs(grid)) == 10 * len(grid["seeds"])


def test_cli_dry_run_runs_nothing(tmp_path, capsys):
    path = write_grid(tmp_path, {**TINY, "out": str(tmp_path / "out")})
    from cutlib.__main__ import main

    assert main(["grid", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 to run" in text and text.count("would run") == 4
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, key, message", [
    ({"variants": {"A": {"preset": "cutt"}}}, "variants.A.preset", "unknown preset 'cutt'"),
    ({"base": {"scale": "huge"}}, "base.scale", "scale must be one of"),
    ({"base": {"scale": "tiny", "overrides": {"lambda_nce": "lots"}}}, "base.overrides.lambda_nce", "must be a number"),
    ({"variants": {"A": {"preset": "cut"}, "B": {"crop_size": 30}}}, "variants.B.crop_size", "multiple of 4"),
    ({"variants": {"A": {"overrides": {"nce_idt2": False}}}}, "variants.A.overrides.nce_idt2", "did you mean 'nce_idt'"),
    ({"base": {"scale": "tiny", "extractor": "fid"}}, "base.extractor", "extractor must be one of"),
    ({"variants": {"A": {"preset": 3}}}, "variants.A.preset", "unknown preset '3'"),
])
def test_dry_run_checks_presets_and_every_config_in_one_line(tmp_path, capsys, change, key, message):
    """The TrainConfig each run would train (base + variant at the runner's scale) is built before anything runs."""
    from cutlib.__main__ import main

    path = write_grid(tmp_path, {**TINY, "out": str(tmp_path / "out"), **change})
    assert main(["grid", str(path), "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert f"grid file {path}: {key}: " in captured.err and message in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()


def test_dry_run_checks_the_configs_the_gpus_would_train(tmp_path, capsys):
    """scale auto is tiny on the CPU but the paper's 256 px crops with --gpus: load_size 100 is too small there."""
    from cutlib.__main__ import main

    path = write_grid(tmp_path, {**TINY, "out": str(tmp_path / "out"), "base": {"scale": "auto", "load_size": 100}})
    assert main(["grid", str(path), "--dry-run"]) == 0
    assert main(["grid", str(path), "--dry-run", "--gpus", "0"]) == 1
    err = capsys.readouterr().err
    assert "base.load_size" in err and "crop_size (256) must not exceed load_size (100)" in err


def test_cli_config_errors_are_one_line_without_traceback(tmp_path):
    """A real process: a broken grid file, a missing one, an unknown key -> exit 1 and one line naming file and key."""
    import subprocess
    import sys

    (tmp_path / "broken.json").write_text("{")
    write_grid(tmp_path, {**TINY, "out": "x", "colour": 1}, "unknown.json")
    write_grid(tmp_path, {**TINY, "out": "x", "variants": {"A": {"preset": "cutt"}}}, "preset.json")
    for name, words in [("broken.json", "not valid JSON"), ("missing.json", "does not exist"),
                        ("unknown.json", "'colour'"), ("preset.json", "variants.A.preset")]:
        done = subprocess.run([sys.executable, "-m", "cutlib", "grid", str(tmp_path / name), "--dry-run"],
                              capture_output=True, text=True)
        assert done.returncode == 1 and done.stdout == "", (name, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(tmp_path / name) in lines[0] and words in lines[0], (name, done.stderr)


def test_load_grid_checks_the_runs_and_run_grid_uses_the_runners_config(tmp_path):
    grid = G.load_grid(write_grid(tmp_path, {**TINY, "out": "x"}))
    G.check_runs(grid)  # the shipped grids pass too (test_shipped_configs_load_and_plan_every_ablation)
    params = G.plan_runs(grid)[2]["parameters"]
    cfg = R.runner_config(**{k: v for k, v in params.items() if k in R.RUNNER_ARGS})
    assert cfg.nce_idt is False and cfg.max_steps == 2 and cfg.crop_size == 32
