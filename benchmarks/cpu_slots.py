"""On the CPU, which gives more attack steps per second: one process using every core, or one
single-threaded process per core (``harness run --workers N``)?

Times the pass that dominates a cell's cost (forward + backward to the input: every PGD step of
training and evaluation) for each model twice: one process with ``--cores`` threads, then
``--cores`` processes with one thread each running at once. Prints, per model,

    (Σ passes/s of the single-threaded processes) / (passes/s of the one multi-threaded process)

so a ratio above 1 means a grid finishes sooner with ``--workers <cores>`` than with
``--workers 1`` (as long as there are at least that many cells left). Usage:

    python benchmarks/cpu_slots.py [--models resnet8,mobilenetv2-tiny] [--cores 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os

import torch

from channels_last import passes_per_second as passes_of  # benchmarks/ is the script's own folder
from harness.models import create_model


def passes_per_second(name: str, threads: int, batch_size: int, seconds: float) -> float:
    """Input-gradient passes per second of model ``name`` on one 1×28×28 batch with ``threads``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, image_size=28).eval()
    x = torch.rand(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    passes_of(model, x, y, 0.5)  # warm-up
    return passes_of(model, x, y, seconds)


def _single_threaded(args: tuple[str, int, float]) -> float:
    name, batch_size, seconds = args
    return passes_per_second(name, 1, batch_size, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet8,mobilenetv2-tiny")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    print(f"batch {args.batch_size} of 1x28x28, {args.cores} cores")
    context = mp.get_context("spawn")
    for name in args.models.split(","):
        together = passes_per_second(name, args.cores, args.batch_size, args.seconds)
        with context.Pool(args.cores) as pool:
            apart = sum(pool.map(_single_threaded, [(name, args.batch_size, args.seconds)] * args.cores))
        print(f"{name:>18}: 1 process x {args.cores} threads {together:6.1f} passes/s, "
              f"{args.cores} processes x 1 thread {apart:6.1f} passes/s, ratio {apart / together:.2f}")


if __name__ == "__main__":
    main()
