"""Evaluating a run: FID/KID, and on the built-in datasets the scores against their ground truth
(cutlib.benchmarks; book/reference.md section 8).

    python -m cutlib evaluate RUN_DIR [--split test] [--extractor builtin|inception|random] [--epochs all|final]
writes RUN_DIR/eval.json with the final and the best epoch (papers often report only the best).
On a folder of real photos, "builtin" is the photo evaluator of cutlib.photos (an A-vs-B classifier
trained on the dataset's training photos): target rate, structure, and FID/KID in its features, with
the untranslated inputs' KID beside them. Those are NOT comparable with published Inception FIDs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cutlib import __version__
from cutlib.benchmarks import BuiltinEvaluator, benchmark_scores, load_evaluator
from cutlib.data.splits import benchmark_of, load_split
from cutlib.data.synthetic import BUILTIN
from cutlib.device import resolve_device
from cutlib.files import write_text
from cutlib.images import to_uint8
from cutlib.metrics import (
    FeatureExtractor,
    FewImagesWarning,
    RandomConvExtractor,
    extractor_record,
    feature_statistics,
    frechet_distance,
    few_images_message,
    image_features,
    kid,
)
from cutlib.inception import InceptionExtractor
from cutlib.photos import PhotoClassifier, load_photo_classifier, translation_scores
from cutlib.runs import CHECKPOINT, EPOCHS_DIR, EVAL_FILE, load_checkpoint, load_run, snapshot_networks
from cutlib.swaps import evaluate_swaps, swap_data

EXTRACTORS = ("builtin", "inception", "random")


METRICS = {  # name: (better, what)
    "fid": ("lower", "Frechet distance between the features of the outputs and the real images of domain B"),
    "kid_mean": ("lower", "KID (unbiased MMD^2, cubic kernel) between the same features, mean over subsets"),
    "kid_std": (None, "standard deviation of KID over the subsets"),
    "preservation_iou": ("higher", "IoU of the input's animal mask and the animal segmented in the output"),
    "stripe_score": ("higher", "mean probability of 'striped animal' over the input's animal pixels"),
    "background_l1": ("lower", "mean |output - input| outside the input's animal, pixels in [0, 1]"),
    "target_l1": ("lower", "mean |output - true striped scene (testA_target)|, pixels in [0, 1]"),
    "animal_fraction": (None, "mean fraction of animal pixels in the outputs (paper Fig. 15)"),
    "animal_fraction_A": (None, "mean fraction of animal pixels in the inputs (ground truth)"),
    "animal_fraction_B": (None, "mean fraction of animal pixels in the real images of B (ground truth)"),
    "size_w1_A": (None, "Wasserstein-1 distance of the outputs' animal fractions to A's (small: sizes kept)"),
    "size_w1_B": (None, "Wasserstein-1 distance of the outputs' animal fractions to B's (small: sizes matched to B)"),
    "seg_pixel_acc": ("higher", "pixel accuracy of the segmented outputs against the input labels (Table 1 pixAcc)"),
    "seg_class_acc": ("higher", "mean class accuracy (Table 1 classAcc)"),
    "seg_mean_iou": ("higher", "mean IoU (Table 1 'mAP')"),
    "target_rate": ("higher", "fraction of the outputs the photo classifier assigns to domain B (real photos)"),
    "structure": ("higher", "SSIM of the blurred grey input and output (1: layout kept; real photos)"),
    "target_rate_inputs": (None, "fraction of the untranslated inputs the photo classifier assigns to B (its false alarms)"),
    "kid_inputs": (None, "KID of the untranslated inputs against real B, same features: a translation towards B is below it"),
    **{f"swap_{k}{d}": v for d, (a, b) in {"": ("A", "B"), "_BA": ("B", "A")}.items() for k, v in {
        "structure_iou": ("higher", f"swap {a} structure + {b} texture: IoU of its animal with the structure source's mask"),
        "texture_score": ("higher", f"swap {a} structure + {b} texture: probability of {b}'s coat over the animal"),
        "hybrid_l1": ("lower", f"swap {a} structure + {b} texture: mean |output - the renderer's true hybrid|")}.items()},
    "rec_l1": ("lower", "mean |G(E(x)) - x| of the reconstructions of both domains, pixels in [0, 1]"),
    "rec_psnr": ("higher", "PSNR (dB) of the reconstructions G(E(x)) of both domains"),
}
PHOTO_NOTE = ("photo evaluator: a small A-vs-B classifier trained here on the dataset's training photos; its FID/KID "
              "are in its own features and are NOT comparable with published (Inception) FIDs")


@torch.no_grad()
def translate_images(model, inputs: Tensor, textures: Tensor | None = None, batch_size: int = 16) -> Tensor:
    """G(x) for inputs (N, 3, S, S) in [0, 1] -> outputs in [0, 1], rounded to 8 bits as if saved as PNG files.
    ``textures`` (M, 3, S, S): swap instead (model.swap): input i keeps its structure and wears the texture
    of textures[i mod M] (the Swapping Autoencoder's translation)."""
    device = next(model.G.parameters()).device
    if textures is None:
        outs = [model.translate(b.to(device) * 2 - 1).float().cpu() for b in inputs.split(batch_size)]
    else:
        textures = textures[torch.arange(len(inputs)) % len(textures)]  # (N, 3, S, S)
        outs = [model.swap(s.to(device) * 2 - 1, t.to(device) * 2 - 1).float().cpu()
                for s, t in zip(inputs.split(batch_size), textures.split(batch_size))]
    return to_uint8(torch.cat(outs)).float() / 255


def swap_metrics(model, swaps: dict, evaluator: BuiltinEvaluator) -> dict:
    """The Swapping Autoencoder's scores against the ground truth (cutlib.swaps): A's structure with B's coat
    (swap_*), B's structure with A's coat (swap_*_BA), and the reconstructions (rec_l1, rec_psnr)."""
    scores = evaluate_swaps(model, swaps, evaluator)
    out = {f"swap_{k}": v for k, v in scores["AB"].items()}
    out.update({f"swap_{k}_BA": v for k, v in scores["BA"].items()})
    return {**out, **scores["reconstruction"]}


def translate_run(run_dir: str | Path, split: str = "test", device: str | None = None) -> dict:
    """The final generator of a run applied to ``split``: ``load_split``'s dict plus "outputs" (N, 3, S, S) in [0, 1],
    "dataset_dir", "benchmark" and "config" (the run's TrainConfig). For pictures; ``evaluate_run`` scores them."""
    from cutlib.data import resolve_dataset

    cfg, model = load_run(run_dir, device=resolve_device(device))
    dataset_dir = resolve_dataset(cfg.dataset, size=cfg.load_size)
    data = load_split(dataset_dir, split, cfg.crop_size)
    return {**data, "outputs": translate_images(model, data["inputs"]), "dataset_dir": dataset_dir,
            "benchmark": benchmark_of(dataset_dir), "config": cfg}


def run_checkpoints(run_dir: str | Path, epochs: str = "all") -> list[dict]:
    """The generators saved in a run: epochs/G_epochNNN.pt snapshots (epochs="all") and the final checkpoint.pt.

    Each item: {"checkpoint", "epoch", "step", "final"}; a snapshot with the final step is the final one.
    """
    if epochs not in ("all", "final"):
        raise ValueError(f"epochs must be 'all' or 'final', got {epochs!r}")
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"no {CHECKPOINT} in {run_dir}: expected a run folder written by python -m cutlib train")
    final = load_checkpoint(run_dir / CHECKPOINT)
    partial = final.get("batch_in_epoch", 0) > 0
    items = [{"checkpoint": CHECKPOINT, "epoch": final["epoch"] if partial else final["epoch"] - 1,
              "step": final["step"], "final": True, "partial_epoch": partial}]
    if epochs == "all":
        for path in sorted((run_dir / EPOCHS_DIR).glob("G_epoch*.pt")):
            snap = load_checkpoint(path)
            if snap["step"] != final["step"]:
                items.append({"checkpoint": f"{EPOCHS_DIR}/{path.name}", "epoch": snap["epoch"], "step": snap["step"],
                              "final": False, "partial_epoch": False})
    return sorted(items, key=lambda item: item["step"])


def make_extractor(name: str, benchmark: str | None, evaluator: BuiltinEvaluator | PhotoClassifier | None, device: str,
                   seed: int = 0) -> FeatureExtractor:
    """The FID/KID feature extractor called ``name`` (builtin, inception or random)."""
    if name == "inception":
        return InceptionExtractor(device=device)  # raises InceptionWeightsNotFound with what to do
    if name == "random":
        return RandomConvExtractor(dims=64, seed=seed).to(device)
    if name == "builtin":
        if evaluator is None:
            raise ValueError("the built-in extractor needs a built-in dataset "
                             f"({', '.join(BUILTIN)}) or the photo classifier of a folder dataset; none was given: use "
                             "--extractor inception (standard, comparable with papers) or --extractor random (offline; "
                             "compare runs with each other only)")
        return evaluator
    raise ValueError(f"extractor must be one of {list(EXTRACTORS)}, got {name!r}")


def check_writable(folder: Path) -> None:
    """Raise PermissionError, before any work, when ``folder`` cannot take eval.json (a file is really
    created and removed: permission bits say nothing to root, nor about read-only mounts)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{EVAL_FILE}.check-"):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write {EVAL_FILE} into {folder} ({err.strerror or err}): make the run folder "
                              "writable, or copy the run elsewhere and evaluate the copy") from None


def _loud(call, *args):
    """call(*args), its warnings re-emitted to the caller and returned as messages (they go into eval.json)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(*args)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    return result, [str(w.message) for w in caught]


def evaluate_run(run_dir: str | Path, split: str = "test", extractor: str = "builtin", device: str | None = None,
                 epochs: str = "all", best_by: str = "fid", seed: int = 0, evaluator_steps: int | None = None,
                 progress: bool = False) -> dict:
    """Evaluate the generators of a run on ``split`` and write RUN_DIR/eval.json (atomically); returns its contents.

    Every saved epoch (``epochs="all"``) or the final checkpoint only: FID and KID with ``extractor``,
    and on built-in datasets the benchmark's ground-truth scores. "final" and "best" (by ``best_by``)
    are reported side by side. ``seed`` seeds KID's subsets and the built-in evaluator; ``evaluator_steps``
    its training steps (None: 300 for the built-in segmenters, 600 for the photo classifier).
    """
    from cutlib.data import resolve_dataset

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {list(EXTRACTORS)}, got {extractor!r}")
    if best_by not in METRICS or METRICS[best_by][0] is None:
        raise ValueError(f"best_by must be a metric with a direction: {[k for k, v in METRICS.items() if v[0]]}, got {best_by!r}")
    device = resolve_device(device)
    checkpoints = run_checkpoints(run_dir, epochs)  # (fails first if there is no run)
    check_writable(run_dir)  # a read-only run folder fails here, not after all the work
    cfg, model = load_run(run_dir, device=device)
    nets = snapshot_networks(model)  # G (the Swapping Autoencoder: E and G); snapshots overwrite them below
    final_nets = {name: {k: v.clone() for k, v in getattr(model, name).state_dict().items()} for name in nets}
    if cfg.model == "sincut":
        raise ValueError(f"{run_dir} is a SinCUT run (one image per domain): FID/KID over a test set do not apply; "
                         "evaluate unpaired runs (cut, fastcut, cyclegan)")
    dataset_dir = resolve_dataset(cfg.dataset, size=cfg.load_size)
    benchmark = benchmark_of(dataset_dir)
    size = cfg.crop_size
    # build the extractor first: a missing Inception file fails here, before any work
    if extractor != "builtin":
        features_of = make_extractor(extractor, benchmark, None, device, seed)
    evaluator = load_evaluator(dataset_dir, size, seed, evaluator_steps or 300, progress=progress).to(device) if benchmark else None
    if benchmark is None and extractor == "builtin":  # real photos: the classifier (trained once, cached)
        evaluator = load_photo_classifier(dataset_dir, seed=seed, steps=evaluator_steps or 600, progress=progress).to(device)
    photo = evaluator if isinstance(evaluator, PhotoClassifier) else None
    if extractor == "builtin":
        features_of = make_extractor(extractor, benchmark, evaluator, device, seed)

    data, notes = _loud(load_split, dataset_dir, split, size)  # unreadable images: skipped, named
    few = few_images_message(len(data["real"]), len(data["inputs"]))
    if few is not None:
        warnings.warn(few, FewImagesWarning, stacklevel=2)
        notes.append(few)
    real_features = image_features(data["real"], features_of)
    real_stats = feature_statistics(real_features)
    # KID subsets of half the smaller set (at most 1000): with subsets as large as the set, every
    # subset is the whole set and the std over subsets is 0, which says nothing
    kid_subset = max(2, min(1000, min(len(data["real"]), len(data["inputs"])) // 2))
    inputs_scores = {}  # real photos: where the untranslated inputs stand, the same for every checkpoint
    if photo is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewImagesWarning)  # said once above
            inputs_scores["kid_inputs"] = kid(real_features, image_features(data["inputs"], features_of), num_subsets=100,
                                              subset_size=kid_subset, seed=seed)[0]
        inputs_scores["target_rate_inputs"] = float((photo.prob_b(data["inputs"]) >= 0.5).float().mean())
    swapping = hasattr(model, "swap")
    swaps = swap_data(dataset_dir, n=min(64, len(data["inputs"])), size=size) if swapping and benchmark == "stripes" else None
    results = []
    for item in tqdm(checkpoints, disable=not progress, desc=f"evaluating {run_dir.name}"):
        snapshot = final_nets if item["final"] else load_checkpoint(run_dir / item["checkpoint"], device)
        for name in nets:
            getattr(model, name).load_state_dict(snapshot[name])
        model.eval()
        # A -> B: G(x); the Swapping Autoencoder's: the structure of each input with the texture of a real B image
        outputs = translate_images(model, data["inputs"], data["real"] if swapping else None)
        fake_features = image_features(outputs, features_of)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewImagesWarning)  # said once above
            kid_mean, kid_std = kid(real_features, fake_features, num_subsets=100, subset_size=kid_subset, seed=seed)
        metrics = {"fid": frechet_distance(*real_stats, *feature_statistics(fake_features)), "kid_mean": kid_mean, "kid_std": kid_std}
        metrics.update(benchmark_scores(benchmark, evaluator, outputs, data))
        if photo is not None:
            metrics.update(translation_scores(photo, outputs, data["inputs"]), **inputs_scores)
        if swapping and benchmark == "stripes":  # swaps both ways against the renderer's true hybrids
            metrics.update(swap_metrics(model, swaps, evaluator))
        results.append({**item, "metrics": metrics})

    final = next(r for r in results if r["final"])
    sign = 1 if METRICS[best_by][0] == "lower" else -1
    best = min(results, key=lambda r: sign * r["metrics"][best_by])
    num = {"inputs": len(data["inputs"]), "real": len(data["real"])}
    names = list(final["metrics"])
    report = {
        "format": "cutlib-eval-1",
        "run_dir": str(run_dir),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "dataset_dir": str(dataset_dir),
        "benchmark": benchmark,
        "split": split,
        "image_size": size,
        "num_images": num,
        "seed": seed,
        "run_seed": cfg.seed,
        "extractor": extractor_record(features_of),
        "kid": {"num_subsets": 100, "subset_size": kid_subset},
        "evaluator": (None if evaluator is None else
                      {"name": photo.name, "classes": ["A", "B"], "note": PHOTO_NOTE, **photo.info} if photo is not None else
                      {"name": evaluator.name, "classes": evaluator.classes, **evaluator.info}),
        "final": final,
        "best": {**best, "chosen_by": best_by, "better": METRICS[best_by][0]},
        "epochs": results,
        "metric_info": {k: {"better": METRICS[k][0], "what": METRICS[k][1],
                            "num_images": ({"real": num["real"], "fake": num["inputs"]} if k.startswith(("fid", "kid")) else num["inputs"])}
                        for k in names},
        "warnings": notes,
        "note": "final = the last weights of the run; best = the epoch with the best "
                f"{best_by} on this split, an optimistic pick (papers often report only the best epoch)",
        "cutlib_version": __version__,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_text(run_dir / EVAL_FILE, json.dumps(report, indent=1) + "\n")
    return report


# ----------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutlib evaluate", description="Evaluate a run folder; writes RUN_DIR/eval.json.")
    p.add_argument("run_dir", help="a run folder written by python -m cutlib train (holds checkpoint.pt)")
    p.add_argument("--split", default="test", choices=["test", "train"], help="which split to translate (default test)")
    p.add_argument("--extractor", default="builtin", choices=list(EXTRACTORS),
                   help="FID/KID features: builtin (built-in datasets, offline), inception (standard; needs the "
                        "pytorch-fid weights file), random (offline; compare runs only). Default builtin")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--epochs", default="all", choices=["all", "final"], help="every saved epoch and the final one, or the final only")
    p.add_argument("--best-by", default="fid", help="the metric that picks the best epoch (default fid)")
    p.add_argument("--evaluator-steps", type=int, default=None,
                   help="training steps of the built-in evaluator when it is not cached yet (default: 300 for the "
                        "built-in segmenters, 600 for the photo classifier of a folder dataset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _summary(report: dict) -> str:
    lines = [f"{report['run_dir']}: {report['split']} split, {report['num_images']['inputs']} images, extractor {report['extractor']['name']}"]
    for which in ("final", "best"):
        r = report[which]
        values = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items() if isinstance(v, float) and math.isfinite(v))
        lines.append(f"  {which:<5} epoch {r['epoch']} (step {r['step']}): {values}")
    ev = report.get("evaluator") or {}
    if "note" in ev:
        acc = ev.get("test_accuracy")
        lines.append(f"  {ev['note']}; its balanced accuracy on the held-out test photos: "
                     + (f"{acc:.2f}" if acc is not None else "unknown (no testA/testB)"))
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate_run(args.run_dir, split=args.split, extractor=args.extractor, device=args.device,
                              epochs=args.epochs, best_by=args.best_by, evaluator_steps=args.evaluator_steps,
                              progress=not args.no_progress)
    except (ValueError, OSError) as err:  # InceptionWeightsNotFound is a FileNotFoundError; read-only, disk full
        print(f"cutlib evaluate: {err}", file=sys.stderr)
        return 1
    print(_summary(report))
    print(f"written: {Path(args.run_dir) / EVAL_FILE}")
    return 0
