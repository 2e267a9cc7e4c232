"""make demo (python -m cutlib demo): its configuration, shared with chapter 4, and a short run end to end."""

from __future__ import annotations

import json

from PIL import Image

from cutlib.config import cpu_scale
from cutlib.demo import DEMO_STEPS, cli, demo_config


def test_demo_config_is_the_laptop_scale_cut_with_its_steps_and_sample_grids():
    cfg = demo_config()
    assert cfg.max_steps == DEMO_STEPS and cfg.sample_every == 100 and cfg.seed == 0
    laptop = cpu_scale("cut").to_dict()
    differs = {k for k, v in cfg.to_dict().items() if v != laptop[k]}
    assert differs == {"max_steps", "sample_every"}  # otherwise the laptop scale: chapter 4 and make demo share one run
    assert demo_config(5, seed=3).max_steps == 5 and demo_config(5, seed=3).seed == 3


def test_demo_trains_draws_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
    out = tmp_path / "demo"
    assert cli(["--out", str(out), "--steps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "5 steps at 64 px" in printed and '"step": 5' in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 5] and all(k in rows[-1] for k in ("D", "G_GAN", "NCE", "NCE_Y"))
    with Image.open(out / "before_after.png") as grid:  # 8 test drawings x (input | untrained | trained), 64 px
        assert grid.size == (3 * 66 + 2, 8 * 66 + 2)
    assert (out / "losses.png").is_file() and (out / "samples" / "step000000.png").is_file()
    assert json.loads((out / "config.json").read_text())["max_steps"] == 5
    assert cli(["--out", str(out), "--steps", "5"]) == 0  # again: the finished run is loaded, drawn again
    assert '"step": 5' in capsys.readouterr().out
