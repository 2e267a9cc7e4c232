"""One 3x3 convolution, forward and backward, in fp32, bf16 and fp16, NCHW and NHWC: milliseconds per pass.

    OMP_NUM_THREADS=1 python tools/conv_dtypes.py [--channels 256] [--size 64] [--batch 2] [--reps 5]

The convolution is the one a residual block of CUT's generator runs at 256 px (256 -> 256 channels on a
64 x 64 map, padded by 1 as the reflect pad does, batch 2 as with the identity pass). It shows what the
hardware does for each dtype and layout, without the rest of a training step: on a CPU with AMX, bf16 is
several times faster than fp32 and NHWC faster than NCHW in bf16; fp16 there runs on reference kernels,
hundreds of times slower, so its row is timed once (--reps-fp16). Prints one line per combination;
a benchmark that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch


def time_conv(dtype: torch.dtype, channels_last: bool, channels: int, size: int, batch: int, reps: int) -> float:
    """Median milliseconds of forward + backward of a channels->channels 3x3 conv on (batch, channels, size+2, size+2)."""
    conv = torch.nn.Conv2d(channels, channels, 3).to(dtype)
    x = torch.randn(batch, channels, size + 2, size + 2).to(dtype)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    conv(x).sum().backward()  # warm-up: kernel selection, allocations
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        conv(x).sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reps", type=int, default=5, help="timed passes of fp32 and bf16 (default 5)")
    p.add_argument("--reps-fp16", type=int, default=1, help="timed passes of fp16 (default 1: slow on most CPUs)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; conv {args.channels}->{args.channels} 3x3 on "
          f"({args.batch}, {args.channels}, {args.size + 2}, {args.size + 2}), forward + backward")
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for layout in ("NCHW", "NHWC"):
            reps = args.reps_fp16 if dtype is torch.float16 else args.reps
            ms = time_conv(dtype, layout == "NHWC", args.channels, args.size, args.batch, reps)
            rows.append({"dtype": name, "layout": layout, "ms": ms})
            print(f"{name} {layout}: {ms:.1f} ms ({rows[0]['ms'] / ms:.2f}x fp32 NCHW)", flush=True)
    return rows


if __name__ == "__main__":
    main()
