"""Fair-ARD: LPS counting, class weights, the weighted losses by hand, the train-split contract,
and ``fair-ard`` / ``ard`` end to end with kill-and-resume."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from harness import config as config_module
from harness.backbone.cost import Cost
from harness.backbone.distill import kl_divergence
from harness.backbone.method import MethodContext
from harness.config import ConfigError, load_experiment
from harness.data import get_dataset
from methods.fair_ard import (
    FairARD,
    ard_loss_per_sample,
    class_weights_from_lps,
    pgd_with_lps,
    rslad_loss_per_sample,
    weighted_mean,
)
from tests.e2e import history_of, kill_at_first_checkpoint, run_experiment, run_folder, start_run, write_experiment


class ScriptedModel(nn.Module):
    """Logits chosen per forward call: sample j predicts class 1 (wrong for label 0) from call
    ``flip[j]`` on. The input enters with weight 0 so that PGD has a gradient to take."""

    def __init__(self, flip: list[int]) -> None:
        super().__init__()
        self.flip, self.calls = torch.tensor(flip), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wrong = (self.calls >= self.flip).float()
        self.calls += 1
        return torch.stack([1 - wrong, wrong], dim=1) + 0 * x.flatten(1).sum(1, keepdim=True)


# --------------------------------------------------------------------------- LPS and weights
def test_least_pgd_steps_count_the_first_misclassified_iterate():
    steps = 10
    model = ScriptedModel([0, 3, 9, 100])  # wrong from x^(0), x^(3), x^(9), never
    x = torch.rand(4, 1, 4, 4)
    labels = torch.zeros(4, dtype=torch.long)
    x_adv, lps = pgd_with_lps(model, x, labels, epsilon=0.1, step_size=0.025, steps=steps)
    assert lps.tolist() == [0, 3, 9, steps]  # correct at every step counts K
    assert model.calls == steps  # one forward per PGD step, none extra for x^(K)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


class TabledModel(nn.Module):
    """Call t predicts class 1 (wrong for label 0) for sample j when ``wrong[t][j]``."""

    def __init__(self, wrong: list[list[bool]]) -> None:
        super().__init__()
        self.wrong, self.calls = torch.tensor(wrong, dtype=torch.float32), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wrong = self.wrong[self.calls]
        self.calls += 1
        return torch.stack([1 - wrong, wrong], dim=1) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_kappa_switch_counts_the_released_codes_correct_iterates():
    """Sample 0 is wrong only at iterate 1 (flips back), sample 1 from iterate 2 on, sample 2
    never: the paper's least steps 1, 2, 4; the code's correct iterates 3, 2, 4 (K = 4)."""
    table = [[False, False, False], [True, False, False], [False, True, False], [False, True, False]]
    x, labels = torch.rand(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    _, least = pgd_with_lps(TabledModel(table), x, labels, epsilon=0.1, step_size=0.025, steps=4)
    _, correct = pgd_with_lps(TabledModel(table), x, labels, epsilon=0.1, step_size=0.025, steps=4,
                              kappa="correct_iterates")
    assert least.tolist() == [1, 2, 4] and correct.tolist() == [3, 2, 4]


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_attack_bn_switch_sets_the_students_batchnorm_during_the_attack(batchnorm):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    student(torch.rand(2, 1, 6, 6))  # materialise the lazy layer
    student.train()
    mean_before = student[1].running_mean.clone()
    x, labels = torch.rand(8, 1, 6, 6), torch.zeros(8, dtype=torch.long)
    pgd_with_lps(student, x, labels, epsilon=0.1, step_size=0.025, steps=3, batchnorm=batchnorm)
    moved = not torch.equal(student[1].running_mean, mean_before)
    assert moved == (batchnorm == "train")  # train mode: every iterate updates the running statistics
    assert student.training and all(p.requires_grad for p in student.parameters())  # modes restored


def test_class_weights_are_kappa_to_the_minus_beta_with_mean_one_and_the_clamp_switch():
    kappa = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # κ^−2 = [1, 1/4, 1/16], sum 21/16; mean-one weights 3·[16, 4, 1]/21
    expected = torch.tensor([48 / 21, 12 / 21, 3 / 21], dtype=torch.float64)
    weights = class_weights_from_lps(kappa, beta=2.0, steps=10, clamp=False)
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=0)
    assert weights.mean().item() == pytest.approx(1.0)
    clamped = class_weights_from_lps(kappa, beta=2.0, steps=10, clamp=True)
    torch.testing.assert_close(clamped, torch.tensor([48 / 21, 5 / 6, 5 / 6], dtype=torch.float64), rtol=1e-4, atol=0)
    torch.testing.assert_close(class_weights_from_lps(kappa, beta=0.0, steps=10, clamp=False),
                               torch.ones(3, dtype=torch.float64))
    assert weights.argmax() == kappa.argmin()  # the class broken in fewest steps weighs most


# --------------------------------------------------------------------------- losses by hand
def test_weighted_mean_weighs_each_sample_by_its_class():
    per_sample = torch.tensor([1.0, 2.0, 3.0])
    labels = torch.tensor([0, 1, 0])
    assert weighted_mean(per_sample, labels, torch.tensor([2.0, 0.5])).item() == pytest.approx((2 + 1 + 6) / 3)
    assert weighted_mean(per_sample, labels, torch.ones(2)).item() == pytest.approx(2.0)


def test_ard_loss_by_hand():
    teacher = torch.tensor([[2.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0]])
    clean = torch.tensor([[1.0, 0.0]])
    tau, alpha = 2.0, 0.75
    t = torch.softmax(teacher / tau, 1)[0]  # [e/(e+1), 1/(e+1)]
    s = torch.softmax(adv / tau, 1)[0]
    kl = sum(t[i] * math.log(t[i] / s[i]) for i in range(2))
    ce = -math.log(math.e / (math.e + 1))
    expected = alpha * tau**2 * kl + (1 - alpha) * ce
    got = ard_loss_per_sample(teacher, adv, clean, torch.tensor([0]), tau=tau, alpha=alpha)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)
    only_kl = ard_loss_per_sample(teacher, adv, clean, torch.tensor([1]), tau=tau, alpha=1.0)
    assert only_kl.item() == pytest.approx(float(tau**2 * kl), rel=1e-5)  # α = 1: the label is unused
    # kl_reduction: mean (the code's nn.KLDivLoss(), KL / C) scales the KL term only
    scaled = ard_loss_per_sample(teacher, adv, clean, torch.tensor([0]), tau=tau, alpha=alpha, kl_scale=0.5)
    assert scaled.item() == pytest.approx(float(alpha * tau**2 * kl / 2 + (1 - alpha) * ce), rel=1e-5)


def test_rslad_loss_per_sample_is_five_sixths_adversarial_one_sixth_clean():
    teacher, adv, clean = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    expected = 5 / 6 * kl_divergence(teacher, adv, "none") + 1 / 6 * kl_divergence(teacher, clean, "none")
    torch.testing.assert_close(rslad_loss_per_sample(teacher, adv, clean), expected)
    torch.testing.assert_close(rslad_loss_per_sample(teacher, adv, clean, kl_scale=0.25), expected / 4)


@pytest.mark.parametrize("loss", ["ard", "rslad"])
def test_the_schedules_kl_reduction_mean_divides_the_loss_by_c(loss):
    """The plugin reads ``schedule.kl_reduction``: ``mean`` (the code's KL / C) is 1/C of ``batchmean``
    at α = 1 and uniform weights."""
    info = get_dataset("synthetic")
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, info.num_classes))
    data = [(torch.rand(3, 16, 16), c % info.num_classes) for c in range(4)]

    def method(reduction):
        context = MethodContext(teacher=student, student=student, info=info, epsilon=0.1, step_size=0.025,
                                attack_steps=1, batch_size=4, generator_steps=0, pool_size=0,
                                device=torch.device("cpu"), cost=Cost(), train_data=data, kl_reduction=reduction)
        return FairARD(FairARD.Params(loss=loss), context)

    x, x_adv, labels = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), torch.arange(4)
    teacher_logits = torch.randn(4, info.num_classes)
    full = method("batchmean").student_loss(x, x_adv, teacher_logits, labels)
    per_class = method("mean").student_loss(x, x_adv, teacher_logits, labels)
    torch.testing.assert_close(per_class, full / info.num_classes)


# --------------------------------------------------------------------------- the train-split contract
def test_a_dataset_without_train_split_is_one_clear_config_error(tmp_path, monkeypatch):
    no_train = dataclasses.replace(get_dataset("synthetic"), has_train=False)
    monkeypatch.setattr(config_module, "get_dataset", lambda name: no_train)
    path = tmp_path / "exp.yaml"
    path.write_text("base: {dataset: synthetic, student: resnet8, teacher: {arch: cnn5}}\n"
                    "grid: {method: [cmi, fair-ard]}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path).cells()
    message = str(info.value)
    assert "\n" not in message and "'fair-ard' distils with the training set" in message
    assert "no train split" in message and "method" in message


# --------------------------------------------------------------------------- end to end
EXPERIMENT = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 2, warmup_epochs: 0, student_steps: 3, batch_size: 16, history_every: 1, probe_n: 20}}
  threat: {{train_steps: 3}}
  eval: {{attacks: [clean, pgd20], n_eval: 20}}
grid:
  method: [{methods}]
"""
ENV = {"OMP_NUM_THREADS": "1"}
TWO_SLOTS = ("--workers", "2")  # the two methods side by side, one thread each


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, teacher_checkpoint):
    where = tmp_path_factory.mktemp("fair-ard")
    write_experiment(where, EXPERIMENT.format(teacher=teacher_checkpoint, methods="fair-ard, ard"))
    run_experiment(where, env=ENV, args=TWO_SLOTS)
    return where / "results"


def test_fair_ard_and_ard_run_end_to_end(straight_runs):
    for method in ("fair-ard", "ard"):
        folder = run_folder(straight_runs, method)
        assert json.loads((folder / "status.json").read_text())["state"] == "done"
        history = history_of(folder)
        assert [h["epoch"] for h in history] == [1, 2]
        for line in history:
            assert math.isfinite(line["student_loss"]) and sum(line["class_counts"]) == 3 * 16
            assert sum(line["class_weights"]) == pytest.approx(10.0)  # mean one
            assert all(0 <= k <= 3 for k in line["class_lps"])
        if method == "ard":
            assert all(w == 1.0 for line in history for w in line["class_weights"])
        cost = json.loads((folder / "cost.json").read_text())
        assert cost["images_synthesized"] == 0 and cost["teacher_backward_images"] == 0
        assert cost["teacher_forward_images"] == 2 * 3 * 16  # one teacher look per real training image
    weighted = history_of(run_folder(straight_runs, "fair-ard"))[0]
    kappa, weights = weighted["class_lps"], weighted["class_weights"]
    if max(kappa) > min(kappa):  # the fewest-steps class gets the largest weight
        assert weights.index(max(weights)) == kappa.index(min(kappa))


def test_killed_fair_ard_resumes_with_its_weights(tmp_path, teacher_checkpoint, straight_runs):
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, methods="fair-ard"))
    kill_at_first_checkpoint(start_run(tmp_path, env=ENV, args=TWO_SLOTS), tmp_path / "results", "fair-ard")
    folder = run_folder(tmp_path / "results", "fair-ard")
    state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert state["method"]["class_weights"].tolist() == pytest.approx(history_of(folder)[0]["class_weights"])

    run_experiment(tmp_path, env=ENV, args=TWO_SLOTS)
    assert history_of(folder) == history_of(run_folder(straight_runs, "fair-ard"))
