"""The shared trainer loop: one grid cell from its spec to ``metrics.json`` (docs/architecture.md, Result store).

Per epoch (docs/methods.md, "Distillation schedule"): the method's generation round
(``synthesize``), then — after the warm-up epochs — T_s student steps on batches from
``sample`` with the method's ``adversarial`` examples and ``student_loss`` (student SGD,
cosine over the student steps), then ``end_of_epoch``. Every ``history_every`` epochs the
student's clean and PGD-20 accuracy on a small stratified subset of the *training* split
(data the data-free student never sees) goes into ``history.jsonl`` — for curves only; the
result is always the last epoch. Checkpoints every ``checkpoint_every`` epochs hold the
student, its optimizer and schedule, the method's state and the history; every epoch
reseeds from (seed, epoch), so a killed run resumes where it stopped and ends as if it never had.
"""

from __future__ import annotations

import io
import json
import math
import platform
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from harness.backbone.cost import Cost
from harness.backbone.devices import autocast, to_float, to_host
from harness.backbone.method import MethodContext
from harness.backbone.pool import ImagePool
from harness.config import RunSpec
from harness.data import DatasetInfo, get_dataset
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.models import create_model
from harness.store import atomic_write, atomic_write_bytes, atomic_write_json, write_status
from harness.teacher import load_teacher

CHECKPOINT = Path("checkpoints") / "last.pt"
GALLERY = "synthetic.npz"
GALLERY_DRAW = 500  # images drawn from the final pool and labelled by the teacher
GALLERY_PER_CLASS = 8  # of which at most this many per teacher class are kept
COMPILED_GRAPHS = 64  # recompilations allowed per compiled model with `compile: true`


class RunFailed(HarnessError):
    """A run that cannot go on (e.g. a loss that became NaN); recorded in status.json."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model, e.g. "Intel(R) Xeon(R) Processor" (``platform.processor()`` is empty on Linux)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numerics_flags() -> dict[str, Any]:
    """The flags that change float results on a GPU: cuDNN, TF32 and determinism settings in force."""
    cudnn = torch.backends.cudnn
    return {
        "cudnn": cudnn.version() if cudnn.is_available() else None,
        "cudnn_benchmark": cudnn.benchmark, "cudnn_deterministic": cudnn.deterministic,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def environment(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "git_commit": commit, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "host": socket.gethostname(), "threads": torch.get_num_threads(), "argv": sys.argv, **numerics_flags(),
    }


class DamagedCheckpoint(Exception):
    """``checkpoints/last.pt`` cannot be resumed from (unreadable, another run's, or not this cell's shape)."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a partial checkpoint,
    and no in-memory copy of the whole serialised state."""
    atomic_write(path, lambda stream: torch.save(state, stream))


class Trainer:
    """Trains and evaluates the student of one cell in ``run_dir``."""

    def __init__(self, spec: RunSpec, run_dir: Path, device: str | torch.device = "cpu", progress: bool = True,
                 train_data: Dataset | None = None, teacher_weights: bool = True) -> None:
        self.spec, self.run_dir, self.progress = spec, Path(run_dir), progress
        self.device = torch.device(device)
        settings = spec.settings
        self.precision = settings.precision
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.schedule, self.threat = settings.schedule, settings.threat
        self.info: DatasetInfo = get_dataset(settings.dataset)
        self.cost = Cost()
        torch.manual_seed(settings.seed)  # an untrained teacher (tests, cost estimates) is seeded too
        self.teacher = load_teacher(settings.teacher, self.info, self.device, weights=teacher_weights)
        self.cost.watch_teacher(self.teacher)
        torch.manual_seed(settings.seed)
        self.student = create_model(settings.student, in_channels=self.info.channels,
                                    num_classes=self.info.num_classes, image_size=self.info.image_size).to(self.device)
        if settings.compile:  # in place: parameters, hooks and state-dict keys stay the module's own
            # one graph per combination of train/eval mode, grad mode and input shape a cell meets
            # (synthesis, attacks, loss, probe): more than torch's default of 8
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_GRAPHS)
            self.teacher.compile()
            self.student.compile()
        plugin = spec.entry.plugin
        if plugin.needs_train_data and train_data is None:
            train_data = self.info.load("train", settings.data_root)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=self.schedule.lr,
                                         momentum=self.schedule.momentum, weight_decay=self.schedule.weight_decay)
        context = MethodContext(
            teacher=self.teacher, student=self.student, info=self.info, epsilon=self.threat.epsilon,
            step_size=self.threat.step_size, attack_steps=self.threat.train_steps,
            batch_size=self.schedule.batch_size, generator_steps=self.schedule.generator_steps,
            pool_size=self.schedule.pool_size, device=self.device, cost=self.cost, train_data=train_data,
            warmup_epochs=self.schedule.warmup_epochs, kl_reduction=self.schedule.kl_reduction,
            synthesis_student_bn=self.schedule.synthesis_student_bn, student_lr_scale=self.student_lr_scale)
        self.method = plugin(spec.params, context)
        student_epochs = self.schedule.epochs - self.schedule.warmup_epochs
        self.lr_per_epoch = self.schedule.lr_schedule == "epochs"
        periods = self.schedule.epochs if self.lr_per_epoch else student_epochs * self.schedule.student_steps
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=periods,
                                                                    eta_min=self.schedule.lr_min)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "key": self.spec.key, "epoch": self.epoch, "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
            "cost": self.cost.to_dict(), "history": json.dumps(self.history)})

    def load_checkpoint(self) -> bool:
        """Restore the state of the last checkpoint if there is one (writes nothing); True if found.

        The file is read to the CPU; each part is placed where it lives (models and optimizer
        state on the run's device, the method's state where the method keeps it).
        """
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a truncated or foreign file
            raise DamagedCheckpoint(f"unreadable ({type(error).__name__})") from None
        if state.get("key", self.spec.key) != self.spec.key:  # checkpoints before the key was stored pass
            raise DamagedCheckpoint(f"from another run (key {state['key']}, the cell's is {self.spec.key})")
        try:
            self.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.method.load_state_dict(state["method"])
            self.cost.load(state["cost"])
            self.history, self.epoch = json.loads(state["history"]), state["epoch"]
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise DamagedCheckpoint(f"does not fit this cell ({type(error).__name__}: {error})"[:300]) from None
        return True

    def resume(self) -> bool:
        """Continue from the last checkpoint if there is one; True when resumed."""
        if not self.load_checkpoint():
            return False
        self._write_history()
        return True

    def write_gallery(self) -> Path:
        """``synthetic.npz``: up to GALLERY_PER_CLASS synthetic images per teacher class (uint8,
        from a draw of GALLERY_DRAW), the teacher's label and confidence for each, and the
        teacher-label histogram of the whole draw (the class balance of the pool)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.spec.settings.seed, self.epoch) + 2)
        with torch.no_grad():
            images = to_host(self.method.gallery(GALLERY_DRAW, generator)).float().clamp(0, 1)
            probabilities = to_host(torch.cat([self.teacher(batch.to(self.device)).softmax(1)
                                               for batch in images.split(self.spec.settings.eval.batch_size)]))
        confidence, labels = probabilities.max(1)
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:GALLERY_PER_CLASS]
                          for c in range(self.info.num_classes)])
        path = self.run_dir / GALLERY
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=(images[keep] * 255).round().to(torch.uint8).numpy(),
                            teacher_labels=labels[keep].numpy(), teacher_confidence=confidence[keep].numpy(),
                            draw_histogram=np.bincount(labels.numpy(), minlength=self.info.num_classes))
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def _write_history(self) -> None:
        text = "".join(json.dumps(line) + "\n" for line in self.history)
        atomic_write_bytes(self.run_dir / "history.jsonl", text.encode())

    # ------------------------------------------------------------------ training
    def student_lr_scale(self) -> float:
        """The learning rate the student's next step takes over the schedule's initial one."""
        return self.optimizer.param_groups[0]["lr"] / self.schedule.lr

    def training_precision(self) -> Any:
        """The context of the generator, student and training-attack passes: bf16 autocast or fp32."""
        return autocast(self.device, self.precision)

    def student_step(self, generator: torch.Generator) -> torch.Tensor:
        """One student step: sample, teacher, adversarial examples, loss, SGD; the loss (on the device)."""
        with self.training_precision():
            with self.cost.stage("sample"):
                x, labels = self.method.sample(self.schedule.batch_size, generator)
            with torch.no_grad(), self.cost.stage("teacher"):
                teacher_logits = self.teacher(x)
            if self.schedule.adversarial:
                with self.cost.stage("adversarial"):
                    x_adv = self.method.adversarial(x, teacher_logits, generator, labels)
            else:  # DFKD: the method's loss sees the clean batch in place of its adversarial one
                x_adv = x
            with self.cost.stage("student"):
                loss = self.method.student_loss(x, x_adv, teacher_logits, labels)
        with self.cost.stage("student"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if not self.lr_per_epoch:
                self.scheduler.step()
        return loss.detach()

    def _pool_classes(self, pool: ImagePool, added: int) -> dict[str, list[int]]:
        """The teacher's class histogram of the images the epoch added to the pool and of the whole
        pool (one teacher pass over the new images, not counted as the method's cost)."""
        if not added:
            return {}
        with torch.no_grad(), self.cost.unmetered(), self.cost.stage("pool_classes"):
            images = pool.newest(added)
            classes = torch.cat([self.teacher(batch).argmax(1)
                                 for batch in images.split(self.spec.settings.eval.batch_size)])
            pool.note_teacher_classes(classes)
            classes_plus_none = self.info.num_classes + 1  # column 0 counts the slots without a noted class
            histograms = torch.stack([F.one_hot(c + 1, classes_plus_none).sum(0)
                                      for c in (classes, pool.teacher_classes)])
        new, whole = to_host(histograms)[:, 1:].tolist()
        return {"pool_new_classes": new, "pool_classes": whole}

    def _student_steps(self, generator: torch.Generator) -> dict[str, float]:
        """T_s student steps. The loss is summed on the device and read once, at the end: a loss
        that became NaN or inf makes the epoch's sum non-finite and fails the run then."""
        self.student.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for _ in range(self.schedule.student_steps):
            total += self.student_step(generator)
        mean = to_float(total) / self.schedule.student_steps
        if not math.isfinite(mean):
            raise RunFailed(f"student loss became {mean} in epoch {self.epoch + 1}")
        return {"student_loss": mean, "lr": self.scheduler.get_last_lr()[0]}

    def _probe(self) -> dict[str, float]:
        """Clean / PGD-20 accuracy on a stratified subset of the training split (curves only)."""
        split = "train" if self.info.has_train else "test"
        data = self.info.load(split, self.spec.settings.data_root)
        result = evaluate(self.student, data, ["clean", "pgd20"], epsilon=self.threat.epsilon,
                          step_size=self.threat.step_size, num_classes=self.info.num_classes,
                          n_eval=self.schedule.probe_n, batch_size=self.spec.settings.eval.batch_size,
                          device=self.device, seed=self.spec.settings.seed, progress=False)
        return {f"probe_{name}": result.metrics(name)["avg"] for name in ("clean", "pgd20")} | {
            f"probe_{name}_worst": result.metrics(name)["worst"] for name in ("clean", "pgd20")}

    def _check_finite(self, line: dict[str, Any]) -> None:
        for name, value in line.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RunFailed(f"{name} became {value} at epoch {self.epoch + 1}")

    def train(self) -> None:
        schedule, seed = self.schedule, self.spec.settings.seed
        bar = tqdm(total=schedule.epochs, initial=self.epoch, desc=f"{self.spec.method}/{self.spec.settings.student}",
                   unit="epoch", disable=not self.progress, leave=False)
        while self.epoch < schedule.epochs:
            torch.manual_seed(epoch_seed(seed, self.epoch))
            generator = torch.Generator().manual_seed(epoch_seed(seed, self.epoch) + 1)
            line: dict[str, Any] = {"epoch": self.epoch + 1}
            pool = getattr(self.method, "pool", None)
            pooled = pool.count if isinstance(pool, ImagePool) else 0
            with self.cost.stage("synthesis"), self.training_precision():
                line |= self.method.synthesize(self.epoch)
            if isinstance(pool, ImagePool):
                line |= self._pool_classes(pool, pool.count - pooled)
            self._check_finite(line)  # a diverged generator is named before its images reach the student
            if self.epoch >= schedule.warmup_epochs:
                line |= self._student_steps(generator)
            with self.cost.stage("end_of_epoch"):
                line |= self.method.end_of_epoch(self.epoch)
            if self.lr_per_epoch:  # the code's scheduler also steps in the warm-up epochs
                with warnings.catch_warnings():  # torch warns when a step precedes any optimizer step
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    self.scheduler.step()
            self._check_finite(line)
            self.epoch += 1
            if self.epoch % schedule.history_every == 0 or self.epoch == schedule.epochs:
                with self.cost.stage("probe"):
                    line |= self._probe()
            line["seconds"] = round(sum(self.cost.seconds.values()), 2)
            self.history.append(line)
            self._write_history()
            if self.epoch % schedule.checkpoint_every == 0 or self.epoch == schedule.epochs:
                self.save()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in line.items() if k in ("student_loss", "probe_pgd20")})
        bar.close()

    def evaluate(self) -> dict[str, Any]:
        """Final evaluation of the last-epoch student on the test set; writes metrics.json."""
        spec = self.spec.settings.eval
        test = self.info.load("test", self.spec.settings.data_root)
        with self.cost.stage("evaluation"):
            result = evaluate(self.student, test, spec.attacks, epsilon=self.threat.epsilon,
                              step_size=self.threat.step_size, num_classes=self.info.num_classes,
                              n_eval=spec.n_eval, aa_n_eval=spec.aa_n_eval, batch_size=spec.batch_size,
                              device=self.device, seed=self.spec.settings.seed, aa_version=spec.aa_version,
                              progress=self.progress)
        metrics = {"method": self.spec.method, "student": self.spec.settings.student, "key": self.spec.key,
                   **result.to_dict(self.info.name)}
        result.save_arrays(self.run_dir / "samples.npz")
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        save_checkpoint(self.run_dir / "student.pt", self.student.state_dict())
        return metrics


def train_cell(spec: RunSpec, run_dir: Path, device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train (resuming if possible) and evaluate one cell; write every file of its run folder."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "config.json", spec.to_dict())
    trainer = Trainer(spec, run_dir, device, progress)
    atomic_write_json(run_dir / "env.json", environment(trainer.device))
    try:
        trainer.resume()
    except DamagedCheckpoint as why:  # start over from a freshly seeded trainer: the failed load may have half-set it
        line = f"damaged: {run_dir}: {CHECKPOINT} {why}: checkpoint removed; the cell restarts from epoch 0"
        print(line, file=sys.stderr)
        write_status(run_dir, repaired=line)
        (run_dir / CHECKPOINT).unlink()
        trainer = Trainer(spec, run_dir, device, progress)
    print(f"{run_dir}: starting at epoch {trainer.epoch} of {spec.settings.schedule.epochs}", file=sys.stderr)
    trainer.train()
    metrics = trainer.evaluate()
    atomic_write_json(run_dir / "cost.json", trainer.cost.to_dict())
    trainer.write_gallery()  # after cost.json: labelling the gallery is not the method's teacher cost
    return metrics
