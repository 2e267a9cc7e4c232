"""The bench command: table and JSON structure, positive finite figures, ratios, errors. Never a timing threshold."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from cutlib import config as C
from cutlib.bench import PAPER, bench, bench_config, format_table, machine_info, measure, parse_modes
from cutlib.networks import PatchGANDiscriminator, ResnetGenerator

TINY = {k: C.TINY_SCALE[k] for k in ("ngf", "ndf", "n_blocks", "num_patches", "netF_nc")}  # bench sets the sizes


def _check_row(row, steps, fresh_process=True):
    assert len(row["times_s"]) == len(row["cpu_times_s"]) == steps
    for key in ("median_s", "q25_s", "q75_s", "min_s", "max_s", "cpu_median_s", "memory_mb", "params_m"):
        assert math.isfinite(row[key]) and row[key] >= 0, f"{row['preset']}: {key} = {row[key]}"
        # in the test process, memory freed by earlier tests is reused: its RSS increase may be 0
        assert row[key] > 0 or (key == "memory_mb" and not fresh_process), f"{row['preset']}: {key} = {row[key]}"
    assert row["min_s"] <= row["q25_s"] <= row["median_s"] <= row["q75_s"] <= row["max_s"]
    assert row["median_s"] == pytest.approx(sorted(row["times_s"])[steps // 2] if steps % 2 else
                                            sum(sorted(row["times_s"])[steps // 2 - 1 : steps // 2 + 1]) / 2)


def test_command_line_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = [sys.executable, "-m", "cutlib", "bench", "--presets", "cut,fastcut,cyclegan", "--size", "32", "--steps", "2",
            "--warmup", "1", "--device", "cpu", "--json", str(out), "--ngf", "8", "--ndf", "8", "--n-blocks", "5"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "32 px, batch 1, 2 timed steps after 1 warm-up" in lines[0]
    assert [line.split()[0] for line in lines if line.split() and line.split()[0] in PAPER] == ["cut", "fastcut", "cyclegan"]

    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m cutlib bench --presets cut,fastcut,cyclegan")
    assert {"cpu", "cpu_count", "torch_threads", "torch", "device"} <= set(data["machine"])
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["device"] == "cpu"
    assert data["settings"]["overrides"] == {"ngf": "8", "ndf": "8", "n_blocks": "5"}
    rows = {r["preset"]: r for r in data["results"]}
    assert list(rows) == ["cut", "fastcut", "cyclegan"]
    for r in rows.values():
        _check_row(r, 2)
        assert r["size"] == 32 and r["batch_size"] == 1 and r["memory_kind"] == "peak RSS increase"
        assert r["time_vs_cyclegan"] == pytest.approx(r["median_s"] / rows["cyclegan"]["median_s"])
        assert r["cpu_time_vs_cyclegan"] == pytest.approx(r["cpu_median_s"] / rows["cyclegan"]["cpu_median_s"])
        assert r["memory_vs_cyclegan"] == pytest.approx(r["memory_mb"] / rows["cyclegan"]["memory_mb"])
        assert r["paper_time_vs_cyclegan"] == pytest.approx(PAPER[r["preset"]][0] / PAPER["cyclegan"][0])
    assert rows["cut"]["paper_time_vs_cyclegan"] == pytest.approx(0.60) and rows["fastcut"]["paper_memory_vs_cyclegan"] == pytest.approx(0.47, abs=0.005)
    # the networks were the overridden ones: CycleGAN has two strided generators and two discriminators
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    G, D = ResnetGenerator(ngf=8, n_blocks=5, antialias=False), PatchGANDiscriminator(ndf=8, antialias=False)
    assert rows["cyclegan"]["params_m"] == pytest.approx(2 * (count(G) + count(D)) / 1e6, abs=1e-3)
    assert rows["fastcut"]["params_m"] == rows["cut"]["params_m"]


def test_bench_function_without_cyclegan_has_no_ratios():
    rows = bench("fastcut", size=32, steps=3, warmup=0, device="cpu", isolate=False, **TINY)
    assert len(rows) == 1 and rows[0]["preset"] == "fastcut"
    _check_row(rows[0], 3, fresh_process=False)
    assert rows[0]["time_vs_cyclegan"] is None and rows[0]["memory_vs_cyclegan"] is None
    assert rows[0]["paper_s"] == PAPER["fastcut"][0]
    table = format_table(rows)
    assert "fastcut" in table and "peak RSS increase" in table


def test_measure_builds_the_asked_networks():
    small = measure("cut", size=32, steps=1, warmup=0, device="cpu", **TINY)
    wider = measure("cut", size=32, steps=1, warmup=0, device="cpu", **{**TINY, "ngf": 16})
    assert wider["params_m"] > small["params_m"] > 0
    assert math.isfinite(small["memory_mb"]) and small["rss_peak_mb"] >= small["rss_before_mb"]


def test_machine_info_names_the_cpu_and_versions():
    info = machine_info("cpu")
    assert info["cpu"] and info["cpu_count"] >= 1 and info["torch_threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="valid presets"):
        bench("cut,cycle", size=32, steps=1, device="cpu")
    with pytest.raises(ValueError, match="--size"):
        bench_config("cut", 32, "cpu", crop_size=64)
    with pytest.raises(ValueError, match="multiple of 4"):
        bench("cut", size=34, steps=1, device="cpu")
    with pytest.raises(ValueError, match="at least 32"):
        bench("cyclegan", size=16, steps=1, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        bench("cut", size=32, steps=0, device="cpu")
    with pytest.raises(ValueError, match="device"):
        bench("cut", size=32, steps=1, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            bench("cut", size=32, steps=1, device="cuda")


def test_command_line_error_names_the_problem():
    done = subprocess.run([sys.executable, "-m", "cutlib", "bench", "--presets", "cut", "--crop-size", "64", "--steps", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "--size" in done.stderr


def test_modes_name_the_combinations_to_measure():
    assert parse_modes("fp32, bf16+nhwc,BF16+nhwc+compiled") == [
        dict(precision="fp32", channels_last=False, compile=False),
        dict(precision="bf16", channels_last=True, compile=False),
        dict(precision="bf16", channels_last=True, compile=True)]
    assert parse_modes(["fp16+compiled"]) == [dict(precision="fp16", channels_last=False, compile=True)]
    for bad, message in (("fp8", "is not PRECISION"), ("bf16+nchw", "is not PRECISION"), ("nhwc+bf16", "is not PRECISION"),
                         ("bf16+nhwc+nhwc", "is not PRECISION"), ("bf16,bf16", "twice"), (" , ", "at least one")):
        with pytest.raises(ValueError, match=message):
            parse_modes(bad)
    with pytest.raises(ValueError, match="warmup >= 1"):
        bench("cut", size=32, steps=1, warmup=0, device="cpu", modes="fp32+compiled")
    rows = bench("fastcut", size=32, steps=1, warmup=0, device="cpu", isolate=False, modes="fp32,bf16+nhwc", **TINY)
    assert [(r["precision"], r["channels_last"], r["compile"]) for r in rows] == [("fp32", False, False), ("bf16", True, False)]
    assert rows[0]["cpu_speedup_vs_fp32"] == 1.0 and rows[1]["cpu_speedup_vs_fp32"] > 0  # against the fp32 row of this run
    assert "bf16 nhwc" in format_table(rows)


def test_command_line_refuses_modes_with_the_options_they_replace():
    for extra in (["--precision", "bf16"], ["--precision", "fp32"], ["--channels-last"]):  # fp32 too: asked, not defaulted
        done = subprocess.run([sys.executable, "-m", "cutlib", "bench", "--presets", "cut", "--size", "32", "--steps", "1",
                               "--modes", "fp32,bf16", *extra], capture_output=True, text=True)
        assert done.returncode == 2 and "leave out --precision" in done.stderr, extra
