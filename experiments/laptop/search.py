"""The search behind the `laptop` preset: train one configuration of CUT on real photos on one CPU
thread, score its final generator with the photo evaluator (cutlib.photos) on the held-out photos,
and append a row to results.jsonl.

    OMP_NUM_THREADS=1 python experiments/laptop/search.py NAME '{"crop_size": 64, ...}' [--data DIR]

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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("overrides", help="JSON object of TrainConfig overrides")
    p.add_argument("--base", default="cut", help="preset the overrides apply to (default cut)")
    p.add_argument("--data", default=str(HERE.parents[1].parent / "shared" / "data" / "horse2zebra_cpu"))
    p.add_argument("--runs", default="runs/laptop_search")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from cutlib.config import preset
    from cutlib.data.splits import load_split
    from cutlib.evaluate import translate_images
    from cutlib.photos import load_photo_classifier, photo_scores
    from cutlib.runs import load_run
    from cutlib.train import train

    overrides = json.loads(args.overrides)
    cfg = preset(args.base, dataset=args.data, device="cpu", num_workers=0, **overrides)
    out = Path(args.runs) / args.name
    start, cpu0 = time.perf_counter(), cpu_seconds()
    summary = train(cfg, out, resume=True, progress=False)
    train_cpu = cpu_seconds() - cpu0
    _, model = load_run(out, device="cpu")
    clf = load_photo_classifier(args.data)
    data = load_split(args.data, "test", cfg.crop_size)
    outputs = translate_images(model.eval(), data["inputs"])
    scores = photo_scores(clf, outputs, data["inputs"], data["real"])
    row = {"name": args.name, "base": args.base, "overrides": overrides, "steps": summary["step"],
           "cpu_minutes": round(train_cpu / 60, 1), "wall_minutes": round((time.perf_counter() - start) / 60, 1),
           "classifier_accuracy": clf.info["test_accuracy"], **{k: round(v, 4) for k, v in scores.items()},
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
