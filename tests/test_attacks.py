"""Evaluation attacks (METHODS.md §8) and the evaluation engine, on a small model trained on synthetic.

One undefended ResNet-8 is trained once per module (plain CE, Adam, 5 epochs on the 1000
synthetic training images, about 1-2 s) and evaluated once under every attack on 200
stratified test images (AutoAttack ``fast`` on a stratified 100 of them).

That model is very robust at the synthetic ε = 8/255: its clean, FGSM and PGD-20 accuracies
are all ~100 %, so the ordering PGD-20 < FGSM ≤ clean could not be strict. The engine tests
therefore use ε = 16/255 with the dataset's ratio α = ε/4 (4/255), where this model has
clean 100 %, FGSM 96.5 %, PGD-20 63 %, CW 58 % and AA(fast) 22 % (PGD-20 on the AA subset:
63 %). The bound checks of the attacks themselves use the dataset's ε = 8/255, α = 2/255.

The module runs torch single-threaded (restored afterwards): with a second busy process on
a 2-core machine, two OpenMP threads made AutoAttack on a few images over 10x slower.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import (
    ATTACKS,
    EvalAttack,
    attack_mode,
    cross_entropy_loss,
    cw_margin_loss,
    fgsm,
    pgd,
    project,
)
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.evaluate import Evaluation, evaluate
from harness.models import create_model

INFO = get_dataset("synthetic")
EPS, ALPHA = INFO.epsilon, INFO.step_size  # 8/255, 2/255
EVAL_EPS, EVAL_ALPHA = 16 / 255, 4 / 255  # see the module docstring
N_EVAL, AA_N_EVAL = 200, 100
NUM_CLASSES = INFO.num_classes
ROBUST_ATTACKS = ("fgsm", "pgd20", "cw", "aa")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def new_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet8", in_channels=INFO.channels, num_classes=NUM_CLASSES, image_size=INFO.image_size)


@pytest.fixture(scope="module")
def test_set():
    return INFO.load("test")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """Undefended ResNet-8: plain CE training on the synthetic train split, returned in eval mode."""
    train = INFO.load("train")
    x, y = train.images.float() / 255, train.targets
    with torch.random.fork_rng():
        net = new_model(0)
        order = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(5):
            perm = torch.randperm(len(y), generator=order)
            for start in range(0, len(y), 100):
                batch = perm[start : start + 100]
                loss = F.cross_entropy(net(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def batch(test_set) -> tuple[torch.Tensor, torch.Tensor]:
    """100 test images (10 per class, since labels cycle 0..9) in [0, 1]."""
    return test_set.images[:100].float() / 255, test_set.targets[:100]


@pytest.fixture(scope="module")
def evaluation(model: nn.Module, test_set) -> Evaluation:
    return evaluate(model, test_set, ("clean", *ROBUST_ATTACKS), epsilon=EVAL_EPS, step_size=EVAL_ALPHA,
                    num_classes=NUM_CLASSES, n_eval=N_EVAL, aa_n_eval=AA_N_EVAL, aa_version="fast", seed=0,
                    progress=False)


def accuracy(result: Evaluation, attack: str) -> float:
    return float(100.0 * (result.targets[attack] == result.predictions[attack]).mean())


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample L∞ distance."""
    return (a - b).flatten(1).abs().amax(dim=1)


def assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> None:
    assert x_adv.shape == x.shape
    assert linf(x_adv, x).max().item() <= epsilon + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


# --------------------------------------------------------------------------- building blocks
def test_project_into_ball_and_box() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    x_adv = x + 0.5 * torch.randn(x.shape, generator=g)  # far outside the ball and the box
    projected = project(x_adv, x, 0.05)
    assert_in_ball(projected, x, 0.05)
    # A point already inside both is left alone.
    inside = (x + 0.05 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    assert torch.equal(project(inside, x, 0.05), inside)


def test_project_hand_values() -> None:
    x = torch.tensor([0.5, 0.5, 0.95, 0.05, 0.5])
    x_adv = torch.tensor([0.9, 0.1, 1.2, -0.3, 0.53])
    expected = torch.tensor([0.6, 0.4, 1.0, 0.0, 0.53])  # ball clip, ball clip, box, box, untouched
    torch.testing.assert_close(project(x_adv, x, 0.1), expected)


def test_cw_margin_loss_hand_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0]])
    # z_y = 3, max_{j≠y} z_j = 2: −(3 − 2 + 50) = −51.
    assert cw_margin_loss(logits, torch.tensor([0])).tolist() == [-51.0]
    assert cw_margin_loss(logits, torch.tensor([0]), kappa=0.0).tolist() == [-1.0]
    # Misclassified (y = 1: z_y = 1 < 3): with κ = 0 the clamp gives 0.
    assert cw_margin_loss(logits, torch.tensor([1]), kappa=0.0).tolist() == [0.0]
    # With κ = 50: −(1 − 3 + 50) = −48; per sample for a batch.
    two = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert cw_margin_loss(two, torch.tensor([1, 1])).tolist() == [-48.0, -55.0]


def test_attack_mode_sets_and_restores_mode_and_flags() -> None:
    net = new_model().train()
    params = list(net.parameters())
    params[0].requires_grad_(False)  # a mix of frozen and trainable parameters
    before = [p.requires_grad for p in params]
    seen = []

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((net.training, any(p.requires_grad for p in net.parameters())))
        return cross_entropy_loss(logits, y)

    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with attack_mode(net):
        assert not net.training and not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in params)
        pgd(net, x, y, epsilon=EPS, step_size=ALPHA, steps=2, objective=objective)
    assert seen == [(False, False), (False, False)]
    assert net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in params] == before

    # Restored also when the attack raises, and eval mode is kept for an eval-mode caller.
    net.eval()
    with pytest.raises(RuntimeError, match="boom"), attack_mode(net):
        raise RuntimeError("boom")
    assert not net.training
    assert [p.requires_grad for p in params] == before


def test_evaluate_runs_attacks_in_attack_mode_and_restores(model: nn.Module, test_set) -> None:
    net = copy.deepcopy(model).train()
    params = list(net.parameters())
    params[-1].requires_grad_(False)
    before = [p.requires_grad for p in params]
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append((m.training, any(p.requires_grad for p in m.parameters()))))
    evaluate(net, test_set, ("clean", *ROBUST_ATTACKS), epsilon=EVAL_EPS, step_size=EVAL_ALPHA,
             num_classes=NUM_CLASSES, n_eval=20, aa_n_eval=10, aa_version="fast", progress=False)
    assert len(seen) > 40  # clean, FGSM, 2×20 PGD/CW steps and AutoAttack all went through the model
    assert set(seen) == {(False, False)}
    assert net.training
    assert [p.requires_grad for p in params] == before


# --------------------------------------------------------------------------- FGSM / PGD / CW
def test_fgsm_stays_in_ball_and_moves(model: nn.Module, batch) -> None:
    x, y = batch
    x_adv = fgsm(model, x, y, epsilon=EPS)
    assert_in_ball(x_adv, x, EPS)
    # One full signed step: most samples are moved by exactly ε somewhere.
    assert (linf(x_adv, x) > EPS - 1e-6).float().mean() > 0.5


@pytest.mark.parametrize("objective", [cross_entropy_loss, cw_margin_loss], ids=["ce", "cw"])
def test_pgd_stays_in_ball_and_increases_objective(model: nn.Module, batch, objective) -> None:
    x, y = batch
    x_adv = pgd(model, x, y, epsilon=EPS, step_size=ALPHA, steps=10, objective=objective,
                generator=torch.Generator().manual_seed(0))
    assert_in_ball(x_adv, x, EPS)
    with torch.no_grad():
        assert objective(model(x_adv), y).mean() > objective(model(x), y).mean()


def test_pgd_is_deterministic_for_a_seeded_generator(model: nn.Module, batch) -> None:
    x, y = batch[0][:20], batch[1][:20]

    def run(seed: int) -> torch.Tensor:
        return pgd(model, x, y, epsilon=EPS, step_size=ALPHA, steps=3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_pgd_random_start(model: nn.Module, batch) -> None:
    x, y = batch[0][:20], batch[1][:20]
    assert torch.equal(pgd(model, x, y, epsilon=EPS, step_size=ALPHA, steps=0, random_start=False), x)
    start = pgd(model, x, y, epsilon=EPS, step_size=ALPHA, steps=0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(start, x)
    assert_in_ball(start, x, EPS)
    # Without a random start, one step of size ε from x is exactly FGSM.
    one_step = pgd(model, x, y, epsilon=EPS, step_size=EPS, steps=1, random_start=False)
    assert torch.equal(one_step, fgsm(model, x, y, epsilon=EPS))


# --------------------------------------------------------------------------- evaluate
def test_attack_strength_ordering(evaluation: Evaluation) -> None:
    clean, fgsm_acc, pgd_acc = (accuracy(evaluation, a) for a in ("clean", "fgsm", "pgd20"))
    assert clean >= 90.0  # the model did learn
    assert pgd_acc < fgsm_acc <= clean


def test_robust_samples_are_clean_correct(evaluation: Evaluation, test_set) -> None:
    clean_correct = dict(zip(evaluation.indices["clean"].tolist(),
                             (evaluation.targets["clean"] == evaluation.predictions["clean"]).tolist()))
    targets = test_set.targets.numpy()
    for attack in ROBUST_ATTACKS:
        indices = evaluation.indices[attack]
        assert np.array_equal(evaluation.targets[attack], targets[indices])  # labels line up with indices
        robust = evaluation.targets[attack] == evaluation.predictions[attack]
        assert all(clean_correct[i] for i in indices[robust].tolist()), attack


def test_attack_clean_wrong_samples_stay_wrong(monkeypatch: pytest.MonkeyPatch, test_set) -> None:
    """An 'attack' that always answers the label must not turn a clean error into a robust sample."""
    monkeypatch.setitem(ATTACKS._entries, "oracle", EvalAttack("oracle", "Oracle", lambda m, x, y, c: y.clone()))
    result = evaluate(new_model(1).eval(), test_set, ("clean", "oracle"), epsilon=EPS, step_size=ALPHA,
                      num_classes=NUM_CLASSES, n_eval=100, progress=False)
    assert (result.targets["clean"] != result.predictions["clean"]).any()  # an untrained model errs
    assert np.array_equal(result.predictions["oracle"], result.predictions["clean"])


def test_autoattack_not_weaker_than_pgd(evaluation: Evaluation) -> None:
    aa_indices = evaluation.indices["aa"]
    positions = np.searchsorted(evaluation.indices["pgd20"], aa_indices)
    assert np.array_equal(evaluation.indices["pgd20"][positions], aa_indices)  # AA samples ⊂ PGD samples
    pgd_on_aa = 100.0 * (evaluation.targets["pgd20"][positions] == evaluation.predictions["pgd20"][positions]).mean()
    assert accuracy(evaluation, "aa") <= pgd_on_aa + 1.0


def test_evaluate_subsets_are_stratified(evaluation: Evaluation, test_set) -> None:
    targets = test_set.targets.numpy()
    for attack in ("clean", "fgsm", "pgd20", "cw"):
        assert np.array_equal(evaluation.indices[attack], evaluation.indices["clean"])
    clean, aa = evaluation.indices["clean"], evaluation.indices["aa"]
    assert len(set(clean.tolist())) == N_EVAL and len(set(aa.tolist())) == AA_N_EVAL
    assert np.bincount(targets[clean], minlength=NUM_CLASSES).tolist() == [N_EVAL // NUM_CLASSES] * NUM_CLASSES
    assert np.bincount(targets[aa], minlength=NUM_CLASSES).tolist() == [AA_N_EVAL // NUM_CLASSES] * NUM_CLASSES
    assert set(aa.tolist()) <= set(clean.tolist())
    assert clean.max() >= N_EVAL  # a random subset of the 500, not the first 200


class ClassSorted(torch.utils.data.Dataset):
    """The synthetic test set reordered by class, so any prefix is one class only."""

    def __init__(self, base) -> None:
        self.base = base
        self.order = torch.argsort(base.targets, stable=True)
        self.targets = base.targets[self.order]
        self.class_names = base.class_names

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.base[int(self.order[index])]


def test_evaluate_stratifies_a_class_sorted_set(model: nn.Module, test_set) -> None:
    data = ClassSorted(test_set)
    result = evaluate(model, data, ("clean", "aa"), epsilon=EVAL_EPS, step_size=EVAL_ALPHA,
                      num_classes=NUM_CLASSES, n_eval=30, aa_n_eval=10, aa_version="fast", progress=False)
    targets = data.targets.numpy()
    assert np.bincount(targets[result.indices["clean"]], minlength=NUM_CLASSES).tolist() == [3] * NUM_CLASSES
    assert np.bincount(targets[result.indices["aa"]], minlength=NUM_CLASSES).tolist() == [1] * NUM_CLASSES
    assert np.array_equal(result.targets["aa"], targets[result.indices["aa"]])


def test_to_dict(evaluation: Evaluation) -> None:
    report = evaluation.to_dict("synthetic")
    json.dumps(report)  # plain JSON types only
    assert report["dataset"] == "synthetic"
    assert report["n_eval"] == N_EVAL
    assert set(report["attacks"]) == {"clean", *ROBUST_ATTACKS}
    for name, metrics in report["attacks"].items():
        n = AA_N_EVAL if name == "aa" else N_EVAL
        assert {"avg", "worst", "worst10", "nsd", "per_class", "confusion", "target_entropy",
                "worst_ci"} <= set(metrics)
        assert metrics["avg"] == pytest.approx(accuracy(evaluation, name))
        assert len(metrics["per_class"]) == NUM_CLASSES
        assert metrics["worst"] == pytest.approx(min(metrics["per_class"]))
        confusion = np.array(metrics["confusion"])
        assert confusion.shape == (NUM_CLASSES, NUM_CLASSES) and confusion.sum() == n
        assert confusion.sum(axis=1).tolist() == [n // NUM_CLASSES] * NUM_CLASSES
        lo, hi = metrics["worst_ci"]
        assert isinstance(lo, float) and isinstance(hi, float) and lo <= hi
        entropy = metrics["target_entropy"]
        assert entropy is None if metrics["avg"] == 100.0 else 0.0 <= entropy <= 1.0


def test_unknown_attack_is_a_harness_error(model: nn.Module, test_set) -> None:
    with pytest.raises(HarnessError, match=r"unknown attack 'pgd2O' \(did you mean 'pgd20'\?\)"):
        evaluate(model, test_set, ("clean", "pgd2O"), epsilon=EPS, step_size=ALPHA, num_classes=NUM_CLASSES,
                 progress=False)
