"""Training a robust teacher: the recipe schema, the PGD-AT and TRADES objectives, a resumable loop.

``python -m harness teacher train FILE.yaml`` trains a teacher from a recipe like
``experiments/teachers/fashion-mnist.yaml``, checkpoints every epoch (re-running the same
command resumes), and at the end writes next to each other in ``output``: the weights
``<arch>.pt``, their SHA-256, the resolved recipe, and the per-class evaluation report
(JSON, and Markdown from :mod:`harness.report.teacher`) from the shared evaluation engine.

Objectives, with x_adv in the L∞ ball of radius ε around x, reached by ``threat.train_steps``
signed-gradient steps of ``threat.step_size``, each projected back onto the ball and [0, 1]:

- PGD-AT (Madry et al.): min_θ CE(f_θ(x_adv), y), x_adv maximising CE from a uniform random start;
- TRADES (Zhang et al.): min_θ CE(f_θ(x), y) + β·KL(f_θ(x) ‖ f_θ(x_adv)), x_adv maximising that KL
  from x + 0.001·N(0, I).

Adversarial examples are made in eval mode (:func:`harness.attacks.attack_mode`), so attack steps
do not update BatchNorm statistics. The loader, augmentation and global RNGs are reseeded from
``seed`` and the epoch at every epoch, so a run resumed from its per-epoch state reproduces an
uninterrupted one. The learning rate follows a one-cycle schedule or a piecewise one (×0.1 at 50 %
and 75 % of the steps).
"""

from __future__ import annotations

import io
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from harness.attacks import attack_mode, pgd, project
from harness.backbone.devices import randn_like
from harness.config import ConfigError, EvalSpec, ThreatModel, read_yaml_mapping
from harness.data import DatasetInfo, augment_batch, get_dataset
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.models import MODELS, Classifier, create_model
from harness.registry import RegistryError
from harness.report.teacher import markdown_report
from harness.schema import SchemaError, build, param, to_plain
from harness.store import atomic_write_bytes, atomic_write_json
from harness.teacher import sha256_of


@dataclass(frozen=True)
class TeacherTraining:
    """Adversarial training recipe of a teacher."""

    dataset: str
    arch: str
    output: str = param("teachers", doc="folder for weights, SHA-256, config and report")
    report: str | None = param(None, doc="also write the Markdown report to this file")
    objective: Literal["pgd-at", "trades"] = "pgd-at"
    trades_beta: float = param(6.0, ge=0)
    threat: ThreatModel = ThreatModel(train_steps=5)
    epochs: int = param(8, ge=1)
    batch_size: int = param(128, ge=1)
    lr: float = param(0.1, gt=0)
    lr_schedule: Literal["onecycle", "piecewise"] = "onecycle"
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    augment: bool = param(False, doc="random crop (pad size/8), plus flips where natural")
    seed: int = param(0, ge=0)
    eval: EvalSpec = EvalSpec(aa_version="fast", aa_n_eval=1000)
    data_root: str | None = None


def load_training_config(path: str | Path) -> TeacherTraining:
    """Validated :class:`TeacherTraining` from a YAML file (one-line errors naming file and key)."""
    path = Path(path)
    data = read_yaml_mapping(path, str(path))
    try:
        config = build(TeacherTraining, data)
        get_dataset(config.dataset)
        MODELS.get(config.arch)
    except (SchemaError, RegistryError) as error:
        raise ConfigError(f"{path}: {error}") from None
    info = get_dataset(config.dataset)
    threat = replace(config.threat, epsilon=config.threat.epsilon or info.epsilon,
                     step_size=config.threat.step_size or info.step_size)
    return replace(config, dataset=info.name, arch=MODELS.canonical(config.arch), threat=threat)


# --------------------------------------------------------------------------- objectives
def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Madry et al.: CE on PGD-k examples (random start, made with the model in eval mode)."""
    with attack_mode(model):
        x_adv = pgd(model, x, y, epsilon=threat.epsilon, step_size=threat.step_size, steps=threat.train_steps)
    return F.cross_entropy(model(x_adv), y)


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, beta: float) -> torch.Tensor:
    """Zhang et al.: CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), x_adv maximising that KL from x + 0.001·N(0,1)."""
    with attack_mode(model):
        target = F.softmax(model(x), dim=1)
        x_adv = project(x + 0.001 * randn_like(x), x, threat.epsilon)
        for _ in range(threat.train_steps):
            x_adv.requires_grad_(True)
            divergence = F.kl_div(F.log_softmax(model(x_adv), dim=1), target, reduction="sum")
            (grad,) = torch.autograd.grad(divergence, x_adv)
            x_adv = project(x_adv.detach() + threat.step_size * grad.sign(), x, threat.epsilon)
    logits = model(x)
    robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, y) + beta * robust


# --------------------------------------------------------------------------- training
def _scheduler(optimizer: torch.optim.Optimizer, config: TeacherTraining, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    milestones = [int(total * 0.5), int(total * 0.75)]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def _save_torch(path: Path, obj: object) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def train_teacher(config: TeacherTraining, *, device: str = "cpu", progress: bool = True,
                  command: str = "") -> dict:
    """Train (or resume) the teacher described by ``config``; return the evaluation report."""
    info = get_dataset(config.dataset)
    output = Path(config.output)
    state_path = output / "train_state.pt"
    torch.manual_seed(config.seed)
    model = create_model(config.arch, in_channels=info.channels, num_classes=info.num_classes,
                         image_size=info.image_size).to(device)
    train = info.load("train", config.data_root)
    loader_generator = torch.Generator()
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                         generator=loader_generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config, len(loader))
    start_epoch, seconds, history = 0, 0.0, []
    resolved = to_plain(config)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)  # each part is placed by its owner
        if state["config"] != json.loads(json.dumps(resolved)):
            raise HarnessError(f"{state_path}: was made by a different config; remove it or change 'output'")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, seconds, history = state["epoch"], state["seconds"], json.loads(state["history"])
        print(f"resuming {config.arch} on {info.name} after epoch {start_epoch}/{config.epochs}", file=sys.stderr)
    augment_generator = torch.Generator()
    for epoch in range(start_epoch, config.epochs):
        loader_generator.manual_seed(config.seed * 10_000 + epoch)
        augment_generator.manual_seed(config.seed * 10_000 + epoch)
        torch.manual_seed(config.seed * 10_000 + epoch)
        model.train()
        began = time.perf_counter()
        total_loss, batches = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            if config.augment:
                x = augment_batch(x, info, augment_generator)
            if config.objective == "trades":
                loss = trades_loss(model, x, y, config.threat, config.trades_beta)
            else:
                loss = pgd_at_loss(model, x, y, config.threat)
            if not math.isfinite(loss.item()):
                raise HarnessError(f"teacher training diverged at epoch {epoch + 1} (loss {loss.item()})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss, batches = total_loss + loss.item(), batches + 1
            bar.set_postfix(loss=f"{total_loss / batches:.3f}")
        seconds += time.perf_counter() - began
        history.append({"epoch": epoch + 1, "loss": total_loss / batches, "seconds": round(seconds, 1)})
        print(f"epoch {epoch + 1}/{config.epochs}: loss {total_loss / batches:.4f} ({seconds / 60:.1f} min)",
              file=sys.stderr)
        _save_torch(state_path, {"config": resolved, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "seconds": seconds,
                                 "history": json.dumps(history)})
    return _finish(model, config, info, output, seconds, history, device, progress, command)


def _finish(model: Classifier, config: TeacherTraining, info: DatasetInfo, output: Path, seconds: float,
            history: list, device: str, progress: bool, command: str) -> dict:
    """Write weights, SHA-256, config and the per-class report side by side."""
    weights = output / f"{config.arch}.pt"
    _save_torch(weights, {k: v.cpu() for k, v in model.state_dict().items()})
    digest = sha256_of(weights)
    atomic_write_bytes(output / f"{config.arch}.pt.sha256", f"{digest}  {weights.name}\n".encode())
    atomic_write_bytes(output / "config.yaml", yaml.safe_dump(to_plain(config), sort_keys=False).encode())
    spec = config.eval
    began = time.perf_counter()
    result = evaluate(model, info.load("test", config.data_root), spec.attacks, epsilon=config.threat.epsilon,
                      step_size=config.threat.step_size, num_classes=info.num_classes, n_eval=spec.n_eval,
                      aa_n_eval=spec.aa_n_eval, batch_size=spec.batch_size, device=device, seed=config.seed,
                      aa_version=spec.aa_version, progress=progress)
    report = {
        "arch": config.arch, "checkpoint": weights.name, "sha256": digest, "command": command,
        "train_seconds": round(seconds, 1), "eval_seconds": round(time.perf_counter() - began, 1),
        "history": history, "config": to_plain(config),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": device, "threads": torch.get_num_threads()},
        **result.to_dict(info.name),
    }
    atomic_write_json(output / "report.json", report)
    markdown = markdown_report(report).encode()
    atomic_write_bytes(output / "report.md", markdown)
    if config.report:
        atomic_write_bytes(Path(config.report), markdown)
    (output / "train_state.pt").unlink(missing_ok=True)
    return report
