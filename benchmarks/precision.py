"""Per-epoch wall time of FERD and CMI on this machine: fp32 against bf16 autocast against bf16 +
``torch.compile``, as ratios measured in one run.

Each configuration trains the fmnist_main cell (shipped cnn5 teacher → ResNet-8, batch 128,
T_g = 20, T_s = 50 per epoch, scaled by ``--scale``) through the real trainer for two epochs; the
first is a warm-up (compilation happens there), the second is timed from the trainer's own stage
clock (history.jsonl). Prints seconds per epoch and the ratio to fp32 per method; ``--out``
also writes them as JSON. Usage:

    python benchmarks/precision.py [--methods ferd,cmi] [--scale 1.0] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.trainer import Trainer  # noqa: E402
from harness.config import load_experiment  # noqa: E402

CONFIGS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16+compile": ("bf16", True)}
CELL = """
name: precision
base:
  dataset: fashion-mnist
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  precision: {precision}
  compile: {compile}
  schedule: {{epochs: 2, warmup_epochs: 0, generator_steps: {generator_steps}, student_steps: {student_steps},
              batch_size: 128, pool_size: 20000, history_every: 100, checkpoint_every: 100}}
methods:
  ferd: {{utae_model: student}}
grid:
  method: [{method}]
"""


def epoch_seconds(method: str, precision: str, compile_models: bool, scale: float) -> float:
    """Wall seconds of the second (timed) epoch of ``method`` in the given configuration."""
    with tempfile.TemporaryDirectory() as folder:
        text = CELL.format(teacher=ROOT / "teachers/fashion-mnist/cnn5.pt", precision=precision,
                           compile=str(compile_models).lower(), generator_steps=max(1, round(20 * scale)),
                           student_steps=max(1, round(50 * scale)), method=method)
        (Path(folder) / "exp.yaml").write_text(text)
        (spec,) = load_experiment(Path(folder) / "exp.yaml").cells
        torch.manual_seed(0)
        trainer = Trainer(spec, Path(folder) / "run", "cpu", progress=False)
        trainer.train()
        lines = [json.loads(line) for line in (Path(folder) / "run/history.jsonl").read_text().splitlines()]
    return lines[1]["seconds"] - lines[0]["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ferd,cmi")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the per-epoch steps (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", help="also write the numbers as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict[str, float]] = {}
    print(f"{'method':<8} {'config':<14} {'s/epoch':>9} {'vs fp32':>8}   ({torch.get_num_threads()} threads)")
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        results[method] = {}
        for name, (precision, compile_models) in CONFIGS.items():
            try:
                seconds = epoch_seconds(method, precision, compile_models, args.scale)
            except Exception as error:  # e.g. no C++ compiler for torch.compile: report, go on
                print(f"{method:<8} {name:<14} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
                continue
            results[method][name] = seconds
            ratio = results[method]["fp32"] / seconds if "fp32" in results[method] else float("nan")
            print(f"{method:<8} {name:<14} {seconds:>9.1f} {ratio:>7.2f}×", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "scale": args.scale,
                                              "seconds_per_epoch": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
