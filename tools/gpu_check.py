"""The helpers of tools/gpu_check.sh: what to bring to a GPU machine without internet, and the summary.

    python tools/gpu_check.py bundle [--python 3.12] [--photos 300] [--data DIR] [--out .gpu_bundle]
        on a machine with internet: the wheels of the packages the check needs beyond torch (papermill,
        ipykernel, nbformat at the pins of pyproject.toml, with what they need, for the GPU machine's
        Python) and a slice of real horse2zebra photos, in one folder to copy beside the checkout
    python tools/gpu_check.py missing WHEELS_DIR
        the wheels in WHEELS_DIR whose distribution this Python does not have (gpu_check.sh installs
        only those, so the machine's own packages are never shadowed)
    python tools/gpu_check.py summary OUT WORK
        OUT/gpu_check.json from the step outputs gpu_check.sh left in OUT and WORK
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_RUN_ITERATIONS = 400 * 1334  # the paper's horse2zebra schedule: 400 epochs of 1,334 images, batch 1
GOAL_HOURS = 4.0  # a full paper-scale run on one H200
RUNNER_PACKAGES = ("papermill", "ipykernel", "nbformat")  # the papermill step; torch and the rest are the machine's
MARKER = "BUNDLE.txt"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


# ----------------------------------------------------------------- bundle
def pins(names=RUNNER_PACKAGES, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==version`` of each of ``names`` as pyproject.toml pins it."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    found = {re.split(r"[=<>~!\[ ]", d, maxsplit=1)[0].lower(): d for d in deps}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"pyproject.toml pins none of {missing}: add them to [project] dependencies")
    return [found[n] for n in names]


def photo_slice(src: Path, dest: Path, n_train: int, n_test: int) -> dict[str, int]:
    """Copy the first ``n_train`` photos (sorted by name) of trainA/trainB and ``n_test`` of testA/testB."""
    if not (src / "trainA").is_dir() or not (src / "trainB").is_dir():
        raise SystemExit(f"{src} has no trainA/ and trainB/: give --data a horse2zebra folder (trainA/ trainB/ testA/ testB/)")
    counts = {}
    for split, n in (("trainA", n_train), ("trainB", n_train), ("testA", n_test), ("testB", n_test)):
        photos = sorted(p for p in (src / split).glob("*") if p.suffix.lower() in PHOTO_SUFFIXES)[:n] \
            if (src / split).is_dir() else []
        (dest / split).mkdir(parents=True)
        for p in photos:
            shutil.copy2(p, dest / split / p.name)
        counts[split] = len(photos)
    if not counts["trainA"] or not counts["trainB"]:
        raise SystemExit(f"{src}/trainA or trainB holds no .jpg/.png photos")
    return counts


def download_wheels(dest: Path, python: str, requirements: list[str]) -> list[Path]:
    """Binary wheels of ``requirements`` and all they need, for CPython ``python`` on x86-64 Linux."""
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                 "manylinux1_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", *[a for p in platforms for a in ("--platform", p)], "-d", str(dest), *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()[-3:]
        raise SystemExit(f"pip download failed (needs a package index: run the bundle on a machine with internet):\n"
                         + "\n".join(errors))
    return sorted(dest.glob("*.whl"))


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def bundle(out: Path, python: str, data: Path, n_train: int, n_test: int) -> dict:
    """Build the bundle in ``out.partial`` and put it in place of ``out`` only when it is complete."""
    if out.exists() and not (out / MARKER).is_file():
        raise SystemExit(f"{out} exists and is not a bundle made by this tool (no {MARKER}): give another --out")
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        photos = photo_slice(data, part / "horse2zebra", n_train, n_test)  # the local input first: fails fast
        wheels = download_wheels(part / "wheels", python, pins())
        info = {"python": python, "wheels": len(wheels), "photos": photos, "source": str(data),
                "wheels_mb": round(size_mb(part / "wheels"), 1), "photos_mb": round(size_mb(part / "horse2zebra"), 1)}
        (part / MARKER).write_text("Made by tools/gpu_check.py bundle; bash tools/gpu_check.sh uses it.\n"
                                   + json.dumps(info, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    put_in_place(part, out)
    return info


def put_in_place(new: Path, out: Path) -> None:
    """Rename the complete folder ``new`` to ``out``; a previous ``out`` stays whole until then."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------- missing
def missing_wheels(folder: Path) -> list[Path]:
    """The wheels in ``folder`` whose distribution is not installed for this Python."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder of wheels")
    out = []
    for wheel in sorted(folder.glob("*.whl")):
        try:
            metadata.distribution(wheel.name.split("-")[0])
        except metadata.PackageNotFoundError:
            out.append(wheel)
    return out


# ----------------------------------------------------------------- summary
def last_json_object(text: str) -> dict | None:
    """The JSON object printed last in ``text`` (the train command prints its summary so), or None."""
    for match in reversed(list(re.finditer(r"^\{", text, flags=re.M))):
        try:
            return json.loads(text[match.start():].strip())
        except json.JSONDecodeError:
            continue
    return None


def throughput(run: Path, printed: str) -> dict | None:
    """Seconds per iteration of a training run, the step alone (median of the logged steps after the first
    two) and end to end (the run's seconds over its steps: data, samples, checkpoints, start-up included),
    with each projected to a full paper-scale run."""
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    if len(rows) < 3:
        return None
    step_s = statistics.median(r["time"] for r in rows[2:])
    out = {"steps": rows[-1]["step"], "median_step_s": round(step_s, 4),
           "projected_full_run_hours_step": round(FULL_RUN_ITERATIONS * step_s / 3600, 2)}
    summary = last_json_object(printed)
    if summary and summary.get("step") and summary.get("seconds"):
        per_iter = summary["seconds"] / summary["step"]
        out.update(end_to_end_s_per_iter=round(per_iter, 4), run_seconds=summary["seconds"],
                   projected_full_run_hours=round(FULL_RUN_ITERATIONS * per_iter / 3600, 2))
        out["goal_4h_met"] = out["projected_full_run_hours"] <= GOAL_HOURS
    return out


BENCH_KEYS = ("preset", "precision", "channels_last", "compile", "median_s", "cpu_median_s", "warmup_s", "memory_mb",
              "speedup_vs_fp32", "memory_vs_fp32")


def summarise(out: Path, work: Path) -> dict:
    steps = {}
    tsv = work / "steps.tsv"
    for line in tsv.read_text().splitlines() if tsv.is_file() else []:
        if line.strip():
            sid, what, seconds = line.split("\t")
            text = (work / f"step{sid}.txt").read_text(errors="replace") if (work / f"step{sid}.txt").is_file() else ""
            steps[sid] = {"result": what, "seconds": int(seconds), "tail": text.strip().splitlines()[-4:]}
    summary = {"machine": (work / "gpu.txt").read_text().strip().splitlines() if (work / "gpu.txt").is_file() else [],
               "steps": steps}
    for f in sorted(out.glob("bench*.json")):  # bench-PRESET.json, bench-compile.json
        summary[f.stem] = [{k: r.get(k) for k in BENCH_KEYS} for r in json.loads(f.read_text())["results"]]
    printed = (work / "step2.txt").read_text(errors="replace") if (work / "step2.txt").is_file() else ""
    summary["h2z_cut"] = throughput(work / "h2z_cut", printed)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="wheels and photos for a GPU machine without internet")
    b.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="the GPU machine's Python, X.Y (default: this one's)")
    b.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "horse2zebra_cpu",
                   help="a horse2zebra folder (trainA/ trainB/ testA/ testB/)")
    b.add_argument("--photos", type=int, default=300, help="training photos per side (default 300)")
    b.add_argument("--test-photos", type=int, default=20, help="test photos per side (default 20)")
    b.add_argument("--out", type=Path, default=ROOT / ".gpu_bundle")
    m = sub.add_parser("missing", help="the wheels of a folder whose distribution is not installed")
    m.add_argument("wheels", type=Path)
    s = sub.add_parser("summary", help="OUT/gpu_check.json from the outputs of gpu_check.sh")
    s.add_argument("out", type=Path)
    s.add_argument("work", type=Path)
    args = p.parse_args(argv)
    if args.command == "bundle":
        if not re.fullmatch(r"3\.\d+", args.python):
            raise SystemExit(f"--python {args.python!r}: give the GPU machine's Python as X.Y, e.g. 3.12")
        if args.photos < 1 or args.test_photos < 0:
            raise SystemExit("--photos must be at least 1 and --test-photos at least 0")
        info = bundle(args.out, args.python, args.data, args.photos, args.test_photos)
        print(f"{args.out}: {info['wheels']} wheels ({info['wheels_mb']} MB) for Python {info['python']}, "
              f"photos {info['photos']} ({info['photos_mb']} MB) from {info['source']}")
    elif args.command == "missing":
        print("\n".join(str(w) for w in missing_wheels(args.wheels)))
    else:
        summary = summarise(args.out, args.work)
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
