"""The search behind the `laptop` preset: train one configuration of CUT on real photos on one CPU
thread, score its final generator with the photo evaluator (cutlib.photos) on the held-out photos,
and append a row to results.jsonl.

    OMP_NUM_THREADS=1 python experiments/laptop/search.py NAME '{"crop_size": 64, ...}' [--data DIR]
    OMP_NUM_THREADS=1 python experiments/laptop/search.py --rescore      # every row again, current classifier

NAME is the row's name; the JSON holds TrainConfig overrides on top of the `cut` preset (or of
`laptop` with --base laptop). DIR defaults to ../shared/data/horse2zebra_cpu (500 + 500 training
photos; its testA/testB are held out from training). Runs go to runs/laptop_search/NAME.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def score(run: Path, data: str) -> dict:
    """The photo evaluator's scores of the final generator of ``run`` on the held-out photos of ``data``."""
    from cutlib.data.splits import load_split
    from cutlib.evaluate import translate_images
    from cutlib.photos import load_photo_classifier, photo_scores
    from cutlib.runs import load_run

    cfg, model = load_run(run, device="cpu")
    clf = load_photo_classifier(data)
    split = load_split(data, "test", cfg.crop_size)
    scores = photo_scores(clf, translate_images(model.eval(), split["inputs"]), split["inputs"], split["real"])
    return {"classifier_accuracy": clf.info["test_accuracy"], **{k: round(v, 4) for k, v in scores.items()}}


def rescore(args) -> int:
    """Score every row of results.jsonl again (e.g. after the classifier changed) and rewrite the file."""
    rows = [json.loads(line) for line in (HERE / "results.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row.update(score(Path(row.get("run", Path(args.runs) / row["name"])), args.data))
        print(json.dumps(row))
    (HERE / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="the row's name")
    p.add_argument("overrides", nargs="?", default="{}", help="JSON object of TrainConfig overrides")
    p.add_argument("--rescore", action="store_true", help="score every row of results.jsonl again")
    p.add_argument("--base", default="cut", help="preset the overrides apply to (default cut)")
    p.add_argument("--data", default=str(HERE.parents[1].parent / "shared" / "data" / "horse2zebra_cpu"))
    p.add_argument("--runs", default="runs/laptop_search")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.rescore:
        return rescore(args)
    if not args.name:
        p.error("give NAME and the overrides, or --rescore")

    from cutlib.config import preset
    from cutlib.train import train

    overrides = json.loads(args.overrides)
    cfg = preset(args.base, dataset=args.data, device="cpu", num_workers=0, **overrides)
    out = Path(args.runs) / args.name
    start, cpu0 = time.perf_counter(), cpu_seconds()
    summary = train(cfg, out, resume=True, progress=False)
    train_cpu = cpu_seconds() - cpu0
    row = {"name": args.name, "base": args.base, "overrides": overrides, "steps": summary["step"],
           "cpu_minutes": round(train_cpu / 60, 1), "wall_minutes": round((time.perf_counter() - start) / 60, 1),
           **score(out, args.data), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
