"""ZSKT and DeepInv plugins (METHODS.md §1, §2): losses by hand, the reference bugs avoided,
and two-epoch runs through ``python -m harness run`` that survive a SIGKILL."""

import copy
import io
import json
import math

import pytest
import torch

import methods.deepinv as deepinv
from harness.backbone.best_iterate import BestIterate
from harness.backbone.cost import Cost
from harness.backbone.method import MethodContext
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.models import create_model
from methods.zskt import ZSKT, attention_loss, generator_loss
from tests.e2e import history_of, kill_at_first_checkpoint, run_experiment, run_folder, start_run, write_experiment

INFO = get_dataset("synthetic")


def cnn5(seed):
    torch.manual_seed(seed)
    return create_model("cnn5", in_channels=3, num_classes=10, image_size=16).eval().requires_grad_(False)


def resnet8(seed):
    torch.manual_seed(seed)
    return create_model("resnet8", in_channels=3, num_classes=10, image_size=16)


def context(teacher, student, **overrides):
    settings = dict(teacher=teacher, student=student, info=INFO, epsilon=8 / 255, step_size=2 / 255, attack_steps=2,
                    batch_size=8, generator_steps=1, pool_size=100, device=torch.device("cpu"), cost=Cost())
    return MethodContext(**(settings | overrides))


# ---------------------------------------------------------------------------------- ZSKT
def test_zskt_generator_loss_is_minus_kl_by_hand():
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    student = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert generator_loss(teacher, student).item() == pytest.approx(-kl, rel=1e-6)
    assert generator_loss(teacher, teacher).item() == 0.0


def test_zskt_generator_learns_from_the_real_student():
    teacher = cnn5(0)
    clone = copy.deepcopy(teacher).train().requires_grad_(True)  # the Fast-Datafree bug: "student" == teacher
    outcomes = {}
    for name, student in (("clone", clone), ("student", resnet8(1))):
        method = ZSKT(ZSKT.default_params("synthetic"), context(teacher, student))
        before = [p.detach().clone() for p in method.generator.parameters()]
        line = method.synthesize(0)
        moved = sum((a - b).abs().sum().item() for a, b in zip(before, method.generator.parameters()))
        outcomes[name] = (line["generator_kl"], moved)
        assert len(method.pool) == 8 and method.ctx.cost.images_synthesized == 8
        assert student.training and all(p.requires_grad for p in student.parameters())  # restored
    assert outcomes["clone"] == (0.0, 0.0)  # L_G ≡ 0 and G never moves when S == T
    kl, moved = outcomes["student"]
    assert kl > 0 and moved > 0


def test_zskt_generator_gradient_is_nonzero_with_a_different_student():
    teacher, student = cnn5(0), resnet8(1).eval()
    method = ZSKT(ZSKT.default_params("synthetic"), context(teacher, student))
    x = method.generator(torch.randn(8, method.params.nz))
    loss = generator_loss(teacher(x), student(x))
    grads = torch.autograd.grad(loss, list(method.generator.parameters()))
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_zskt_rounds_cover_the_generator_steps_and_state_round_trips():
    teacher, student = cnn5(0), resnet8(1)
    params = ZSKT.Params(nz=8, width=8, n_g=2)
    method = ZSKT(params, context(teacher, student, generator_steps=3))
    method.synthesize(0)
    assert len(method.pool) == 2 * 8  # ⌈3 / 2⌉ rounds of one batch each
    x, labels = method.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 16, 16) and labels is None
    restored = ZSKT(params, context(teacher, student, generator_steps=3))
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.pool.images, method.pool.images)
    assert all(torch.equal(a, b) for a, b in zip(restored.generator.parameters(), method.generator.parameters()))


def test_attention_loss_by_hand_and_across_sizes():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # map [1, 0, 0, 0], already unit norm
    b = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])  # squared [0, 0, 0, 4] -> normalised [0, 0, 0, 1]
    assert attention_loss([a], [b]).item() == pytest.approx(2 / 4)  # ((1)^2 + (−1)^2) / 4
    assert attention_loss([a, a], [a, a]).item() == 0.0
    big = torch.ones(2, 5, 8, 8)  # constant maps match after resizing to 4×4
    assert attention_loss([big], [3 * torch.ones(2, 7, 4, 4)]).item() == pytest.approx(0.0, abs=1e-7)


def test_zskt_attention_switch_adds_the_at_term():
    teacher, student = cnn5(0), resnet8(1)
    x = torch.rand(4, 3, 16, 16)
    logits = teacher(x)
    plain = ZSKT(ZSKT.Params(nz=8, width=8), context(teacher, student))
    with_at = ZSKT(ZSKT.Params(nz=8, width=8, attention=True), context(teacher, student))
    student.eval()
    base = plain.student_loss(x, x, logits, None)
    _, s_blocks = student.forward_blocks(x)
    _, t_blocks = teacher.forward_blocks(x)
    expected = base + 250 * attention_loss(s_blocks, t_blocks)
    assert with_at.student_loss(x, x, logits, None).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(HarnessError, match="attention"):
        ZSKT(ZSKT.Params(attention=True), context(teacher, torch.nn.Linear(2, 2)))


# ------------------------------------------------------------------------------- DeepInv
def test_js_divergence_clamps_by_hand():
    p_logits = torch.tensor([[math.log(0.995), math.log(0.005)]])  # P = [0.995, 0.005], clamped [0.99, 0.01]
    q_logits = torch.tensor([[0.0, 0.0]])  # Q = [0.5, 0.5]
    m = [(0.995 + 0.5) / 2, (0.005 + 0.5) / 2]  # M from the unclamped P, Q: [0.7475, 0.2525]
    p = [0.99, 0.01]
    expected = 0.5 * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m)) + 0.5 * sum(
        0.5 * math.log(0.5 / mi) for mi in m)
    assert deepinv.js_divergence(p_logits, q_logits, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)
    # temperature divides the logits; JS is symmetric
    swapped = deepinv.js_divergence(3 * q_logits, 3 * p_logits, temperature=3.0)
    assert swapped.item() == pytest.approx(expected, rel=1e-5)
    assert deepinv.js_divergence(p_logits, p_logits, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_total_variation_l1_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # right: |0−1|, |2−4| → 1.5; down: |0−2|, |1−4| → 2.5; anti-diagonal |2−1| → 1; diagonal |0−4| → 4
    assert deepinv.total_variation_l1(x).item() == pytest.approx(1.5 + 2.5 + 1 + 4)
    assert deepinv.total_variation_l1(torch.full((2, 3, 3, 3), 0.7)).item() == 0.0


def test_deepinv_loss_combines_its_terms():
    params = deepinv.Params(lambda_bn=2.0, lambda_oh=0.5, lambda_adv=3.0, lambda_tv=0.1, lambda_l2=0.25)
    teacher_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    student_logits = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0])
    images = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]]).expand(2, 1, 2, 2)
    ce = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    js = deepinv.js_divergence(student_logits, teacher_logits, 3.0).item()
    l2 = math.sqrt(2 * (0 + 1 + 4 + 16))
    expected = 2.0 * 1.5 + 0.5 * ce - 3.0 * js + 0.1 * 9.0 + 0.25 * l2
    loss = deepinv.deepinv_loss(params, torch.tensor(1.5), teacher_logits, student_logits, labels, images)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    no_adv = deepinv.Params(lambda_adv=0.0)
    assert deepinv.deepinv_loss(no_adv, torch.tensor(0.0), teacher_logits, None, labels, images).isfinite()


def test_best_iterate_is_a_copy_and_keeps_the_lowest_loss():
    best = BestIterate()
    x = torch.zeros(2, 3)
    best.update(torch.tensor(2.0), {"term": torch.tensor(5.0)}, images=x)
    x.add_(1.0)  # the parameters move on: the kept images must not
    assert torch.equal(best["images"], torch.zeros(2, 3))
    best.update(torch.tensor(3.0), {"term": torch.tensor(6.0)}, images=x)
    assert best.numbers() == {"loss": 2.0, "term": 5.0} and torch.equal(best["images"], torch.zeros(2, 3))
    best.update(torch.tensor(float("nan")), {"term": torch.tensor(7.0)}, images=x)  # NaN never replaces
    assert best.numbers()["loss"] == 2.0
    best.update(torch.tensor(1.0), {"term": torch.tensor(8.0)}, images=x)
    assert best.numbers() == {"loss": 1.0, "term": 8.0} and torch.equal(best["images"], torch.ones(2, 3))


def test_deepinv_pools_the_best_iterate_not_the_last(monkeypatch):
    offsets = [0.0, -1e6, 0.0, 0.0, 0.0]  # the second iterate is the best; later ones are worse
    seen = []
    real = deepinv.deepinv_loss

    def scripted(params, bn_loss, teacher_logits, student_logits, labels, images):
        seen.append(images.detach().clone())
        return real(params, bn_loss, teacher_logits, student_logits, labels, images) + offsets[len(seen) - 1]

    monkeypatch.setattr(deepinv, "deepinv_loss", scripted)
    teacher, student = cnn5(0), resnet8(1)
    method = deepinv.DeepInv(deepinv.Params(), context(teacher, student, generator_steps=len(offsets)))
    torch.manual_seed(0)
    line = method.synthesize(0)
    assert len(seen) == len(offsets)
    pooled = method.pool.images
    assert torch.equal(pooled, seen[1].to(torch.float16))
    assert not torch.equal(pooled, seen[-1].to(torch.float16))  # the alias bug would pool the last iterate
    assert line["inversion_loss"] < -1e5
    assert method.pool.labels.shape == (8,) and method.pool.labels.min() >= 0 and method.pool.labels.max() < 10
    assert method.ctx.cost.images_synthesized == 8
    x, labels = method.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 16, 16) and labels.shape == (5,)
    assert student.training  # restored after synthesis


@pytest.mark.parametrize("inversion_steps, generator_steps, expected", [(0, 3, 3), (5, 3, 5)])
def test_deepinv_inversion_steps_override_the_schedule(monkeypatch, inversion_steps, generator_steps, expected):
    calls = []
    real = deepinv.deepinv_loss
    monkeypatch.setattr(deepinv, "deepinv_loss", lambda *args: calls.append(1) or real(*args))
    params = deepinv.Params(inversion_steps=inversion_steps)
    method = deepinv.DeepInv(params, context(cnn5(0), resnet8(1), generator_steps=generator_steps))
    method.synthesize(0)
    assert len(calls) == expected


def test_deepinv_needs_some_steps():
    with pytest.raises(HarnessError, match="inversion_steps"):
        deepinv.DeepInv(deepinv.Params(), context(cnn5(0), resnet8(1), generator_steps=0))


def test_deepinv_moves_the_images_towards_lower_loss():
    teacher, student = cnn5(0), resnet8(1)
    method = deepinv.DeepInv(deepinv.Params(), context(teacher, student, generator_steps=8))
    torch.manual_seed(0)
    assert method.synthesize(0)["inversion_loss"] < math.inf
    images = method.pool.images.float()
    assert images.min() >= 0 and images.max() <= 1
    restored = deepinv.DeepInv(deepinv.Params(), context(teacher, student))
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.pool.labels, method.pool.labels)


@pytest.mark.parametrize("plugin", [ZSKT, deepinv.DeepInv])
def test_checkpointed_state_resumes_synthesis_exactly(plugin):
    teacher, student = cnn5(0), resnet8(1)

    def make(seed):
        torch.manual_seed(seed)
        return plugin(plugin.default_params("synthetic"), context(teacher, student, generator_steps=2))

    def epoch(method, index):
        torch.manual_seed(100 + index)  # the trainer reseeds every epoch
        method.synthesize(index)

    straight, first = make(0), make(0)
    epoch(straight, 0), epoch(straight, 1), epoch(first, 0)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(7)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    epoch(resumed, 1)
    assert torch.equal(resumed.pool.images, straight.pool.images)
    assert torch.equal(resumed.pool.labels, straight.pool.labels)


# --------------------------------------------------------------------------- end to end
EXPERIMENT = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 2, warmup_epochs: 0, generator_steps: 2, student_steps: 2, batch_size: 16, probe_n: 20}}
  threat: {{train_steps: 2}}
  eval: {{attacks: [clean, pgd20], n_eval: 20}}
grid:
  method: [{method}]
"""


@pytest.mark.parametrize("method", ["zskt", "deepinv"])
def test_two_epochs_end_to_end_resuming_after_sigkill(method, tmp_path, teacher_checkpoint):
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, method=method))
    kill_at_first_checkpoint(start_run(tmp_path), tmp_path / "results", method, timeout=120, poll=0.02)
    folder = run_folder(tmp_path / "results", method)
    assert json.loads((folder / "status.json").read_text())["state"] in ("running", "interrupted")

    run_experiment(tmp_path, timeout=180)
    assert [h["epoch"] for h in history_of(folder)] == [1, 2]
    assert json.loads((folder / "status.json").read_text())["state"] == "done"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["attacks"]) == {"clean", "pgd20"} and metrics["n_eval"] == 20
    cost = json.loads((folder / "cost.json").read_text())
    per_epoch = 2 * 16 if method == "zskt" else 16  # ZSKT: 2 rounds of one batch; DeepInv: one batch
    assert cost["images_synthesized"] == 2 * per_epoch
