"""Command line: ``python -m cutlib COMMAND [options]`` (``python -m cutlib COMMAND --help``).

Each command lives in the module of its concept and is imported only when it runs, so that
``python -m cutlib --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# command -> ("module", "function taking argv", "one-line help")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("cutlib.demo", "cli", "the course's main demo (make demo)"),
    "datasets": ("cutlib.data.catalog", "cli", "list the built-in and downloadable datasets"),
    "download": ("cutlib.data.download", "cli", "download a real dataset of the catalog: download NAME [--root DIR]"),
    "prepare-cityscapes": ("cutlib.data.cityscapes", "prepare_cityscapes_cli", "convert your Cityscapes download to labels->photo"),
    "train": ("cutlib.train", "cli", "train CUT / FastCUT (and other presets) into a run folder"),
    "evaluate": ("cutlib.evaluate", "cli", "FID/KID and the built-in benchmarks' scores of a run: evaluate RUN_DIR (writes eval.json)"),
    "bench": ("cutlib.bench", "cli", "seconds per iteration and peak memory of presets (paper Table 1)"),
    "translate": ("cutlib.translate", "cli", "translate images of any size with a checkpoint (ours or the authors')"),
    "grid": ("cutlib.grid", "cli", "ablation grid: run_experiment.ipynb per variant and seed, then one table: grid CONFIG [--jobs N] [--gpus 0,1]"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m cutlib COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {COMMANDS[name][2]}" for name in COMMANDS]
    lines += ["", "python -m cutlib COMMAND --help shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cutlib: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    result = getattr(importlib.import_module(module), function)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
