"""Ablation grids (book/reference.md section 10): one papermill execution of ``notebooks/run_experiment.ipynb``
per (variant, seed), then one table of every run's ``eval.json`` (mean and spread over seeds).

A grid is a JSON file::

    {"out": "ablations_cpu",                      # relative: under runs_root(); or an absolute folder
     "seeds": [0, 1],
     "base": {"scale": "cpu", "max_steps": 400},  # parameters of run_experiment.ipynb shared by every run
     "variants": {"CUT": {"preset": "cut"},
                  "no identity": {"preset": "cut", "overrides": {"nce_idt": false}}}}

Run ``<out>/<variant>/seed<k>/run.ipynb`` has ``out_dir`` set to its folder. A run whose ``eval.json`` exists
is skipped; a crashed one resumes from its checkpoint (the runner resumes).
``python -m cutlib grid CONFIG [--jobs N] [--gpus 0,1] [--dry-run]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import os
import queue
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cutlib.paths import repo_root, runs_root
from cutlib.runner import RUNNER_ARGS, runner_config

GRID_KEYS = {"out": "output folder", "seeds": "list of integer seeds", "base": "parameters shared by every run",
             "variants": "dict: variant name -> parameters", "notebook": "runner notebook (optional)",
             "description": "free text (optional)"}
SET_BY_GRID = ("seed", "out_dir")  # parameters the grid sets per run
EVAL_FILE = "eval.json"


def default_notebook() -> Path:
    """The runner notebooks/run_experiment.ipynb (in a wheel: package data of cutlib.notebooks, see pyproject.toml)."""
    root = repo_root()
    folder = root / "notebooks" if root is not None else Path(__file__).resolve().parent / "notebooks"
    path = folder / "run_experiment.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"the grid's runner notebook {path} is missing; reinstall cutlib "
                                "or set \"notebook\" in the grid file to a copy of run_experiment.ipynb")
    return path


def notebook_parameters(notebook: str | Path) -> set[str]:
    """Names of the parameters cell of ``notebook`` (papermill's view of it)."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def _fail(path, key: str, expected: str, got) -> ValueError:
    return ValueError(f"grid file {path}: {key!r} must be {expected}, got {got!r}. Fix that key and run again.")


def load_grid(path: str | Path, gpus: list | None = None) -> dict:
    """Read and check a grid file (its runs too: check_runs, for ``gpus``); returns it, "out" and "notebook" absolute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist; pass a JSON file such as experiments/ablations_cpu.json")
    try:
        grid = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"grid file {path} is not valid JSON: {err}") from None
    if not isinstance(grid, dict):
        raise _fail(path, "(top level)", "a JSON object with keys " + ", ".join(GRID_KEYS), type(grid).__name__)
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"grid file {path}: unknown key(s) {unknown}; valid keys: " +
                         "; ".join(f"{k} ({v})" for k, v in GRID_KEYS.items()))
    for key in ("out", "seeds", "variants"):
        if key not in grid:
            raise ValueError(f"grid file {path}: missing key {key!r} ({GRID_KEYS[key]})")
    if not isinstance(grid["out"], str) or not grid["out"]:
        raise _fail(path, "out", "a folder name (relative to the runs folder) or an absolute path", grid["out"])
    seeds = grid["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _fail(path, "seeds", "a non-empty list of distinct integers", seeds)
    base, variants = grid.get("base", {}), grid["variants"]
    if not isinstance(base, dict):
        raise _fail(path, "base", "a dict of run_experiment.ipynb parameters", base)
    if not isinstance(variants, dict) or not variants:
        raise _fail(path, "variants", "a non-empty dict: variant name -> parameters", variants)
    notebook = Path(grid["notebook"]) if "notebook" in grid else default_notebook()
    if not notebook.is_absolute():
        notebook = (path.parent / notebook).resolve()
    if not notebook.is_file():
        raise _fail(path, "notebook", "an existing notebook", str(notebook))
    names = notebook_parameters(notebook)
    for where, params in [("base", base)] + [(f"variants.{k}", v) for k, v in variants.items()]:
        if not isinstance(params, dict):
            raise _fail(path, where, "a dict of parameters", params)
        if where != "base" and not re.fullmatch(r"[\w.+ -]+", where[9:]):
            raise _fail(path, where, "a name of letters, digits, spaces and _ . + - (it becomes a folder)", where[9:])
        for name, value in params.items():
            if name in SET_BY_GRID:
                raise _fail(path, f"{where}.{name}", f"left out (the grid sets {', '.join(SET_BY_GRID)} per run)", value)
            if name not in names:
                raise ValueError(f"grid file {path}: {where}.{name!r} is not a parameter of {notebook.name}; "
                                 f"valid parameters: {', '.join(sorted(names))}")
            if name == "evaluate" and value is not True:
                raise _fail(path, f"{where}.evaluate", "true (the grid collects eval.json)", value)
            if name == "overrides" and not isinstance(value, dict):
                raise _fail(path, f"{where}.overrides", "a dict of TrainConfig fields", value)
    out = Path(grid["out"])
    grid = {**grid, "base": base, "out": str(out if out.is_absolute() else runs_root() / out),
            "notebook": str(notebook), "source": str(path)}
    check_runs(grid, gpus)
    return grid


def check_runs(grid: dict, gpus: list | None = None) -> None:
    """What a dry run can check: every variant (base + its parameters; device cuda with ``gpus``) names a known
    extractor and makes a valid TrainConfig at the runner's scale. A ValueError names the likely grid key."""
    from cutlib.evaluate import EXTRACTORS

    for variant, own in grid["variants"].items():
        params = {**run_parameters(grid, variant, grid["seeds"][0], Path(grid["out"])), **({"device": "cuda"} if gpus else {})}
        try:
            if params.get("extractor", "auto") not in ("auto", *EXTRACTORS):
                raise ValueError(f"extractor must be one of {['auto', *EXTRACTORS]}, got {params['extractor']!r}")
            runner_config(**{k: v for k, v in params.items() if k in RUNNER_ARGS})
        except (ValueError, TypeError) as err:
            keys = [(f"variants.{variant}", own), ("base", grid.get("base", {}))]
            keys = [f"{w}.{k}" for w, p in keys for k in [f"overrides.{o}" for o in p.get("overrides", {})] + list(p)]
            key = next((k for k in keys if re.search(rf"\b{re.escape(k.split('.')[-1])}\b", str(err))), f"variants.{variant}")
            raise ValueError(f"grid file {grid.get('source', '')}: {key}: {err}. Fix that key and run again.") from None


def run_parameters(grid: dict, variant: str, seed: int, out_dir: Path) -> dict:
    """Base parameters, then the variant's (their "overrides" merged key by key), then seed and out_dir."""
    base, own = grid.get("base", {}), grid["variants"][variant]
    params = {**base, **own, "seed": seed, "out_dir": str(out_dir)}
    params["overrides"] = {**base.get("overrides", {}), **own.get("overrides", {})}
    return params


def plan_runs(grid: dict) -> list[dict]:
    """Every (variant, seed) of the grid: its folder, notebook parameters and whether its eval.json exists."""
    out, runs = Path(grid["out"]), []
    for variant in grid["variants"]:
        for seed in grid["seeds"]:
            folder = out / variant / f"seed{seed}"
            runs.append({"variant": variant, "seed": seed, "dir": str(folder),
                         "parameters": run_parameters(grid, variant, seed, folder),
                         "done": (folder / EVAL_FILE).is_file()})
    return runs


def execute_run(run: dict, notebook: str | Path, gpu: str | None = None, threads: int = 1) -> dict:
    """One papermill execution of ``notebook`` into <run dir>/run.ipynb (log in papermill.log) in a subprocess."""
    folder = Path(run["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    params = dict(run["parameters"])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the run sees one GPU, as cuda:0
        params["device"] = "cuda"
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(folder / "run.ipynb"),
           "-y", json.dumps(params), "-k", "python3", "--no-progress-bar", "--cwd", str(Path(notebook).parent)]
    start = time.perf_counter()
    with open(folder / "papermill.log", "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    ok = code == 0 and (folder / EVAL_FILE).is_file()
    return {**run, "status": "ok" if ok else "failed", "returncode": code, "gpu": gpu,
            "seconds": round(time.perf_counter() - start, 1)}


def run_grid(grid: dict, jobs: int = 1, gpus: list | None = None, dry_run: bool = False, log=print) -> list[dict]:
    """Execute the grid's unfinished runs, ``jobs`` at a time on the CPU (one thread each) or one per GPU of
    ``gpus``; then collect the results (``collect``). Returns the runs with status ok / skipped / failed."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if gpus:  # load_grid checked the runs with their own devices
        check_runs(grid, gpus)
    runs = plan_runs(grid)
    todo = [r for r in runs if not r["done"]]
    done = [{**r, "status": "skipped"} for r in runs if r["done"]]
    log(f"grid {grid.get('source', '')}: {len(runs)} runs, {len(done)} done, {len(todo)} to run -> {grid['out']}")
    if dry_run:
        for r in todo:
            log(f"  would run {r['variant']}/seed{r['seed']}: {json.dumps(r['parameters'])}")
        return done + [{**r, "status": "planned"} for r in todo]
    free = queue.Queue()
    for g in (gpus or [None] * jobs):
        free.put(g)

    def work(run):
        gpu = free.get()  # a GPU id (or None on the CPU) that no other run holds now
        try:
            return execute_run(run, grid["notebook"], gpu=gpu)
        finally:
            free.put(gpu)

    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(gpus) if gpus else jobs) as pool:
        for result in concurrent.futures.as_completed([pool.submit(work, r) for r in todo]):
            r = result.result()
            results.append(r)
            where = f" on GPU {r['gpu']}" if r["gpu"] is not None else ""
            log(f"  [{len(results)}/{len(todo)}] {r['variant']}/seed{r['seed']}: {r['status']} in {r['seconds']} s{where}"
                + ("" if r["status"] == "ok" else f" (see {Path(r['dir']) / 'papermill.log'})"))
    if Path(grid["out"]).is_dir():
        log(format_table(collect_both(grid["out"], variants=list(grid["variants"]))))
    return done + results


def reevaluate(grid: dict, log=print) -> list[dict]:
    """Evaluate every trained run of the grid again, in this process, one after the other: all runs then
    share one evaluator (use it when cutlib.evaluate changed while the grid ran). Rewrites each eval.json."""
    from cutlib.evaluate import evaluate_run

    runs = [r for r in plan_runs(grid) if (Path(r["dir"]) / "checkpoint.pt").is_file()]
    for i, run in enumerate(runs, 1):
        params = run["parameters"]
        extractor = params.get("extractor", "auto")
        if extractor == "auto":  # as run_experiment.ipynb decides
            extractor = "builtin" if str(params.get("dataset", "stripes")) in ("stripes", "city") else "inception"
        device = params.get("device", "cpu")
        evaluate_run(run["dir"], split="test", extractor=extractor, device=None if device == "auto" else device)
        log(f"  [{i}/{len(runs)}] re-evaluated {run['variant']}/seed{run['seed']}")
    return runs


# ------------------------------------------------------------------ collecting
def _std(values: list[float]) -> float | None:
    """Sample standard deviation (ddof 1); None for a single value (or a non-finite one)."""
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return std if math.isfinite(std) else None


def collect(out: str | Path, variants: list[str] | None = None, which: str = "final") -> dict:
    """Every <out>/<variant>/seed<k>/eval.json -> per variant and metric: values, mean, std (over seeds,
    ddof 1), min, max, n. Writes <out>/results.json and results.csv (results_best.* for which="best")."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"grid output folder {out} does not exist; run the grid first")
    if which not in ("final", "best"):
        raise ValueError(f"which must be 'final' or 'best', got {which!r}")
    found = sorted(out.glob(f"*/seed*/{EVAL_FILE}"))
    names = variants or sorted({p.parent.parent.name for p in found})
    table = {"out": str(out), "which": which, "metric_info": {}, "variants": {}}
    for name in names:
        files = sorted((p for p in found if p.parent.parent.name == name), key=lambda p: int(p.parent.name[4:]))
        if not files:
            continue
        reports = [json.loads(p.read_text()) for p in files]
        values: dict[str, list[float]] = {}
        for report in reports:
            table["metric_info"].update(report.get("metric_info", {}))
            for metric, value in report[which]["metrics"].items():
                if isinstance(value, (int, float)):
                    values.setdefault(metric, []).append(float(value))
        table["variants"][name] = {
            "seeds": [r.get("run_seed") for r in reports], "n": len(reports),
            "metrics": {m: {"mean": sum(v) / len(v), "std": _std(v), "min": min(v), "max": max(v),
                            "n": len(v), "values": v} for m, v in values.items()},
        }
    stem = "results" if which == "final" else "results_best"
    (out / f"{stem}.json").write_text(json.dumps(table, indent=1) + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "metric", "n", "mean", "std", "min", "max"])
        for name, row in table["variants"].items():
            for metric, s in row["metrics"].items():
                writer.writerow([name, metric, s["n"], s["mean"], "" if s["std"] is None else s["std"], s["min"], s["max"]])
    return table


def collect_both(out: str | Path, variants: list[str] | None = None) -> dict:
    """collect() of the final weights (results.json, returned) and of each run's best epoch (results_best.json)."""
    collect(out, variants, which="best")
    return collect(out, variants)


def format_table(table: dict, metrics: list[str] | None = None) -> str:
    """The table as text: one row per variant, "mean ± std" per metric."""
    rows = table["variants"]
    if not rows:
        return f"no eval.json under {table['out']} yet"
    metrics = metrics or list(next(iter(rows.values()))["metrics"])
    head = ["variant", "n"] + metrics
    body = [[name, str(row["n"])] + [
        (f"{s['mean']:.3g} ± {s['std']:.2g}" if s["std"] is not None else f"{s['mean']:.3g}") if (s := row["metrics"].get(m)) else "-"
        for m in metrics] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + body)


# ------------------------------------------------------------------ shipping small results
def _without_machine_paths(obj, runs: Path):
    """Absolute paths in a JSON tree -> relative to ``runs`` (run folders) or the file name (anything else)."""
    if isinstance(obj, dict):
        return {k: _without_machine_paths(v, runs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_machine_paths(v, runs) for v in obj]
    if isinstance(obj, str) and (obj.startswith(("/", "\\")) or obj[1:3] in (":\\", ":/")):
        return str(Path(obj).relative_to(runs)) if Path(obj).is_relative_to(runs) else Path(obj).name
    return obj


def ship(out: str | Path, dest: str | Path, thumb_width: int = 128) -> Path:
    """Copy a grid's small results to ``dest``: results.json (and results_best.json) and, per run, eval.json, metrics.jsonl and a
    JPEG thumbnail (``thumb_width`` px wide) of its last sample grid. For committing a grid's outcome."""
    from PIL import Image

    out, dest = Path(out).resolve(), Path(dest)
    if not (out / "results.json").is_file():
        raise FileNotFoundError(f"{out / 'results.json'} does not exist; run the grid (or collect) first")
    dest.mkdir(parents=True, exist_ok=True)
    table = {**json.loads((out / "results.json").read_text()), "out": out.name}  # no machine paths in shipped files
    (dest / "results.json").write_text(json.dumps(table, indent=1) + "\n")
    if (out / "results_best.json").is_file():  # each run's best epoch, when the grid collected it
        best = {**json.loads((out / "results_best.json").read_text()), "out": out.name}
        (dest / "results_best.json").write_text(json.dumps(best, indent=1) + "\n")
    for report in sorted(out.glob(f"*/seed*/{EVAL_FILE}")):
        run, target = report.parent, dest / report.parent.relative_to(out)
        target.mkdir(parents=True, exist_ok=True)
        data = json.loads(report.read_text())
        data.pop("epochs", None)  # per-epoch details: the big part; final and best stay
        (target / EVAL_FILE).write_text(json.dumps(_without_machine_paths(data, out.parent), indent=1) + "\n")
        if (run / "metrics.jsonl").is_file():
            (target / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes())
        sample = run / "samples" / "latest.png"
        if sample.is_file():
            image = Image.open(sample).convert("RGB")
            image.thumbnail((thumb_width, thumb_width * image.height // image.width))
            image.save(target / "samples.jpg", quality=85)
    return dest


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutlib grid", description=__doc__.split("\n\n")[0],
                                epilog="Example: python -m cutlib grid experiments/ablations_cpu.json --jobs 2")
    p.add_argument("config", help="grid JSON file (e.g. experiments/ablations_cpu.json)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once on the CPU, one thread each (default 1)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one run per GPU at a time, device cuda")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would execute, run nothing")
    p.add_argument("--collect-only", action="store_true", help="only gather the eval.json files into results.json/csv")
    p.add_argument("--reevaluate", action="store_true", help="evaluate every trained run again in one process, then collect")
    p.add_argument("--ship", default="", help="then copy the small results (JSON, metrics, thumbnails) to this folder")
    return p


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] or None
    try:  # a configuration error is one line naming the file and the key, not a traceback
        grid = load_grid(args.config, gpus)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print("cutlib grid: " + " ".join(str(err).split()), file=sys.stderr)
        return 1
    if args.reevaluate:
        reevaluate(grid)
    if args.collect_only or args.reevaluate:
        print(format_table(collect_both(grid["out"], variants=list(grid["variants"]))))
        runs = []
    else:
        runs = run_grid(grid, jobs=args.jobs, gpus=gpus, dry_run=args.dry_run)
    if args.ship:
        print(f"small results copied to {ship(grid['out'], args.ship)}")
    return int(any(r["status"] == "failed" for r in runs))
