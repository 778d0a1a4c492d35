"""The one evaluation engine: per-sample predictions of a classifier under every attack.

``evaluate`` runs the requested attacks (see :data:`harness.attacks.ATTACKS`) over a
class-stratified subset of a test set and keeps, per attack, the sample indices, labels
and predicted labels. A sample counts as robust only if it is also classified correctly
clean: where the clean prediction is already wrong, the clean input itself is the
adversarial example (as AutoAttack does). All metrics derive from these arrays.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from harness.attacks import ATTACK_NAMES, ATTACKS, AttackContext, attack_mode
from harness.backbone.devices import full_precision, to_host
from harness.data import stratified_indices
from harness.metrics import summarize

if TYPE_CHECKING:
    import pandas


@dataclass
class Evaluation:
    """Per-attack sample indices, labels and predictions, and the settings that made them."""

    num_classes: int
    class_names: list[str]
    epsilon: float
    step_size: float
    aa_version: str
    seed: int
    n_eval: int
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self, attack: str) -> dict[str, Any]:
        return summarize(self.targets[attack], self.predictions[attack], self.num_classes, seed=self.seed)

    def to_dict(self, dataset: str) -> dict[str, Any]:
        """The JSON report: settings and, per attack, every metric (accuracies in percent)."""
        return {
            "dataset": dataset,
            "n_eval": self.n_eval,
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "aa_version": self.aa_version,
            "seed": self.seed,
            "class_names": list(self.class_names),
            "attacks": {
                name: {**self.metrics(name), "seconds": round(self.seconds[name], 3)} for name in self.predictions
            },
        }

    def save_arrays(self, path: str | Path) -> None:
        """Per-sample indices, labels and predictions as ``.npz`` (``<attack>_indices`` …)."""
        arrays = {}
        for name in self.predictions:
            arrays |= {f"{name}_indices": self.indices[name], f"{name}_targets": self.targets[name],
                       f"{name}_predictions": self.predictions[name]}
        np.savez_compressed(path, **arrays)


def _batches(dataset: Dataset, indices: np.ndarray, batch_size: int) -> DataLoader:
    return DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    attacks: Sequence[str] = ATTACK_NAMES,
    *,
    epsilon: float,
    step_size: float,
    num_classes: int,
    n_eval: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    aa_version: str = "standard",
    aa_n_eval: int | None = None,
    progress: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on a class-stratified subset of ``n_eval`` samples (all if None).

    ``dataset`` yields (image in [0,1], label) and has ``targets``; AutoAttack may use a
    smaller stratified subset (``aa_n_eval``) of the evaluated samples. Always in fp32: an
    autocast region of the caller is switched off here.
    """
    for name in attacks:
        ATTACKS.get(name)
    device = torch.device(device)
    targets_all = torch.as_tensor(dataset.targets)
    indices = stratified_indices(targets_all, n_eval, seed).numpy()
    context = AttackContext(epsilon=epsilon, step_size=step_size, seed=seed, aa_version=aa_version,
                            batch_size=batch_size)
    result = Evaluation(num_classes=num_classes, class_names=list(getattr(dataset, "class_names", [])),
                        epsilon=epsilon, step_size=step_size, aa_version=aa_version, seed=seed,
                        n_eval=len(indices))
    model = model.to(device)
    ordered = ["clean", *[a for a in attacks if a != "clean"]]
    with attack_mode(model), full_precision(device):
        for name in ordered:
            attack = ATTACKS.get(name)
            subset = indices
            if attack.whole_set and aa_n_eval is not None and aa_n_eval < len(indices):
                subset = indices[stratified_indices(targets_all[indices], aa_n_eval, seed).numpy()]
            start = time.perf_counter()
            labels, predicted = [], []
            bar = tqdm(total=len(subset), desc=attack.label, unit="img", disable=not progress, leave=False)
            loader = _batches(dataset, subset, len(subset) if attack.whole_set else batch_size)
            for batch, (x, y) in enumerate(loader):
                x, y = x.to(device), y.to(device)
                step = AttackContext(**{**context.__dict__, "seed": seed * 1_000_003 + batch})
                predicted.append(attack.run(model, x, y, step))
                labels.append(y)
                bar.update(len(y))
            bar.close()
            y_np = to_host(torch.cat(labels)).numpy()  # one transfer per attack, not per batch
            pred_np = to_host(torch.cat(predicted)).numpy()
            if name != "clean":
                clean = dict(zip(result.indices["clean"].tolist(), result.predictions["clean"].tolist()))
                clean_pred = np.array([clean[i] for i in subset.tolist()])
                pred_np = np.where(clean_pred == y_np, pred_np, clean_pred)
            result.indices[name], result.targets[name], result.predictions[name] = subset, y_np, pred_np
            result.seconds[name] = time.perf_counter() - start
    if "clean" not in attacks:
        for store in (result.indices, result.targets, result.predictions, result.seconds):
            store.pop("clean")
    return result


def per_class_table(report: dict[str, Any]) -> "pandas.DataFrame":
    """Class names as rows, attacks as columns, then Avg / Worst / Worst-10% / NSD rows."""
    import pandas  # noqa: F811 (imported here: the engine itself does not need pandas)

    columns = {}
    for name, metrics in report["attacks"].items():
        label = ATTACKS.get(name).label + (" (fast)" if name == "aa" and report["aa_version"] == "fast" else "")
        columns[label] = [*metrics["per_class"], metrics["avg"], metrics["worst"], metrics["worst10"],
                          metrics["nsd"]]
    index = [*report["class_names"], "Avg", "Worst", "Worst-10%", "NSD"]
    return pandas.DataFrame(columns, index=index)
