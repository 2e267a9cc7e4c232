"""Each chapter's time from a fresh state: papermill, one notebook at a time, empty data and runs folders.

    python tools/chapter_times.py [NOTEBOOK ...] [--threads 1] [--json FILE] [--keep DIR]

This is the measurement behind the CPU times of the README's chapter table. Every notebook runs in its
own `python -m papermill` process with its default parameters, ``CUTLIB_DATA`` and ``CUTLIB_RUNS``
pointing at new empty folders (so it generates its data and trains its short runs, nothing cached) and
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to --threads (1 by default: what each `make test` worker
gets; 0 leaves torch's default of one thread per core). Chapter 10's real photos come from
``CUTLIB_PHOTOS`` as under `make test`: when it is unset, ../shared/data/horse2zebra_cpu beside the
repository if present (the Makefile's default; without photos chapter 10 shows its shipped results
only). Notebooks run one after the other, never two at once, so that each has the machine to itself.
Prints one line per notebook (wall seconds, the slowest cell and its seconds from papermill's per-cell
durations, ok or the error's last line) and the machine; --json writes the same as JSON. A benchmark that prints figures, not a test: a failed notebook is
reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PHOTOS = ROOT.parent / "shared" / "data" / "horse2zebra_cpu"  # the Makefile's default CUTLIB_PHOTOS


def chapters(folder: Path = NOTEBOOKS) -> list[Path]:
    """The course's notebooks in the README's order: the numbered chapters, then the papermill runner."""
    numbered = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    runner = folder / "run_experiment.ipynb"
    return numbered + ([runner] if runner.exists() else [])


def machine() -> dict:
    """What the figures were measured on: cutlib.bench's machine_info and the CPU's bf16 flags."""
    from cutlib.bench import machine_info
    from cutlib.device import cpu_flags

    flags = cpu_flags()
    return {**machine_info("cpu"), "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}), "avx512f": "avx512f" in flags}


def photos() -> str:
    """CUTLIB_PHOTOS as `make test` sets it: the variable if set, else the course machines' photo slice if present."""
    return os.environ.get("CUTLIB_PHOTOS") or (str(PHOTOS) if (PHOTOS / "trainA").is_dir() else "")


def slowest_cell(executed: Path) -> tuple[int | None, float | None]:
    """(index, seconds) of the code cell papermill timed longest in an executed notebook; (None, None) if none."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None, None
    durations = [(i, c.get("metadata", {}).get("papermill", {}).get("duration")) for i, c in enumerate(cells)]
    durations = [(i, d) for i, d in durations if isinstance(d, (int, float))]
    return max(durations, key=lambda t: t[1]) if durations else (None, None)


def time_notebook(notebook: Path, threads: int, work: Path, timeout: float) -> dict:
    """Runs one notebook through papermill in a fresh process with empty CUTLIB_DATA / CUTLIB_RUNS under ``work``."""
    work.mkdir(parents=True)
    env = dict(os.environ, CUTLIB_DATA=str(work / "data"), CUTLIB_RUNS=str(work / "runs"), PYTHONUNBUFFERED="1")
    env.setdefault("CUTLIB_PHOTOS", photos())
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads > 0:
            env[name] = str(threads)
        else:
            env.pop(name, None)
    executed = work / notebook.name
    command = [sys.executable, "-m", "papermill", str(notebook), str(executed), "-k", "python3",
               "--cwd", str(notebook.parent), "--no-progress-bar"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        rc, error = done.returncode, done.stderr.strip().splitlines()[-1:] if done.returncode else []
    except subprocess.TimeoutExpired:
        rc, error = None, [f"stopped after {timeout:.0f} s (--timeout)"]
    seconds = time.perf_counter() - start
    cell, cell_seconds = slowest_cell(executed)
    return {"notebook": notebook.name, "seconds": round(seconds, 1), "ok": rc == 0,
            "error": error[0] if error else None, "slowest_cell": cell,
            "slowest_cell_seconds": None if cell_seconds is None else round(cell_seconds, 1)}


def minutes(seconds: float) -> str:
    """'2 min 58 s' or '34 s', as the README writes times."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter and the runner, in order")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for each notebook (0: torch's default)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before a notebook is stopped")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", type=Path, help="keep each notebook's executed copy and folders here (a new folder)")
    args = p.parse_args(argv)
    notebooks = args.notebooks or chapters()
    for nb in notebooks:
        if not nb.is_file():
            p.error(f"{nb}: no such notebook")
    if args.keep is not None and args.keep.exists():
        p.error(f"--keep {args.keep}: already exists; name a new folder")

    info = {"date": datetime.date.today().isoformat(), "threads": args.threads, "photos": photos() or None, **machine()}
    print(f"{info['date']}, {info['cpu']}, {info['cpu_count']} cores, bf16 flags {info['bf16_flags'] or 'none'}, "
          f"torch {info['torch']}, OMP_NUM_THREADS={args.threads or 'default'}, CUTLIB_PHOTOS={info['photos'] or '(none)'}; "
          "one notebook at a time", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="chapter_times_") as tmp:
        base = args.keep if args.keep is not None else Path(tmp)
        for nb in notebooks:
            row = time_notebook(nb.resolve(), args.threads, base / nb.stem, args.timeout)
            rows.append(row)
            where = "" if row["slowest_cell"] is None else f"  slowest cell {row['slowest_cell']}: {row['slowest_cell_seconds']} s"
            status = "ok" if row["ok"] else f"FAILED: {row['error']}"
            print(f"{row['notebook']:<34} {minutes(row['seconds']):>12}{where}  {status}", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'all':<34} {minutes(total):>12}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "notebooks": rows, "total_seconds": round(total, 1)}, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
