"""``harness cost``: FLOPs, activation memory and GPU-hours of every cell, before anything is launched.

Each cell is built as the trainer builds it — same teacher and student architectures, method
and hyper-parameters, schedule batch size — with random weights, on PyTorch's ``meta`` device
(shapes without data, so a WRN-34-10 epoch is counted in seconds on a laptop), and the real
code runs under :class:`torch.utils.flop_counter.FlopCounterMode`:

- one generation round, ``method.synthesize``, at the schedule's T_g (its own budget for DFHL
  and Fast), from the method's steady state (:meth:`Method.steady_state_for_estimate`, e.g.
  CMI's memory bank full);
- one student step (sample, teacher, adversarial examples, loss, backward, SGD), times T_s;
- the final evaluation's per-image cost of clean, FGSM, PGD-20 and CW∞, times ``eval.n_eval``
  (the full test set by default). AutoAttack is not counted: its cost depends on how many
  images stay robust after each stage.

FLOPs are ``FlopCounterMode``'s count (2 per multiply-add, matrix products and convolutions
only; element-wise ops are left out). The activation memory is the peak of the tensors held
for backward (parameters excluded), tracked with ``saved_tensors_hooks``; the persistent state
is the student, its optimizer, the method's state and its pool or bank at capacity.
GPU-hours assume a sustained throughput (``--tflops`` or a named ``--gpu``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from harness.config import RunSpec
from harness.data import ImageTensorDataset, get_dataset

# Dense peak TFLOP/s from NVIDIA's data sheets (SXM parts; TF32 and bf16 without sparsity), and
# the fraction of it assumed sustained by these convnet workloads. Measure yours with
# `python benchmarks/gpu_smoke.py` and pass --tflops instead.
PEAK_TFLOPS = {"a100-fp32": 19.5, "a100-tf32": 156.0, "a100-bf16": 312.0,
               "h100-fp32": 67.0, "h100-tf32": 495.0, "h100-bf16": 989.0}
SUSTAINED_FRACTION = 0.4
DEFAULT_GPU = "a100-tf32"
EVAL_FLOP_ATTACKS = ("clean", "fgsm", "pgd20", "cw")
EVAL_PROBE_IMAGES = 4


class ActivationMeter:
    """Peak bytes of the tensors autograd holds for backward (parameters excluded)."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def _pack(self, tensor: torch.Tensor) -> Any:
        if isinstance(tensor, nn.Parameter):
            return tensor
        return _Held(tensor, self)

    @staticmethod
    def _unpack(held: Any) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held

    def __enter__(self) -> "ActivationMeter":
        self._hooks = saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Held:
    """A saved tensor, counted while autograd keeps it."""

    __slots__ = ("tensor", "meter", "size")

    def __init__(self, tensor: torch.Tensor, meter: ActivationMeter) -> None:
        self.tensor, self.meter, self.size = tensor, meter, tensor.numel() * tensor.element_size()
        meter.live += self.size
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.size


@dataclass(frozen=True)
class CellCost:
    """What one cell costs, at the schedule's sizes."""

    key: str
    label: str
    synthesis_flops: float  # one epoch's generation round
    student_step_flops: float
    evaluation_flops: float
    total_flops: float
    activation_bytes: int  # peak held for backward, synthesis or student step
    state_bytes: int  # student, optimizer, method state, pool / bank at capacity

    def gpu_hours(self, tflops: float) -> float:
        return self.total_flops / (tflops * 1e12) / 3600


def _random_train_data(spec: RunSpec, size: int) -> Dataset:
    """A stand-in training set of the dataset's shape (a data-based method's cost needs no real images)."""
    info = get_dataset(spec.settings.dataset)
    images = torch.zeros(size, info.channels, info.image_size, info.image_size, dtype=torch.uint8)
    targets = torch.arange(size) % info.num_classes
    return ImageTensorDataset(images, targets, info.class_names)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every FLOP counts under "Global" only."""

    parents = ("Global",)

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class FlopCount(FlopCounterMode):
    """``FlopCounterMode`` without per-module tracking, whose backward hooks break
    ``torch.autograd.grad`` with respect to a leaf input (every attack step does that)."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


def _flops(run: Any) -> tuple[int, int]:
    """FLOPs and peak activation bytes of ``run()``."""
    counter = FlopCount()
    with counter, ActivationMeter() as meter:
        run()
    return counter.get_total_flops(), meter.peak


def _eval_flops_per_image(trainer: Any) -> float:
    """Per-image FLOPs of the evaluation attacks (clean, FGSM, PGD-20, CW∞) on the student."""
    from harness.evaluate import evaluate

    info = trainer.info
    data = _random_train_data(trainer.spec, EVAL_PROBE_IMAGES)
    attacks = [a for a in trainer.spec.settings.eval.attacks if a in EVAL_FLOP_ATTACKS]
    flops, _ = _flops(lambda: evaluate(trainer.student, data, attacks, epsilon=trainer.threat.epsilon,
                                       step_size=trainer.threat.step_size, num_classes=info.num_classes,
                                       batch_size=EVAL_PROBE_IMAGES, device="meta", progress=False))
    return flops / EVAL_PROBE_IMAGES


def estimate_cell(spec: RunSpec, label: str = "") -> CellCost:
    """Count one cell's FLOPs and memory on the meta device (see the module docstring)."""
    from harness.backbone.trainer import Trainer

    settings = spec.settings
    schedule = settings.schedule
    info = get_dataset(settings.dataset)
    untrained = replace(settings, teacher=replace(settings.teacher, checkpoint=None, sha256=None))
    probe = replace(spec, settings=untrained)
    train_data = _random_train_data(spec, max(2 * schedule.batch_size, 64)) if spec.entry.plugin.needs_train_data \
        else None
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(settings.seed)
        trainer = Trainer(probe, Path(folder), "meta", progress=False, train_data=train_data)
        method = trainer.method
        method.steady_state_for_estimate()
        epoch = schedule.warmup_epochs  # a student epoch: some methods add terms after the warm-up
        synthesis, synthesis_memory = _flops(lambda: method.synthesize(epoch))
        trainer.student.train()
        generator = torch.Generator().manual_seed(0)
        step, step_memory = _flops(lambda: trainer.student_step(generator))
        evaluation = _eval_flops_per_image(trainer) * (settings.eval.n_eval or _test_size(info))
        state = _tensor_bytes(trainer.student.state_dict()) + _tensor_bytes(trainer.optimizer.state_dict()) \
            + _tensor_bytes(method.state_dict())
    student_epochs = schedule.epochs - schedule.warmup_epochs
    total = schedule.epochs * synthesis + student_epochs * schedule.student_steps * step + evaluation
    return CellCost(spec.key, label or spec.method, float(synthesis), float(step), float(evaluation), float(total),
                    max(synthesis_memory, step_memory), state)


TEST_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "tinyimagenet": 10_000, "fashion-mnist": 10_000}


def _test_size(info: Any) -> int:
    return TEST_SIZES.get(info.name, 10_000)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(value)}


def cell_labels(specs: list[RunSpec]) -> list[str]:
    """``method/student seedK`` plus every other setting that varies across the grid."""
    flats = [_flat(spec.identity()) for spec in specs]
    fixed = {"seed", "student", "plugin", "version"}
    varying = sorted(key for key in set().union(*flats) if key not in fixed and key.split(".")[0] != "teacher"
                     and len({flat.get(key) for flat in flats}) > 1)
    labels = []
    for spec, flat in zip(specs, flats):
        extra = ", ".join(f"{key.split('.')[-1]}={json.loads(flat[key])}" for key in varying if key in flat)
        labels.append(f"{spec.method}/{spec.settings.student} s{spec.settings.seed}" + (f" ({extra})" if extra else ""))
    return labels


def throughput(gpu: str | None, tflops: float | None) -> tuple[float, str]:
    """Sustained TFLOP/s and how it was chosen."""
    if tflops is not None:
        return tflops, f"{tflops:g} TFLOP/s sustained (--tflops)"
    name = gpu or DEFAULT_GPU
    value = PEAK_TFLOPS[name] * SUSTAINED_FRACTION
    return value, f"{name}: {SUSTAINED_FRACTION:.0%} of its {PEAK_TFLOPS[name]:g} TFLOP/s dense peak = {value:g} TFLOP/s"


def render(costs: list[CellCost], tflops: float, basis: str) -> str:
    """The per-cell table and the grid's total, as text."""
    header = (f"{'cell':<34} {'synth/epoch':>12} {'student/step':>13} {'total':>10} {'act. mem':>9} "
              f"{'state':>9} {'GPU-h':>7}")
    lines = [header, "-" * len(header)]
    for cost in costs:
        lines.append(f"{cost.label[:34]:<34} {_si(cost.synthesis_flops):>12} {_si(cost.student_step_flops):>13} "
                     f"{_si(cost.total_flops):>10} {_gib(cost.activation_bytes):>9} {_gib(cost.state_bytes):>9} "
                     f"{cost.gpu_hours(tflops):>7.1f}")
    total = sum(c.total_flops for c in costs)
    lines += ["-" * len(header),
              f"{len(costs)} cells: {_si(total)}FLOP in all, {total / (tflops * 1e12) / 3600:.1f} GPU-hours at {basis}",
              "FLOPs: matrix products and convolutions (2 per multiply-add); AutoAttack not counted. "
              "Memory in GiB at the schedule's batch size."]
    return "\n".join(lines) + "\n"


def _si(flops: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} "


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f}"

