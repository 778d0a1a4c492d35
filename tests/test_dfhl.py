"""DFHL: losses on hand-computed fixtures, the hard-label contract, HEEs, and the method end to end (with resume)."""

import json
import math

import pytest
import torch
from torch import nn

import methods.dfhl as dfhl_module
from harness.backbone.cost import Cost
from harness.backbone.devices import rand, randn
from harness.backbone.method import MethodContext
from harness.config import Schedule
from harness.data import get_dataset
from harness.schema import SchemaError, build, field_names, to_plain
from methods.dfhl import (
    DFHL,
    Params,
    balance_term,
    entropy,
    generator_loss,
    hee_step,
    high_entropy_examples,
    smooth_one_hot,
    strong_augment,
)
from tests.e2e import history_of, kill_at_first_checkpoint, run_experiment, run_folder, start_run, write_experiment


# --------------------------------------------------------------------------- losses by hand
def test_label_smoothing_keeps_one_minus_s_on_the_label():
    cifar10 = smooth_one_hot(torch.tensor([3, 0]), 10, 0.2)
    assert cifar10[0, 3].item() == pytest.approx(0.8) and cifar10[1, 0].item() == pytest.approx(0.8)
    assert cifar10[0, 0].item() == pytest.approx(0.2 / 9) and cifar10[1, 9].item() == pytest.approx(0.0222222, abs=1e-7)
    cifar100 = smooth_one_hot(torch.tensor([42]), 100, 0.02)
    assert cifar100[0, 42].item() == pytest.approx(0.98) and cifar100[0, 0].item() == pytest.approx(0.02 / 99)
    torch.testing.assert_close(cifar10.sum(1), torch.ones(2))
    torch.testing.assert_close(cifar100.sum(1), torch.ones(1))
    torch.testing.assert_close(smooth_one_hot(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_generator_loss_on_a_three_class_fixture():
    student = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    targets = smooth_one_hot(torch.tensor([0, 2]), 3, 0.2)  # [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]
    torch.testing.assert_close(targets, torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))
    kl_1 = 0.8 * math.log(0.8 / 0.7) + 0.1 * math.log(0.1 / 0.2) + 0.1 * math.log(0.1 / 0.1)  # 0.0375103
    kl_2 = 0.1 * math.log(0.1 / 0.1) + 0.1 * math.log(0.1 / 0.6) + 0.8 * math.log(0.8 / 0.3)  # 0.6054872
    mean = [0.4, 0.4, 0.2]  # batch-mean student prediction p̄
    spread = sum(p * math.log(p) for p in mean)  # Σ p̄ log p̄ = −1.0549201
    expected = (kl_1 + kl_2) / 2 + 3 * spread  # 0.3214988 − 3.1647602 = −2.8432615
    assert expected == pytest.approx(-2.8432615, abs=1e-6)

    total, kl, balance = generator_loss(student.log(), targets, balance=3.0)
    assert kl.item() == pytest.approx((kl_1 + kl_2) / 2, abs=1e-6)
    assert balance.item() == pytest.approx(spread, abs=1e-6)
    assert total.item() == pytest.approx(expected, abs=1e-5)
    # the released code's log10 variant and the balance term's minimum at a uniform p̄
    assert balance_term(student.log(), log10=True).item() == pytest.approx(spread / math.log(10), abs=1e-6)
    assert balance_term(torch.zeros(4, 3)).item() == pytest.approx(-math.log(3), abs=1e-6)
    # logits are only defined up to a constant per row
    torch.testing.assert_close(generator_loss(student.log() + 5, targets, balance=3.0)[0], total)


def test_log10_balance_is_the_natural_log_balance_with_weight_lambda_over_ln10():
    """λ·Σ p̄ log10 p̄ = (λ/ln 10)·Σ p̄ ln p̄: the code's λ = 3 in log10 acts as 1.30 in natural log."""
    assert 3 / math.log(10) == pytest.approx(1.3029, abs=1e-4)
    generator = torch.Generator().manual_seed(0)
    logits = (2 * randn((6, 4), generator=generator)).requires_grad_(True)
    targets = smooth_one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4, 0.2)
    # by hand on a fixed p̄: Σ p̄ log10 p̄ = Σ p̄ ln p̄ / ln 10
    mean = [0.4, 0.4, 0.2]
    natural = sum(p * math.log(p) for p in mean)
    assert sum(p * math.log10(p) for p in mean) == pytest.approx(natural / math.log(10), abs=1e-12)
    fixed = torch.tensor(mean).log().expand(5, 3)
    assert balance_term(fixed, log10=True).item() == pytest.approx(natural / math.log(10), abs=1e-6)

    code, kl_code, spread_code = generator_loss(logits, targets, balance=3.0, log10=True)
    (grad_code,) = torch.autograd.grad(code, logits)
    nat, kl_nat, spread_nat = generator_loss(logits, targets, balance=3.0 / math.log(10))
    (grad_nat,) = torch.autograd.grad(nat, logits)
    torch.testing.assert_close(code, nat)  # the same loss ...
    torch.testing.assert_close(grad_code, grad_nat)  # ... and the same generator signal
    torch.testing.assert_close(kl_code, kl_nat)
    torch.testing.assert_close(spread_code * math.log(10), spread_nat)  # the term itself is reported in its base
    # λ = 3 in natural log weighs the balance term ln 10 ≈ 2.30 times more than the code does
    stronger = generator_loss(logits, targets, balance=3.0)[0]
    torch.testing.assert_close(stronger - kl_nat, math.log(10) * (code - kl_code))


def test_balance_term_of_a_saturated_student_has_a_finite_gradient():
    """Logit gaps of 200 make softmax give exact zeros in float32: −H(p̄) is then 0 (one class)."""
    logits = torch.tensor([[0.0, 200.0, 0.0], [0.0, 300.0, 0.0]], requires_grad=True)
    value = balance_term(logits)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all()
    two_classes = torch.tensor([[200.0, 0.0, 0.0], [0.0, 200.0, 0.0]])  # p̄ = (½, ½, 0)
    assert balance_term(two_classes).item() == pytest.approx(-math.log(2), abs=1e-6)


def test_entropy_by_hand():
    logits = torch.stack([torch.tensor([0.5, 0.3, 0.2]).log(), torch.tensor([30.0, 0.0, 0.0])])  # 2nd: near one-hot
    expected = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))  # 1.0296530
    assert entropy(logits)[0].item() == pytest.approx(expected, abs=1e-6)
    assert entropy(logits)[1].item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- high-entropy examples
def confident_linear(seed=0, classes=3, size=8):
    """A linear classifier leaning to class 0 (bias 3): low entropy on most inputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes))
    with torch.no_grad():
        model[1].bias.zero_()[0] = 3.0
    return model


def test_entropy_ascent_raises_the_entropy_without_an_epsilon_ball():
    student = confident_linear()
    student.train()
    before = [p.detach().clone() for p in student.parameters()]
    x = 0.25 + 0.5 * torch.rand(16, 3, 8, 8)
    x_hee = high_entropy_examples(student, x, steps=10, step_size=0.03)
    with torch.no_grad():
        assert entropy(student(x_hee)).mean() > entropy(student(x)).mean() + 0.3
        assert (entropy(student(x_hee)) > entropy(student(x))).all()
    assert 0 <= x_hee.min() and x_hee.max() <= 1
    assert (x_hee - x).abs().max().item() > 8 / 255 + 0.1  # not projected to an ε-ball (at most 10·0.03)
    assert (x_hee - x).abs().max().item() <= 0.3 + 1e-6
    assert student.training and all(p.requires_grad for p in student.parameters())  # restored
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    # it clamps to [0, 1] rather than projecting: images at the border stay inside
    edge = high_entropy_examples(student, torch.ones(2, 3, 8, 8), steps=3, step_size=0.5)
    assert 0 <= edge.min() and edge.max() <= 1


def test_hee_step_is_the_absolute_reference_value_unless_set_relative_to_epsilon():
    # default: the released code's absolute --lr_hee 0.03, whatever ε
    assert hee_step(Params(), 8 / 255) == 0.03 and hee_step(Params(), 0.1) == 0.03
    assert hee_step(Params(hee_step_size=0.01), 0.1) == 0.01
    # relative: η = r·ε; r = 0.03 / (8/255) = 0.95625 gives the reference's 0.03 at ε = 8/255
    assert 0.03 / (8 / 255) == pytest.approx(0.95625, abs=1e-12)
    assert hee_step(Params(hee_step_relative=0.95625), 8 / 255) == pytest.approx(0.03, abs=1e-12)
    assert hee_step(Params(hee_step_relative=0.95625), 0.1) == pytest.approx(0.095625, abs=1e-12)
    # set, it replaces the absolute step
    assert hee_step(Params(hee_step_size=0.5, hee_step_relative=0.5), 0.1) == pytest.approx(0.05, abs=1e-12)


def test_hee_step_relative_keeps_existing_run_keys_and_is_validated():
    assert "hee_step_relative" not in to_plain(Params(), for_key=True)  # old keys stay valid
    assert to_plain(Params(hee_step_relative=0.95625), for_key=True)["hee_step_relative"] == 0.95625
    assert build(Params, {"hee_step_relative": None}).hee_step_relative is None
    assert build(Params, {"hee_step_relative": "0.5"}).hee_step_relative == 0.5
    for bad in (0, -0.1):
        with pytest.raises(SchemaError, match="hee_step_relative"):
            build(Params, {"hee_step_relative": bad}, "params")
    assert DFHL.version == "1"  # no default changed


def test_schedule_defaults_are_the_reference_values_and_schedule_fields():
    """train.py: SGD weight_decay 1e-4, CosineAnnealingLR(T_max = epochs, eta_min 2e-4) stepped per epoch;
    lr 0.1, momentum 0.9 are shared."""
    assert DFHL.schedule_defaults == {"weight_decay": 1e-4, "lr_min": 2e-4, "lr_schedule": "epochs"}
    assert set(DFHL.schedule_defaults) <= set(field_names(Schedule))
    schedule = build(Schedule, DFHL.schedule_defaults, "schedule")  # valid schedule values
    assert (schedule.lr, schedule.momentum) == (0.1, 0.9)  # the reference's, already the shared defaults


def test_strong_augmentation_is_identity_without_transforms_and_stays_in_range():
    x = torch.rand(6, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    plain = strong_augment(x, generator, crop_min=1.0, rotation=0.0, noise=0.0, hflip=False)
    torch.testing.assert_close(plain, x, atol=1e-5, rtol=0)
    out = strong_augment(x, generator)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 and not torch.allclose(out, x)
    # a constant image keeps its value inside a crop (no rotation, noise or flip)
    constant = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(strong_augment(constant, generator, rotation=0.0, noise=0.0), constant)
    # per-image draws from the given generator: reproducible
    again = strong_augment(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, strong_augment(x, torch.Generator().manual_seed(1)))


# --------------------------------------------------------------------------- the method on fixtures
class ConstantTeacher(nn.Module):
    """Always predicts ``label`` (logits from a bias), whatever the image."""

    def __init__(self, classes, label):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            self.bias[label] = 5.0

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def make_method(teacher, student, params=Params(), generator_steps=2, batch_size=8, epsilon=None):
    info = get_dataset("synthetic")
    teacher.eval().requires_grad_(False)
    cost = Cost()
    cost.watch_teacher(teacher)
    epsilon = info.epsilon if epsilon is None else epsilon
    context = MethodContext(teacher=teacher, student=student, info=info, epsilon=epsilon,
                            step_size=info.step_size, attack_steps=2, batch_size=batch_size,
                            generator_steps=generator_steps, pool_size=1000, device=torch.device("cpu"), cost=cost)
    return DFHL(params, context)


def test_pool_holds_the_teachers_hard_labels_and_generation_queries_it_once_per_image():
    torch.manual_seed(0)
    method = make_method(ConstantTeacher(10, label=3), confident_linear(classes=10, size=16), Params(n_g=3))
    line = method.synthesize(0)
    assert len(method.pool) == 8 and method.pool.labels.tolist() == [3] * 8  # T's decision, not the sampled y
    assert method.ctx.cost.teacher_forward_images == 8  # N_G student-only steps, then one query per image
    assert method.ctx.cost.images_synthesized == 8
    assert {"gen_loss", "gen_kl", "gen_balance", "gen_label_agreement"} <= set(line)
    assert all(math.isfinite(v) for v in line.values())
    images, labels = method.sample(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 16, 16) and labels.tolist() == [3] * 5


def test_generator_is_kept_across_epochs_and_rounds_follow_the_schedule():
    torch.manual_seed(0)
    method = make_method(ConstantTeacher(10, 0), confident_linear(classes=10, size=16), Params(n_g=2, lr_g=1e-12))
    initial = {k: v.clone() for k, v in method.generator.state_dict().items() if v.is_floating_point()}
    method.synthesize(0)
    method.synthesize(1)
    after = method.generator.state_dict()
    # a negligible lr leaves the weights where they were: nothing re-initialises G between rounds
    for name in ("project.weight", "body.2.weight", "body.9.weight"):
        torch.testing.assert_close(after[name], initial[name], atol=1e-8, rtol=0)
    assert len(method.pool) == 2 * 8
    derived = make_method(ConstantTeacher(10, 0), confident_linear(classes=10, size=16), Params(n_g=2, rounds=0),
                          generator_steps=5)
    derived.synthesize(0)
    assert len(derived.pool) == 3 * 8  # ⌈T_g / N_G⌉ = ⌈5 / 2⌉ rounds


def test_student_loss_sees_only_hard_labels():
    torch.manual_seed(0)
    teacher = confident_linear(seed=1, classes=10, size=16)
    method = make_method(teacher, confident_linear(seed=2, classes=10, size=16))
    x = torch.rand(8, 3, 16, 16)
    x_adv = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = method.student_loss(x, x_adv, teacher_logits, None)

    # any change of the teacher's outputs that keeps the argmax leaves the loss unchanged
    for rescaled in (7 * teacher_logits + 2, 0.01 * teacher_logits,
                     nn.functional.one_hot(teacher_logits.argmax(1), 10).float()):
        torch.testing.assert_close(method.student_loss(x, x_adv, rescaled, None), loss)
    method.ctx.teacher = nn.Sequential(teacher, nn.Softmax(dim=1))  # HEE queries answered with probabilities
    torch.testing.assert_close(method.student_loss(x, x_adv, teacher_logits, None), loss)

    # by hand: ½ CE on the HEEs against argmax T(x_adv) + ½ CE on the pool batch against argmax T(x)
    student = method.ctx.student
    ce = nn.functional.cross_entropy
    expected = 0.5 * ce(student(x_adv), teacher(x_adv).argmax(1)) + 0.5 * ce(student(x), teacher_logits.argmax(1))
    torch.testing.assert_close(loss, expected)
    hee_only = make_method(teacher, student, Params(clean_weight=0.0)).student_loss(x, x_adv, teacher_logits, None)
    torch.testing.assert_close(hee_only, ce(student(x_adv), teacher(x_adv).argmax(1)))
    diagnostics = method.end_of_epoch(0)
    assert set(diagnostics) == {"hee_entropy", "hee_label_change"} and method.end_of_epoch(1) == {}


@pytest.mark.parametrize(("params", "epsilon", "eta"), [
    (Params(hee_steps=1, crop_min=1.0, rotation=0.0, noise=0.0), 0.1, 0.03),  # absolute default, any ε
    (Params(hee_steps=1, crop_min=1.0, rotation=0.0, noise=0.0, hee_step_relative=0.5), 0.1, 0.05),
    (Params(hee_steps=1, crop_min=1.0, rotation=0.0, noise=0.0, hee_step_relative=0.95625), 8 / 255, 0.03),
])
def test_adversarial_takes_the_hee_step_of_its_settings(monkeypatch, params, epsilon, eta):
    """Spy on the entropy ascent: the step it is given, and one step x + η·sign(∇ₓ H) checked by hand."""
    calls = []

    def spy(student, x, *, steps, step_size):
        calls.append({"start": x.clone(), "steps": steps, "step_size": step_size})
        return high_entropy_examples(student, x, steps=steps, step_size=step_size)

    monkeypatch.setattr(dfhl_module, "high_entropy_examples", spy)
    student = confident_linear(seed=3, classes=10, size=16)
    method = make_method(ConstantTeacher(10, 0), student, params, epsilon=epsilon)
    generator = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * rand((4, 3, 16, 16), generator=generator)
    x_hee = method.adversarial(x, torch.zeros(4, 10), torch.Generator().manual_seed(1))

    (call,) = calls
    assert call["steps"] == 1 and call["step_size"] == pytest.approx(eta, abs=1e-12)
    start = call["start"]
    torch.testing.assert_close(start, x, atol=1e-5, rtol=0)  # no crop, rotation, noise or flip here
    start_grad = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(entropy(student(start_grad)).sum(), start_grad)
    torch.testing.assert_close(x_hee, (start + eta * grad.sign()).clamp(0, 1))
    moved = (x_hee - start).abs()
    assert moved.max().item() == pytest.approx(eta, abs=1e-6)  # interior pixels: no clamp, no ε-ball


def test_default_params_per_dataset():
    assert DFHL.default_params("cifar10") == Params()
    c100 = DFHL.default_params("cifar100")
    assert (c100.n_g, c100.lr_g, c100.lr_z, c100.smoothing) == (15, 5e-3, 1.5e-2, 0.02)
    assert DFHL.default_params("fashion-mnist") == Params()
    assert DFHL.default_params("synthetic").n_g == 2


# --------------------------------------------------------------------------- end to end
EXPERIMENT = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 2, warmup_epochs: 0, generator_steps: 2, student_steps: 2, batch_size: 16,
              history_every: 1, probe_n: 20}}
  eval: {{attacks: [clean, pgd20], n_eval: 20}}
grid:
  method: [dfhl]
"""


ENV = {"OMP_NUM_THREADS": "1"}  # for the harness subprocesses


@pytest.fixture(scope="module")
def experiment(teacher_checkpoint):
    return EXPERIMENT.format(teacher=teacher_checkpoint)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, experiment):
    where = tmp_path_factory.mktemp("straight-dfhl")
    write_experiment(where, experiment)
    run_experiment(where, env=ENV)
    return run_folder(where / "results", "dfhl")


def test_dfhl_runs_end_to_end(straight_run):
    folder = straight_run
    assert json.loads((folder / "status.json").read_text())["state"] == "done"
    history = history_of(folder)
    assert [h["epoch"] for h in history] == [1, 2]
    for line in history:
        assert {"gen_loss", "gen_label_agreement", "student_loss", "hee_entropy", "hee_label_change"} <= set(line)
        assert all(math.isfinite(line[k]) for k in ("gen_loss", "student_loss", "hee_entropy"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["attacks"]) == {"clean", "pgd20"} and metrics["n_eval"] == 20
    cost = json.loads((folder / "cost.json").read_text())
    assert cost["images_synthesized"] == 2 * 16  # one round of N_G steps per epoch
    # teacher queries: per epoch 16 pool labels + per student step 16 (trainer) + 16 (HEE labels); no backward
    assert cost["teacher_forward_images"] == 2 * (16 + 2 * (16 + 16))
    assert cost["teacher_backward_images"] == 0
    state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert len(state["pool"]["images"]) == 2 * 16 and state["pool"]["labels"].min() >= 0
    assert set(state) == {"generator", "pool"}


def test_killed_run_resumes_and_matches_the_straight_run(tmp_path, experiment, straight_run):
    write_experiment(tmp_path, experiment)
    kill_at_first_checkpoint(start_run(tmp_path, env=ENV), tmp_path / "results", "dfhl")
    folder = run_folder(tmp_path / "results", "dfhl")
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1

    run_experiment(tmp_path, env=ENV)
    history = history_of(folder)
    assert len(history) == 2
    assert history == history_of(straight_run)  # generator and pool survive the restart
