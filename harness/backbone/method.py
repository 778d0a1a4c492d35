"""The method contract and the method registry.

A method plugin is one file in ``methods/``: a :class:`Method` subclass with its
hyper-parameters as a frozen dataclass ``Params`` (fields declared with
:func:`harness.schema.param`), a ``version`` string that enters the run key, and the
hooks the shared trainer calls each epoch (docs/architecture.md, "The method contract"):

- ``synthesize(epoch)``: the generation stage of one epoch (update generator/images, fill the pool);
- ``sample(batch_size, generator)``: clean synthetic images (and labels when the method has them);
- ``gallery(n, generator)``: images for the samples figure (default: the pool, else ``sample``);
- ``adversarial(x, teacher_logits, generator, labels)``: adversarial examples for the distillation
  step (``labels`` as returned by ``sample``, or None);
- ``student_loss(x, x_adv, teacher_logits, labels)``: the distillation loss;
- ``end_of_epoch(epoch)``: e.g. FERD's class reweighting;
- ``state_dict()`` / ``load_state_dict(state)``: what a checkpoint must keep (weights_only-safe).

``register_method`` also registers *presets*: names for fixed overrides of the
parameters (e.g. the FERD ablations), usable as method names in grids.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from harness.attacks import attack_mode
from harness.backbone.cost import Cost
from harness.backbone.devices import to_host
from harness.backbone.distill import kl_pgd, rslad_loss
from harness.backbone.pool import ImagePool
from harness.data import DatasetInfo
from harness.errors import HarnessError
from harness.registry import Registry


@dataclass(frozen=True)
class NoParams:
    """Hyper-parameters of a method that has none."""


@dataclass(frozen=True)
class Display:
    """How tables and figures show a method (read by ``harness.report``, so that a plugin loaded from
    ``HARNESS_PLUGINS`` is drawn and tabulated like the shipped ones without editing the reports).

    ``color``: the hue of the method's family in figures (its variants get shades; None: a spare
    hue). ``order``: its place among methods in tables and legends (lower first; presets follow
    their method in registration order). ``ablation``: method or preset name → row title in the
    ablation table. ``symbols``: hyper-parameter → symbol in column titles (``gamma`` → γ).
    ``value_titles``: hyper-parameter → value → title of that value in tables. ``views``: table
    layouts the method's sweeps make — layout name → (swept hyper-parameter, or a prefix ending in
    ``_`` for a family of them, and the table's title). ``class_weights``: what the ``class_weights``
    the method logs in its history are — ``sampling`` probabilities p (sum 1; drawn against the uniform
    1/C) or ``loss`` weights ω (mean 1; drawn against 1).
    """

    color: str | None = None
    order: int = 1000
    ablation: Mapping[str, str] = field(default_factory=dict)
    symbols: Mapping[str, str] = field(default_factory=dict)
    value_titles: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    views: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    class_weights: Literal["sampling", "loss"] = "sampling"


@dataclass
class MethodContext:
    """What the trainer hands a method: models, data facts, budget, device and cost meter."""

    teacher: nn.Module
    student: nn.Module
    info: DatasetInfo
    epsilon: float
    step_size: float
    attack_steps: int
    batch_size: int
    generator_steps: int
    pool_size: int
    device: torch.device
    cost: Cost
    train_data: Dataset | None = None
    warmup_epochs: int = 0  # generation-only epochs before student training (the schedule's)
    kl_reduction: str = "batchmean"  # the RSLAD step's KL: batchmean | mean (the schedule's)
    synthesis_student_bn: str = "running"  # the student's BatchNorm statistics during synthesis (the schedule's)
    # the student's learning rate now over its initial one (1 → lr_min/lr along the schedule's cosine), for
    # methods whose own optimiser decays with the student's (ZSKT's generator); 1 outside a trainer
    student_lr_scale: Callable[[], float] = field(default=lambda: 1.0)


class Method:
    """Base class of every method plugin (see the module docstring for the hooks).

    Subclasses implement ``synthesize`` and ``sample``; ``adversarial`` and
    ``student_loss`` default to the RSLAD conversion (KL-PGD on the student, Eq. of
    docs/methods.md). State that must survive a restart goes through ``state_dict``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type] = NoParams
    needs_train_data: ClassVar[bool] = False  # data-based references (Fair-ARD): ``ctx.train_data`` is set
    synthesizes: ClassVar[bool] = True  # runs T_g generator/image steps per epoch (not the noise control, not data-based)
    # schedule keys the method's reference runs with (e.g. DFHL's weight decay), used where a file leaves them unset
    schedule_defaults: ClassVar[Mapping[str, Any]] = {}
    display: ClassVar[Display] = Display()  # how reports show it

    def __init__(self, params: Any, context: MethodContext) -> None:
        self.params = params
        self.ctx = context

    @classmethod
    def default_params(cls, dataset: str) -> Any:
        """Defaults for ``dataset`` (plugins override to give per-dataset defaults)."""
        return cls.Params()

    def synthesize(self, epoch: int) -> dict[str, float]:
        """The generation stage of one epoch; returns numbers for the history."""
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clean synthetic images in [0, 1] for one student step (and labels if the method has them)."""
        raise NotImplementedError

    def gallery(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Up to ``n`` synthetic images for the samples figure (Figs. 6–7): distinct images of
        the pool as stored when the method keeps one, else a batch from ``sample``."""
        pool = getattr(self, "pool", None)
        if isinstance(pool, ImagePool) and len(pool):
            return to_host(pool.draw(n, generator))
        return to_host(self.sample(n, generator)[0])

    def adversarial(self, x: torch.Tensor, teacher_logits: torch.Tensor, generator: torch.Generator,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples for the distillation step (default: KL-PGD on the student)."""
        return kl_pgd(self.ctx.student, x, teacher_logits, epsilon=self.ctx.epsilon, step_size=self.ctx.step_size,
                      steps=self.ctx.attack_steps, generator=generator)

    def student_loss(self, x: torch.Tensor, x_adv: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        """The distillation loss (default: RSLAD, 5/6 on adversarial + 1/6 on clean)."""
        student = self.ctx.student
        return rslad_loss(teacher_logits, student(x), student(x_adv), reduction=self.ctx.kl_reduction)

    @contextmanager
    def student_for_synthesis(self, epoch: int) -> Iterator[nn.Module]:
        """The student as the generator sees it: eval mode, parameters frozen (``attack_mode``).

        With ``schedule.synthesis_student_bn`` ``batch`` (every epoch) or ``batch_first_epoch``
        (epoch 0 only), its BatchNorm layers normalise with the statistics of the batch in hand
        instead of the running ones, and the running statistics are restored afterwards, so the
        synthetic batches never enter them. At initialisation the running statistics (mean 0,
        variance 1) make some students' eval logits nearly constant (MobileNetV2's ≈ 1e-6 std): a
        generator loss through such a student has no gradient to follow.
        """
        mode = self.ctx.synthesis_student_bn
        batch_statistics = mode == "batch" or (mode == "batch_first_epoch" and epoch == 0)
        with attack_mode(self.ctx.student) as student:
            if not batch_statistics:
                yield student
                return
            layers = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            saved = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in layers]
            for layer in layers:
                layer.train()
            try:
                yield student
            finally:
                for layer, state in zip(layers, saved, strict=True):
                    layer.load_state_dict(state)
                    layer.eval()

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """After the student steps of an epoch (e.g. FERD's reweighting); numbers for the history."""
        return {}

    def steady_state_for_estimate(self) -> None:
        """Fill the method's buffers as a late epoch has them, for ``harness cost`` (which runs
        on the data-less meta device): by default the image pool at its capacity. Methods whose
        cost grows with a buffer (CMI's memory bank) fill that too."""
        pool = getattr(self, "pool", None)
        if isinstance(pool, ImagePool):
            pool.fill_for_estimate()

    def sampling_period_for_estimate(self) -> int:
        """Student steps over which generation inside ``sample`` repeats (1: ``sample`` never
        generates). ``harness cost`` counts a step that generates and one that does not and
        spreads the difference over this period (ZSKT's reference mode: its n_s)."""
        return 1

    def state_dict(self) -> dict[str, Any]:
        """Method state to checkpoint (generators, optimizers, pools, weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclass(frozen=True)
class MethodEntry:
    """A registered method name: its plugin class and the preset's parameter overrides."""

    name: str
    plugin: type[Method]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def plugin_name(self) -> str:
        return self.plugin.name


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(
    name: str, *, presets: Mapping[str, Mapping[str, Any]] | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a plugin under ``name`` plus its named presets."""

    def add(cls: type[Method]) -> type[Method]:
        if not (dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen):
            raise TypeError(f"{cls.__name__}.Params must be a frozen dataclass")
        cls.name = name
        METHODS.register(name, MethodEntry(name, cls), aliases=aliases)
        for preset, overrides in (presets or {}).items():
            unknown = set(overrides) - {f.name for f in dataclasses.fields(cls.Params)}
            if unknown:
                raise TypeError(f"preset {preset!r} sets unknown parameters {sorted(unknown)}")
            METHODS.register(preset, MethodEntry(preset, cls, dict(overrides)))
        return cls

    return add


_loaded = False


def load_plugins() -> Registry[MethodEntry]:
    """Import every module of the ``methods`` package once (each registers itself).

    Modules named in the environment variable ``HARNESS_PLUGINS`` (comma-separated,
    importable from ``sys.path``) are imported too: methods kept outside this repository.
    """
    global _loaded
    if not _loaded:
        _loaded = True
        package = importlib.import_module("methods")
        modules = [f"methods.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
        modules += [m.strip() for m in os.environ.get("HARNESS_PLUGINS", "").split(",") if m.strip()]
        for module in modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                raise HarnessError(f"HARNESS_PLUGINS: cannot import method module '{module}' ({error})") from None
    return METHODS
