"""The training loop: data, learning-rate schedule, logging, sample grids, checkpoints and exact resume.

``train(cfg, out_dir)`` writes a run folder (its files: cutlib.runs); ``load_or_train`` is what the
chapters call: the finished run when there is one, else a short training. Several GPUs:
``torchrun --nproc_per_node N -m cutlib train ...`` (cutlib.distributed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from cutlib import config as C
from cutlib.config import TrainConfig
from cutlib.data import load_dataset, sample_images
from cutlib.data.loader import TrainLoader
from cutlib.distributed import average_losses, distribute, setup_distributed, unwrap
from cutlib.files import FolderBusy, append_text, check_folder_path, describe_os_error, locked_folder, write_text
from cutlib.models import build_model, check_discriminator, compile_networks
from cutlib.runs import (CHECKPOINT, CONFIG_FILE, EPOCHS_DIR, METRICS_FILE, SAMPLES_DIR, check_preset, load_checkpoint,
                         load_run, planned_steps, resumed_config, rng_state, run_progress, save_checkpoint, saved_config,
                         set_rng_state, snapshot_networks, trim_metrics)
from cutlib.viz import save_grid

LOCK_FILE = ".lock"  # held by the training that writes the run folder (pid and host inside)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class RunFinished(ValueError):
    """A resumed run has no steps left to train."""


def linear_decay(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Learning-rate factor in (1-based) epoch k: 1 - max(0, k - n_epochs) / (n_epochs_decay + 1)."""
    return 1.0 - max(0, epoch - n_epochs) / float(n_epochs_decay + 1)


def make_schedulers(model, cfg: TrainConfig) -> dict:
    """Constant lr for n_epochs, then linear decay to ~0 over n_epochs_decay (book/reference.md section 5).
    LambdaLR counts epochs from 0; the formula's epoch k is 1-based."""
    rule = lambda e: linear_decay(e + 1, cfg.n_epochs, cfg.n_epochs_decay)  # noqa: E731
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, rule) for name, opt in model.optimizers.items()}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, size: int = 0) -> list[list[int]]:
    """The shuffled order of an epoch as batches of indices, fixed by (seed, epoch); last partial dropped.
    Epochs shorter than the dataset (n < size) take items (e-1)*n ... e*n-1 mod size: they walk through it."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    order = [(i + (epoch - 1) * n) % size for i in order] if 0 < n < size else order
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class Trainer:
    """Owns a model and a run folder; ``run()`` trains until the epochs (or max_steps) are done.

    Under torchrun every process builds the same Trainer: the same seed gives every process the same
    networks and the same objective randomness (patch locations, flips); each trains on its share of
    every batch, DDP averages the gradients, and only rank 0 writes checkpoints, logs and samples.
    """

    def __init__(self, cfg: TrainConfig | dict, out_dir: str | Path, resume: bool = False, progress: bool = True):
        """``cfg``: the run's TrainConfig; when resuming, either the config asked for (compared with the
        saved one) or a dict of the fields to change (the command line's --resume)."""
        self.out = Path(out_dir)
        check_folder_path(self.out)
        self.progress = progress
        ckpt_path = self.out / CHECKPOINT
        saved = None
        if ckpt_path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.out} already holds a run ({CHECKPOINT}). Pass resume=True (--resume) to continue it, "
                    "or choose another output folder."
                )
            saved = load_checkpoint(ckpt_path)
            changes = cfg if isinstance(cfg, dict) else cfg.to_dict()
            cfg = resumed_config(C.from_dict(saved["config"]), changes)  # the one place a resumed config is merged
        elif isinstance(cfg, dict):
            raise FileNotFoundError(f"nothing to resume: {self.out} holds no {CHECKPOINT}")
        self.cfg = cfg
        self._opened = False  # the folder and config.json are written with the first output
        self.rank, self.world_size, self.device = setup_distributed(cfg.device)
        check_discriminator(cfg)  # before seeding: it draws its own initial weights
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size ({cfg.batch_size}) is the global batch and must be divisible by the "
                             f"{self.world_size} processes; use --batch-size {self.world_size * max(1, cfg.batch_size // self.world_size)}")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        if self.rank > 0:
            dist.barrier()  # rank 0 generates a built-in dataset first; the others then read it
        self.dataset = load_dataset(cfg)
        if self.rank == 0 and self.world_size > 1:
            dist.barrier()
        if len(self.dataset) < cfg.batch_size:
            raise ValueError(
                f"the dataset {cfg.dataset!r} has {len(self.dataset)} training pairs, fewer than batch_size="
                f"{cfg.batch_size}; lower --batch-size or add images"
            )
        self.loader = TrainLoader(self.dataset, cfg, self.device)  # its workers persist from epoch to epoch
        self.model = build_model(cfg, self.device)
        self.schedulers = make_schedulers(self.model, cfg)
        self.step, self.epoch, self.batch_in_epoch = 0, 1, 0  # epoch is 1-based; batch_in_epoch done so far
        if saved is not None:
            self._restore(saved)  # every process loads the checkpoint, then wraps its networks
        if self.world_size > 1:
            distribute(self.model, self.device)
        if cfg.compile:
            compile_networks(self.model)
        self.samples = sample_images(cfg, cfg.num_samples)
        if self.world_size > 1:
            dist.barrier()  # every process has checked for an existing run before rank 0 writes one

    @property
    def is_main(self) -> bool:
        """True in the process that writes the run folder (rank 0; the only one without torchrun)."""
        return self.rank == 0

    # ----------------------------------------------------------- checkpoints
    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The model's fp16 loss scaler (checkpointed with its scale), None in fp32 and bf16."""
        scaler = getattr(self.model, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def state(self) -> dict:
        return {
            "format": "cutlib-checkpoint-1",
            "config": self.cfg.to_dict(),
            **{name: unwrap(net).state_dict() for name, net in self.model.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in self.model.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": rng_state(self.model),
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
        }

    def _open_folder(self) -> None:
        """Make the run folder and write config.json (once, with the first file written into it)."""
        if not self._opened:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / CONFIG_FILE, self.cfg.to_json())
            self._opened = True

    def save(self) -> Path:
        path = self.out / CHECKPOINT
        if self.is_main:
            self._open_folder()
            save_checkpoint(self.state(), path)
        return path

    def _restore(self, saved: dict) -> None:
        for name, net in self.model.networks.items():
            net.load_state_dict(saved[name])
        for k, opt in self.model.optimizers.items():
            opt.load_state_dict(saved["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(saved["schedulers"][k])
        set_rng_state(self.model, saved["rng"])
        if self.scaler and "scaler" in saved:  # a run saved in another precision starts with a fresh loss scale
            self.scaler.load_state_dict(saved["scaler"])
        self.step, self.epoch, self.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]

    # ----------------------------------------------------------- outputs
    def translate_samples(self) -> torch.Tensor:
        self.model.G.eval()
        with torch.no_grad():
            fake = self.model.translate(self.samples.to(self.device)).cpu()
        self.model.G.train()
        return fake

    def write_samples(self, fake: torch.Tensor | None = None, step: int | None = None) -> Path | None:
        """The sample grid of ``step`` (default: now) with ``fake`` (default: translated now)."""
        if not self.is_main:
            return None
        fake = self.translate_samples() if fake is None else fake
        self._open_folder()
        step = self.step if step is None else step
        path = save_grid([self.samples, fake], self.out / SAMPLES_DIR / f"step{step:06d}.png")
        if step == self.step:
            save_grid([self.samples, fake], self.out / SAMPLES_DIR / "latest.png")
        return path

    def log(self, losses: dict, seconds: float) -> None:
        if not self.is_main:
            return
        row = {"step": self.step, "epoch": self.epoch, "lr": self.model.optimizers["G"].param_groups[0]["lr"], **losses, "time": round(seconds, 4)}
        self._open_folder()
        append_text(self.out / METRICS_FILE, json.dumps(row) + "\n")

    def _trim_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be written again) and torn ones."""
        if (self.out / METRICS_FILE).exists() and self.is_main:
            trim_metrics(self.out / METRICS_FILE, self.step)

    # ----------------------------------------------------------- the loop
    @property
    def total_epochs(self) -> int:
        return self.cfg.n_epochs + self.cfg.n_epochs_decay

    @property
    def epoch_len(self) -> int:
        """Items per epoch: cfg.dataset_len when set (short CPU runs with several epochs), else max(|A|, |B|)."""
        return self.cfg.dataset_len or len(self.dataset)

    def total_steps(self) -> int:
        return planned_steps(self.cfg, self.epoch_len)

    def done(self) -> bool:
        return self.step >= self.total_steps()

    def run(self) -> dict:
        """Train to the end (or to max_steps). Returns a summary; raises TrainingDiverged on NaN/inf."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._trim_log()
        # the "before" picture is drawn now, written with the first step's outputs: a failing first step leaves nothing
        before = self.translate_samples() if self.step == 0 and self.is_main else None
        start = time.perf_counter()
        bar = tqdm(total=self.total_steps(), initial=self.step, disable=not (self.progress and self.is_main), desc=f"{cfg.model} {cfg.dataset}", unit="it")
        losses: dict = {}
        while not self.done() and self.epoch <= self.total_epochs:
            if hasattr(self.model, "set_epoch"):  # objectives with an epoch schedule (Hneg-SRC's temperature)
                self.model.set_epoch(self.epoch)
            jitter = not (cfg.decay_no_jitter and self.epoch > cfg.n_epochs)  # the decay epochs: no random crop
            batches = epoch_batches(self.epoch_len, cfg.batch_size, cfg.seed, self.epoch, len(self.dataset))[self.batch_in_epoch :]
            if self.world_size > 1:  # each process takes its slice of every global batch (not a DistributedSampler:
                share = cfg.batch_size // self.world_size  # the step sequence stays that of one process, resume exact)
                batches = [b[self.rank * share : (self.rank + 1) * share] for b in batches]
            for batch in self.loader.epoch(batches, self.epoch, jitter):
                t0 = time.perf_counter()
                losses = self.model.training_step(batch)
                if self.world_size > 1:
                    losses = average_losses(losses, self.device)
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    raise TrainingDiverged(
                        f"loss {', '.join(f'{k}={v}' for k, v in bad.items())} at step {self.step + 1} (epoch {self.epoch}): "
                        f"training stopped. The last good checkpoint is kept in {self.out / CHECKPOINT}. "
                        "Lower the learning rate (--lr) or check the data, then resume."
                    )
                self.step += 1
                self.batch_in_epoch += 1
                if before is not None:
                    self.write_samples(before, step=0)
                    before = None
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
                if self.step % max(cfg.log_every, 1) == 0 or self.step == 1:
                    self.log(losses, time.perf_counter() - t0)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.write_samples()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                if self.done():
                    break
            if self.batch_in_epoch >= self.epoch_len // cfg.batch_size:  # the epoch is complete
                self._end_epoch()
        bar.close()
        self.loader.close()
        self.write_samples()
        self.save()
        if self.world_size > 1:
            dist.barrier()  # the final checkpoint is on disk when run() returns, in every process
        return {"out_dir": str(self.out), "step": self.step, "epoch": self.epoch,
                "seconds": round(time.perf_counter() - start, 2), "losses": losses, "processes": self.world_size}

    def _end_epoch(self) -> None:
        cfg = self.cfg
        if self.is_main and cfg.save_epoch_freq and (self.epoch % cfg.save_epoch_freq == 0 or self.epoch == self.total_epochs):
            (self.out / EPOCHS_DIR).mkdir(exist_ok=True)
            nets = {name: unwrap(getattr(self.model, name)).state_dict() for name in snapshot_networks(self.model)}
            save_checkpoint({"epoch": self.epoch, "step": self.step, **nets, "config": cfg.to_dict()},
                            self.out / EPOCHS_DIR / f"G_epoch{self.epoch:03d}.pt")
        for sched in self.schedulers.values():
            sched.step()
        self.epoch += 1
        self.batch_in_epoch = 0
        if not cfg.sample_every:
            self.write_samples()
        if not cfg.save_every:
            self.save()


def train(cfg: TrainConfig | dict, out_dir: str | Path, resume: bool = False, progress: bool = True,
          finished_ok: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir`` (see cutlib.runs for the folder); resume=True continues a saved run.

    The run folder is locked (RUN/.lock, by rank 0 under torchrun) while it trains: a second training
    into it is refused with FolderBusy. ``finished_ok=False``: a resumed run with no steps left raises
    RunFinished instead of returning its summary. Under torchrun the process group started here is
    closed here."""
    out = Path(out_dir)
    ours = not (dist.is_available() and dist.is_initialized())
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        with locked_folder(out, LOCK_FILE, what="another training") if main else contextlib.nullcontext():
            trainer = Trainer(cfg, out, resume=resume, progress=progress)
            if not finished_ok and trainer.step > 0 and trainer.done():
                raise RunFinished(f"the run in {out} is finished ({trainer.step} steps); raise --max-steps or "
                                  "--n-epochs to train on")
            return trainer.run()
    finally:
        if ours and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


class Run(NamedTuple):
    """What ``load_or_train`` hands a chapter: the run folder, its config and model, and what happened."""

    dir: Path
    cfg: TrainConfig
    model: torch.nn.Module
    trained: bool  # False: a finished run was loaded
    message: str  # says which, truthfully


def load_or_train(cfg: TrainConfig, out_dir: str | Path, prefer: tuple[str | Path, ...] = (), progress: bool = True) -> Run:
    """The chapters' "load the finished run if it is there, else train a short one".

    The first run folder of ``prefer`` that holds a finished run (e.g. make demo's) is loaded as it
    is; else ``cfg`` is trained into ``out_dir``, resuming a run left half-way there, or loaded when
    that run already reached cfg's last step. The message says which of these happened.
    """
    for candidate in map(Path, prefer):
        done, planned = run_progress(candidate)
        if planned and done >= planned:
            run_cfg, model = load_run(candidate)
            return Run(candidate, run_cfg, model, False, f"loaded the finished run in {candidate} ({done} steps)")
    out = Path(out_dir)
    done, planned = run_progress(out, cfg)
    if planned and done >= planned:
        run_cfg, model = load_run(out)
        return Run(out, run_cfg, model, False, f"loaded the finished run in {out} ({done} steps)")
    summary = train(cfg, out, resume=True, progress=progress)
    run_cfg, model = load_run(out)
    what = f"resumed at step {done} and trained to" if done else "trained"
    return Run(out, run_cfg, model, True,
               f"{what} {summary['step']} steps in {summary['seconds']} s -> {out}")


# ----------------------------------------------------------------- command line
def build_parser():
    from cutlib.options import ConfigParser, add_config_options

    p = ConfigParser(prog="python -m cutlib train",
                     description="Train CUT / FastCUT (and the other presets) into a run folder. Every TrainConfig "
                                 "field is an option; lists are comma-separated.")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(C.PRESETS)} (default cut; a resumed run keeps its own)")
    p.add_argument("--out", required=True, help="run folder (created; holds checkpoint.pt, samples/, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_options(p)
    return p


def cli(argv: list[str]) -> int:
    from cutlib.options import overrides_from_args

    args = build_parser().parse_args(argv)
    overrides = overrides_from_args(args)
    out = Path(args.out)
    try:
        check_folder_path(out)
        resuming = args.resume and (out / CHECKPOINT).exists()
        if resuming and args.preset:
            check_preset(saved_config(out), args.preset, out)
        # resuming: only the fields given change (the saved config is merged with them in Trainer)
        cfg = overrides if resuming else C.preset(args.preset or "cut", **overrides)
        summary = train(cfg, out, resume=args.resume, progress=not args.no_progress, finished_ok=False)
    except (ValueError, TypeError, TrainingDiverged, FolderBusy) as err:  # CheckpointError, RunFinished too
        print(f"cutlib train: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a folder that cannot be read or written (read-only, missing, a file)
        print(f"cutlib train: {describe_os_error(err)}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
