"""Seconds per iteration and peak memory of CUT, FastCUT and CycleGAN: the paper's Table 1, measured here.

    python -m cutlib bench --presets cut,fastcut,cyclegan --size 256 --steps 5 [--device cpu|cuda] [--json OUT.json]
                           [--precision fp32,bf16,fp16] [--channels-last] [--compile]
                           [--modes fp32,bf16,bf16+nhwc+compiled]   (instead of the three options above)

Each preset trains on synthetic random batches (batch 1, ``size`` x ``size``; no dataset needed) with
the full reference networks unless overridden (--ngf 16 ...). One iteration is one ``training_step``
(all forward passes and all optimiser updates). The first ``warmup`` iterations are not timed
(allocations, kernel selection); the median and the quartiles of the next ``steps`` are reported,
in wall-clock seconds (the paper's measure) and in CPU seconds of the process (all its threads),
which other programs competing for a shared CPU disturb much less.

Each precision (fp32; bf16 or fp16 autocast, fp16 with its loss scaler) is measured in NCHW, with
--channels-last also in NHWC, and with --compile all of these again with torch.compile
(cutlib.models.compile_networks): its warm-up steps compile, their times are kept as ``warmup_s``; on a
CPU its memory figure includes the compiler's.

Memory: on a GPU, torch.cuda.max_memory_allocated (tensors only: weights, gradients, Adam states,
activations). On a CPU, the process's peak resident memory (RSS) during the run minus its RSS just
before building the model. Two precautions: one iteration of a tiny copy of the preset (32 px, ngf 4)
runs first, so that torch's own code and thread pools, paged in by any first iteration (~200 MB
here), are not counted; and the peak is reset to the current RSS before the model is built (Linux
/proc/self/clear_refs), since the imports leave a higher peak behind. Each preset runs in a fresh
Python process (isolate=True), so that memory freed by one preset and reused by the next, or an
earlier preset's peak, does not enter its figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cutlib import config as C
from cutlib.device import RESOLVED_PRECISIONS, resolve_device
from cutlib.options import ConfigParser, add_config_options, overrides_from_args

# Paper Table 1 (GTX 1080Ti, 256 px, batch 1): seconds per iteration and GPU memory in GB (book/reference.md section 8)
PAPER = {"cyclegan": (0.40, 4.81), "cut": (0.24, 3.33), "fastcut": (0.15, 2.25)}
BASELINE = "cyclegan"
# fields the bench sets itself; use --size and --device instead
FIXED = {"crop_size": "--size", "load_size": "--size", "device": "--device"}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on: CPU, logical cores, torch threads, versions, GPU name."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def bench_config(preset: str, size: int, device: str = "cpu", **overrides) -> C.TrainConfig:
    """The preset at ``size`` px (crop = load size, batch 1 unless overridden) on ``device``. CyCADA's source
    segmenter is not pretrained (sem_pretrain_steps 0): one iteration costs the same with random weights."""
    fixed = sorted(set(overrides) & set(FIXED))
    if fixed:
        raise ValueError(f"bench sets {', '.join(fixed)} itself; use {', '.join(sorted({FIXED[k] for k in fixed}))} instead")
    timing_only = {"sem_pretrain_steps": 0} if C.preset(preset).model == "cycada" else {}  # f_S's one-off pretraining is no iteration
    return C.preset(preset, crop_size=size, load_size=size, device=device, **{"batch_size": 1, **timing_only, **overrides})


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB. Linux: VmRSS and VmHWM of /proc/self/status;
    elsewhere both are the peak, ru_maxrss (KB on Linux, bytes on macOS)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) / 2**10, int(status["VmHWM"].split()[0]) / 2**10
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
        return peak, peak


def _reset_peak_rss() -> bool:
    """Set the peak (VmHWM) back to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(preset: str, size: int = 256, steps: int = 5, warmup: int = 1, device: str = "cpu", seed: int = 0,
            **overrides) -> dict:
    """Time ``warmup + steps`` training iterations of ``preset`` in THIS process; see the module docstring.

    The CPU memory figure is only meaningful in a fresh process (bench(..., isolate=True) does that)."""
    from cutlib.models import build_model, compile_networks

    device = str(resolve_device(device))
    cfg = bench_config(preset, size, device, **{"seed": seed, **overrides})
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, cfg.input_nc, size, size)
    batches = [{"A": (torch.rand(shape, generator=g) * 2 - 1).to(device), "B": (torch.rand(shape, generator=g) * 2 - 1).to(device)}
               for _ in range(warmup + steps)]  # (B, C, size, size) in [-1, 1], made before the clock starts
    cuda = device.startswith("cuda")
    if not cuda:  # bring torch's code pages into memory first (~200 MB of RSS here), so that they are not counted
        small = 32  # a preset that cannot run at 32 px (SPADE's 1/32 start) warms up at the bench's size
        try:
            tiny = bench_config(preset, small, device, **{**overrides, "ngf": 4, "ndf": 4, "batch_size": 1})
        except ValueError:
            small = size
            tiny = bench_config(preset, small, device, **{**overrides, "ngf": 4, "ndf": 4, "batch_size": 1})
        x = torch.rand(1, cfg.input_nc, small, small, generator=g) * 2 - 1  # (1, C, small, small)
        build_model(tiny, device).training_step({"A": x, "B": x})
    exact_peak = _reset_peak_rss()  # else the peak so far (imports) is the baseline: the figure may undercount
    rss_before = _rss_mb()[0] if exact_peak else _rss_mb()[1]
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(seed)
    model = build_model(cfg, device)
    if cfg.compile:
        compile_networks(model)
    times, cpu_times, warm = [], [], []  # wall-clock and CPU seconds (all threads of this process) per iteration
    for i, batch in enumerate(batches):
        if cuda:
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        model.training_step(batch)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        else:
            warm.append(time.perf_counter() - t0)
    q25, _, q75 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    row = {
        "preset": preset, "model": cfg.model, "size": size, "batch_size": cfg.batch_size, "steps": steps, "warmup": warmup,
        "device": device, "threads": torch.get_num_threads(),
        "median_s": statistics.median(times), "q25_s": q25, "q75_s": q75, "min_s": min(times), "max_s": max(times),
        "times_s": times, "cpu_median_s": statistics.median(cpu_times), "cpu_times_s": cpu_times, "warmup_s": warm,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
    }
    if cuda:
        row.update(memory_mb=torch.cuda.max_memory_allocated(device) / 2**20, memory_kind="torch.cuda.max_memory_allocated")
    else:
        # the kernel's RSS counters are synced lazily (every few dozen page faults), so a model that fits in
        # memory the warm-up freed can read a few pages BELOW the baseline: that is "no increase", not a negative one
        peak = max(_rss_mb()[1], rss_before)
        kind = "peak RSS increase" if exact_peak else "peak RSS increase (over the import peak; may undercount)"
        row.update(memory_mb=peak - rss_before, memory_kind=kind, rss_before_mb=rss_before, rss_peak_mb=peak)
    return row


def _worker() -> None:
    """Entry point of a fresh process: JSON arguments on stdin, the measure() row as JSON on stdout."""
    args = json.loads(sys.stdin.read())
    torch.set_num_threads(args.pop("threads"))
    print(json.dumps(measure(**args)))


def _measure_in_fresh_process(**kwargs) -> dict:
    kwargs["threads"] = torch.get_num_threads()  # the caller's thread count, not the child's default
    code = "from cutlib.bench import _worker; _worker()"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(kwargs), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench of preset {kwargs['preset']!r} failed in its subprocess:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _variants(precisions, channels_last: bool, compile: bool = False) -> list[dict]:
    """The (precision, layout, compile) combinations to measure: every precision in NCHW, then in NHWC when
    asked; eager, then compiled when asked."""
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in RESOLVED_PRECISIONS]
    if not precisions or bad:
        raise ValueError(f"precisions must be among {', '.join(RESOLVED_PRECISIONS)} (comma-separated), got {precisions!r}")
    return [dict(precision=p, channels_last=cl, compile=cp)
            for cp in [False] + [True] * compile for cl in [False] + [True] * channels_last for p in precisions]


def parse_modes(modes) -> list[dict]:
    """Explicit combinations to measure, instead of the cross product of --precision, --channels-last and
    --compile: "fp32,bf16,bf16+nhwc,bf16+nhwc+compiled" (a list of such strings also works). Each mode is a
    precision (fp32, bf16, fp16), then optionally +nhwc (channels_last) and +compiled (torch.compile)."""
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    out = []
    for mode in modes:
        precision, *options = [t.strip().lower() for t in mode.split("+")]
        if precision not in RESOLVED_PRECISIONS or len(set(options)) != len(options) or set(options) - {"nhwc", "compiled"}:
            raise ValueError(f"mode {mode!r} is not PRECISION[+nhwc][+compiled] with PRECISION one of {', '.join(RESOLVED_PRECISIONS)} "
                             f"(e.g. --modes fp32,bf16,bf16+nhwc+compiled)")
        out.append(dict(precision=precision, channels_last="nhwc" in options, compile="compiled" in options))
    if not out:
        raise ValueError("modes must name at least one combination, e.g. fp32,bf16+nhwc")
    if len({tuple(m.values()) for m in out}) != len(out):
        raise ValueError(f"modes {modes!r} names a combination twice")
    return out


def bench(presets=("cut", "fastcut", "cyclegan"), size: int = 256, steps: int = 5, device: str = "auto", warmup: int = 1,
          isolate: bool = True, seed: int = 0, progress: bool = False, precisions=("fp32",), channels_last: bool = False,
          compile: bool = False, modes=None, **overrides) -> list[dict]:
    """measure() each preset in each precision, layout and (when ``compile``) eager and compiled, each in a
    fresh process when isolate; then add the ratios to CycleGAN (same mode), the speed-up over the preset's
    fp32 eager NCHW row and the paper's figures. ``presets`` and ``precisions``: lists or comma-separated
    strings; ``modes`` (see parse_modes) replaces the cross product of precisions, channels_last and compile
    by the combinations it names. One dict per row. Compiled rows compile in their warm-up steps (at least one)."""
    if isinstance(presets, str):
        presets = [p.strip() for p in presets.split(",") if p.strip()]
    presets = [p.lower() for p in presets]
    if not presets:
        raise ValueError(f"presets must name at least one of {', '.join(C.PRESETS)}")
    if not isinstance(steps, int) or steps < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"steps must be an integer >= 1 and warmup >= 0, got steps={steps!r}, warmup={warmup!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an integer of at least 32 px (the PatchGAN needs it), got {size!r}")
    modes = parse_modes(modes) if modes is not None else _variants(precisions, channels_last, compile)
    if any(m["compile"] for m in modes) and warmup < 1:
        raise ValueError("compiled rows need warmup >= 1: the first step compiles (tens of seconds)")
    device = str(resolve_device(device))
    for name in presets:  # fail on a bad name or override before any subprocess starts
        bench_config(name, size, device, **overrides)
    rows = []
    for mode in modes:
        for name in presets:
            if progress:
                print(f"bench: {name} {mode} ...", file=sys.stderr, flush=True)
            args = dict(preset=name, size=size, steps=steps, warmup=warmup, device=device, seed=seed, **overrides, **mode)
            rows.append({**(_measure_in_fresh_process(**args) if isolate else measure(**args)), **mode})
    same_mode = lambda r, q: all(r[k] == q[k] for k in ("precision", "channels_last", "compile"))  # noqa: E731
    for row in rows:
        base = next((r for r in rows if r["preset"] == BASELINE and same_mode(r, row)), None)
        eager = next((r for r in rows if r["preset"] == row["preset"] and r["precision"] == "fp32"
                      and not r["channels_last"] and not r["compile"]), None)
        row["speedup_vs_fp32"] = eager["median_s"] / row["median_s"] if eager else None
        row["cpu_speedup_vs_fp32"] = eager["cpu_median_s"] / row["cpu_median_s"] if eager else None
        row["memory_vs_fp32"] = row["memory_mb"] / eager["memory_mb"] if eager and eager["memory_mb"] > 0 else None
        row["time_vs_cyclegan"] = row["median_s"] / base["median_s"] if base else None
        row["cpu_time_vs_cyclegan"] = row["cpu_median_s"] / base["cpu_median_s"] if base else None
        row["memory_vs_cyclegan"] = row["memory_mb"] / base["memory_mb"] if base and base["memory_mb"] > 0 else None
        paper = PAPER.get(row["preset"])
        row["paper_s"], row["paper_gb"] = paper if paper else (None, None)
        row["paper_time_vs_cyclegan"] = paper[0] / PAPER[BASELINE][0] if paper else None
        row["paper_memory_vs_cyclegan"] = paper[1] / PAPER[BASELINE][1] if paper else None
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of bench() rows: mode, wall time (median [q25, q75]), CPU time, memory, speed-up over
    the preset's fp32 eager row, ratios to CycleGAN (CG) measured here and in the paper."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    head = (f"{'preset':<9} {'mode':<19} {'s/iter':>7} {'[q25, q75]':>16} {'CPU s/iter':>10} {'memory MB':>9} "
            f"{'x fp32':>6} {'mem/fp32':>8} {'time/CG':>7} {'CPU/CG':>6} {'mem/CG':>6} {'paper time/CG':>13} {'paper mem/CG':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"[{r['q25_s']:.3f}, {r['q75_s']:.3f}]"
        mode = " ".join([r.get("precision", "fp32")] + ["nhwc"] * bool(r.get("channels_last")) + ["compiled"] * bool(r.get("compile")))
        lines.append(
            f"{r['preset']:<9} {mode:<19} {r['median_s']:>7.3f} {spread:>16} {r['cpu_median_s']:>10.3f} {r['memory_mb']:>9.0f} "
            f"{fmt(r.get('cpu_speedup_vs_fp32'), '.2f'):>6} {fmt(r.get('memory_vs_fp32'), '.2f'):>8} "
            f"{fmt(r['time_vs_cyclegan'], '.2f'):>7} {fmt(r['cpu_time_vs_cyclegan'], '.2f'):>6} "
            f"{fmt(r['memory_vs_cyclegan'], '.2f'):>6} {fmt(r['paper_time_vs_cyclegan'], '.3f'):>13} "
            f"{fmt(r['paper_memory_vs_cyclegan'], '.3f'):>12}"
        )
    if rows:
        lines.append(f"medians over the timed steps; x fp32 = CPU-time speed-up over the preset's fp32 NCHW row; "
                     f"memory: {rows[0]['memory_kind']}; CG = CycleGAN in the same mode; paper: Table 1, GTX 1080Ti, 256 px, batch 1")
    return "\n".join(lines)


# ----------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = ConfigParser(
        prog="python -m cutlib bench",
        description="Seconds per iteration and peak memory of training presets (the paper's Table 1), on synthetic batches.",
        epilog="The training settings are applied to every preset (--ngf 16 --n-blocks 6 ...); crop and load size "
               "come from --size, the device from --device and the seed from --seed.",
    )
    p.add_argument("--presets", default="cut,fastcut,cyclegan", help="comma-separated presets (default cut,fastcut,cyclegan)")
    p.add_argument("--size", type=int, default=256, help="image size in px, a multiple of 4 (default 256)")
    p.add_argument("--steps", type=int, default=5, help="timed iterations per preset (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the machine, settings and rows as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic batches and of the networks (default 0)")
    p.add_argument("--in-process", action="store_true", help="measure every preset in this process (faster; CPU memory "
                   "then misses what a preset reuses of the memory the earlier ones freed)")
    # crop/load size stay accepted (not listed) so that bench_config can point to --size
    p.add_argument("--precision", default=None, help="comma-separated precisions to measure: fp32, bf16, fp16 (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="also measure each precision in NHWC layout")
    p.add_argument("--compile", action="store_true", help="also measure each combination with torch.compile (the "
                   "warm-up steps compile)")
    p.add_argument("--modes", default=None, help="the combinations to measure, instead of the cross product of the three "
                   "options above: comma-separated PRECISION[+nhwc][+compiled], e.g. fp32,bf16,bf16+nhwc+compiled")
    add_config_options(p, exclude=("device", "seed", "precision", "channels_last", "compile"),
                       hide=sorted(set(FIXED) - {"device"}))
    return p


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = overrides_from_args(args)
    precisions = args.precision or "fp32"
    if args.modes is not None and (args.precision is not None or args.channels_last or args.compile):
        print("cutlib bench: --modes names every combination itself; leave out --precision, --channels-last and "
              "--compile", file=sys.stderr)
        return 2
    try:
        rows = bench(args.presets, args.size, args.steps, args.device, args.warmup, isolate=not args.in_process,
                     seed=args.seed, progress=True, precisions=precisions, channels_last=args.channels_last,
                     compile=args.compile, modes=args.modes, **overrides)
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"cutlib bench: {err}", file=sys.stderr)
        return 1
    machine = machine_info(rows[0]["device"])
    machine["torch_threads"] = rows[0]["threads"]
    print(f"{machine['cpu']} ({machine['cpu_count']} logical CPUs, {machine['torch_threads']} torch threads), "
          f"torch {machine['torch']}, device {machine['device']}{' ' + machine['gpu'] if 'gpu' in machine else ''}; "
          f"{args.size} px, batch {rows[0]['batch_size']}, {args.steps} timed steps after {args.warmup} warm-up")
    print(format_table(rows))
    if args.json:
        out = {"command": " ".join(["python -m cutlib bench", *argv]), "machine": machine,
               "settings": {"size": args.size, "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
                            "precisions": precisions, "channels_last": args.channels_last, "compile": args.compile,
                            "modes": args.modes,
                            "isolated": not args.in_process, "overrides": overrides},
               "results": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"written {args.json}")
    return 0
