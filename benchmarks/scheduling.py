"""Does the local executor keep every slot busy?

Runs a grid of short CPU jobs (the noise control on ``synthetic``, different seeds and lengths)
with ``--workers`` CPU slots and prints

    makespan / (Σ job wall time / workers)

where a job's wall time is its worker process's whole life (start-up included) and the
makespan runs from the first job's start to the last job's end. 1.0 means no slot ever
waited while work was queued; the target is ≤ 1.1. Usage:

    python benchmarks/scheduling.py [--workers 2] [--jobs 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from harness.config import load_experiment
from harness.models import create_model
from harness.runner import run_experiment
from harness.runner.local import LocalExecutor, local_slots

GRID = """
name: scheduling
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 2, warmup_epochs: 0, generator_steps: 1, batch_size: 16, history_every: 100, probe_n: 10}}
  threat: {{train_steps: 2}}
  eval: {{attacks: [clean], n_eval: 20}}
grid:
  method: [noise]
  seed: {seeds}
  schedule.student_steps: [4, 12]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=8, help="grid cells (even: two lengths per seed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        torch.manual_seed(0)
        teacher = root / "cnn5.pt"
        torch.save(create_model("cnn5", in_channels=3, num_classes=10, image_size=16).state_dict(), teacher)
        (root / "grid.yaml").write_text(GRID.format(teacher=teacher, seeds=list(range(args.jobs // 2))))
        experiment = load_experiment(root / "grid.yaml")
        executor = LocalExecutor(local_slots(workers=args.workers, cpu=True))
        os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
        start = time.time()
        outcome = run_experiment(experiment, root / "results", executor, progress=False)
        makespan = time.time() - start
    assert outcome["done"] == len(experiment.cells), outcome
    busy = sum(executor.durations)
    print(f"{len(experiment.cells)} jobs, {args.workers} workers: makespan {makespan:.1f} s, "
          f"Σ job time {busy:.1f} s (mean {busy / len(executor.durations):.1f} s)")
    print(f"makespan / (Σ job time / workers) = {makespan / (busy / args.workers):.3f}  (target ≤ 1.1)")


if __name__ == "__main__":
    main()
