"""The training loop: data, learning-rate schedule, logging, sample grids, checkpoints and exact resume.

A run folder (ARCHITECTURE.md "Runs and their files"):
    config.json        the TrainConfig of the run
    checkpoint.pt      everything needed to resume exactly (networks G, D, H, ..., optimisers,
                       schedulers, RNG states, step, epoch, config); written atomically
    metrics.jsonl      one line per logged step
    samples/           image grids (input | output) of fixed test images; step000000.png is "before"
    epochs/            generator snapshots every save_epoch_freq epochs (to evaluate best vs final)

Several GPUs: ``torchrun --nproc_per_node N -m cutlib train ...`` runs one process per GPU with
DistributedDataParallel (see "several processes" below). ``batch_size`` is the GLOBAL batch: each
of the N processes takes batch_size / N images of every batch, so a run gives the same steps,
epochs and schedule whatever N, and its checkpoint resumes on any number of GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cutlib import config as C
from cutlib.config import TrainConfig
from cutlib.models import build_model, linear_decay
from cutlib.viz import save_grid

CHECKPOINT = "checkpoint.pt"
# fields that may change when a run is resumed; anything else must match the saved config
RESUMABLE_CHANGES = {"max_steps", "device", "num_workers", "log_every", "sample_every", "save_every", "n_epochs", "n_epochs_decay"}


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


# ----------------------------------------------------------------- several processes (torchrun + DDP)
def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process. Launched by torchrun (WORLD_SIZE > 1), it joins
    the process group: NCCL with one GPU per process (cuda:LOCAL_RANK), or gloo on CPUs."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class DistributedNetwork(DistributedDataParallel):
    """DDP around one network, still answering the generator's ``encode``.

    Why this works for CUT, whose step calls G(x, taps) and then G.encode(G(x)): DDP averages a
    parameter's gradient in a hook that fires when autograd has summed ALL of that parameter's
    contributions in one backward. The forward through DDP arms those hooks; ``encode`` runs the
    wrapped module directly, and its gradients join the same sums before the one backward of the
    G step, so each parameter is averaged once, over everything. Every parameter gets a gradient
    in that backward, so find_unused_parameters (a graph search every step) is not needed; the one
    setting that starves the decoder, nce_decoder_grad=False with lambda_gan=0, would need it. A
    frozen D (requires_grad False) called in the G step produces no gradient: DDP waits for none.
    """

    def encode(self, x: torch.Tensor, taps) -> list[torch.Tensor]:
        return self.module.encode(x, taps)

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # inference (sample grids on rank 0 alone): nothing to average
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (checkpoints hold its plain state dict, no "module." prefix)."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def distribute(model, device: torch.device) -> None:
    """Wrap the trained networks of ``model`` in DistributedNetwork, in place (the optimisers keep the
    same parameters). CUT/FastCUT and CycleGAN; configurations whose state would drift apart between
    processes are refused."""
    from cutlib.models import CUTModel

    cfg = model.cfg

    def ddp(net):  # buffers are constants (blur filters) or per-process (image pools): synced once at init only
        return DistributedNetwork(net, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)

    if isinstance(model, CUTModel):
        if cfg.negatives != "internal" or not cfg.share_encoder:
            raise ValueError(
                "several processes support negatives='internal' with share_encoder=True only: the momentum queue "
                "(external negatives) and the separate query encoder (used through encode() alone) would not be "
                "synchronised. Run these ablations in one process"
            )
        model.G, model.D, model.H = ddp(model.G), ddp(model.D), ddp(model.H)
    elif cfg.model == "cyclegan":  # image pools stay per process: each keeps the history of its own fakes
        model.G, model.F, model.D_X, model.D_Y = ddp(model.G), ddp(model.F), ddp(model.D_X), ddp(model.D_Y)
    else:
        raise ValueError(f"model={cfg.model!r} cannot train on several processes yet (CUT, FastCUT and CycleGAN can); "
                         "run it without torchrun")


def average_losses(losses: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each loss over the processes: the log shows the global batch, and a NaN anywhere stops all."""
    values = torch.tensor([losses[k] for k in sorted(losses)], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / dist.get_world_size() for k, v in zip(sorted(losses), values.tolist())}


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state(model) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "model": model.rng.get_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(model, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    model.rng.set_state(state["model"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_schedulers(model, cfg: TrainConfig) -> dict:
    """Constant lr for n_epochs, then linear decay to ~0 over n_epochs_decay (REFERENCE.md section 5).
    LambdaLR counts epochs from 0; the formula's epoch k is 1-based."""
    rule = lambda e: linear_decay(e + 1, cfg.n_epochs, cfg.n_epochs_decay)  # noqa: E731
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, rule) for name, opt in model.optimizers.items()}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled order of an epoch as batches of indices, fixed by (seed, epoch); last partial dropped."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def load_dataset(cfg: TrainConfig, phase: str = "train"):
    """The training data named by cfg.dataset (built-in name, catalog name or folder)."""
    from cutlib.data import SingleImagePair, UnpairedImageFolder, resolve_dataset

    root = resolve_dataset(cfg.dataset, size=cfg.load_size)  # built-in sets are drawn at the load size
    if cfg.model == "sincut":  # one image per domain: random zoom + 64x64 tiles (REFERENCE.md section 7)
        return SingleImagePair(root, crop_size=cfg.crop_size, flip=cfg.flip, length=cfg.dataset_len or 100_000,
                               generator=torch.Generator().manual_seed(cfg.seed))
    return UnpairedImageFolder(
        root, phase=phase, load_size=cfg.load_size, crop_size=cfg.crop_size, flip=cfg.flip and phase == "train",
        input_nc=cfg.input_nc, generator=torch.Generator().manual_seed(cfg.seed),
    )


def sample_batch(cfg: TrainConfig, n: int) -> torch.Tensor:
    """The first n test images of domain A (train images if there is no test split), without jitter."""
    try:
        ds = load_dataset(cfg, "test")
    except (FileNotFoundError, ValueError):
        ds = load_dataset(cfg, "train")
    ds.jitter = False
    n = min(n, len(ds.paths_A))
    return torch.stack([ds[i]["A"] for i in range(n)])


class Trainer:
    """Owns a model and a run folder; ``run()`` trains until the epochs (or max_steps) are done.

    Under torchrun every process builds the same Trainer: the same seed gives every process the same
    networks and the same objective randomness (patch locations, flips); each trains on its share of
    every batch, DDP averages the gradients, and only rank 0 writes checkpoints, logs and samples.
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True):
        C.validate(cfg)
        self.out = Path(out_dir)
        self.progress = progress
        ckpt_path = self.out / CHECKPOINT
        saved = None
        if ckpt_path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.out} already holds a run ({CHECKPOINT}). Pass resume=True (--resume) to continue it, "
                    "or choose another output folder."
                )
            saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            cfg = self._merge_config(C.from_dict(saved["config"]), cfg)
        self.cfg = cfg
        self.rank, self.world_size, self.device = setup_distributed(cfg.device)
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
        self.model = build_model(cfg, self.device)
        self.schedulers = make_schedulers(self.model, cfg)
        self.step, self.epoch, self.batch_in_epoch = 0, 1, 0  # epoch is 1-based; batch_in_epoch done so far
        if saved is not None:
            self._restore(saved)  # every process loads the checkpoint, then wraps its networks
        if self.world_size > 1:
            distribute(self.model, self.device)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.out / "config.json", cfg.to_json())
        self.samples = sample_batch(cfg, cfg.num_samples)
        if self.world_size > 1:
            dist.barrier()  # every process has checked for an existing run before rank 0 writes one

    @property
    def is_main(self) -> bool:
        """True in the process that writes the run folder (rank 0; the only one without torchrun)."""
        return self.rank == 0

    @staticmethod
    def _merge_config(saved: TrainConfig, asked: TrainConfig) -> TrainConfig:
        changed = {k for k, v in asked.to_dict().items() if saved.to_dict()[k] != v}
        fixed = sorted(changed - RESUMABLE_CHANGES)
        if fixed:
            raise ValueError(
                f"cannot resume with a different {', '.join(fixed)} than the saved run "
                f"({', '.join(f'{k}={saved.to_dict()[k]!r}' for k in fixed)}); only {sorted(RESUMABLE_CHANGES)} may change"
            )
        return C.override(saved, **{k: getattr(asked, k) for k in changed & RESUMABLE_CHANGES})

    # ----------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "format": "cutlib-checkpoint-1",
            "config": self.cfg.to_dict(),
            **{name: unwrap(net).state_dict() for name, net in self.model.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in self.model.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": rng_state(self.model),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
        }

    def save(self) -> Path:
        path = self.out / CHECKPOINT
        if self.is_main:
            atomic_save(self.state(), path)
        return path

    def _restore(self, saved: dict) -> None:
        for name, net in self.model.networks.items():
            net.load_state_dict(saved[name])
        for k, opt in self.model.optimizers.items():
            opt.load_state_dict(saved["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(saved["schedulers"][k])
        set_rng_state(self.model, saved["rng"])
        self.step, self.epoch, self.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]

    # ----------------------------------------------------------- outputs
    def write_samples(self) -> Path | None:
        if not self.is_main:
            return None
        self.model.G.eval()
        with torch.no_grad():
            fake = self.model.translate(self.samples.to(self.device)).cpu()
        self.model.G.train()
        path = save_grid([self.samples, fake], self.out / "samples" / f"step{self.step:06d}.png")
        save_grid([self.samples, fake], self.out / "samples" / "latest.png")
        return path

    def log(self, losses: dict, seconds: float) -> None:
        if not self.is_main:
            return
        row = {"step": self.step, "epoch": self.epoch, "lr": self.model.optimizers["G"].param_groups[0]["lr"], **losses, "time": round(seconds, 4)}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _trim_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be written again)."""
        path = self.out / "metrics.jsonl"
        if path.exists() and self.is_main:
            rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= self.step]
            _atomic_write_text(path, "".join(r + "\n" for r in rows))

    # ----------------------------------------------------------- the loop
    @property
    def total_epochs(self) -> int:
        return self.cfg.n_epochs + self.cfg.n_epochs_decay

    @property
    def epoch_len(self) -> int:
        """Items per epoch: cfg.dataset_len when set (short CPU runs with several epochs), else the dataset's
        length, max(|A|, |B|). Indices past the dataset wrap around for A (A is file i mod |A|)."""
        return self.cfg.dataset_len or len(self.dataset)

    def total_steps(self) -> int:
        per_epoch = self.epoch_len // self.cfg.batch_size
        full = per_epoch * self.total_epochs
        return min(full, self.cfg.max_steps) if self.cfg.max_steps else full

    def done(self) -> bool:
        return self.step >= self.total_steps()

    def run(self) -> dict:
        """Train to the end (or to max_steps). Returns a summary; raises TrainingDiverged on NaN/inf."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._trim_log()
        if self.step == 0:
            self.write_samples()  # the "before" picture
            self.save()
        start = time.perf_counter()
        bar = tqdm(total=self.total_steps(), initial=self.step, disable=not (self.progress and self.is_main), desc=f"{cfg.model} {cfg.dataset}", unit="it")
        losses: dict = {}
        while not self.done() and self.epoch <= self.total_epochs:
            ds = self.dataset
            ds.set_epoch(self.epoch)
            ds.jitter = not (cfg.decay_no_jitter and self.epoch > cfg.n_epochs)
            batches = epoch_batches(self.epoch_len, cfg.batch_size, cfg.seed, self.epoch)[self.batch_in_epoch :]
            if self.world_size > 1:  # each process takes its slice of every global batch (not a DistributedSampler:
                share = cfg.batch_size // self.world_size  # the step sequence stays that of one process, resume exact)
                batches = [b[self.rank * share : (self.rank + 1) * share] for b in batches]
            loader = DataLoader(ds, batch_sampler=batches, num_workers=cfg.num_workers)
            for batch in loader:
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
        self.write_samples()
        self.save()
        if self.world_size > 1:
            dist.barrier()  # the final checkpoint is on disk when run() returns, in every process
        return {
            "out_dir": str(self.out),
            "step": self.step,
            "epoch": self.epoch,
            "seconds": round(time.perf_counter() - start, 2),
            "losses": losses,
            "processes": self.world_size,
        }

    def _end_epoch(self) -> None:
        cfg = self.cfg
        if self.is_main and cfg.save_epoch_freq and (self.epoch % cfg.save_epoch_freq == 0 or self.epoch == self.total_epochs):
            (self.out / "epochs").mkdir(exist_ok=True)
            atomic_save({"epoch": self.epoch, "step": self.step, "G": unwrap(self.model.G).state_dict(), "config": cfg.to_dict()},
                        self.out / "epochs" / f"G_epoch{self.epoch:03d}.pt")
        for sched in self.schedulers.values():
            sched.step()
        self.epoch += 1
        self.batch_in_epoch = 0
        if not cfg.sample_every:
            self.write_samples()
        if not cfg.save_every:
            self.save()


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir`` (see the module docstring); resume=True continues a saved run.
    Under torchrun the process group started here is closed here."""
    ours = not (dist.is_available() and dist.is_initialized())
    try:
        return Trainer(cfg, out_dir, resume=resume, progress=progress).run()
    finally:
        if ours and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_progress(out_dir: str | Path) -> tuple[int, int]:
    """(steps done, steps planned) of the run saved in out_dir; (0, 0) when there is none.
    Chapters use it to show a finished run and to train their own when a run was left half-way."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return 0, 0
    saved = torch.load(path, map_location="cpu", weights_only=False)
    cfg = C.from_dict(saved["config"])
    per_epoch = (cfg.dataset_len or len(load_dataset(cfg))) // cfg.batch_size
    planned = per_epoch * (cfg.n_epochs + cfg.n_epochs_decay)
    return saved["step"], min(planned, cfg.max_steps) if cfg.max_steps else planned


def load_run(out_dir: str | Path, device: str = "cpu"):
    """(config, model) of a saved run, networks in eval mode, for inference and evaluation."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no {CHECKPOINT} in {out_dir}: train a run there first")
    saved = torch.load(path, map_location=device, weights_only=False)
    cfg = C.from_dict(saved["config"])
    model = build_model(cfg, device)
    for name, net in model.networks.items():
        net.load_state_dict(saved[name])
    model.eval()
    return cfg, model


# ----------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cutlib train",
        description="Train CUT / FastCUT (and the other presets) into a run folder.",
        epilog="Every TrainConfig field is also an option: --field-name VALUE (lists comma-separated).",
    )
    p.add_argument("--preset", default="cut", help=f"one of {', '.join(C.PRESETS)} (default cut)")
    p.add_argument("--out", required=True, help="run folder (created; holds checkpoint.pt, samples/, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name in C.FIELDS:
        flag = "--" + name.replace("_", "-")
        aliases = [flag] + (["--" + name] if "_" in name else [])
        p.add_argument(*aliases, dest=name, default=None, metavar=name.upper(), help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the given overrides; when resuming, the saved config with the given overrides."""
    overrides = {k: getattr(args, k) for k in C.FIELDS if getattr(args, k) is not None}
    saved = Path(args.out) / CHECKPOINT
    if args.resume and saved.exists():
        return C.override(C.from_dict(torch.load(saved, map_location="cpu", weights_only=False)["config"]), **overrides)
    return C.preset(args.preset, **overrides)


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, TrainingDiverged) as err:
        print(f"cutlib train: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
