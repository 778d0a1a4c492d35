"""The first thing to run on a CUDA machine: does every method train, resume and evaluate there, and
what do the paper's cells cost per step?

1. every method for one epoch (2 generator + 2 student steps, batch 8, the ``synthetic`` data) in
   fp32 and in bf16, under :class:`StrictRandomDraws` (a random draw onto the GPU raises);
2. a kill and resume: a FERD cell stopped after its first checkpoint, resumed to the end, against
   the same cell run straight through (equal histories on the CPU; on a GPU, cuDNN may differ in
   the last bits, which the JSON reports);
3. ``evaluate`` of a random teacher under clean, FGSM, PGD-20, CW∞ and AutoAttack (fast);
4. timings of 2 generator + 2 student steps of FERD and CMI at batch 256, WRN-34-10 → ResNet-18,
   random weights and 32×32 images, in fp32 and bf16: seconds, ``max_memory_allocated``, the
   bf16/fp32 ratio, and the sustained TFLOP/s (FLOPs counted as ``harness cost`` counts them).

Everything goes into one JSON file (default ``reports/gpu/smoke.json``). ``--tiny`` runs the same
on the CPU at small sizes (cnn5 → resnet8, batch 8 for the timings); CI runs that. Usage:

    python benchmarks/gpu_smoke.py [--tiny] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.backbone.devices import StrictRandomDraws  # noqa: E402
from harness.trainer import CHECKPOINT, Trainer, numerics_flags, train_cell  # noqa: E402
from harness.config import load_experiment  # noqa: E402
from harness.estimate import FlopCount  # noqa: E402
from harness.evaluate import evaluate  # noqa: E402
from harness.models import create_model  # noqa: E402

METHODS = ["noise", "zskt", "deepinv", "cmi", "fast", "dfhl", "ferd", "ferd-code", "fair-ard"]
CELL = """
name: smoke
base:
  dataset: {dataset}
  student: {student}
  teacher: {{arch: {teacher}}}
  precision: {precision}
  schedule: {{epochs: {epochs}, warmup_epochs: 0, generator_steps: 2, student_steps: 2, batch_size: {batch},
              pool_size: {pool}, history_every: {epochs}, probe_n: 20}}
  threat: {{train_steps: 2}}
  eval: {{attacks: [clean, pgd20], n_eval: 20, batch_size: 10}}
methods:
  zskt: {{n_g: 1}}
  deepinv: {{inversion_steps: 2}}
  ferd: {{ib_steps: 5, reweight_steps: 2}}
grid:
  method: {methods}
"""


def cells(folder: Path, **fields: Any) -> dict[str, Any]:
    """The specs of a small grid written to ``folder/exp.yaml`` (see CELL)."""
    values = {"dataset": "synthetic", "student": "resnet8", "teacher": "cnn5", "precision": "fp32", "epochs": 1,
              "batch": 8, "pool": 64, "methods": METHODS} | fields
    (folder / "exp.yaml").write_text(CELL.format(**values))
    return {spec.method: spec for spec in load_experiment(folder / "exp.yaml").cells}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def every_method(device: torch.device) -> dict[str, Any]:
    """Step 1: one epoch of each method in each precision."""
    outcome: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as folder:
            specs = cells(Path(folder), precision=precision)
            for method, spec in specs.items():
                run_dir = Path(folder) / method
                began = time.perf_counter()
                try:
                    with StrictRandomDraws():
                        metrics = train_cell(spec, run_dir, device, progress=False)
                    outcome[f"{method}/{precision}"] = {
                        "ok": True, "seconds": round(time.perf_counter() - began, 2),
                        "pgd20": metrics["attacks"]["pgd20"]["avg"]}
                except Exception as error:  # report every method, not the first failure only
                    outcome[f"{method}/{precision}"] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                                                        "traceback": traceback.format_exc(limit=4)}
    return outcome


class _Stop(Exception):
    pass


def kill_and_resume(device: torch.device) -> dict[str, Any]:
    """Step 2: stop a 2-epoch FERD cell after its first checkpoint, resume it, compare with a straight run."""
    with tempfile.TemporaryDirectory() as folder:
        spec = cells(Path(folder), epochs=2, methods=["ferd"])["ferd"]
        straight, resumed = Path(folder) / "straight", Path(folder) / "resumed"
        train_cell(spec, straight, device, progress=False)
        trainer = Trainer(spec, resumed, device, progress=False)
        save = trainer.save

        def save_then_stop() -> None:
            save()
            raise _Stop

        trainer.save = save_then_stop
        try:
            trainer.train()
        except _Stop:
            pass
        epoch = torch.load(resumed / CHECKPOINT, map_location="cpu", weights_only=True)["epoch"]
        train_cell(spec, resumed, device, progress=False)
        histories = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
                      for line in (path / "history.jsonl").read_text().splitlines()] for path in (straight, resumed)]
    return {"stopped_after_epoch": epoch, "epochs": [line["epoch"] for line in histories[1]],
            "history_equal": histories[0] == histories[1]}


def evaluation(device: torch.device) -> dict[str, Any]:
    """Step 3: the evaluation engine, AutoAttack included, on a random teacher."""
    torch.manual_seed(0)
    model = create_model("cnn5", in_channels=3, num_classes=10, image_size=16)
    data = torch.utils.data.TensorDataset(torch.rand(40, 3, 16, 16), torch.arange(40) % 10)
    data.targets = torch.arange(40) % 10
    began = time.perf_counter()
    result = evaluate(model, data, ["clean", "fgsm", "pgd20", "cw", "aa"], epsilon=8 / 255, step_size=2 / 255,
                      num_classes=10, device=device, aa_version="fast", batch_size=20, progress=False)
    return {"seconds": round(time.perf_counter() - began, 2),
            "avg": {name: result.metrics(name)["avg"] for name in result.predictions}}


def timings(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Step 4: seconds and memory of 2 generator + 2 student steps of FERD and CMI."""
    sizes = {"dataset": "synthetic", "teacher": "cnn5", "student": "resnet8", "batch": 8} if tiny else \
        {"dataset": "cifar10", "teacher": "wrn-34-10", "student": "resnet18", "batch": 256}
    outcome: dict[str, Any] = {"sizes": sizes}
    for method in ("ferd", "cmi"):
        for precision in ("fp32", "bf16"):
            with tempfile.TemporaryDirectory() as folder:
                spec = cells(Path(folder), precision=precision, methods=[method], pool=4 * sizes["batch"],
                             **sizes)[method]
                torch.manual_seed(0)
                trainer = Trainer(spec, Path(folder) / "run", device, progress=False)
                generator = torch.Generator().manual_seed(0)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                counter = FlopCount()
                synchronize(device)
                began = time.perf_counter()
                with trainer.training_precision():
                    trainer.method.synthesize(0)
                trainer.student.train()
                for _ in range(2):
                    trainer.student_step(generator)
                synchronize(device)
                seconds = time.perf_counter() - began
                with counter:  # the same work again, counted (not timed)
                    with trainer.training_precision():
                        trainer.method.synthesize(0)
                    for _ in range(2):
                        trainer.student_step(generator)
                flops = counter.get_total_flops()
                outcome[f"{method}/{precision}"] = {
                    "seconds": round(seconds, 3), "tflop": round(flops / 1e12, 4),
                    "sustained_tflops": round(flops / seconds / 1e12, 3),
                    "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                    if device.type == "cuda" else None}
        outcome[f"{method}/bf16_over_fp32_seconds"] = round(
            outcome[f"{method}/bf16"]["seconds"] / outcome[f"{method}/fp32"]["seconds"], 3)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="on the CPU at small sizes (what CI runs)")
    parser.add_argument("--out", default="reports/gpu/smoke.json", help="the JSON report")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible; run with --tiny for the CPU version", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    report: dict[str, Any] = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
        **numerics_flags(), "tiny": args.tiny}
    steps = (("methods", every_method), ("resume", kill_and_resume), ("evaluation", evaluation))
    for name, step in steps:
        began = time.perf_counter()
        report[name] = step(device)
        print(f"{name}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    report["timings"] = timings(device, args.tiny)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    failed = [name for name, result in report["methods"].items() if not result["ok"]]
    resume = report["resume"]
    print(f"wrote {args.out}: {len(report['methods']) - len(failed)}/{len(report['methods'])} method runs ok"
          + (f" (failed: {', '.join(failed)})" if failed else "")
          + f"; resume {'ok' if resume['epochs'] == [1, 2] else 'FAILED'}"
          + f"; FERD bf16/fp32 {report['timings']['ferd/bf16_over_fp32_seconds']}, "
          f"CMI {report['timings']['cmi/bf16_over_fp32_seconds']}")
    ok = not failed and resume["epochs"] == [1, 2] and (device.type == "cuda" or resume["history_equal"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
