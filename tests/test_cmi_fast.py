"""CMI and Fast: their losses on hand-computed fixtures, the released code's choices (split InfoNCE
mean, L_adv from the last warm-up epoch, the WRN λ pair), and both methods end to end (with resume)."""

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import methods.cmi as cmi
import methods.fast as fast
from harness.backbone.cost import Cost
from harness.backbone.method import MethodContext
from harness.data import get_dataset
from harness.models import create_model
from harness.backbone.synthesis import decision_adversarial_loss
from methods.cmi import ChannelMeans, MemoryBank, info_nce, local_view
from methods.fast import adversarial_on, meta_round
from tests.e2e import history_of, kill_at_first_checkpoint, run_experiment, run_folder, start_run, write_experiment


# --------------------------------------------------------------------------- CMI pieces
def test_decision_adversarial_loss_masks_disagreeing_samples():
    teacher = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.25, 0.75]]).log()
    student = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.4, 0.6]]).log()
    # samples 1 and 3 agree (argmax 0 and 1); sample 2 disagrees and counts as zero
    kl_1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)  # 0.0915163
    kl_3 = 0.25 * math.log(0.25 / 0.4) + 0.75 * math.log(0.75 / 0.6)  # 0.0498568
    expected = -(kl_1 + 0 + kl_3) / 3  # -0.0471244
    assert decision_adversarial_loss(teacher, student).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(-0.0471244, abs=1e-6)


def test_info_nce_hand_example_and_diagonal_positives():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # cosine similarities [[0.6, 0], [0.8, 1]] / 0.1 -> logits [[6, 0], [8, 10]]
    expected = (math.log(1 + math.exp(-6)) + math.log(1 + math.exp(-2))) / 2
    assert info_nce(anchors, keys, 0.1).item() == pytest.approx(expected, rel=1e-5)

    torch.manual_seed(0)
    features = nn.functional.normalize(torch.randn(8, 16), dim=1)
    shuffled = features[torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])]
    assert info_nce(features, features, 0.1) < info_nce(features, shuffled, 0.1)


N_CURRENT, K_CACHED = 4, 12  # the batch's rows, then the memory bank's


def info_nce_by_hand(anchors, keys, tau):
    """Per row ℓ_i = logsumexp_j(a_i·k_j/τ) − a_i·k_i/τ and ∂ℓ_i/∂a_i = (Σ_j p_ij k_j − k_i)/τ,
    p_i = softmax_j(a_i·k_j/τ), from Python floats."""
    a, k = anchors.detach().double(), keys.detach().double()
    losses, grads = [], []
    for i in range(len(a)):
        logits = [float(a[i] @ k[j]) / tau for j in range(len(k))]
        top = max(logits)
        lse = top + math.log(sum(math.exp(value - top) for value in logits))
        losses.append(lse - logits[i])
        p = torch.tensor([math.exp(value - lse) for value in logits], dtype=torch.float64)
        grads.append((p @ k - k[i]) / tau)
    return losses, torch.stack(grads)


def test_info_nce_split_is_the_two_means_of_the_released_code_by_hand():
    torch.manual_seed(0)
    n, k, tau = N_CURRENT, K_CACHED, 0.1
    anchors = F.normalize(torch.randn(n + k, 8), dim=1).requires_grad_(True)
    keys = F.normalize(torch.randn(n + k, 8), dim=1)
    losses, row_grads = info_nce_by_hand(anchors, keys, tau)
    weights = {"split": torch.tensor([1 / n] * n + [1 / k] * k, dtype=torch.float64),
               "joint": torch.full((n + k,), 1 / (n + k), dtype=torch.float64)}
    expected = {"split": sum(losses[:n]) / n + sum(losses[n:]) / k, "joint": sum(losses) / (n + k)}
    grads = {}
    for reduction in ("split", "joint"):
        anchors.grad = None
        loss = info_nce(anchors, keys, tau, current=n, reduction=reduction)
        assert loss.item() == pytest.approx(expected[reduction], rel=1e-5)
        loss.backward()
        grads[reduction] = anchors.grad.double()
        torch.testing.assert_close(grads[reduction], weights[reduction][:, None] * row_grads, rtol=1e-4, atol=1e-6)
    assert info_nce(anchors, keys, tau, current=n).item() == pytest.approx(expected["split"], rel=1e-5)  # the default
    # the joint mean shrinks the current rows' gradient by N/(N+K) and the cached rows' by K/(N+K)
    torch.testing.assert_close(grads["joint"][:n], n / (n + k) * grads["split"][:n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["joint"][n:], k / (n + k) * grads["split"][n:], rtol=1e-5, atol=1e-6)
    # all rows current (or no cached row): both reductions are the plain mean
    for current in (None, n + k):
        for reduction in ("split", "joint"):
            value = info_nce(anchors, keys, tau, current=current, reduction=reduction).item()
            assert value == pytest.approx(sum(losses) / (n + k), rel=1e-5)
    for current in (0, n + k + 1):
        with pytest.raises(ValueError):
            info_nce(anchors, keys, tau, current=current)
    with pytest.raises(ValueError):
        info_nce(anchors, keys, tau, current=n, reduction="sum")


def test_info_nce_generator_side_gradient_ratio_through_the_head():
    torch.manual_seed(1)
    n, k, dim = N_CURRENT, K_CACHED, 6
    head = cmi.ProjectionHead(dim, 5)
    local = torch.randn(n, dim, requires_grad=True)  # the generator's side: the current local features
    cached_local, global_features, cached_global = torch.randn(k, dim), torch.randn(n, dim), torch.randn(k, dim)
    grads, values = {}, {}
    for reduction in ("split", "joint"):
        local.grad = None
        anchors = head(torch.cat([local, cached_local]))
        keys = head(torch.cat([global_features, cached_global])).detach()
        loss = info_nce(anchors, keys, 0.1, current=n, reduction=reduction)
        loss.backward()
        grads[reduction], values[reduction] = local.grad.clone(), loss.item()
        losses, _ = info_nce_by_hand(anchors, keys, 0.1)
        by_hand = sum(losses[:n]) / n + sum(losses[n:]) / k if reduction == "split" else sum(losses) / (n + k)
        assert values[reduction] == pytest.approx(by_hand, rel=1e-5)
    assert grads["split"].abs().sum() > 0
    torch.testing.assert_close(grads["joint"], n / (n + k) * grads["split"])  # 4/16


INFO = get_dataset("synthetic")


def tiny_context(batch_size, warmup_epochs=0):
    torch.manual_seed(0)
    teacher = create_model("cnn5", in_channels=3, num_classes=10, image_size=16).eval().requires_grad_(False)
    student = create_model("resnet8", in_channels=3, num_classes=10, image_size=16)
    return MethodContext(teacher=teacher, student=student, info=INFO, epsilon=8 / 255, step_size=2 / 255,
                         attack_steps=1, batch_size=batch_size, generator_steps=1, pool_size=64,
                         device=torch.device("cpu"), cost=Cost(), warmup_epochs=warmup_epochs)


def test_cmi_defaults_to_the_split_mean_and_its_generator_gradient_is_n_over_n_plus_k_of_it_when_joint():
    assert cmi.CMI.version == "2" and cmi.Params().cr_reduction == "split"
    params = {reduction: cmi.Params(lambda_bn=0.0, lambda_oh=0.0, lambda_adv=0.0, lambda_cr=1.0, bank_size=16,
                                    negatives=K_CACHED, cr_reduction=reduction) for reduction in ("split", "joint")}
    method = cmi.CMI(params["split"], tiny_context(N_CURRENT))
    method.bank.add(torch.randn(K_CACHED, method.means.dim), torch.randn(K_CACHED, method.means.dim))
    x, labels = torch.rand(N_CURRENT, 3, 16, 16), torch.zeros(N_CURRENT, dtype=torch.long)
    grads, terms = {}, {}
    for reduction in ("split", "joint"):
        method.params = params[reduction]
        images = x.clone().requires_grad_(True)
        torch.manual_seed(2)  # the same views and the same K cached pairs in both modes
        loss, terms[reduction], _, _ = method._loss(images, labels)
        loss.backward()
        grads[reduction] = images.grad
    assert grads["split"].abs().sum() > 0
    torch.testing.assert_close(grads["joint"], N_CURRENT / (N_CURRENT + K_CACHED) * grads["split"])
    assert terms["split"]["cr"] > terms["joint"]["cr"]  # two means of positive ℓ vs one


def test_cmi_features_are_channel_means_of_bn_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    model.eval()
    means = ChannelMeans(model)
    x = torch.randn(6, 3, 8, 8)
    with means.record():
        model(x)
    first = model[0](x)
    second = model[3](model[2](model[1](first)))
    expected = torch.cat([first.mean(dim=(2, 3)), second.mean(dim=(2, 3))], dim=1)
    assert means.dim == 9 and means.features().shape == (6, 9)
    torch.testing.assert_close(means.features(), expected)
    with means.record():
        pass
    with pytest.raises(RuntimeError):
        means.features()


def test_memory_bank_is_a_fifo_ring_of_pairs():
    bank = MemoryBank(size=4, dim=2, device=torch.device("cpu"))
    assert [len(t) for t in bank.sample(3)] == [0, 0]
    bank.add(torch.ones(3, 2), -torch.ones(3, 2))
    bank.add(2 * torch.ones(3, 2), -2 * torch.ones(3, 2))
    assert len(bank) == 4 and bank.count == 6
    global_features, local_features = bank.sample(4)
    assert sorted(global_features[:, 0].tolist()) == [1, 2, 2, 2]
    torch.testing.assert_close(local_features, -global_features)  # pairs stay together, in order
    restored = MemoryBank(size=4, dim=2, device=torch.device("cpu"))
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.data, bank.data) and restored.count == 6


def test_local_view_is_a_resized_crop_in_range():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 16, 16, requires_grad=True)
    view = local_view(x, hflip=True)
    assert view.shape == x.shape and 0 <= view.min() and view.max() <= 1
    view.sum().backward()
    assert x.grad.abs().sum() > 0  # differentiable in the images
    constant = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(local_view(constant, hflip=False), constant)


# --------------------------------------------------------------------------- Fast
def test_fast_meta_gradient_is_the_sum_of_inner_gradients():
    torch.manual_seed(0)
    generator = nn.Linear(2, 3, bias=False)
    z0 = torch.randn(4, 2)
    target = torch.randn(4, 3)
    steps, lr_g, lr_z = 3, 0.05, 0.1
    w0 = generator.weight.detach().clone()

    def loss_fn(x):
        return ((x - target) ** 2).sum(), {}

    z = z0.clone().requires_grad_(True)
    meta_round(generator, z, loss_fn, steps=steps, lr_g=lr_g, lr_z=lr_z)

    # the same inner loop by hand: L = ‖zWᵀ − t‖², ∂L/∂W = 2 (zWᵀ − t)ᵀ z, ∂L/∂z = 2 (zWᵀ − t) W,
    # Adam (betas 0.5, 0.999, eps 1e-8) on W (lr_g) and z (lr_z)
    w, zz = w0.clone(), z0.clone()
    moments = {name: [torch.zeros_like(value), torch.zeros_like(value)] for name, value in (("w", w), ("z", zz))}
    total = torch.zeros_like(w)
    for t in range(1, steps + 1):
        residual = zz @ w.T - target
        grads = {"w": 2 * residual.T @ zz, "z": 2 * residual @ w}
        total += grads["w"]
        for name, lr in (("w", lr_g), ("z", lr_z)):
            m, v = moments[name]
            m.mul_(0.5).add_(0.5 * grads[name])
            v.mul_(0.999).add_(0.001 * grads[name] ** 2)
            step = lr * (m / (1 - 0.5**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            if name == "w":
                w = w - step
            else:
                zz = zz - step
    torch.testing.assert_close(generator.weight.grad, total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generator.weight.detach(), w0)  # the meta step is the caller's
    torch.testing.assert_close(z.detach(), zz, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(total, 3 * 2 * (z0 @ w0.T - target).T @ z0)  # inner gradients, not G's


def test_fast_adversarial_term_starts_in_the_last_warmup_epoch_as_the_code():
    # the code: ``self.ep >= self.ep_start`` with ep = 1, 2, … (one round per epoch) and ep_start = warmup
    for warmup in (0, 1, 2, 20):
        for epoch in range(25):
            assert adversarial_on(epoch, warmup, "code") == (epoch + 1 >= warmup)
            assert adversarial_on(epoch, warmup, "after_warmup") == (epoch >= warmup)
            assert adversarial_on(epoch, warmup, "always")
    assert [e for e in range(22) if not adversarial_on(e, 20, "code")] == list(range(19))
    with pytest.raises(ValueError):
        adversarial_on(0, 1, "never")


@pytest.mark.parametrize(("adv_start", "first"), [("code", 2), ("after_warmup", 3), ("always", 0)])
def test_fast_drops_the_adversarial_term_in_the_warmup(adv_start, first):
    method = fast.Fast(fast.Params(g_steps=1, adv_start=adv_start), tiny_context(4, warmup_epochs=3))
    with_adv = ["gen_adv" in method.synthesize(epoch) for epoch in range(5)]
    assert with_adv == [epoch >= first for epoch in range(5)]


def test_fast_defaults_are_the_released_wrn_pair():
    params = fast.Params()
    assert fast.Fast.version == "2"
    assert (params.lambda_bn, params.lambda_oh, params.lambda_adv, params.adv_start) == (10.0, 0.4, 1.1, "code")
    assert (params.g_steps, params.lr_g, params.lr_z) == (5, 3e-3, 0.01)


# --------------------------------------------------------------------------- end to end
EXPERIMENT = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 2, warmup_epochs: 0, generator_steps: 2, student_steps: 2, batch_size: 16,
              history_every: 1, probe_n: 20}}
  threat: {{train_steps: 2}}
  eval: {{attacks: [clean, pgd20], n_eval: 20}}
methods:
  cmi: {{bank_size: 256, negatives: 64}}
  fast: {{g_steps: 2}}
grid:
  method: [{method}]
"""
METHODS = ("cmi", "fast")


@pytest.fixture(scope="module", params=METHODS)
def straight_run(request, tmp_path_factory, teacher_checkpoint):
    method = request.param
    where = tmp_path_factory.mktemp(f"straight-{method}")
    write_experiment(where, EXPERIMENT.format(teacher=teacher_checkpoint, method=method))
    run_experiment(where)
    return method, run_folder(where / "results", method)


def test_method_runs_end_to_end(straight_run):
    method, folder = straight_run
    assert json.loads((folder / "status.json").read_text())["state"] == "done"
    history = history_of(folder)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["gen_loss"]) and math.isfinite(h["student_loss"]) for h in history)
    own_term = {"cmi": "gen_cr", "fast": "gen_adv"}[method]
    assert own_term in history[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["attacks"]) == {"clean", "pgd20"} and metrics["n_eval"] == 20
    cost = json.loads((folder / "cost.json").read_text())
    assert cost["images_synthesized"] == 2 * 16
    state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert len(state["pool"]["images"]) == 2 * 16 and state["pool"]["labels"].min() >= 0


def test_killed_run_resumes_and_matches_the_straight_run(tmp_path, teacher_checkpoint, straight_run):
    method, straight = straight_run
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, method=method))
    kill_at_first_checkpoint(start_run(tmp_path), tmp_path / "results", method)
    folder = run_folder(tmp_path / "results", method)
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1

    run_experiment(tmp_path)
    history = history_of(folder)
    assert len(history) == 2
    assert history == history_of(straight)  # the method's state survives the restart
