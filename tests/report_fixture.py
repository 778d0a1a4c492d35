"""A fixture store with known numbers for the report tests, and the demo store of reports/examples.

    PYTHONPATH=. python -m tests.report_fixture /tmp/fixture-store   # writes results/fixture there
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ["cat", "dog", "ship"]
PER_CLASS_SAMPLES = 100


def metrics_of(per_attack: dict[str, tuple[float, float, float]]) -> dict:
    """metrics.json for 3 classes of 100 samples: per attack the (avg, worst, nsd) stated, with a
    per-class vector (worst, avg, 2·avg − worst) and confusion matrix (errors go to the next class)."""
    attacks = {}
    for attack, (avg, worst, nsd) in per_attack.items():
        per_class = [worst, avg, min(100.0, max(0.0, 2 * avg - worst))]
        confusion = [[0] * 3 for _ in range(3)]
        for i, accuracy in enumerate(per_class):
            confusion[i][i] = round(accuracy)
            confusion[i][(i + 1) % 3] = PER_CLASS_SAMPLES - round(accuracy)
        attacks[attack] = {"n": 300, "avg": avg, "worst": worst, "worst10": worst, "nsd": nsd,
                           "per_class": per_class, "confusion": confusion}
    return {"class_names": CLASSES, "aa_version": "standard", "attacks": attacks}


def write_run(results, method, seed, scores=None, *, student="resnet8", state="done", params=None,
              plugin=None, adversarial=True, history=None, experiment="fix"):
    """A run folder with config/status (and metrics, cost, history, gallery when done)."""
    key = hashlib.sha256(repr((method, seed, student, params, adversarial)).encode()).hexdigest()[:10]
    config = {"experiment": experiment, "method": method, "key": key,
              "dataset": "synthetic", "student": student,
              "teacher": {"arch": "cnn5", "checkpoint": "t.pt", "sha256": None},
              "seed": seed, "schedule": {"epochs": 3, "adversarial": adversarial}, "threat": {"epsilon": 0.1},
              "eval": {"attacks": ["clean", "pgd20"]}, "plugin": plugin or method.split("-")[0], "version": "1",
              "params": params or {}, "teacher_path": None}
    folder = results / experiment / "synthetic" / method / student / f"seed{seed}-{config['key']}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "status.json").write_text(json.dumps({"state": state}))
    if state == "done":
        (folder / "metrics.json").write_text(json.dumps(metrics_of(scores)))
        (folder / "cost.json").write_text(json.dumps({"total_seconds": 120.0 * (seed + 1),
                                                      "teacher_forward_images": 1000,
                                                      "teacher_backward_images": 500}))
        images = (np.arange(6 * 3 * 8 * 8) % 255).astype(np.uint8).reshape(6, 3, 8, 8)
        np.savez(folder / "synthetic.npz", images=images, teacher_labels=np.array([0, 0, 1, 1, 2, 2]),
                 teacher_confidence=np.full(6, 0.9), draw_histogram=np.array([10, 20, 30]))
    lines = history or [{"epoch": e, "probe_clean": 40.0 + e, "probe_pgd20": 20.0 + e, "probe_clean_worst": 10.0,
                         "probe_pgd20_worst": 5.0} for e in (1, 2, 3)]
    (folder / "history.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def sweep_store(results: Path, experiment: str = "fixture") -> Path:
    """FERD at γ 0, 0.5 and 0.9 (two seeds each, logging class weights), its equal-weight ablation
    and CMI: every plot kind has data. Numbers are made up; returns ``results``."""
    for seed in (0, 1):
        history = [{"epoch": e, "class_weights": [0.2 + 0.05 * e * seed, 0.3, 0.5 - 0.05 * e * seed],
                    "probe_clean": 40.0 + 5 * e + seed, "probe_pgd20": 20.0 + 3 * e, "probe_clean_worst": 10.0 + e,
                    "probe_pgd20_worst": 2.0 * e} for e in (1, 2, 3)]
        for gamma in (0.0, 0.5, 0.9):
            write_run(results, "ferd", seed, {"clean": (60.0 + 4 * gamma + seed, 30.0 + 10 * gamma, 0.3),
                                              "pgd20": (40.0 - seed, 10.0 + 12 * gamma - 8 * gamma ** 2, 0.6)},
                      params={"gamma": gamma}, history=history, experiment=experiment)
    uniform = [{"epoch": e, "class_weights": [1 / 3] * 3, "probe_clean": 40.0 + e, "probe_pgd20": 20.0 + e,
                "probe_clean_worst": 10.0, "probe_pgd20_worst": 5.0} for e in (1, 2, 3)]
    write_run(results, "ferd-no-reweight", 0, {"clean": (55.0, 20.0, 0.3), "pgd20": (35.0, 5.0, 0.6)},
              plugin="ferd", params={"reweight": "none"}, history=uniform, experiment=experiment)
    write_run(results, "cmi", 0, {"clean": (70.0, 40.0, 0.3), "pgd20": (40.0, 10.0, 0.6)}, experiment=experiment)
    return results


if __name__ == "__main__":
    print(sweep_store(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results")))
