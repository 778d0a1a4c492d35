"""FERD (methods/ferd.py): every equation on hand-computed fixtures, the switches and presets,
and the method end to end through ``python -m harness run`` (every preset, and kill-and-resume)."""

import dataclasses
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.backbone.class_weights import class_means, least_pgd_steps, lps_weights
from harness.backbone.cost import Cost
from harness.backbone.distill import kl_pgd
from harness.backbone.method import METHODS, MethodContext, load_plugins
from harness.config import ConfigError, load_experiment
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.metrics import normalized_entropy, target_histogram
from harness.models import create_model
from methods.ferd import (
    FERD,
    Params,
    class_margins,
    decoupled_kl,
    ferd_student_loss,
    fit_bottleneck,
    generator_adversarial_loss,
    ib_objective,
    minmax_weights,
    nonrobust_mask,
    softmax_weights,
    teacher_pgd_statistics,
    uniform_kl,
    utae,
)
from tests.e2e import history_of, kill_at_first_checkpoint, run_experiment, run_folder, start_run, write_experiment

SYNTHETIC = get_dataset("synthetic")


# --------------------------------------------------------------------------- (b) reweighting, Eqs. 1–2
LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [0.5, 0.2, 0.1]])
LABELS = torch.tensor([0, 1, 1, 0])  # class 2 is absent from the batch


def test_margins_and_class_difficulty_keep_absent_classes():
    # m = z_y − max_{j≠y} z_j: 2−1, 3−1, 0−4, 0.5−0.2
    margins = class_margins(LOGITS, LABELS)
    torch.testing.assert_close(margins, torch.tensor([1.0, 2.0, -4.0, 0.3]))
    previous = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    difficulty = class_means(-margins, LABELS, previous)
    # D_0 = mean(−1, −0.3) = −0.65, D_1 = mean(−2, 4) = 1.0, D_2 absent: keeps 0.7
    torch.testing.assert_close(difficulty, torch.tensor([-0.65, 1.0, 0.7], dtype=torch.float64))


def test_softmax_and_minmax_weights():
    difficulty = torch.tensor([-0.65, 1.0, 0.7], dtype=torch.float64)
    # exp(D) = [0.522046, 2.718282, 2.013753] / 5.254081
    weights = softmax_weights(difficulty, tau=1.0)
    torch.testing.assert_close(weights, torch.tensor([0.09936, 0.517366, 0.383274], dtype=torch.float64), atol=1e-6,
                               rtol=0)
    # τ = 2 flattens them
    assert softmax_weights(difficulty, tau=2.0).max() < weights.max()
    # minmax: 0.05 + (D − min)/(max − min)·0.15 = [0.05, 0.2, 0.172727], / 0.422727
    torch.testing.assert_close(minmax_weights(difficulty), torch.tensor([0.11828, 0.473118, 0.408602],
                                                                        dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(minmax_weights(torch.full((4,), 0.3)), torch.full((4,), 0.25))


def test_table6_lps_weightings():
    kappa = torch.tensor([2.0, 5.0, 10.0, 20.0], dtype=torch.float64)
    expected = {
        # κ^−2 = [0.25, 0.04, 0.01, 0.0025] / 0.3025
        "power": [0.826445, 0.132232, 0.033058, 0.008265],
        # 1 − κ/21 = [19, 16, 11, 1]/21, / (47/21)
        "linear": [19 / 47, 16 / 47, 11 / 47, 1 / 47],
        # σ(5(1 − κ/10)) = σ([4, 2.5, 0, −5]) = [0.982014, 0.924142, 0.5, 0.006693]
        "sigmoid": [0.406994, 0.383009, 0.207224, 0.002774],
        # (1 + tanh([4, 2.5, 0, −5]))/2 = [0.999665, 0.993307, 0.5, 0.0000454]
        "tanh": [0.400986, 0.398436, 0.20056, 0.000019],
    }
    for mode, values in expected.items():
        weights = lps_weights(kappa, mode, steps=20, beta=2.0, lam=0.0)
        torch.testing.assert_close(weights, torch.tensor(values, dtype=torch.float64), atol=2e-6, rtol=0)
        assert weights.sum().item() == pytest.approx(1.0)


def test_least_pgd_steps_counting():
    wrong = torch.tensor([  # rows: iterates x^(0)..x^(4) (K = 4); columns: samples
        [False, True, False, False, False],
        [False, True, False, False, False],
        [False, True, True, False, False],
        [False, True, True, True, False],
        [False, True, True, False, True],
    ])
    # never → K; wrong from the start → 0; flips at 2 → 2; wrong only at 3 → 3; only at K → K
    assert least_pgd_steps(wrong).tolist() == [4, 0, 2, 3, 4]


class ConstantModel(nn.Module):
    """Logits that ignore the image (zero input gradient): PGD iterates stay at the random start."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        return self.logits + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("difficulty", ["margin", "clean_ce"])
def test_reweighting_difficulty_from_margins_or_clean_ce(models, difficulty):
    """D_c: mean −margin after PGD-K on the teacher (paper) or the teacher's clean CE (code)."""
    teacher, student = models
    method = FERD(Params(difficulty=difficulty, reweight_steps=3), method_context(teacher, student))
    torch.manual_seed(0)
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 1, 4])
    method._reweight(images, labels)
    with torch.no_grad():
        clean_ce = F.cross_entropy(teacher(images), labels, reduction="none").double()
    expected_ce = [clean_ce[:2].mean(), clean_ce[2:5].mean(), clean_ce[5]]
    measured = method.difficulty[[0, 1, 4]]
    matches = torch.allclose(measured, torch.stack(expected_ce), atol=1e-6)
    assert matches == (difficulty == "clean_ce")
    assert method.difficulty[2].item() == 0.0  # absent: keeps its initial D
    torch.testing.assert_close(method.class_weights, torch.softmax(method.difficulty, 0))


def test_teacher_pgd_statistics_margins_and_lps():
    model = ConstantModel(LOGITS)
    x = torch.rand(4, 1, 2, 2)
    margins, lps = teacher_pgd_statistics(model, x, LABELS, epsilon=0.1, step_size=0.02, steps=5)
    torch.testing.assert_close(margins, torch.tensor([1.0, 2.0, -4.0, 0.3]))
    assert lps.tolist() == [5, 5, 0, 5]  # sample 3 is misclassified at every iterate, the others never
    assert model.logits.requires_grad  # attack_mode restored the flags


# --------------------------------------------------------------------------- (a) information bottleneck, Eqs. 4–7
def pooled_head(weight):
    return lambda z: F.adaptive_avg_pool2d(z, 1).flatten(1) @ weight.T


def bottleneck_fixture():
    # channel 0 = [[0, 2], [0, 2]] (mean 1, var 1), channel 1 = [[0, 0], [0, 4]] (mean 1, var 3)
    features = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # pooled [1, 1] → logits [1, 1, 2]
    return features, pooled_head(weight), torch.tensor([2])


def test_ib_objective_at_zero():
    features, head, labels = bottleneck_fixture()
    lam = torch.zeros(1, 2, 1, 1)
    # σ = softplus(0) = ln 2, σ² = 0.480453; ε = 0 → CE(f(Z), y) = log(2e + e²) − 2 = 0.551445
    # KL_c = v/σ² + log(σ²/v) − 1: v = 1 → 0.348343, v = 3 → 3.412469; Σ = 3.760812
    value = ib_objective(head, features, labels, lam, torch.zeros_like(features), beta=0.3, reduction="sum")
    assert value.item() == pytest.approx(0.551445 + 0.3 * 3.760812, abs=1e-5)
    assert value.item() == pytest.approx(1.679688, abs=1e-5)
    half = ib_objective(head, features, labels, lam, torch.zeros_like(features), beta=0.3, reduction="half_mean")
    assert half.item() == pytest.approx(0.551445 + 0.3 * 0.5 * 3.760812 / 2, abs=1e-5)  # 0.833506
    # the noise enters as Z + σ·ε: ε = 1 shifts both pooled features by ln 2, logits [1+σ, 1+σ, 2+2σ]
    shifted = ib_objective(head, features, labels, lam, torch.ones_like(features), beta=0.0)
    sigma = math.log(2)
    expected = math.log(2 * math.exp(1 + sigma) + math.exp(2 + 2 * sigma)) - (2 + 2 * sigma)
    assert shifted.item() == pytest.approx(expected, abs=1e-5)


def test_fit_bottleneck_matches_noise_to_ignored_channels():
    # a head that ignores channel 1: only the KL term acts on σ_1, minimal at σ_1² = v_1 = 3
    features, _, labels = bottleneck_fixture()
    head = pooled_head(torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]]))
    torch.manual_seed(0)
    sigma, value = fit_bottleneck(head, features, labels, steps=150, lr=0.1, beta=0.3)
    assert sigma.shape == (1, 2, 1, 1) and math.isfinite(value)
    assert sigma[0, 1].item() ** 2 == pytest.approx(3.0, rel=0.05)


def test_nonrobust_mask_rule():
    def channel(var):  # a 2×2 map with (biased) spatial variance `var`
        s = math.sqrt(var)
        return [[1 - s, 1 + s], [1 - s, 1 + s]]

    noisy = torch.tensor([[channel(1), channel(4), channel(3)], [channel(10), channel(0), channel(0)]])
    sigma = torch.tensor([0.5, 2.0, 8.0]).sqrt().view(1, 3, 1, 1).expand(2, 3, 1, 1)
    # per sample: thresholds 4 and 10 → σ² = [0.5, 2, 8] gives [1, 1, 0] and [1, 1, 1]
    mask = nonrobust_mask(sigma, noisy, "per_sample")
    assert mask.shape == (2, 3, 1, 1)
    assert mask.flatten(1).tolist() == [[1, 1, 0], [1, 1, 1]]
    # batch (code): one threshold 10 for both samples
    assert nonrobust_mask(sigma, noisy, "batch").flatten(1).tolist() == [[1, 1, 1], [1, 1, 1]]


def test_mask_as_written_flags_every_channel_of_noisy_features():
    """Documented finding: Var(Z_I^c) ≈ v_c + σ_c² ≥ σ_c², so the max over channels in Eq. 6 is
    about the largest σ_c² or more: every channel but those with a near-maximal σ is flagged."""
    torch.manual_seed(0)
    features = torch.relu(torch.randn(4, 16, 8, 8))
    sigma = torch.rand(4, 16, 1, 1) * 3
    noisy = features + sigma * torch.randn_like(features)
    clearly_below = sigma**2 < 0.8 * (sigma**2).amax(dim=1, keepdim=True)
    for mode in ("per_sample", "batch"):
        mask = nonrobust_mask(sigma, noisy, mode)
        assert mask[clearly_below].all() and mask.mean() > 0.9


@pytest.mark.parametrize("mask_variance", ["noisy", "clean"])
def test_mask_threshold_reads_the_noisy_or_the_clean_features(models, monkeypatch, mask_variance):
    """``mask_variance``: Eq. 6's threshold from Var(Z_I) (paper) or from Var(Z) itself (code)."""
    import methods.ferd as ferd

    teacher, student = models
    method = FERD(Params(ib_steps=2, mask_variance=mask_variance), method_context(teacher, student))
    features, references = [], []
    monkeypatch.setattr(ferd, "fit_bottleneck", lambda head, z, *a, **k: features.append(z.detach()) or
                        (torch.full((*z.shape[:2], 1, 1), 0.5), 0.0))
    monkeypatch.setattr(ferd, "nonrobust_mask", lambda sigma, reference, mode, variance: references.append(reference)
                        or nonrobust_mask(sigma, reference, mode, variance))
    method._generator_loss(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    (z,), (reference,) = features, references
    if mask_variance == "clean":
        assert torch.equal(reference, z)
    else:  # Z + 0.5·ε, ε one draw per sample and channel (the default ib_noise)
        assert (reference - z).std().item() == pytest.approx(0.5, rel=0.3)
        torch.testing.assert_close(reference.var(dim=(2, 3)), z.var(dim=(2, 3)))


def test_uniform_kl_value_and_zero_for_a_uniform_head():
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log()
    # KL(U ‖ q) = (1/3)[log(2/3) + 2 log(4/3)] = 0.056633
    assert uniform_kl(logits).item() == pytest.approx(0.056633, abs=1e-6)
    torch.manual_seed(0)
    teacher = create_model("cnn5", in_channels=3, num_classes=10, image_size=16).eval()
    with torch.no_grad():
        teacher.fc.bias.zero_()
    layer = teacher.default_feature_layer
    features = teacher.features(torch.rand(4, 3, 16, 16), layer)
    mask = torch.zeros(4, features.shape[1], 1, 1)
    assert uniform_kl(teacher.head(mask * features, layer)).item() == pytest.approx(0.0, abs=1e-6)
    assert uniform_kl(teacher.head(features, layer)).item() > 0


# --------------------------------------------------------------------------- (c) UTAEs (Eq. 10), student loss (Eq. 11)
def method_context(teacher, student, attack_steps=4):
    return MethodContext(teacher=teacher, student=student, info=SYNTHETIC, epsilon=8 / 255, step_size=2 / 255,
                         attack_steps=attack_steps, batch_size=8, generator_steps=1, pool_size=64,
                         device=torch.device("cpu"), cost=Cost())


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = create_model("cnn5", in_channels=3, num_classes=10, image_size=16).eval().requires_grad_(False)
    student = create_model("resnet8", in_channels=3, num_classes=10, image_size=16)
    return teacher, student


@pytest.mark.parametrize("utae_model", ["teacher", "student"])
def test_utae_with_gamma_zero_is_kl_pgd_step_by_step(models, utae_model):
    teacher, student = models
    method = FERD(Params(gamma=0.0, utae_model=utae_model), method_context(teacher, student))
    attacked = teacher if utae_model == "teacher" else student
    torch.manual_seed(1)
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        teacher_logits = teacher(x)
    student.train()
    for steps in range(1, 5):
        method.ctx.attack_steps = steps
        ours = method.adversarial(x, teacher_logits, torch.Generator().manual_seed(7))
        plain = kl_pgd(attacked, x, teacher_logits, epsilon=8 / 255, step_size=2 / 255, steps=steps,
                       generator=torch.Generator().manual_seed(7))
        assert torch.equal(ours, plain), f"differs after {steps} steps"
    assert student.training  # the attack left the student's mode alone
    with_gamma = utae(attacked, x, teacher_logits, epsilon=8 / 255, step_size=2 / 255, steps=4, gamma=0.5,
                      generator=torch.Generator().manual_seed(7))
    assert not torch.equal(with_gamma, plain)
    assert (with_gamma - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= with_gamma.min() and with_gamma.max() <= 1


@pytest.fixture(scope="module")
def trained_model():
    """A ResNet-8 trained 30 steps on `synthetic` (100 % clean accuracy on the samples below)."""
    data = SYNTHETIC.load("train")
    x = torch.stack([data[i][0] for i in range(200)])
    y = torch.tensor([data[i][1] for i in range(200)])
    torch.manual_seed(0)
    model = create_model("resnet8", in_channels=3, num_classes=10, image_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        index = torch.randint(0, 200, (32,))
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x[:100], y[:100]


def test_uniform_term_spreads_the_attack_targets(trained_model):
    model, x, y = trained_model
    targets = 5 * F.one_hot(y, 10).float()

    def entropy(gamma, seed):
        x_u = utae(model, x, targets, epsilon=32 / 255, step_size=8 / 255, steps=10, gamma=gamma,
                   generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            predicted = model(x_u).argmax(1)
        histogram = target_histogram(y.numpy(), predicted.numpy(), 10)
        assert histogram.sum() >= 50  # most samples are broken either way
        return normalized_entropy(histogram)

    for seed in (0, 1):  # measured: γ 0 → 0.17, γ 0.5 → 0.31, γ 1 → 0.49
        plain, half, one = entropy(0.0, seed), entropy(0.5, seed), entropy(1.0, seed)
        assert half > plain + 0.08 and one > half + 0.08


def test_student_loss_weights_eq11_and_ikl():
    teacher = torch.tensor([[0.8, 0.2]]).log()
    clean = torch.tensor([[0.6, 0.4]]).log().requires_grad_(True)
    adv = torch.tensor([[0.5, 0.5]]).log().requires_grad_(True)
    # KL(T‖S(x_F)) = 0.091516, KL(T‖S(x_U)) = 0.192745
    loss = ferd_student_loss(teacher, clean, adv)
    assert loss.item() == pytest.approx(5 / 6 * 0.091516 + 1 / 6 * 0.192745, abs=1e-6)
    assert loss.item() == pytest.approx(0.108388, abs=1e-6)  # RSLAD's weights would give 0.175873
    only_utae = ferd_student_loss(teacher, clean, adv, lambda_clean=0.0, lambda_utae=1.0)
    assert only_utae.item() == pytest.approx(0.192745, abs=1e-6)
    # ikl with the one-hot prior: wMSE vanishes, ikl = KL + H(T) (H = 0.500402), same student gradient
    ikl = ferd_student_loss(teacher, clean, adv, kind="ikl", labels=torch.tensor([0]))
    assert ikl.item() == pytest.approx(0.108388 + 0.500402, abs=1e-6)
    grads_kl = torch.autograd.grad(loss, [clean, adv])
    grads_ikl = torch.autograd.grad(ikl, [clean, adv])
    for a, b in zip(grads_kl, grads_ikl):
        torch.testing.assert_close(a, b)
    # with a soft prior the wMSE part is alive: ¼·2·w_01·(Δt − Δs)² = ½·0.16·(ln 4 − ln 1.5)²
    soft = decoupled_kl(teacher, clean, torch.tensor([[0.8, 0.2]]))
    wmse = 0.5 * 0.16 * (math.log(4) - math.log(1.5)) ** 2
    assert soft.item() == pytest.approx(wmse + 0.091516 + 0.500402, abs=1e-6)


def test_generator_adversarial_loss_kl_and_code_dkl():
    teacher = torch.tensor([[2.0, 0.0]], requires_grad=True)
    student = torch.tensor([[0.0, 1.0]], requires_grad=True)
    t, s = teacher.detach()[0].tolist(), student.detach()[0].tolist()
    p_t = [math.exp(v) / (math.exp(t[0]) + math.exp(t[1])) for v in t]
    log_s = [v - math.log(math.exp(s[0]) + math.exp(s[1])) for v in s]
    kl = sum(p * (math.log(p) - ls) for p, ls in zip(p_t, log_s))
    assert generator_adversarial_loss(teacher, student).item() == pytest.approx(-kl, abs=1e-6)
    # dkl: prior softmax(t/100) = (σ(0.02), σ(−0.02)); ¼·2·w_01·((2 − 0) − (0 − 1))² + soft CE
    w01 = 1 / (1 + math.exp(-0.02)) * 1 / (1 + math.exp(0.02))
    soft_ce = -sum(p * ls for p, ls in zip(p_t, log_s))
    dkl = generator_adversarial_loss(teacher, student, "dkl")
    assert dkl.item() == pytest.approx(-(0.5 * w01 * 9 + soft_ce), abs=1e-6)
    # gradients reach T only through the pairwise differences (and the prior), not through the soft CE
    (grad_t,) = torch.autograd.grad(dkl, teacher)
    assert grad_t[0, 0].item() == pytest.approx(-(0.5 * w01 * 2 * 3), abs=1e-3)
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        generator_adversarial_loss(teacher, student, "js")


# --------------------------------------------------------------------------- construction, presets
def test_layer_is_checked_against_the_teacher(models):
    teacher, student = models
    assert FERD(Params(), method_context(teacher, student)).layer == "block5"
    assert FERD(Params(layer="block3"), method_context(teacher, student)).layer == "block3"
    with pytest.raises(HarnessError, match="no feature layer 'layer3'.*block1, block2"):
        FERD(Params(layer="layer3"), method_context(teacher, student))


def test_state_round_trip_continues_exactly(models):
    """A method restored from a weights_only checkpoint continues like the original (persistent G)."""
    teacher, student = models
    params = Params(ib_steps=2, reset_generator=False, reweight="power")

    def make():
        context = method_context(teacher, student)
        context.generator_steps = 2
        return FERD(params, context)

    torch.manual_seed(3)
    original = make()
    first = original.synthesize(0)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    restored = make()
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert restored.class_weights.tolist() == first["class_weights"] and len(restored.pool) == 8
    lines = []
    for method in (original, restored):
        torch.manual_seed(4)
        lines.append(method.synthesize(1))
    assert lines[0] == lines[1]
    assert torch.equal(original.pool.images, restored.pool.images)
    for a, b in zip(original.generator.state_dict().values(), restored.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_a_generator_reset_every_epoch_is_not_checkpointed(models):
    """Resuming needs no G that the next epoch re-draws anyway (the checkpoint keeps what resuming needs)."""
    teacher, student = models
    kept = FERD(Params(ib_steps=2, reset_generator=False), method_context(teacher, student)).state_dict()
    reset = FERD(Params(ib_steps=2), method_context(teacher, student)).state_dict()
    assert {"generator", "generator_optimizer"} <= set(kept) and not {"generator", "generator_optimizer"} & set(reset)


PRESET_YAML = """
base:
  dataset: {dataset}
  student: resnet8
  teacher: {{arch: cnn5}}
methods:
  ferd: {{ib_steps: 3}}
grid:
  method: [ferd, ferd-code, ferd-code-bfb8be4, ferd-no-reweight, ferd-no-fae, ferd-no-utae, ferd-no-fae-utae]
"""


def test_presets_resolve_to_their_switches(tmp_path):
    (tmp_path / "presets.yaml").write_text(PRESET_YAML.format(dataset="synthetic"))
    cells = {spec.method: spec.params for spec in load_experiment(tmp_path / "presets.yaml").cells}
    base = Params(ib_steps=3)
    assert cells["ferd"] == base
    code = Params(ib_steps=3, utae_model="student", reweight="minmax", ib_kl_reduction="half_mean",
                  mask_max="batch", mask_variance="clean", gamma=0.0, student_loss="ikl", adversarial_loss="dkl",
                  difficulty="margin", difficulty_images="last_view", absent_classes="zero", ib_noise="channel",
                  variance="unbiased", variance_guard="offset")
    assert cells["ferd-code"] == code
    assert cells["ferd-code-bfb8be4"] == dataclasses.replace(code, difficulty="clean_ce")
    assert cells["ferd-no-reweight"] == Params(ib_steps=3, reweight="none")
    assert cells["ferd-no-fae"] == Params(ib_steps=3, lambda_uni=0.0)
    assert cells["ferd-no-utae"] == Params(ib_steps=3, gamma=0.0)
    assert cells["ferd-no-fae-utae"] == Params(ib_steps=3, lambda_uni=0.0, gamma=0.0)
    assert base.gamma == 0.5 and base.reweight == "softmax" and base.utae_model == "student"
    assert base.ib_noise == "channel" and FERD.version == "2"
    load_plugins()
    assert dict(METHODS.get("ferd-no-fae-utae").overrides) == {"lambda_uni": 0.0, "gamma": 0.0}
    # per-dataset defaults: paper values on CIFAR, smaller bottleneck budgets on the CPU datasets
    assert FERD.default_params("cifar10") == Params() and Params().ib_steps == 50 and Params().nz == 100
    assert FERD.default_params("fashion-mnist").ib_steps == 25
    assert FERD.default_params("synthetic").ib_steps == 5
    (tmp_path / "bad.yaml").write_text(PRESET_YAML.format(dataset="synthetic").replace(
        "{ib_steps: 3}", "{reweight: softmx}"))
    with pytest.raises(ConfigError, match="reweight: must be one of .*did you mean 'softmax'"):
        load_experiment(tmp_path / "bad.yaml")


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
  ferd: {{ib_steps: 3, tau: 0.01}}  # a sharp softmax: p far from uniform even with a random teacher
grid:
  method: [{methods}]
"""
ALL = ("ferd", "ferd-code", "ferd-no-reweight", "ferd-no-fae", "ferd-no-utae", "ferd-no-fae-utae")
TWO_SLOTS = ("--workers", "2")  # one thread per cell in the grid and in the resumed run alike


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, teacher_checkpoint):
    where = tmp_path_factory.mktemp("ferd-grid")
    write_experiment(where, EXPERIMENT.format(teacher=teacher_checkpoint, methods=", ".join(ALL)))
    run_experiment(where, args=TWO_SLOTS)
    return where / "results"


def test_every_preset_runs_end_to_end(grid_run):
    for method in ALL:
        folder = run_folder(grid_run, method)
        assert json.loads((folder / "status.json").read_text())["state"] == "done", method
        history = history_of(folder)
        assert [h["epoch"] for h in history] == [1, 2]
        for line in history:
            assert math.isfinite(line["gen_loss"]) and math.isfinite(line["student_loss"])
            assert len(line["class_weights"]) == 10 and sum(line["class_weights"]) == pytest.approx(1.0)
            assert len(line["class_difficulty"]) == 10 and len(line["class_lps"]) == 10
            assert sum(line["class_counts"]) == 16
            assert "utae_target_entropy" in line and 0 <= line["utae_misclassified"] <= 1
            assert ("gen_uni" in line) == ("no-fae" not in method)
        if method == "ferd-no-reweight":
            assert all(w == pytest.approx(0.1) for line in history for w in line["class_weights"])
        else:
            assert max(history[0]["class_weights"]) > min(history[0]["class_weights"])
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(metrics["attacks"]) == {"clean", "pgd20"} and metrics["n_eval"] == 20
        assert json.loads((folder / "cost.json").read_text())["images_synthesized"] == 2 * 16
    state = torch.load(run_folder(grid_run, "ferd") / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert len(state["pool"]["images"]) == 2 * 16 and state["pool"]["labels"].min() >= 0
    history = history_of(run_folder(grid_run, "ferd"))
    assert state["class_weights"].tolist() == pytest.approx(history[-1]["class_weights"])


def test_killed_run_resumes_with_weights_and_pool(tmp_path, teacher_checkpoint, grid_run):
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, methods="ferd"))
    kill_at_first_checkpoint(start_run(tmp_path, args=TWO_SLOTS), tmp_path / "results", "ferd")
    folder = run_folder(tmp_path / "results", "ferd")
    state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    saved = state["method"]
    assert len(saved["pool"]["images"]) == 16
    assert saved["class_weights"].tolist() == pytest.approx(history_of(folder)[0]["class_weights"])
    assert saved["class_weights"].max() > 0.3  # the reweighting has moved p far from uniform

    run_experiment(tmp_path, args=TWO_SLOTS)
    history = history_of(folder)
    assert len(history) == 2
    assert history == history_of(run_folder(grid_run, "ferd"))  # p, D, pool and generator survived


# --------------------------------------------------------------------------- the released code's choices (issue 25)
def test_channel_noise_keeps_the_spatial_variance_of_every_channel():
    """ε drawn per (sample, channel) and broadcast over H×W: Var(Z_I^c) = Var(Z^c) exactly, so
    Eq. 6 as printed (noisy) thresholds with the clean variances; per-element noise adds σ_c²."""
    import methods.ferd as ferd

    torch.manual_seed(0)
    z = torch.relu(torch.randn(3, 5, 4, 4))
    sigma = torch.rand(3, 5, 1, 1) + 0.5
    noise = ferd.bottleneck_noise(z, "channel")
    assert noise.shape == (3, 5, 1, 1)
    torch.testing.assert_close(ferd.spatial_variance(z + sigma * noise), ferd.spatial_variance(z))
    assert ferd.bottleneck_noise(z, "element").shape == z.shape
    torch.testing.assert_close(nonrobust_mask(sigma, z + sigma * noise), nonrobust_mask(sigma, z))


def test_bottleneck_fit_draws_the_chosen_noise_shape(monkeypatch):
    import methods.ferd as ferd

    shapes = []
    original = ferd.ib_objective
    monkeypatch.setattr(ferd, "ib_objective", lambda head, z, y, lam, noise, *a, **k: shapes.append(
        tuple(noise.shape)) or original(head, z, y, lam, noise, *a, **k))
    z, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    head = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    for kind, shape in (("channel", (2, 3, 1, 1)), ("element", (2, 3, 4, 4))):
        shapes.clear()
        fit_bottleneck(head, z, y, steps=2, lr=0.1, beta=0.3, noise=kind)
        assert shapes == [shape, shape]


def test_kl_to_prior_code_form_unbiased_variance_and_offset():
    """The code's Eq. 5: v = unbiased spatial variance, ½·mean of v/(σ²+δ) + log((σ²+δ)/(v+δ)) − 1."""
    import methods.ferd as ferd

    z = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # one sample, two channels
    sigma = torch.tensor([[[[1.0]], [[0.5]]]])
    delta = 1e-10
    v_unbiased = [5 / 3, 0.0]  # values 0..3: Σ(x − 1.5)² = 5, / (4 − 1); a constant channel: 0
    terms = [v / (s**2 + delta) + math.log((s**2 + delta) / (v + delta)) - 1 for v, s in zip(v_unbiased, [1.0, 0.5])]
    value = ferd.kl_to_prior(z, sigma, "half_mean", variance="unbiased", guard="offset")
    assert value.item() == pytest.approx(0.5 * sum(terms) / 2, rel=1e-6)
    # the harness's form: biased variance (5/4), floored at 1e-6, summed over channels
    v_biased = [5 / 4, 1e-6]
    expected = sum(v / s**2 + math.log(s**2 / v) - 1 for v, s in zip(v_biased, [1.0, 0.5]))
    assert ferd.kl_to_prior(z, sigma).item() == pytest.approx(expected, rel=1e-5)


def test_mask_with_unbiased_variance():
    z = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.5]]]])
    sigma = torch.tensor([[[[1.2]], [[0.1]]]])  # σ² = 1.44: below 5/3 (unbiased max), above 5/4 (biased)
    assert nonrobust_mask(sigma, z, "per_sample", "biased").flatten().tolist() == [0.0, 1.0]
    assert nonrobust_mask(sigma, z, "per_sample", "unbiased").flatten().tolist() == [1.0, 1.0]


def test_difficulty_on_the_last_view_with_absent_classes_at_zero(models, monkeypatch):
    """ferd-code: D from the last augmented iterate, classes absent from the batch at 0."""
    import methods.ferd as ferd

    teacher, student = models
    seen = []
    original = ferd.teacher_pgd_statistics
    monkeypatch.setattr(ferd, "teacher_pgd_statistics", lambda t, x, y, **k: seen.append(x) or original(t, x, y, **k))
    for images, absent in (("best", "keep"), ("last_view", "zero")):
        seen.clear()
        method = FERD(Params(ib_steps=1, difficulty_images=images, absent_classes=absent, reweight_steps=2),
                      method_context(teacher, student))
        method.difficulty = torch.full((10,), 7.0, dtype=torch.float64)
        method.class_weights = torch.zeros(10, dtype=torch.float64)
        method.class_weights[:2] = 0.5  # only classes 0 and 1 are drawn
        torch.manual_seed(0)
        method.synthesize(0)
        (x,) = seen
        pooled = method.pool.images[-8:].float()
        if images == "best":  # the images as pooled (float16 there)
            torch.testing.assert_close(x, pooled, atol=1e-3, rtol=0)
        else:  # an augmented view: not the pooled images
            assert not torch.allclose(x, pooled, atol=1e-2)
        expected_absent = 7.0 if absent == "keep" else 0.0
        assert method.difficulty[2:].tolist() == [expected_absent] * 8


def test_adversarial_sign_as_printed_flips_the_term(models):
    teacher, student = models
    totals = {}
    for sign in ("ascent", "as_printed"):
        method = FERD(Params(ib_steps=1, lambda_uni=0.0, adversarial_sign=sign), method_context(teacher, student))
        torch.manual_seed(0)
        total, terms, _ = method._generator_loss(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
        totals[sign] = (total.item(), terms["adv"].item())
    (ascent, adv), (printed, adv_again) = totals["ascent"], totals["as_printed"]
    assert adv == pytest.approx(adv_again) and adv < 0  # L_adv = −KL
    assert ascent - printed == pytest.approx(2 * adv, abs=1e-4)  # L_gen is large (L_bn): float32 rounding


def test_wrn_bottleneck_defaults_to_the_final_batchnorm():
    """Released code, --int_pop 3: Z = bn1(block3(·)) before the ReLU; f_{l+} = ReLU → pool → fc."""
    from harness.models.wrn import WideResNet

    torch.manual_seed(0)
    wrn = WideResNet(10, 1, 3, 10).eval()
    assert wrn.default_feature_layer == "bn1"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        z = wrn.features(x, "bn1")
        expected = wrn.fc(F.adaptive_avg_pool2d(F.relu(z), 1).flatten(1))
        torch.testing.assert_close(wrn.head(z, "bn1"), expected)
        torch.testing.assert_close(wrn(x), expected)
        assert (z < 0).any()  # before the ReLU
