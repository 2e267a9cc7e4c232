"""Inference: translate images of any size with a trained generator, ours or the authors'.

    G = load_generator("runs/h2z", device="cpu")   # run folder, checkpoint.pt, epochs/G_epochNNN.pt, latest_net_G.pth
    y = translate_image(G, x)                       # x: (3, H, W) or (B, 3, H, W) in [-1, 1], any H and W

    python -m cutlib translate --checkpoint CKPT --input FILE_OR_DIR --output DIR [--tile 512] [--max-memory GB]

Both generators are fully convolutional (book/reference.md sections 3 and 7), so an image of any size
is padded to a multiple of 4 (two stride-2 stages), translated and cropped back to its own size.
Before a whole-image translation the memory it needs is estimated (``whole_image_bytes``); above the
limit (half the memory available now, or ``max_memory``) it is refused with the tile size to use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from cutlib.device import resolve_device
from cutlib.files import atomic_write
from cutlib.images import to_uint8
from cutlib.memory import PROBE, check_memory
from cutlib.runs import CHECKPOINT, CheckpointError, load_checkpoint

REFERENCE_FILE = "latest_net_G.pth"  # the authors' generator file name in a checkpoint folder


# ----------------------------------------------------------------------------------------------
# one image


def pad_to_multiple(x: Tensor, multiple: int = 4) -> Tensor:
    """Pad (B, C, H, W) at the bottom and right to sides that are multiples of ``multiple`` (at least
    2 * multiple, the smallest the ResNet generator accepts), by reflection (replication if too small)."""
    h, w = x.shape[-2:]
    new_h, new_w = (max(2 * multiple, -(-s // multiple) * multiple) for s in (h, w))
    pad = (0, new_w - w, 0, new_h - h)  # (left, right, top, bottom)
    if pad == (0, 0, 0, 0):
        return x
    mode = "reflect" if new_h - h < h and new_w - w < w else "replicate"  # reflect needs pad < side
    return F.pad(x, pad, mode=mode)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Top (or left) coordinates of tiles of side ``tile`` covering ``size``, consecutive tiles
    sharing at least ``overlap`` pixels; the last tile ends at the border."""
    if tile >= size:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> Tensor:
    """Blending weights along one side of a tile: 1 inside, rising linearly over ``overlap`` pixels
    from a side shared with a neighbour (never 0, so every pixel is covered); 1 up to the image border."""
    w = torch.ones(length)
    if overlap > 0:
        rise = (torch.arange(min(overlap, length)) + 0.5) / overlap  # (overlap,), in (0, 1)
        if not at_start:
            w[: len(rise)] = torch.minimum(w[: len(rise)], rise)
        if not at_end:
            w[-len(rise) :] = torch.minimum(w[-len(rise) :], rise.flip(0))
    return w


def _check_tiling(tile: int, overlap: int, multiple: int) -> None:
    if not isinstance(tile, int) or tile < 2 * multiple or tile % multiple:
        raise ValueError(f"tile must be a multiple of {multiple} of at least {2 * multiple} pixels, got {tile!r}")
    if not isinstance(overlap, int) or overlap < 0 or overlap % multiple or overlap >= tile:
        raise ValueError(
            f"overlap must be a multiple of {multiple} in [0, tile) (tile={tile}), got {overlap!r}: tiles start on the "
            f"generator's sampling grid (every {multiple} pixels), or tiled and whole outputs would be shifted"
        )


@torch.no_grad()
def _translate_tiled(G: nn.Module, x: Tensor, tile: int, overlap: int) -> Tensor:
    """G on overlapping tiles of x (B, C, H, W), blended with linear ramps over the overlaps."""
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _tile_starts(h, th, overlap), _tile_starts(w, tw, overlap)
    out, total = None, torch.zeros(h, w, device=x.device)
    for y0 in ys:
        for x0 in xs:
            part = G(x[..., y0 : y0 + th, x0 : x0 + tw])  # (B, C_out, th, tw)
            weight = _ramp(th, overlap, y0 == 0, y0 + th == h)[:, None] * _ramp(tw, overlap, x0 == 0, x0 + tw == w)[None, :]
            weight = weight.to(x.device)  # (th, tw)
            if out is None:
                out = torch.zeros(*part.shape[:2], h, w, device=x.device, dtype=part.dtype)
            out[..., y0 : y0 + th, x0 : x0 + tw] += part * weight
            total[y0 : y0 + th, x0 : x0 + tw] += weight
    return out / total


@torch.no_grad()
def translate_image(G: nn.Module, image: Tensor, multiple: int | None = None, tile: int | None = None, overlap: int = 32,
                    max_memory: float | None | str = "auto") -> Tensor:
    """G(image) for an image of any size: (C, H, W) or (B, C, H, W) in [-1, 1] -> the same shape.

    The image is reflect-padded to a multiple of ``multiple`` (None: G.multiple if it has one, else 4) and the
    output cropped back.
    ``tile``: translate overlapping ``tile`` x ``tile`` tiles one at a time (for images too big for
    memory) and blend them linearly over ``overlap`` pixels. Tiling is exact when one tile covers the
    image, and only approximate otherwise: a tile's border sees padding instead of its neighbours, and
    the ResNet generator's instance norm normalises each tile with its own statistics, so tile colours
    can drift apart; keep tiles large (hundreds of pixels) for it. The StyleGAN2 (SinCUT) generator has
    no normalisation and tiles well.
    ``max_memory``: bytes a whole-image translation may take ("auto": ``memory_limit``; None: no check);
    above it a TooLargeError says which tile to use.
    """
    if not isinstance(image, Tensor) or image.dim() not in (3, 4):
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a (C, H, W) or (B, C, H, W) tensor in [-1, 1], got {got}")
    multiple = multiple or getattr(G, "multiple", 4)
    if tile is not None:
        _check_tiling(tile, overlap, multiple)
    single = image.dim() == 3
    x = image[None] if single else image  # (B, C, H, W)
    device = next(G.parameters()).device
    h, w = x.shape[-2:]
    x = pad_to_multiple(x.to(device, torch.float32), multiple)  # (B, C, H', W')
    if tile is None or (tile >= x.shape[-2] and tile >= x.shape[-1]):
        if max_memory is not None and x.shape[-2] * x.shape[-1] > PROBE**2:
            check_memory(G, h, w, len(x), None if max_memory == "auto" else max_memory)
        out = G(x)
    else:
        out = _translate_tiled(G, x, tile, overlap)
    out = out[..., :h, :w].to(image.device)  # crop the padding back off
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------
# checkpoints


def _find_pretrained(name: str) -> Path | None:
    """The downloaded folder of an authors' model listed in the catalog (e.g. "horse2zebra_cut_pretrained")."""
    from cutlib.data.catalog import load_catalog
    from cutlib.paths import data_root

    for entry in load_catalog().values():
        if entry["kind"] == "pretrained" and name in [m["name"] for m in entry.get("models", [])]:
            return data_root() / entry["name"] / name
    return None


def load_generator(checkpoint: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The generator stored in ``checkpoint``, in eval mode on ``device`` ("auto": cuda if available).

    Accepts a run folder or its checkpoint.pt (keys "G" and "config"), an epoch snapshot
    epochs/G_epochNNN.pt (the same keys), the authors' latest_net_G.pth or a folder holding it, or
    the name of an authors' model of the catalog once downloaded (e.g. horse2zebra_cut_pretrained).
    """
    from cutlib import config as C
    from cutlib.networks import build_generator
    from cutlib.pretrained import load_reference_generator

    path = Path(checkpoint).expanduser()
    pretrained = None if path.exists() else _find_pretrained(str(checkpoint))
    if pretrained is not None:
        path = pretrained
        if not path.exists():
            raise FileNotFoundError(f"the authors' model {checkpoint!r} is not downloaded yet (looked in {path}); "
                                    "run: python -m cutlib download cut_pretrained")
    if path.is_dir():
        found = [path / name for name in (CHECKPOINT, REFERENCE_FILE) if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither {CHECKPOINT} (a cutlib run folder) nor {REFERENCE_FILE} "
                                    "(an authors' checkpoint folder); pass one of those files or folders")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass a run folder, its {CHECKPOINT}, an "
                                f"epochs/G_epochNNN.pt snapshot or an authors' {REFERENCE_FILE}")
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. Expected a cutlib run's {CHECKPOINT}, an epochs/G_epochNNN.pt snapshot "
                              f"or the authors' {REFERENCE_FILE}") from err
    if isinstance(state, Mapping) and "G" in state and "config" in state:  # ours: checkpoint or epoch snapshot
        cfg = C.from_dict(state["config"])
        if cfg.model == "swapae":  # E and G: x -> G(E(x)), or another image's texture (SwapTranslator.set_texture)
            from cutlib.models.swapae import Encoder, Generator, SwapTranslator

            if "E" not in state:
                raise ValueError(f"{path} holds a Swapping Autoencoder's G without its encoder E (a snapshot of an older "
                                 f"cutlib): translate with the run's {CHECKPOINT} instead")
            E, G = Encoder(cfg.ngf, cfg.structure_nc, cfg.texture_nc, cfg.input_nc), Generator(cfg.ngf, cfg.structure_nc, cfg.texture_nc, cfg.output_nc)
            E.load_state_dict(state["E"])
            G.load_state_dict(state["G"])
            G = SwapTranslator(E, G, cfg.crop_size, cfg.input_nc)
        elif cfg.model == "spade":  # colour label maps -> photos (cutlib/models/spade.py)
            from cutlib.models.spade import spade_generator

            G = spade_generator(cfg)
            G.load_state_dict(state["G"])
        else:
            G = build_generator(cfg)
            G.load_state_dict(state["G"])
    elif isinstance(state, Mapping) and any(str(k).removeprefix("module.").startswith("model.") for k in state):
        G = load_reference_generator(state)  # the authors' key layout model.<index>.<...>
    else:
        keys = list(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path} is not a generator checkpoint: expected a cutlib checkpoint (keys 'G' and 'config') "
                         f"or the authors' layout (keys 'model.<index>...'), found {keys}")
    return G.to(resolve_device(device)).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# folders and the command line


def _to_pil(x: Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] -> RGB (C = 3) or grayscale (C = 1) PIL image."""
    arr = to_uint8(x).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def output_paths(paths: list[Path], root: Path, output: Path, keep_extension: bool = False) -> list[Path]:
    """Where each translated image goes: the input's path relative to ``root`` (sub-folders
    mirrored), as PNG unless ``keep_extension``. Two inputs landing on one file is an error."""
    out = []
    for p in paths:
        rel = Path(p.name) if root.is_file() else p.relative_to(root)
        out.append(output / (rel if keep_extension else rel.with_suffix(".png")))
    seen: dict[Path, Path] = {}
    for src, dst in zip(paths, out):
        if dst in seen:
            raise ValueError(f"{seen[dst]} and {src} would both be written to {dst}; use --format same to keep extensions")
        seen[dst] = src
    return out


def check_output(input: Path, output: Path) -> None:
    """Refuse an ``output`` that is an existing file, the input folder itself or a folder inside it
    (the translations would replace the inputs, or a rerun would translate its own outputs)."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is an existing file, not a folder: pass a folder (created if missing)")
    if input.is_dir():
        src, dst = input.resolve(), output.resolve()
        if dst == src or dst.is_relative_to(src):
            where = "is the input folder" if dst == src else f"is inside the input folder {input}"
            raise ValueError(f"--output {output} {where}: the translations would overwrite the inputs or be "
                             f"translated again by a rerun; choose an output folder outside {input}")


def _refuse_overwriting_inputs(paths: list[Path], targets: list[Path]) -> None:
    inputs = {p.resolve(): p for p in paths}
    for target in targets:
        if target.resolve() in inputs:
            raise ValueError(f"{target} would overwrite the input {inputs[target.resolve()]}: choose another --output "
                             "folder (translations never replace their inputs)")


def _save(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` atomically (a crash leaves no half-written file), in the suffix's format."""
    fmt = Image.registered_extensions()[path.suffix.lower()]
    extra = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **extra))


def translate_folder(G: nn.Module, input: str | Path, output: str | Path, load_size: int | None = None,
                     tile: int | None = None, overlap: int = 32, keep_extension: bool = False,
                     progress: bool = True, max_memory: float | None | str = "auto") -> list[Path]:
    """Translate every image under ``input`` (a file or a folder, recursive) into ``output``; returns the
    written files. Grayscale, palette and RGBA inputs are converted as in training (cutlib.data.load_image).

    Nothing is written when ``output`` would overwrite an input or lie inside the input folder, or (without
    ``tile``) when an image is too large to translate whole within ``max_memory`` (see translate_image).
    """
    from tqdm.auto import tqdm

    from cutlib.data import ImageFolder

    input, output = Path(input), Path(output)
    if load_size is not None and load_size < 1:
        raise ValueError(f"load_size must be a positive number of pixels, got {load_size}")
    check_output(input, output)
    data = ImageFolder(input, load_size=load_size, input_nc=G.input_nc)
    paths = [Path(p) for p in data.paths]
    targets = output_paths(paths, input, output, keep_extension)
    _refuse_overwriting_inputs(paths, targets)
    if tile is None and max_memory is not None:  # every image checked before the first is written
        limit = None if max_memory == "auto" else max_memory
        for path in paths:
            with Image.open(path) as img:  # the header only
                width, height = (load_size, load_size) if load_size else img.size
            check_memory(G, height, width, max_memory=limit, name=str(path))
    for i in tqdm(range(len(data)), desc="translate", unit="img", disable=not progress):
        fake = translate_image(G, data[i]["image"], tile=tile, overlap=overlap, max_memory=None)  # (C_out, H, W)
        targets[i].parent.mkdir(parents=True, exist_ok=True)
        _save(_to_pil(fake), targets[i])
    return targets


def cli(argv: list[str]) -> int:
    """``python -m cutlib translate --checkpoint CKPT --input FILE_OR_DIR --output DIR``."""
    p = argparse.ArgumentParser(prog="python -m cutlib translate",
                                description="Translate images of any size with a trained generator (ours or the authors').")
    p.add_argument("--checkpoint", required=True,
                   help=f"run folder, {CHECKPOINT}, epochs/G_epochNNN.pt, the authors' {REFERENCE_FILE} (or its folder), "
                        "or a downloaded authors' model name such as horse2zebra_cut_pretrained")
    p.add_argument("--input", required=True, help="an image file or a folder (searched recursively)")
    p.add_argument("--output", required=True, help="output folder; file names and sub-folders follow the input's")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto: cuda when available)")
    p.add_argument("--tile", type=int, default=None, help="translate in overlapping tiles of this side (a multiple of 4) to save memory")
    p.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles (default 32)")
    p.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="memory a whole-image translation may take; larger images are refused with the --tile to use "
                        "(default: half the memory available now)")
    p.add_argument("--load-size", type=int, default=None,
                   help="resize every input to this square size first, as the reference's test (default: keep each image's size)")
    p.add_argument("--format", choices=("png", "same"), default="png", help="png (default) or the input's own extension")
    p.add_argument("--texture", default=None, metavar="IMAGE",
                   help="Swapping Autoencoder runs: every input keeps its structure and takes this image's texture "
                        "(default: its own, i.e. the reconstruction)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        if args.max_memory is not None and args.max_memory <= 0:
            raise ValueError(f"--max-memory must be a positive number of GB, got {args.max_memory}")
        device = resolve_device(args.device)  # a bad device or --output fails before the checkpoint is read
        check_output(Path(args.input), Path(args.output))
        G = load_generator(args.checkpoint, device)
        if args.texture is not None:
            if not hasattr(G, "set_texture"):
                raise ValueError(f"--texture applies to Swapping Autoencoder runs only; {args.checkpoint} holds a generator G(x)")
            from cutlib.data import ImageFolder

            G.set_texture(ImageFolder(args.texture, input_nc=G.input_nc)[0]["image"])
        written = translate_folder(G, args.input, args.output, args.load_size, args.tile, args.overlap,
                                   keep_extension=args.format == "same", progress=not args.no_progress,
                                   max_memory="auto" if args.max_memory is None else args.max_memory * 1e9)
    except (ValueError, OSError) as err:  # OSError: a missing file, a full disk, a folder it may not write
        print(f"cutlib translate: {err}", file=sys.stderr)
        return 1
    print(f"translated {len(written)} image(s) into {args.output}")
    return 0
