"""Size of each method's epoch checkpoint on the paper's architectures, and what it is made of.

Builds one cell per method of an experiment (default ``experiments/cifar10_main.yaml``, its first
student) on the CPU with random weights and a batch of 2, fills the method's buffers as a late epoch has them (the
image pool at capacity, CMI's memory bank full), runs one generation round and one student step so
that every optimizer has its state, and serialises ``Trainer.save``'s state with ``torch.save``
into a byte counter (nothing is written to disk). Prints the total and the largest parts. Usage:

    python benchmarks/checkpoint_size.py [FILE.yaml] [--methods cmi,ferd]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import load_experiment  # noqa: E402
from harness.estimate import probe_trainer  # noqa: E402


class ByteCounter(io.RawIOBase):
    """A write-only stream that counts what is written to it."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)


def serialised_size(obj: Any) -> int:
    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.size


def parts(state: dict[str, Any], prefix: str = "") -> dict[str, int]:
    """Serialised size of every entry of the checkpoint, ``method.*`` entries one level down."""
    sizes = {}
    for key, value in state.items():
        if key == "method" and isinstance(value, dict):
            sizes |= parts(value, "method.")
        else:
            sizes[prefix + key] = serialised_size(value)
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=str(ROOT / "experiments/cifar10_main.yaml"))
    parser.add_argument("--methods", help="comma-separated subset (default: every method of the file)")
    args = parser.parse_args()
    experiment = load_experiment(args.file)
    chosen = {m.strip() for m in args.methods.split(",")} if args.methods else None
    seen: set[str] = set()
    print(f"{'method':<10} {'student':<12} {'checkpoint':>11}   largest parts")
    for spec in experiment.cells:
        if spec.method in seen or (chosen and spec.method not in chosen):
            continue
        seen.add(spec.method)
        with tempfile.TemporaryDirectory() as folder:
            trainer = probe_trainer(spec, Path(folder), 1, device="cpu", batch_size=2)  # sizes do not depend on it
            trainer.method.synthesize(spec.settings.schedule.warmup_epochs)
            trainer.student.train()
            trainer.student_step(torch.Generator().manual_seed(0))
            state = {"epoch": 1, "student": trainer.student.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                     "scheduler": trainer.scheduler.state_dict(), "method": trainer.method.state_dict()}
            sizes = parts(state)
            total = serialised_size(state)
        largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
        print(f"{spec.method:<10} {spec.settings.student:<12} {total / 2**30:>8.2f} GiB   "
              + ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, size in largest), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
