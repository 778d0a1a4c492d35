"""ZSKT and DeepInv plugins (METHODS.md §1, §2): losses by hand, the reference bugs avoided,
and two-epoch runs through ``python -m harness run`` that survive a SIGKILL."""

import copy
import dataclasses
import io
import json
import math

import pytest
import torch

import methods.deepinv as deepinv
import methods.zskt as zskt
from harness.backbone.best_iterate import BestIterate
from harness.backbone.cost import Cost
from harness.backbone.generator import Generator
from harness.backbone.method import MethodContext
from harness.config import load_experiment
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.models import create_model
from harness.schema import to_plain
from harness.trainer import Trainer
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


def pool_params(**overrides):
    """The synthetic defaults in pool mode (version 1's loop)."""
    return dataclasses.replace(ZSKT.default_params("synthetic"), mode="pool", **overrides)


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
        method = ZSKT(pool_params(), context(teacher, student))
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
    params = ZSKT.Params(mode="pool", nz=8, width=8, n_g=2)
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


# ------------------------------------------------------------------ ZSKT reference mode
def test_zskt_defaults_to_the_reference_loop():
    params = ZSKT.default_params("cifar10")
    assert (params.mode, params.n_g, params.n_s, params.output_bn) == ("reference", 1, 10, False)
    assert params.generator_lr == "student"  # the released code: one cosine for G and the student
    assert ZSKT.version == "3"
    assert "output_bn" not in to_plain(params, for_key=True)  # a switch at its default leaves the key alone
    assert to_plain(dataclasses.replace(params, output_bn=True), for_key=True)["output_bn"] is True


@pytest.mark.parametrize("mode", ["reference", "pool"])
def test_zskt_generator_lr_is_the_students_fraction_of_lr(mode):
    """G's Adam takes lr × student_lr_scale(); at scale 0 its step leaves G as it was, with
    ``constant`` it takes lr whatever the student's schedule says."""
    teacher, student = cnn5(0), resnet8(1)
    scale = [0.25]
    params = ZSKT.Params(mode=mode, nz=8, width=8, lr=4e-3, n_s=2)
    method = ZSKT(params, context(teacher, student, student_lr_scale=lambda: scale[0]))
    rng = torch.Generator().manual_seed(0)

    def one_group():
        return method.synthesize(0) if mode == "pool" else (method.sample(8, rng), method.sample(8, rng))

    one_group()
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    line = method.synthesize(0) if mode == "pool" else method.end_of_epoch(0)
    assert line["generator_lr"] == pytest.approx(1e-3)
    scale[0] = 0.0
    before = [p.detach().clone() for p in method.generator.parameters()]
    one_group()
    assert all(torch.equal(a, b) for a, b in zip(before, method.generator.parameters()))
    method = ZSKT(dataclasses.replace(params, generator_lr="constant"),
                  context(teacher, student, student_lr_scale=lambda: scale[0]))
    before = [p.detach().clone() for p in method.generator.parameters()]
    one_group()
    assert method.optimizer.param_groups[0]["lr"] == 4e-3
    assert not all(torch.equal(a, b) for a, b in zip(before, method.generator.parameters()))


def spy_generator(method):
    """Record the z of every forward of the method's generator."""
    zs = []
    method.generator.register_forward_pre_hook(lambda module, args: zs.append(args[0].detach().clone()))
    return zs


@pytest.mark.parametrize("n_g", [1, 2])
def test_zskt_reference_takes_n_g_steps_then_serves_one_z_batch_n_s_times(monkeypatch, n_g):
    teacher, student = cnn5(0), resnet8(1)
    losses = []  # (student.training, any student parameter requiring grad) at each generator step
    monkeypatch.setattr(zskt, "generator_loss", lambda t, s: losses.append(
        (student.training, any(p.requires_grad for p in student.parameters()))) or generator_loss(t, s))
    n_s, batch = 3, 8
    method = ZSKT(ZSKT.Params(nz=8, width=8, n_g=n_g, n_s=n_s), context(teacher, student))
    assert method.pool is None and method.synthesize(0) == {} and not losses  # no G step outside `sample`
    initial = copy.deepcopy(method.generator)
    zs = spy_generator(method)
    student.eval()  # the G step runs it in train mode, as the original does, then restores the caller's mode
    student_before = [p.detach().clone() for p in student.parameters()]
    rng = torch.Generator().manual_seed(0)
    outputs, steps = [], []
    for _ in range(2 * n_s + 1):
        x, labels = method.sample(batch, rng)
        assert labels is None and x.shape == (batch, 3, 16, 16) and x.dtype == torch.float32
        outputs.append(x.clone())
        steps.append(len(losses))
        if len(outputs) == 1:  # the group's images: G(z) of the *updated* generator, for the step's z
            seen = len(zs)
            with torch.no_grad():
                assert torch.equal(x, method.generator(zs[0]))
                assert not torch.allclose(x, initial(zs[0]))
            del zs[seen:]  # the check's own forward
    # n_g generator steps at the first call of each group of n_s calls, none in between
    assert steps == [n_g] * n_s + [2 * n_g] * n_s + [3 * n_g]
    assert losses == [(True, False)] * (3 * n_g)  # student in train mode, parameter gradients off
    # per group: n_g forwards for the G steps + 1 for its images, all on one z; a fresh z per group
    assert len(zs) == 3 * (n_g + 1)
    groups = [zs[i * (n_g + 1):(i + 1) * (n_g + 1)] for i in range(3)]
    assert all(torch.equal(z, group[0]) for group in groups for z in group)
    assert not torch.equal(groups[0][0], groups[1][0]) and not torch.equal(groups[1][0], groups[2][0])
    # consecutive samples within a group are the same images; the next group's differ
    assert all(torch.equal(outputs[i], outputs[0]) for i in range(n_s))
    assert all(torch.equal(outputs[n_s + i], outputs[n_s]) for i in range(n_s))
    assert not torch.allclose(outputs[0], outputs[n_s]) and not torch.allclose(outputs[n_s], outputs[2 * n_s])
    # the student is untouched (no parameter change, no gradient left) and its mode restored
    assert not student.training and all(p.requires_grad for p in student.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert method.ctx.cost.images_synthesized == 3 * batch  # one z batch per group
    line = method.end_of_epoch(0)
    assert line["generator_steps"] == 3 * n_g and line["generator_kl"] > 0 and math.isfinite(line["generator_kl"])
    assert "batch_class_counts" not in line  # no student loss was taken
    assert method.end_of_epoch(1) == {"generator_steps": 0}  # counters restart


def test_zskt_reference_group_survives_a_checkpoint_mid_group():
    teacher, student = cnn5(0), resnet8(1)
    params = ZSKT.Params(nz=8, width=8, n_s=3)

    def make(seed):
        torch.manual_seed(seed)
        return ZSKT(params, context(teacher, student))

    straight, first = make(0), make(0)
    rng_a, rng_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):  # two of the group's three steps
        straight.sample(8, rng_a), first.sample(8, rng_b)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(7)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.group_left == 1
    third, _ = resumed.sample(8, torch.Generator().manual_seed(99))  # the group's last step: no draw, no G step
    assert torch.equal(third, straight.sample(8, rng_a)[0])
    assert torch.equal(resumed.sample(8, rng_b)[0], straight.sample(8, rng_a)[0])  # next group, same G and z
    assert all(torch.equal(a, b) for a, b in zip(resumed.generator.parameters(), straight.generator.parameters()))
    with pytest.raises(HarnessError, match="middle of a group"):
        resumed.sample(4, rng_b)
    idle = make(0).state_dict()  # no group under way: an empty batch
    assert idle["group_left"] == 0 and idle["group_images"].shape == (0, 3, 16, 16)
    fresh = make(3)
    fresh.load_state_dict(idle)
    assert fresh.group_images is None and "pool" not in idle


@pytest.mark.parametrize("mode", ["reference", "pool"])
def test_zskt_batch_class_counts_are_the_teachers_argmax_on_the_student_batches(mode):
    teacher, student = cnn5(0), resnet8(1)
    method = ZSKT(ZSKT.Params(mode=mode, nz=8, width=8, n_s=2), context(teacher, student))
    method.synthesize(0)
    rng = torch.Generator().manual_seed(0)
    expected = torch.zeros(10, dtype=torch.long)
    for _ in range(3):
        x, labels = method.sample(8, rng)
        logits = teacher(x)
        expected += torch.bincount(logits.argmax(1), minlength=10)
        method.student_loss(x, x, logits, labels)
    line = method.end_of_epoch(0)
    assert line["batch_class_counts"] == expected.tolist() and sum(line["batch_class_counts"]) == 3 * 8
    assert all(isinstance(count, int) for count in line["batch_class_counts"])
    if mode == "reference":
        assert line["generator_steps"] == 2  # 3 steps with n_s = 2: two groups
    assert "batch_class_counts" not in method.end_of_epoch(1)


def test_zskt_reference_gallery_leaves_the_generator_and_group_alone(monkeypatch):
    teacher, student = cnn5(0), resnet8(1)
    method = ZSKT(ZSKT.Params(nz=8, width=8, n_s=3), context(teacher, student))
    method.sample(8, torch.Generator().manual_seed(0))
    state = copy.deepcopy(method.generator.state_dict())
    monkeypatch.setattr(zskt, "generator_loss", lambda *args: pytest.fail("the gallery took a generator step"))
    images = method.gallery(11, torch.Generator().manual_seed(1))
    assert images.shape == (11, 3, 16, 16) and images.device.type == "cpu"
    assert images.min() >= 0 and images.max() <= 1
    assert all(torch.equal(v, method.generator.state_dict()[k]) for k, v in state.items())  # BN stats restored
    assert method.group_left == 2 and method.generator.training


SHARED_KEYS = ["project.weight", "project.bias"] + [
    f"body.{i}.{name}" for i in (0, 3, 7) for name in ("weight", "bias", "running_mean", "running_var",
                                                       "num_batches_tracked")] + [
    "body.2.weight", "body.6.weight", "body.9.weight", "body.9.bias"]


def test_generator_output_bn_switch():
    torch.manual_seed(0)
    plain = Generator(8, 3, 16, 8)
    torch.manual_seed(0)
    with_bn = Generator(8, 3, 16, 8, output_bn=True)
    assert sorted(plain.state_dict()) == sorted(SHARED_KEYS)  # the default's keys are unchanged
    assert isinstance(plain.body[10], torch.nn.Sigmoid) and len(plain.body) == 11
    bn = with_bn.body[10]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.affine and bn.num_features == 3
    assert isinstance(with_bn.body[11], torch.nn.Sigmoid)
    assert set(with_bn.state_dict()) - set(SHARED_KEYS) == {
        f"body.10.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    shared = with_bn.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in plain.state_dict().items())  # same draws for shared layers
    seen = []
    bn.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    z = torch.randn(32, 8)
    x = with_bn.train()(z)
    assert x.shape == (32, 3, 16, 16) and 0 < x.min() and x.max() < 1
    (pre,) = seen  # the pre-Sigmoid output: per channel mean β = 0 and std γ = 1 over the batch
    assert torch.allclose(pre.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(pre.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-2)
    assert torch.allclose(x, torch.sigmoid(pre))
    with torch.no_grad():
        bn.weight.fill_(0.5), bn.bias.fill_(0.2)
    with_bn(z)
    assert torch.allclose(seen[-1].mean(dim=(0, 2, 3)), torch.full((3,), 0.2), atol=1e-4)
    assert torch.allclose(seen[-1].std(dim=(0, 2, 3), unbiased=False), torch.full((3,), 0.5), atol=1e-2)
    method = ZSKT(ZSKT.Params(nz=8, width=8, output_bn=True), context(cnn5(0), resnet8(1)))
    assert isinstance(method.generator.body[10], torch.nn.BatchNorm2d)
    assert method.sample(4, torch.Generator().manual_seed(0))[0].shape == (4, 3, 16, 16)


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
        params = pool_params() if plugin is ZSKT else plugin.default_params("synthetic")
        return plugin(params, context(teacher, student, generator_steps=2))

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


def test_zskt_generator_lr_follows_the_trainers_cosine(tmp_path, teacher_checkpoint):
    """Through the trainer (n_s = 1: a group per student step; per-step cosine over 2 epochs × 3
    steps): G's learning rate at step k is lr_G·(1 + cos(πk/6))/2, the student's fraction."""
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, method="zskt").replace(
        "student_steps: 2", "student_steps: 3") + "methods: {zskt: {n_s: 1, lr: 0.002}}\n")
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    trainer = Trainer(spec, tmp_path / "run", "cpu", progress=False)
    seen = []
    anneal = trainer.method._anneal_generator_lr
    trainer.method._anneal_generator_lr = lambda: seen.append(anneal()) or seen[-1]
    trainer.train()
    assert seen == pytest.approx([0.002 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)])
    assert [line["generator_lr"] for line in trainer.history] == pytest.approx([seen[2], seen[5]])


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
    # ZSKT (reference mode, n_s = 10): one z batch serves the 2 + 2 student steps of both epochs,
    # across the kill; DeepInv: one batch per epoch
    assert cost["images_synthesized"] == (16 if method == "zskt" else 2 * 16)
    if method == "zskt":
        assert [sum(h["batch_class_counts"]) for h in history_of(folder)] == [2 * 16, 2 * 16]
        assert [h["generator_steps"] for h in history_of(folder)] == [1, 0]
