"""The standard FID/KID features: pytorch-fid's Inception-v3 (pool3, 2048-d) with the weights of
TensorFlow's 2015-12-05 Inception, the network published FIDs were computed with.

The weights file cannot be bundled (and, offline, not downloaded): ``find_inception_weights`` says
exactly which file is needed and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.request
from pathlib import Path

import torch
from torch import Tensor, nn

from cutlib.device import resolve_device
from cutlib.files import atomic_write
from cutlib.runs import CheckpointError, load_checkpoint

# The FID Inception weights (TensorFlow's 2015-12-05 Inception, ported by pytorch-fid 0.3.0).
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_WEIGHTS_ENV = "CUTLIB_INCEPTION_WEIGHTS"


class InceptionWeightsNotFound(FileNotFoundError):
    """The FID Inception weights are neither on disk nor downloadable."""


def inception_weights_dir() -> Path:
    """Where pytorch-fid (through torch.hub) keeps the weights: torch.hub.get_dir()/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_weights_message(reason: str) -> str:
    folder = inception_weights_dir()
    return (
        f"The FID Inception weights {INCEPTION_WEIGHTS_FILE} are needed but {reason}.\n"
        f"Put the file in {folder} (torch.hub.get_dir()/checkpoints, where pytorch-fid looks), or pass "
        f"InceptionExtractor(weights_path=...) or set {INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_WEIGHTS_FILE}.\n"
        f"To fetch it on a machine with internet access:\n"
        f"    curl -L -o {INCEPTION_WEIGHTS_FILE} {INCEPTION_WEIGHTS_URL}\n"
        f"then copy it into {folder}."
    )


def _download_inception_weights(dest: Path, timeout: float) -> None:
    """Download the weights to ``dest`` (atomically) and check the sha256 prefix in the file name."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fetch(tmp: Path) -> None:
        digest = hashlib.sha256()
        opener = urllib.request.build_opener()  # not urlopen's cached one: today's proxy settings apply
        with opener.open(INCEPTION_WEIGHTS_URL, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        expected = INCEPTION_WEIGHTS_FILE.rsplit("-", 1)[1].split(".")[0]  # "6726825d"
        if not digest.hexdigest().startswith(expected):
            raise OSError(f"the downloaded file's sha256 does not start with {expected}")

    atomic_write(dest, fetch)


def find_inception_weights(weights_path: str | os.PathLike | None = None, download: bool = True, timeout: float = 60) -> Path:
    """Path of pt_inception-2015-12-05-6726825d.pth: ``weights_path``, else $CUTLIB_INCEPTION_WEIGHTS,
    else the torch hub cache, else downloaded there (as pytorch-fid would). Raises InceptionWeightsNotFound."""
    explicit = weights_path if weights_path is not None else os.environ.get(INCEPTION_WEIGHTS_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            source = "weights_path" if weights_path is not None else f"${INCEPTION_WEIGHTS_ENV}"
            raise InceptionWeightsNotFound(_missing_weights_message(f"{source} points to {path}, which is not a file"))
        return path
    cached = inception_weights_dir() / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return cached
    if not download:
        raise InceptionWeightsNotFound(_missing_weights_message(f"{cached} does not exist (download=False)"))
    try:
        _download_inception_weights(cached, timeout)
    except OSError as error:  # URLError, timeouts, refused connections, bad hash are all OSErrors
        raise InceptionWeightsNotFound(_missing_weights_message(f"{cached} does not exist and the download failed ({error})")) from error
    return cached


_HUB_LOCK = threading.Lock()  # torch.hub's folder is process-wide: one pytorch-fid build at a time


def pytorch_fid_inception(weights_path: str | os.PathLike) -> nn.Module:
    """pytorch_fid.inception.InceptionV3 (pool3, 2048 features) with the weights of the local file.

    pytorch-fid takes its weights from torch.hub.get_dir()/checkpoints (downloading them if absent) and
    unpickles them without the weights-only guard. So the file is loaded here with weights_only=True, written
    into a temporary hub folder, and torch.hub points there while pytorch-fid builds its network.
    """
    from pytorch_fid.inception import InceptionV3

    try:
        state = load_checkpoint(weights_path)
        with _HUB_LOCK, tempfile.TemporaryDirectory(prefix="cutlib-fid-") as hub:
            os.mkdir(os.path.join(hub, "checkpoints"))
            torch.save(state, os.path.join(hub, "checkpoints", INCEPTION_WEIGHTS_FILE))
            previous = torch.hub._hub_dir  # None means "follow $TORCH_HOME", which set_dir cannot restore
            torch.hub.set_dir(hub)
            try:
                return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
            finally:
                torch.hub._hub_dir = previous
    except (CheckpointError, RuntimeError, TypeError) as error:  # not a torch file, wrong keys
        raise ValueError(f"{weights_path} is not the FID Inception state dict {INCEPTION_WEIGHTS_FILE} "
                         f"({type(error).__name__}: {error}).\nReplace it with the file from {INCEPTION_WEIGHTS_URL}") from error


class InceptionExtractor(nn.Module):
    """The standard FID features: pytorch_fid.inception.InceptionV3's pool3 (2048-d), inputs in [0, 1].

    pytorch-fid's defaults: inputs resized to 299 x 299 (bilinear, align_corners=False) and scaled to
    [-1, 1]. Weights: see ``find_inception_weights``.
    """

    name = "inception-v3-fid-pool3"
    dims = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str | torch.device | None = None, download: bool = True):
        super().__init__()
        self.net = pytorch_fid_inception(find_inception_weights(weights_path, download=download))
        self.requires_grad_(False).eval().to(resolve_device(device))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.to(next(self.parameters()).device, torch.float32)  # (N, 3, H, W) in [0, 1]
        return self.net(x)[0].flatten(1)  # (N, 2048)
