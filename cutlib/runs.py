"""A run folder and how to read it: file names, the one checkpoint loader, finished runs.
Nothing here trains (cutlib.train writes runs; this module only reads them and writes files safely).

    RUN/config.json      the TrainConfig of the run
    RUN/checkpoint.pt    everything needed to resume exactly: the networks (G, D, H, ...), optimisers,
                         schedulers, RNG states, step, epoch, config; written atomically
    RUN/metrics.jsonl    one line per logged step
    RUN/samples/         image grids (input | output) of fixed test images; step000000.png is "before"
    RUN/epochs/          generator snapshots every save_epoch_freq epochs (to evaluate best vs final;
                         G, or every network snapshot_networks names: the Swapping Autoencoder's E and G)
    RUN/eval.json        written by python -m cutlib evaluate
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from cutlib import config as C
from cutlib.config import TrainConfig
from cutlib.files import atomic_write, write_text

CHECKPOINT = "checkpoint.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
SAMPLES_DIR = "samples"
EPOCHS_DIR = "epochs"
# fields that may change when a run is resumed; anything else must match the saved config
RESUMABLE_CHANGES = {"max_steps", "device", "num_workers", "log_every", "sample_every", "save_every", "n_epochs",
                     "n_epochs_decay", "precision", "channels_last", "compile"}
# what a cutlib checkpoint holds besides tensors and containers: numpy's RNG state
_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint: damaged, cut short, or holding code."""


def cached_network(path: Path, rebuild, train, state):
    """A trained network kept in the cache file ``path``: ``rebuild(saved)`` from the file when it is there,
    else ``train()`` it and save ``state(network)`` atomically (concurrent callers never see half a file).
    The network's ``info`` dict gains "cache" and "loaded_from_cache"; it is returned in eval mode."""
    if path.is_file():
        network = rebuild(load_checkpoint(path))
        loaded = True
    else:
        network = train()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(state(network), tmp))
        loaded = False
    network.info = {**network.info, "cache": str(path), "loaded_from_cache": loaded}
    return network.eval()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Read a checkpoint WITHOUT running pickled code (torch.load with weights_only=True): tensors,
    containers, numbers, strings and numpy's RNG arrays load; anything else is refused.

    Raises FileNotFoundError for a missing file and CheckpointError, naming the file and the cause,
    for a damaged, truncated or unsafe one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file, not a torch file, or one that needs unsafe pickling
        cause = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        unsafe = isinstance(err, __import__("pickle").UnpicklingError) and "weights_only" in str(err)
        hint = ("it holds objects other than tensors, which could run code when loaded: cutlib refuses it"
                if unsafe else "it is damaged or cut short (a copy that did not finish?)")
        raise CheckpointError(f"cannot read {path} as a checkpoint: {hint} ({type(err).__name__}: {cause})") from err


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """torch.save ``state`` atomically: a crash or a full disk never leaves half a checkpoint."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig stored in RUN/checkpoint.pt."""
    return C.from_dict(load_checkpoint(Path(run_dir) / CHECKPOINT)["config"])


def resumed_config(saved: TrainConfig, changes: dict) -> TrainConfig:
    """The config a resumed run continues with: ``saved`` with ``changes`` (field -> value), which may
    only touch RESUMABLE_CHANGES; anything else is refused with the saved and the asked values."""
    saved_values = saved.to_dict()
    asked = C.override(saved, **changes).to_dict()  # parsed and typed like the saved values
    changed = {k for k in changes if asked[k] != saved_values[k]}
    fixed = sorted(changed - RESUMABLE_CHANGES)
    if fixed:
        raise ValueError(
            f"cannot resume with a different {', '.join(fixed)} than the saved run "
            f"({', '.join(f'{k}={saved_values[k]!r} saved, {asked[k]!r} asked' for k in fixed)}); "
            f"only {sorted(RESUMABLE_CHANGES)} may change"
        )
    return C.override(saved, **{k: asked[k] for k in changed})


SCALE_FIELDS = {*C.CPU_SCALE, "n_layers_D", "lr", "dataset_len", "save_epoch_freq"}  # not what tells presets apart


def preset_signature(name: str) -> dict:
    """What tells the preset ``name`` apart from the other presets: its model and the fields in which
    the presets of that model differ (CUT vs FastCUT: lambda_nce, nce_idt, flip_equivariance); the
    schedule is left out, as a resumed run may change it, and so is the scale (data, sizes, widths,
    learning rate: the laptop preset is CUT's objective at a small scale, and any preset may be scaled)."""
    cfg = C.preset(name)
    kin = [C.preset(other) for other in C.PRESETS if C.preset(other).model == cfg.model]
    keys = [f for f in C.FIELDS if f not in RESUMABLE_CHANGES and f not in SCALE_FIELDS
            and len({getattr(k, f) for k in kin}) > 1]
    return {"model": cfg.model, **{k: getattr(cfg, k) for k in keys}}


def check_preset(saved: TrainConfig, name: str, run_dir: str | Path) -> None:
    """Refuse to resume the run in ``run_dir`` (config ``saved``) as preset ``name`` when it is not one."""
    differ = {k: v for k, v in preset_signature(name).items() if getattr(saved, k) != v}
    if differ:
        raise ValueError(
            f"the run in {run_dir} is not a {name} run ({', '.join(f'{k}={getattr(saved, k)!r} saved, {name} sets {v!r}' for k, v in differ.items())}); "
            "a resumed run keeps its own preset: drop --preset, or train the new preset into another --out"
        )


def trim_metrics(path: str | Path, step: int) -> list[dict]:
    """Keep the rows of the log ``path`` up to ``step`` (the checkpoint's; later ones are written
    again) and return them. A torn line (a crash or a full disk in the middle of a write) is dropped
    with a warning naming the file."""
    path = Path(path)
    rows, kept, torn = [], [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            torn.append(number)
            continue
        if row["step"] <= step:
            rows.append(row)
            kept.append(line)
    if torn:
        warnings.warn(f"{path}: dropped {len(torn)} damaged line(s) ({', '.join(map(str, torn[:5]))}"
                      f"{' ...' if len(torn) > 5 else ''}), left by an interrupted write", RuntimeWarning, stacklevel=2)
    write_text(path, "".join(line + "\n" for line in kept))
    return rows


def rng_state(model) -> dict:
    """Every random state a run draws from: torch's, the model's own generator, python's, numpy's (and CUDA's)."""
    state = {"torch": torch.get_rng_state(), "model": model.rng.get_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(config, model) of a saved run, networks in eval mode, for inference and evaluation."""
    from cutlib.models import build_model

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no {CHECKPOINT} in {run_dir}: train a run there first")
    saved = load_checkpoint(path, map_location=device)
    cfg = C.from_dict(saved["config"])
    model = build_model(cfg, device)
    for name, net in model.networks.items():
        net.load_state_dict(saved[name])
    model.eval()
    return cfg, model


def snapshot_networks(model) -> tuple[str, ...]:
    """The networks an epoch snapshot keeps: what translating needs (G; the Swapping Autoencoder's E and G)."""
    return tuple(getattr(model, "snapshot_networks", ("G",)))


def planned_steps(cfg: TrainConfig, epoch_len: int) -> int:
    """Optimisation steps of a whole run of ``cfg`` with ``epoch_len`` items per epoch (max_steps caps it)."""
    full = (epoch_len // cfg.batch_size) * (cfg.n_epochs + cfg.n_epochs_decay)
    return min(full, cfg.max_steps) if cfg.max_steps else full


def epoch_length(cfg: TrainConfig) -> int:
    """Items per epoch: cfg.dataset_len when set, else the training set's length max(|A|, |B|)."""
    from cutlib.data import load_dataset

    return cfg.dataset_len or len(load_dataset(cfg))


def run_progress(run_dir: str | Path, cfg: TrainConfig | None = None) -> tuple[int, int]:
    """(steps done, steps planned) of the run saved in run_dir; (0, 0) when there is none.

    ``cfg``: plan by this config instead of the saved one (a chapter asking for more steps)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return 0, 0
    saved = load_checkpoint(path)
    cfg = cfg or C.from_dict(saved["config"])
    return saved["step"], planned_steps(cfg, epoch_length(cfg))


def is_finished(run_dir: str | Path, cfg: TrainConfig | None = None) -> bool:
    """True when run_dir holds a run that reached its last planned step (not one left half-way)."""
    done, planned = run_progress(run_dir, cfg)
    return planned > 0 and done >= planned
