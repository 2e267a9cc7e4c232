"""The trainer under faults: unsafe and damaged checkpoints, torn logs, a full or read-only disk, two
trainings into one folder, settings that fail at the first step, a resumed run asked for another
preset, and SIGKILL at random moments (the resumed run must end bit-for-bit where an uninterrupted
one ends). Real files, real processes, real signals; the disk cases mount a small tmpfs (root only)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cutlib import config as C
from cutlib.data import make_dataset
from cutlib.files import FolderBusy, FolderLock
from cutlib.runs import CHECKPOINT, METRICS_FILE, CheckpointError, load_checkpoint, load_run, run_progress
from cutlib.train import LOCK_FILE, Trainer, train

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}  # the datasets come from fixtures
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_dataset("stripes", root=tmp_path_factory.mktemp("data"), size=40, n_train=4, n_test=2)


@pytest.fixture(scope="module")
def finished(stripes, tmp_path_factory):
    """A finished 2-step CUT run; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    train(C.preset("cut", dataset=str(stripes), **{**TINY, "max_steps": 2}), out, progress=False)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def cutlib(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cutlib", *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def train_cli(stripes, out, *extra: str, **kw) -> subprocess.CompletedProcess:
    return cutlib("train", "--dataset", str(stripes), "--out", str(out), "--no-progress", *FLAGS, *extra, **kw)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The stderr of a command that must have failed with exit 1 and one line, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    return done.stderr.strip()


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size_bytes, read_only=False) -> a freshly mounted tmpfs; unmounted at the end."""
    mounted = []

    def mount(size: int, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (a small or read-only disk) needs root")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


# ------------------------------------------------------------------ checkpoints that run code or are cut short
class RunsCode:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint.pt does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_is_refused_by_every_reader(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "MARKER"
    state = load_checkpoint(run / CHECKPOINT)
    torch.save({**state, "G": RunsCode(marker)}, run / CHECKPOINT)
    done = cutlib("train", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress")
    for message in (one_line_error(done), one_line_error(cutlib("evaluate", str(run), "--no-progress"))):
        assert str(run / CHECKPOINT) in message and "refuses" in message
    for read in (run_progress, load_run, lambda r: load_checkpoint(r / CHECKPOINT)):
        with pytest.raises(CheckpointError, match="refuses"):
            read(run)
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_no_torch_load_in_cutlib_may_unpickle_code():
    package = Path(__file__).resolve().parents[1] / "cutlib"
    calls = [(p.name, line.strip()) for p in package.rglob("*.py") for line in p.read_text().splitlines()
             if "torch.load(" in line and not line.lstrip().startswith(("#", '"'))]
    assert calls, "expected the checkpoint loader's torch.load"
    unsafe = [c for c in calls if "weights_only=True" not in c[1]]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_a_truncated_checkpoint_is_one_line_naming_the_file(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    data = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(data[: len(data) // 2])
    for done in (cutlib("train", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress"),
                 cutlib("evaluate", str(run), "--no-progress")):
        message = one_line_error(done)
        assert str(run / CHECKPOINT) in message and "cut short" in message
    assert (run / CHECKPOINT).read_bytes() == data[: len(data) // 2]  # nothing rewrote it


# ------------------------------------------------------------------ the log
def test_resume_drops_torn_log_lines_with_a_warning(stripes, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    log = run / METRICS_FILE
    first, second = log.read_text().splitlines()
    log.write_text(first + '\n{"step": 1, "D": 0.2, "G"\n' + second + '\n{"step": 3, "D": 0.')  # torn middle and end
    done = train_cli(stripes, run, "--resume", "--max-steps", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(log) in done.stderr and "damaged line" in done.stderr
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_trim_metrics_in_process_warns_and_keeps_the_good_rows(tmp_path):
    from cutlib.runs import trim_metrics

    log = tmp_path / METRICS_FILE
    log.write_text('{"step": 1}\n{"step": 2}\n{"st\n{"step": 3}\n')
    with pytest.warns(RuntimeWarning, match=str(log).replace("\\", "\\\\")):
        rows = trim_metrics(log, 2)
    assert [r["step"] for r in rows] == [1, 2] and log.read_text() == '{"step": 1}\n{"step": 2}\n'


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_is_one_line_leaves_no_temporary_and_keeps_the_last_checkpoint(stripes, finished, tmp_path, tmpfs):
    size = (finished / CHECKPOINT).stat().st_size
    disk = tmpfs(int(size * 1.6))  # one checkpoint and the small files fit; a second copy (the next save) does not
    out = disk / "run"
    message = one_line_error(train_cli(stripes, out, "--max-steps", "6", "--save-every", "1"))
    assert "no space left on the device of" in message and str(out) in message
    assert not temporaries(disk)
    saved = load_checkpoint(out / CHECKPOINT)
    assert saved["step"] >= 1
    message = one_line_error(train_cli(stripes, out, "--resume", "--max-steps", "6", "--save-every", "1"))
    assert "no space left" in message
    assert not temporaries(disk) and all(p.stat().st_size > 0 for p in disk.rglob("*") if p.is_file())
    assert load_checkpoint(out / CHECKPOINT)["step"] == saved["step"]


def test_append_text_on_a_full_disk_leaves_the_log_as_it_was(tmpfs):
    from cutlib.files import DiskFullError, append_text

    disk = tmpfs(64 * 1024)
    log = disk / "log.jsonl"
    append_text(log, '{"step": 1}\n')
    with pytest.raises(DiskFullError, match="no space left"):
        append_text(log, "x" * 200_000 + "\n")
    assert log.read_text() == '{"step": 1}\n'


# ------------------------------------------------------------------ one training per folder
def test_a_second_training_into_a_busy_folder_is_refused(stripes, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cutlib", "train", "--dataset", str(stripes), "--out", str(out),
                              "--no-progress", *FLAGS, "--dataset-len", "400"], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / METRICS_FILE).exists():
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first training did not start"
            time.sleep(0.2)
        message = one_line_error(train_cli(stripes, out, "--resume", "--max-steps", "2"))
        assert "in use by another training" in message and f"pid {first.pid}" in message and socket.gethostname() in message
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps = [json.loads(line)["step"] for line in (out / METRICS_FILE).read_text().splitlines() if line.endswith("}")]
    assert len(steps) == len(set(steps)), "two trainings wrote the same log"


def test_a_lock_left_by_a_dead_process_is_taken_over_and_released(stripes, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    summary = train(C.preset("cut", dataset=str(stripes), **{**TINY, "max_steps": 1}), out, progress=False)
    assert summary["step"] == 1 and not (out / LOCK_FILE).exists()


def test_the_lock_is_released_on_errors_and_holds_pid_and_host(stripes, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="batch_size"):
        train(C.preset("cut", dataset=str(stripes), **{**TINY, "batch_size": 64}), out, progress=False)
    assert not out.exists()  # made for the lock, removed again: nothing was written
    out.mkdir()
    with FolderLock(out, LOCK_FILE) as lock:
        assert lock.holder() == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            train(C.preset("cut", dataset=str(stripes), **{**TINY, "max_steps": 1}), out, progress=False)
    assert not (out / LOCK_FILE).exists() and not (out / CHECKPOINT).exists()


# ------------------------------------------------------------------ errors at the first step
def test_a_discriminator_too_deep_for_the_crop_fails_first_and_leaves_nothing(stripes, tmp_path):
    out = tmp_path / "run"
    message = one_line_error(train_cli(stripes, out, "--max-steps", "1", "--n-layers-D", "6"))
    assert "n_layers_D=6" in message and "crop_size 32" in message
    assert not out.exists()
    one_line_error(train_cli(stripes, out, "--max-steps", "1", "--num-workers", "-1"))
    assert not out.exists()
    done = train_cli(stripes, out, "--resume", "--max-steps", "1", "--n-layers-D", "2")  # the corrected command
    assert done.returncode == 0, done.stderr[-2000:]
    assert C.from_dict(load_checkpoint(out / CHECKPOINT)["config"]).n_layers_D == 2


def test_a_failure_in_the_first_step_writes_nothing_and_the_folder_is_reusable(tmp_path):
    data = make_dataset("stripes", root=tmp_path / "data", size=40, n_train=4, n_test=2)
    cfg = C.preset("cut", dataset=str(data), **{**TINY, "max_steps": 1})
    out = tmp_path / "run"
    trainer = Trainer(cfg, out, progress=False)
    for image in (data / "trainA").iterdir():
        image.unlink()  # the images vanish after the dataset was listed: the first batch cannot load
    with pytest.raises(OSError):
        trainer.run()
    assert not out.exists() or not any(out.iterdir())
    data = make_dataset("stripes", root=tmp_path / "data2", size=40, n_train=4, n_test=2)
    assert train(C.override(cfg, dataset=str(data)), out, progress=False)["step"] == 1


# ------------------------------------------------------------------ resuming
def test_resume_refuses_another_preset_and_says_when_the_run_is_finished(stripes, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    before = (run / CHECKPOINT).read_bytes()
    message = one_line_error(cutlib("train", "--out", str(run), "--resume", "--preset", "cyclegan", "--no-progress"))
    assert "not a cyclegan run" in message and "model='cut'" in message
    message = one_line_error(cutlib("train", "--out", str(run), "--resume", "--preset", "cut", "--no-progress"))
    assert message.endswith(f"the run in {run} is finished (2 steps); raise --max-steps or --n-epochs to train on")
    assert (run / CHECKPOINT).read_bytes() == before
    done = cutlib("train", "--out", str(run), "--resume", "--preset", "cut", "--max-steps", "3", "--no-progress")
    assert done.returncode == 0 and json.loads(done.stdout)["step"] == 3, done.stderr[-2000:]


def test_preset_signature_tells_the_presets_apart():
    from cutlib.runs import check_preset, preset_signature

    cut = preset_signature("cut")
    assert {"model": "cut", "lambda_nce": 1.0, "nce_idt": True, "flip_equivariance": False}.items() <= cut.items()
    assert preset_signature("fastcut")["flip_equivariance"] is True  # the field that tells FastCUT apart
    assert preset_signature("cyclegan") == {"model": "cyclegan"}
    check_preset(C.tiny_scale("fastcut"), "fastcut", "RUN")  # scale settings do not matter
    assert preset_signature("laptop") == cut  # CUT's objective at a laptop's scale
    check_preset(C.preset("laptop"), "cut", "RUN")
    check_preset(C.tiny_scale("cut"), "laptop", "RUN")
    with pytest.raises(ValueError, match="not a cut run"):
        check_preset(C.tiny_scale("fastcut"), "cut", "RUN")
    with pytest.raises(ValueError, match="unknown preset"):
        check_preset(C.tiny_scale("cut"), "pix2pix", "RUN")


# ------------------------------------------------------------------ bad places and devices
def test_bad_output_folders_and_devices_are_one_line(stripes, tmp_path, tmpfs):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out in (a_file, a_file / "run"):
        message = one_line_error(train_cli(stripes, out, "--max-steps", "1"))
        assert f"{a_file} is a file" in message
    assert a_file.read_text() == "mine"
    message = one_line_error(train_cli(stripes, tmp_path / "run", "--device", "banana"))
    assert "banana" in message and "cpu" in message and "cuda" in message
    assert not (tmp_path / "run").exists()
    disk = tmpfs(4 * 1024 * 1024)
    data = Path(shutil.copytree(stripes, disk / "stripes"))
    remount_read_only(disk)
    message = one_line_error(train_cli(stripes, disk / "run", "--max-steps", "1"))
    assert str(disk / "run") in message and "read-only" in message.lower()
    done = train_cli(data, tmp_path / "from_ro", "--max-steps", "1")  # read-only data is fine: it is only read
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------ SIGKILL at random moments
def _assert_identical(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, np.ndarray):  # numpy's RNG state
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(stripes, tmp_path):
    args = ["--save-every", "1", "--sample-every", "2"]  # 8 steps over two epochs (into the decay epoch)
    done = train_cli(stripes, tmp_path / "straight", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    out, kills = tmp_path / "killed", []
    command = [sys.executable, "-m", "cutlib", "train", "--dataset", str(stripes), "--out", str(out), "--no-progress",
               *FLAGS, *args, "--resume"]
    for _ in range(3):
        logged = len((out / METRICS_FILE).read_text().splitlines()) if (out / METRICS_FILE).exists() else 0
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        # wait until it has logged a random number of further steps (one row per step), then kill a moment later:
        # a kill by step count lands mid-training however fast the machine is
        target = min(7, logged + rng.randint(1, 3))
        while proc.poll() is None and time.time() < deadline:
            if (out / METRICS_FILE).exists() and len((out / METRICS_FILE).read_text().splitlines()) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(load_checkpoint(out / CHECKPOINT)["step"] if (out / CHECKPOINT).exists() else 0)
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or "is finished" in done.stderr, done.stderr[-2000:]
    assert any(0 < k < 8 for k in kills), f"no kill landed in the middle of training (steps {kills}, seed {seed})"
    _assert_identical(load_checkpoint(tmp_path / "straight" / CHECKPOINT), load_checkpoint(out / CHECKPOINT))
    steps = [json.loads(line)["step"] for line in (out / METRICS_FILE).read_text().splitlines()]
    assert steps == list(range(1, 9)), f"log steps {steps} (kills after steps {kills}, seed {seed})"
    assert not temporaries(out) and not (out / LOCK_FILE).exists()
