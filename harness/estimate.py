"""``harness cost``: FLOPs, activation memory and GPU-hours of every cell, before anything is launched.

Each cell is built as the trainer builds it — same teacher and student architectures, method
and hyper-parameters, schedule batch size — with random weights, on PyTorch's ``meta`` device
(shapes without data, so a WRN-34-10 epoch is counted in seconds on a laptop), and the real
code runs under :class:`FlopCount` (``torch.utils.flop_counter``'s formulas):

- one generation round, ``method.synthesize``, at the schedule's T_g (its own budget for DFHL
  and Fast), from the method's steady state (:meth:`Method.steady_state_for_estimate`, e.g.
  CMI's memory bank full), extrapolated from rounds of 1, 2 and 3 steps (:func:`synthesis_cost`);
- one student step (sample, teacher, adversarial examples, loss, backward, SGD), times T_s;
- the final evaluation's per-image cost of clean, FGSM, PGD-20 and CW∞, times ``eval.n_eval``
  (the full test set by default). AutoAttack is not counted: its cost depends on how many
  images stay robust after each stage.

FLOPs are ``torch.utils.flop_counter``'s count (2 per multiply-add, matrix products and convolutions
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from harness.attacks import ATTACKS
from harness.config import RunSpec
from harness.data import ImageTensorDataset, get_dataset
from harness.gpus import DEFAULT_GPU, PEAK_TFLOPS, SUSTAINED_FRACTION

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
    """A saved tensor, counted while autograd keeps it. Kept detached: a saved *output* kept with
    its ``grad_fn`` would close a reference cycle through the graph that never frees it."""

    __slots__ = ("tensor", "meter", "size")

    def __init__(self, tensor: torch.Tensor, meter: ActivationMeter) -> None:
        self.tensor, self.meter, self.size = tensor.detach(), meter, tensor.numel() * tensor.element_size()
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


class FlopCount(TorchDispatchMode):
    """FLOPs of the operators ``torch.utils.flop_counter`` knows (matrix products, convolutions and
    their backward passes), with its formulas.

    Unlike ``FlopCounterMode`` it keeps no per-module tally — whose backward hooks break
    ``torch.autograd.grad`` with respect to a leaf input, as every attack step takes — and it does
    not decompose the other operators to look for products inside them (none of the models here
    hides one), which makes counting a WRN-34-10 epoch on the meta device about 15× faster.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        return self.total


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
    attacks = [a for a in trainer.spec.settings.eval.attacks if not ATTACKS.get(a).whole_set]  # AutoAttack: not counted
    flops, _ = _flops(lambda: evaluate(trainer.student, data, attacks, epsilon=trainer.threat.epsilon,
                                       step_size=trainer.threat.step_size, num_classes=info.num_classes,
                                       batch_size=EVAL_PROBE_IMAGES, device="meta", progress=False))
    return flops / EVAL_PROBE_IMAGES


AFFINE_PROBES = (1, 2, 3)  # generator steps of the three probe rounds


def probe_trainer(spec: RunSpec, folder: Path, generator_steps: int, device: str = "meta",
                  batch_size: int | None = None) -> Any:
    """The cell's trainer on ``device`` with random weights, ``generator_steps`` per epoch (and
    ``batch_size`` if given) and its buffers full (:meth:`Method.steady_state_for_estimate`).

    It runs in fp32 without ``torch.compile``: a bf16 cell does the same operations (the same FLOP
    count; its activations take about half the memory counted), and neither autocast nor compilation
    runs on the meta device."""
    from harness.trainer import Trainer

    settings = spec.settings
    schedule = replace(settings.schedule, generator_steps=generator_steps,
                       batch_size=batch_size or settings.schedule.batch_size)
    untrained = replace(settings, schedule=schedule, precision="fp32", compile=False)
    train_data = _random_train_data(spec, max(2 * schedule.batch_size, 64)) if spec.entry.plugin.needs_train_data \
        else None
    torch.manual_seed(settings.seed)
    trainer = Trainer(replace(spec, settings=untrained), folder, device, progress=False, train_data=train_data,
                      teacher_weights=False)
    trainer.method.steady_state_for_estimate()
    return trainer


def _synthesis(spec: RunSpec, folder: Path, generator_steps: int) -> tuple[int, int]:
    """FLOPs and activation peak of one generation round of a student epoch at ``generator_steps``."""
    trainer = probe_trainer(spec, folder, generator_steps)
    epoch = spec.settings.schedule.warmup_epochs  # some methods add terms after the warm-up
    return _flops(lambda: trainer.method.synthesize(epoch))


def synthesis_cost(spec: RunSpec, folder: Path) -> tuple[float, int]:
    """One epoch's generation FLOPs at the schedule's T_g, and its activation peak.

    Counting 200 generator steps on the meta device takes minutes (its kernels are Python), so
    rounds of 1, 2 and 3 steps are counted and, when their costs are affine in the steps (equal
    increments — every method here), extrapolated to T_g; otherwise the round is counted whole.
    """
    steps = spec.settings.schedule.generator_steps
    if steps <= max(AFFINE_PROBES):
        flops, peak = _synthesis(spec, folder, steps)
        return float(flops), peak
    (f1, m1), (f2, m2), (f3, m3) = (_synthesis(spec, folder, probe) for probe in AFFINE_PROBES)
    if f3 - f2 != f2 - f1:
        flops, peak = _synthesis(spec, folder, steps)
        return float(flops), peak
    return float(f1 + (steps - 1) * (f2 - f1)), max(m1, m2, m3)


def estimate_cell(spec: RunSpec, label: str = "") -> CellCost:
    """Count one cell's FLOPs and memory on the meta device (see the module docstring)."""
    settings = spec.settings
    schedule = settings.schedule
    info = get_dataset(settings.dataset)
    with tempfile.TemporaryDirectory() as folder:
        synthesis, synthesis_memory = synthesis_cost(spec, Path(folder))
        trainer = probe_trainer(spec, Path(folder), 1)
        trainer.method.synthesize(schedule.warmup_epochs)  # optimizer states exist, as in a late epoch
        trainer.student.train()
        generator = torch.Generator().manual_seed(0)
        step, step_memory = _flops(lambda: trainer.student_step(generator))
        period = trainer.method.sampling_period_for_estimate()
        if period > 1:  # the first step generated (ZSKT's reference mode): the next ones reuse its batch
            reuse, reuse_memory = _flops(lambda: trainer.student_step(generator))
            step, step_memory = reuse + (step - reuse) / period, max(step_memory, reuse_memory)
        evaluation = _eval_flops_per_image(trainer) * (settings.eval.n_eval or _test_size(info))
        state = _tensor_bytes(trainer.student.state_dict()) + _tensor_bytes(trainer.optimizer.state_dict()) \
            + _tensor_bytes(trainer.method.state_dict())
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
    """``method/student sK`` plus every other setting that varies across the grid (hyper-parameters
    compared between cells of the same method only)."""
    flats = [_flat(spec.identity()) for spec in specs]
    named = {"method", "seed", "student", "plugin", "version"}
    labels = []
    for spec, flat in zip(specs, flats):
        peers = [other for other, s in zip(flats, specs) if s.method == spec.method]
        varying = [key for key in sorted(flat) if key not in named and key.split(".")[0] != "teacher"
                   and len({other.get(key) for other in (peers if key.startswith("params.") else flats)}) > 1]
        extra = ", ".join(f"{key.split('.')[-1]}={json.loads(flat[key])}" for key in varying)
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

