"""FERD: Fairness-Enhanced data-free Robustness Distillation (ICLR 2026).

The paper is the default except where its printed equation is evidently a misprint (then the
released code, mayaobuduyao/FERD at d1d79c7, and the reason is given); every other point where
paper and code differ is a named switch, and the ``ferd-code`` preset turns all of them to the
code's side. docs/methods.md has the table of switches (paper | released code | harness default)
and links to the measurements.

Algorithm 1, one epoch (T_g = ``schedule.generator_steps``, T_s = ``schedule.student_steps``)
----------------------------------------------------------------------------------------
``synthesize(epoch)``:

(a) *Generation with reweighted labels.* y ~ Categorical(p) (uniform in the first epoch),
    z ~ N(0, I) (nz 100); G is re-initialised (``reset_generator``) and (G, z) are optimised
    jointly by Adam (lr_G 2e-3, lr_z 1.5e-2, betas (0.5, 0.999)) for T_g steps on a batch of
    ``schedule.batch_size``. Each step x = G(z) is augmented (random crop + the dataset's
    natural flip; CMI's global view) to x_a, and

        L_gen = λ_adv·L_adv + λ_bn·L_bn + λ_oh·L_oh + λ_uni·L_uni,                    (Eq. 8)
        L_adv = −KL(T(x_a) ‖ S(x_a)),   L_oh = CE(T(x_a), y),   L_bn the DeepInversion loss.

    The text requires G to *increase* the teacher–student divergence, and the code minimises
    −KL; Eq. 8 as printed has the opposite sign (``adversarial_sign: as_printed``). The iterate
    with the lowest L_gen — the un-augmented images x — joins the pool with its labels (the FAEs).

    Information bottleneck. Z = f_l^T(x_a) is the output of teacher layer l (``layer``; default
    the teacher's ``default_feature_layer``: on a WRN the final BatchNorm ``bn1``, after block3
    and before the ReLU, as the code's ``--int_pop 3``), f_{l+}^T = ``teacher.head(·, l)`` the
    rest of the teacher, so T(x_a) = f_{l+}^T(Z) (one teacher pass serves both). At every
    generator step a fresh λ_r ∈ R^{N×C×1×1} (init 0) is fitted by Adam (lr 0.1, ``ib_steps``
    = 50) on Z.detach():

        Z_I = Z + σ ⊙ ε,   σ = softplus(λ_r),   ε ~ N(0, 1)                        (Eq. 4)
        L(λ_r) = CE(f_{l+}(Z_I), y) + β·Σ_c (v_c/σ_c² + log(σ_c²/v_c) − 1),  β = 0.3   (Eq. 5)

    "Per channel": one noise scale σ and one draw ε per (sample, channel), broadcast over the
    H×W positions (``ib_noise: channel``, the code's shape [N, C, 1, 1]), fresh at every step;
    ``element`` draws ε per element. v_c is the spatial variance of channel c of Z, per sample
    (``variance``: biased, or unbiased as the code), kept away from 0 where a ReLU channel is
    constant (``variance_guard``: v ≥ 1e-6, or the code's δ = 1e-10 added to v and σ²). The KL
    term is summed over channels and averaged over the batch (``ib_kl_reduction: half_mean``:
    the code's ½·mean). With the fitted σ, channel k is *non-robust* when

        σ_k² < max_c Var(Z_I^c)                                                     (Eq. 6)

    Var the spatial variance of channel c of Z_I; the max runs over the channels of the same
    sample (``mask_max: per_sample``; ``batch``: the code's one max over the batch). With channel
    noise Var(Z_I^c) = Var(Z^c) exactly, so Eq. 6 as printed and the code's threshold on the
    clean Z (``mask_variance: clean``) coincide; with element noise Var(Z_I^c) ≈ v_c + σ_c², which
    flags almost every channel by construction. Then

        Z_nr = mask ⊙ Z  (mask constant; the gradient flows through Z into G),
        L_uni = KL(U ‖ softmax(f_{l+}(Z_nr))),  U uniform over the C classes.        (Eq. 7)

(b) *Robustness-guided class reweighting* (Eqs. 1–2) on the epoch's synthetic batch
    (``difficulty_images``: the best iterate as pooled, or the code's last augmented iterate)
    and its labels: x_adv = PGD-K on the **teacher** (CE, ε, α, uniform random start,
    K = ``reweight_steps`` = 20; ``harness.attacks.pgd``),

        m_i = T(x_adv)_{y_i} − max_{j≠y_i} T(x_adv)_j                                 (Eq. 1)
        D_c = mean_{i: y_i = c} (−m_i),   p = softmax(D / τ),  τ = 1                  (Eq. 2)

    A class absent from the batch keeps its previous D_c (0 before it is first seen;
    ``absent_classes: zero`` sets it to 0 as the code). ``difficulty: clean_ce`` is the repository's
    first upload (bfb8be4): D_c = the teacher's mean CE on the clean images, no attack. Table 6
    variants (Fair-ARD) use the least PGD steps of the same attack: LPS_i = the first t ∈ [0, K]
    at which the iterate x^(t) (x^(0) the random start) is misclassified by the teacher, K if
    never; κ_c = mean_{i: y_i = c} LPS_i (absent classes keep theirs, K/2 before first seen) and
    ω_c ∝ (κ_c + 1e-5)^−β (power, β 2; the 1e-5 is Fair-ARD's), 1 − κ_c/(K+1) (linear),
    sigmoid(λ + 5(1 − 2κ_c/K)), (1 + tanh(λ + 5(1 − 2κ_c/K)))/2 (λ = 0), normalised to sum to 1.
    D and κ are computed and logged in every mode, also ``none`` (p stays uniform).

(c) The trainer then runs T_s student steps on pool batches x_F (``sample``):

    UTAEs (``adversarial``, Eq. 10): x_U ← x_F + 0.001·N(0, 1), then ``threat.train_steps``
    (10) times

        x_U ← Π_{B_ε(x_F) ∩ [0,1]}(x_U + α·sign ∇_{x_U}[KL(T(x_F) ‖ M(x_U)) − γ·KL(U ‖ M(x_U))]),

    γ = 0.5, M in eval mode without parameter gradients. M is the **student** (``utae_model``):
    Eq. 10 prints f^T, which is evidently a misprint — §3.2 and §4.4 motivate UTAEs by the
    student's target-dependent vulnerability, Theorem 2 bounds the risk of the model being
    trained, Fig. 5 calls γ = 0 "standard PGD", the baselines' RSLAD step attacks the student,
    the appendix's 10 steps of 2/255 are the code's student attack, and the code attacks the
    student in eval mode; ``teacher`` keeps Eq. 10 as printed. γ = 0 is exactly the plain
    KL-PGD of ``harness.backbone.distill.kl_pgd`` on M (same noise, same steps).

    Student loss (``student_loss``, Eq. 11):
        L_S = λ_1·KL(T(x_F) ‖ S(x_F)) + λ_2·KL(T(x_F) ‖ S(x_U)),  λ_1 = 5/6 (clean), λ_2 = 1/6
    (the reverse of RSLAD's weights), batch-mean KL, teacher logits from the clean x_F only.

``end_of_epoch`` reports the attack-target entropy of the epoch's UTAEs: the normalised
entropy of the classes M predicts for the UTAEs it misclassifies, "misclassified" meaning
argmax M(x_U) ≠ argmax T(x_F) (the teacher's clean label, the attack's reference), accumulated
over the epoch's student steps (``utae_target_entropy``; ``utae_misclassified`` the fraction).
``synthesize`` reports p after this epoch's update (``class_weights``, the weights the next
epoch samples with — the paper's Fig. 4), D (``class_difficulty``), κ (``class_lps``), the
per-class counts of the epoch's labels (``class_counts``) and the generator loss terms of the
best iterate (``gen_*``; ``gen_ib`` the final λ_r objective, ``gen_mask`` the fraction of
channels flagged non-robust).

Released code vs paper (switches; ``ferd-code`` = the code's side of every one)
----------------------------------------------------------------------------------------
- ``gamma``: 0.5 (paper) | 0 (code: the γ term is commented out);
- ``reweight``: ``softmax`` (paper, Eq. 2) | ``minmax`` (code: D min-max normalised to
  [0.05, 0.2], then renormalised to sum 1; uniform when all D_c are equal) | the Table 6
  functions ``power`` ``linear`` ``sigmoid`` ``tanh`` | ``none`` (ablation);
- ``difficulty_images`` best | last_view (code); ``absent_classes`` keep | zero (code);
- ``ib_kl_reduction`` sum | half_mean (code); ``variance`` biased | unbiased (code);
  ``variance_guard`` floor | offset (code); ``mask_max`` per_sample | batch (code);
  ``mask_variance`` noisy | clean (code); ``ib_noise`` channel (code, default) | element;
- ``adversarial_loss``: ``kl`` (paper: L_adv = −KL(T ‖ S)) | ``dkl`` (code: −``decoupled_kl`` with
  the prior softmax(T/100), whose wMSE part does not vanish, gradients through T in Δt and the prior,
  T constant in the soft CE — so, unlike −KL, no gradient through the teacher's entropy);
- ``student_loss``: ``kl`` (paper) | ``ikl`` (code: the decoupled KL of Cui et al. — a weighted
  MSE on pairwise logit differences, ¼·Σ_{j,k} w_jk (Δt_jk − Δs_jk)² per sample with
  w = prior ⊗ prior, plus the soft-label CE −Σ_j softmax(t)_j log softmax(s)_j). The code's class
  prior is the one-hot label, so w is non-zero only at (y, y), where both differences vanish: the
  wMSE part is identically 0 and ikl = KL(T ‖ S) + H(T), the same student gradient as KL;
- ``reset_generator``: true (code, also the default) | false (one persistent G and its Adam);
- ``utae_model``: student (code; default, see (c)) | teacher (Eq. 10 as printed);
- ``adversarial_sign``: ascent (text, code; default) | as_printed (Eq. 8's sign).
The code's student schedule — cosine stepped once per epoch over all epochs, the 20 warm-up epochs
included — is the shared schedule switch ``schedule.lr_schedule: epochs``.

Not replicated (docs/methods.md): the current code's reweighting call ``pgd_attack(teacher,
x_syn, t_logit_z, labels)`` passes the logits as labels and the labels as ε, a TypeError at the
end of epoch 1; fixed, its ``pgd_attack`` leaves the teacher in train mode (dropout 0.3, BN
statistics drifting) for the margins and until the next epoch.

Other choices: the student runs in eval mode without parameter gradients during synthesis
(``Method.student_for_synthesis``), and L_adv reaches G through both T(x_a) and S(x_a); teacher
forward/backward passes of the generation (made through ``features``/``head``) are added to the
cost by hand, the IB fitting passes through f_{l+} are not counted; crops and flips are drawn per
image (CMI's ``global_view``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import attack_mode, cross_entropy_loss, pgd
from harness.backbone.best_iterate import BestIterate
from harness.backbone.bn_hooks import BNStatistics
from harness.backbone.class_weights import LPS_WEIGHTINGS, class_means, least_pgd_steps, lps_weights
from harness.backbone.devices import place, randn, randn_like, to_host
from harness.backbone.distill import kl_divergence, kl_pgd
from harness.backbone.generator import Generator
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.backbone.synthesis import ADAM_BETAS, global_view
from harness.errors import HarnessError
from harness.metrics import normalized_entropy
from harness.schema import param

MINMAX_RANGE = (0.05, 0.2)  # the code's target interval for D before renormalising
VAR_FLOOR = 1e-6  # floor of the spatial variance v_c in Eq. 5 (variance_guard: floor)
VAR_OFFSET = 1e-10  # the code's δ added to v_c and σ_c² in Eq. 5 (variance_guard: offset)
UTAE_INIT_STD = 0.001
DKL_PRIOR_TEMPERATURE = 100.0  # the code's T2 of the generator's decoupled-KL prior


@dataclass(frozen=True)
class Params:
    """FERD hyper-parameters; defaults are the paper's CIFAR values."""

    nz: int = param(100, ge=1, doc="latent dimension of the generator")
    lr_g: float = param(2e-3, gt=0, doc="Adam lr of the generator (betas 0.5, 0.999)")
    lr_z: float = param(1.5e-2, gt=0, doc="Adam lr of z")
    reset_generator: bool = param(True, doc="re-initialise G (and its Adam) every epoch")
    lambda_adv: float = param(1.0, ge=0, doc="weight of L_adv = −KL(T‖S)")
    adversarial_loss: Literal["kl", "dkl"] = param(
        "kl", key_at_default=False, doc="L_adv: −KL(T‖S) (paper) | −decoupled KL, prior softmax(T/100) (code)")
    adversarial_sign: Literal["ascent", "as_printed"] = param(
        "ascent", key_at_default=False,
        doc="L_adv enters L_gen so that G increases the divergence (text, code) | with Eq. 8's printed sign")
    lambda_bn: float = param(5.0, ge=0, doc="weight of the BN-statistics loss")
    lambda_oh: float = param(1.0, ge=0, doc="weight of CE(T(x), y)")
    lambda_uni: float = param(5.0, ge=0, doc="weight of L_uni (0: the 'w/o FAEs' ablation)")
    layer: str | None = param(None, doc="teacher layer l of the bottleneck (None: the teacher's default)")
    ib_steps: int = param(50, ge=1, doc="Adam steps fitting λ_r per generator step")
    ib_lr: float = param(0.1, gt=0, doc="Adam lr of λ_r")
    ib_beta: float = param(0.3, ge=0, doc="β of the KL term of Eq. 5")
    ib_kl_reduction: Literal["sum", "half_mean"] = param("sum", doc="sum (paper) | half_mean (code)")
    ib_noise: Literal["channel", "element"] = param(
        "channel", doc="ε of Eq. 4: one draw per sample and channel (code) | one per element")
    variance: Literal["biased", "unbiased"] = param(
        "biased", key_at_default=False, doc="spatial variance in Eqs. 5–6: biased | unbiased (code)")
    variance_guard: Literal["floor", "offset"] = param(
        "floor", key_at_default=False, doc="Eq. 5's log: v floored at 1e-6 | 1e-10 added to v and σ² (code)")
    mask_max: Literal["per_sample", "batch"] = param("per_sample", doc="max of Eq. 6 per sample (paper) | batch (code)")
    mask_variance: Literal["noisy", "clean"] = param(
        "noisy", key_at_default=False, doc="variance in Eq. 6's threshold: of Z_I (paper) | of Z (code)")
    reweight: Literal["softmax", "minmax", "power", "linear", "sigmoid", "tanh", "none"] = param(
        "softmax", doc="class weights: softmax (paper) | minmax (code) | Table 6 LPS functions | none")
    tau: float = param(1.0, gt=0, doc="temperature of the softmax weights")
    difficulty: Literal["margin", "clean_ce"] = param(
        "margin", key_at_default=False,
        doc="D_c: −margin after PGD-K on the teacher (paper, Eq. 1; code) | teacher CE on the clean images "
            "(the code's first upload, bfb8be4)")
    difficulty_images: Literal["best", "last_view"] = param(
        "best", key_at_default=False,
        doc="images of Eqs. 1–2: the pooled best iterate | the last augmented iterate (code)")
    absent_classes: Literal["keep", "zero"] = param(
        "keep", key_at_default=False, doc="D_c of a class absent from the batch: its previous value | 0 (code)")
    reweight_steps: int = param(20, ge=1, doc="K: PGD steps on the teacher for margins and LPS")
    lps_beta: float = param(2.0, gt=0, doc="β of the power weighting κ^−β")
    lps_lambda: float = param(0.0, doc="λ of the sigmoid / tanh weightings")
    gamma: float = param(0.5, ge=0, doc="γ of the UTAE uniformity term (0: plain KL-PGD)")
    utae_model: Literal["student", "teacher"] = param(
        "student", doc="model attacked by the UTAEs: student (code; §3.2, §4.4) | teacher (Eq. 10 as printed)")
    lambda_clean: float = param(5 / 6, ge=0, doc="λ_1: weight of KL(T(x_F) ‖ S(x_F))")
    lambda_utae: float = param(1 / 6, ge=0, doc="λ_2: weight of KL(T(x_F) ‖ S(x_U))")
    student_loss: Literal["kl", "ikl"] = param("kl", doc="kl (paper) | ikl (code's decoupled KL)")


# --------------------------------------------------------------------------- (b) reweighting
def class_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """m_i = z_{y_i} − max_{j≠y_i} z_j (Eq. 1); negative when the sample is misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.max(dim=1).values


def softmax_weights(difficulty: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """p = softmax(D / τ) (Eq. 2)."""
    return torch.softmax(difficulty / tau, dim=0)


def minmax_weights(difficulty: torch.Tensor, low: float = MINMAX_RANGE[0],
                   high: float = MINMAX_RANGE[1]) -> torch.Tensor:
    """The code's weights: D min-max normalised to [low, high], then divided by the sum."""
    span = difficulty.max() - difficulty.min()
    if span <= 0:
        return torch.full_like(difficulty, 1 / len(difficulty))
    scaled = low + (difficulty - difficulty.min()) / span * (high - low)
    return scaled / scaled.sum()


def teacher_pgd_statistics(teacher: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, epsilon: float,
                           step_size: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins m_i (Eq. 1) at the PGD-K example on the teacher, and each sample's LPS.

    One ``harness.attacks.pgd`` run (CE, random start); its objective records whether each
    iterate x^(0..K−1) is misclassified, the returned x^(K) is checked after.
    """
    wrong: list[torch.Tensor] = []

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wrong.append(logits.detach().argmax(1) != y)
        return cross_entropy_loss(logits, y)

    with attack_mode(teacher):
        x_adv = pgd(teacher, x, labels, epsilon=epsilon, step_size=step_size, steps=steps, objective=objective)
        with torch.no_grad():
            logits = teacher(x_adv)
    wrong.append(logits.argmax(1) != labels)
    return class_margins(logits, labels), least_pgd_steps(torch.stack(wrong))


# --------------------------------------------------------------------------- (a) information bottleneck
def spatial_variance(z: torch.Tensor, variance: str = "biased") -> torch.Tensor:
    """Per-sample, per-channel variance over the H×W positions of ``z`` (N×C×1×1), ``biased`` (÷HW)
    or ``unbiased`` (÷(HW − 1), torch's default, the code's)."""
    return z.var(dim=(2, 3), unbiased=variance == "unbiased", keepdim=True)


def kl_to_prior(features: torch.Tensor, sigma: torch.Tensor, reduction: str = "sum", *, variance: str = "biased",
                guard: str = "floor") -> torch.Tensor:
    """KL term of Eq. 5: Σ_c (v_c/σ_c² + log(σ_c²/v_c) − 1), v_c the spatial variance of Z.

    ``sum`` (paper): summed over channels, averaged over samples; ``half_mean`` (code): ½ × the
    mean over samples and channels. ``guard`` keeps the log finite where a channel is constant
    (v = 0): ``floor`` v ≥ 1e-6; ``offset`` (code) v/(σ² + δ) + log((σ² + δ)/(v + δ)), δ = 1e-10.
    """
    var = spatial_variance(features, variance)
    if guard == "floor":
        var = var.clamp_min(VAR_FLOOR)
        terms = var / sigma**2 + torch.log(sigma**2 / var) - 1
    elif guard == "offset":
        terms = var / (sigma**2 + VAR_OFFSET) + torch.log((sigma**2 + VAR_OFFSET) / (var + VAR_OFFSET)) - 1
    else:
        raise ValueError(f"unknown variance guard {guard!r}")
    if reduction == "sum":
        return terms.flatten(1).sum(1).mean()
    if reduction == "half_mean":
        return 0.5 * terms.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def bottleneck_noise(features: torch.Tensor, kind: str = "channel") -> torch.Tensor:
    """ε of Eq. 4, drawn on the CPU: ``channel`` one N(0, 1) draw per sample and channel (N×C×1×1,
    broadcast over H×W, the code's), ``element`` one per element of Z."""
    if kind == "channel":
        return randn((*features.shape[:2], 1, 1), device=features.device, dtype=features.dtype)
    if kind == "element":
        return randn_like(features)
    raise ValueError(f"unknown bottleneck noise {kind!r}")


def ib_objective(head: nn.Module | Any, features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor,
                 noise: torch.Tensor, beta: float, reduction: str = "sum", *, variance: str = "biased",
                 guard: str = "floor") -> torch.Tensor:
    """L(λ_r) = CE(f_{l+}(Z + softplus(λ_r)·ε), y) + β·KLterm (Eqs. 4–5) for a given noise ε."""
    sigma = F.softplus(lam)
    logits = head(features + sigma * noise)
    return F.cross_entropy(logits, labels) + beta * kl_to_prior(features, sigma, reduction, variance=variance,
                                                                guard=guard)


def fit_bottleneck(head: Any, features: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float, beta: float,
                   reduction: str = "sum", noise: str = "channel", variance: str = "biased",
                   guard: str = "floor") -> tuple[torch.Tensor, torch.Tensor]:
    """Fit λ_r (init 0, Adam) on Z.detach() for ``steps`` steps, fresh ε (``bottleneck_noise``) each
    step; returns σ and the last L (a detached device scalar: no host sync inside the fit)."""
    features = features.detach()
    lam = torch.zeros(*features.shape[:2], 1, 1, device=features.device, requires_grad=True)
    optimizer = torch.optim.Adam([lam], lr=lr)
    value = torch.full((), math.nan, device=features.device)
    for _ in range(steps):
        loss = ib_objective(head, features, labels, lam, bottleneck_noise(features, noise), beta, reduction,
                            variance=variance, guard=guard)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.detach()
    return F.softplus(lam.detach()), value


def nonrobust_mask(sigma: torch.Tensor, reference: torch.Tensor, mode: str = "per_sample",
                   variance: str = "biased") -> torch.Tensor:
    """Eq. 6: 1 where σ_k² < max_c Var(R^c) (Var: the spatial variance), else 0; N×C×1×1.

    R is Z_I (paper) or Z (code's ``mask_variance: clean``); with channel noise the two have the
    same spatial variance. ``per_sample`` (paper reading): the max over the channels of each
    sample; ``batch`` (code): one scalar max over every sample and channel.
    """
    var = spatial_variance(reference, variance)
    threshold = var.amax(dim=1, keepdim=True) if mode == "per_sample" else var.max()
    return (sigma**2 < threshold).to(reference.dtype)


def uniform_kl(logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(U ‖ softmax(logits)) = −log C − (1/C) Σ_c log q_c (Eq. 7), batch mean or per sample."""
    per_sample = -math.log(logits.shape[1]) - F.log_softmax(logits, dim=1).mean(dim=1)
    return per_sample.mean() if reduction == "batchmean" else per_sample


# --------------------------------------------------------------------------- (c) UTAEs and the student loss
def utae(model: nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor, *, epsilon: float, step_size: float,
         steps: int, gamma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform-target adversarial examples (Eq. 10) against ``model`` (eval mode, no parameter grads).

    Start x + 0.001·N(0, 1) (drawn from ``generator``), ``steps`` signed steps of α ascending
    Σ_i [KL(T(x)_i ‖ M(x_U)_i) − γ·KL(U ‖ M(x_U)_i)], projected to the ε-ball and [0, 1].
    γ = 0 is exactly ``harness.backbone.distill.kl_pgd``.
    """
    penalty = (lambda logits: gamma * uniform_kl(logits, reduction="none")) if gamma else None
    return kl_pgd(model, x, teacher_logits, epsilon=epsilon, step_size=step_size, steps=steps,
                  init_std=UTAE_INIT_STD, generator=generator, penalty=penalty)


def decoupled_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, prior: torch.Tensor, *,
                 through_teacher: bool = False) -> torch.Tensor:
    """The code's ``ikl``: ¼·mean_i Σ_{j,k} w_ijk (Δt_ijk − Δs_ijk)² + soft CE, w_i = prior_i ⊗ prior_i.

    Δ_jk = z_j − z_k. With a one-hot prior (the code's) w is non-zero only at (y, y), where both
    differences vanish, so the wMSE part is 0 and the loss is KL(T ‖ S) + H(T).
    ``through_teacher``: gradients also reach T through Δt (the code's generator loss); the soft
    CE always treats T as a constant.
    """
    t, s = (teacher_logits if through_teacher else teacher_logits.detach()), student_logits
    delta_t = t[:, :, None] - t[:, None, :]
    delta_s = s[:, :, None] - s[:, None, :]
    weights = prior[:, :, None] * prior[:, None, :]
    wmse = 0.25 * (weights * (delta_t - delta_s) ** 2).sum() / len(s)
    soft_ce = -(F.softmax(t.detach(), dim=1) * F.log_softmax(s, dim=1)).sum(dim=1).mean()
    return wmse + soft_ce


def generator_adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                               kind: str = "kl") -> torch.Tensor:
    """L_adv of Eq. 8: −KL(T ‖ S) (paper), or ``dkl`` (code): −decoupled KL with the prior
    softmax(T/100), gradients through T in the pairwise differences and the prior."""
    if kind == "kl":
        return -kl_divergence(teacher_logits, student_logits)
    if kind == "dkl":
        prior = F.softmax(teacher_logits / DKL_PRIOR_TEMPERATURE, dim=1)
        return -decoupled_kl(teacher_logits, student_logits, prior, through_teacher=True)
    raise ValueError(f"unknown adversarial loss {kind!r}")


def ferd_student_loss(teacher_logits: torch.Tensor, student_clean: torch.Tensor, student_utae: torch.Tensor, *,
                      lambda_clean: float = 5 / 6, lambda_utae: float = 1 / 6, kind: str = "kl",
                      labels: torch.Tensor | None = None) -> torch.Tensor:
    """L_S = λ_1·KL(T(x_F) ‖ S(x_F)) + λ_2·KL(T(x_F) ‖ S(x_U)) (Eq. 11), or with ``ikl`` in place of KL.

    ``ikl`` uses the one-hot of ``labels`` as its class prior (argmax T when there are none).
    """
    target = teacher_logits.detach()
    if kind == "kl":
        return lambda_clean * kl_divergence(target, student_clean) + lambda_utae * kl_divergence(target, student_utae)
    if kind == "ikl":
        labels = target.argmax(1) if labels is None else labels
        prior = F.one_hot(labels, target.shape[1]).to(target.dtype)
        return lambda_clean * decoupled_kl(target, student_clean, prior) + lambda_utae * decoupled_kl(
            target, student_utae, prior)
    raise ValueError(f"unknown student loss {kind!r}")


# --------------------------------------------------------------------------- the method
def resolve_layer(teacher: nn.Module, layer: str | None) -> str:
    """The bottleneck layer: ``layer`` or the teacher's default, checked against its feature layers."""
    layers = tuple(getattr(teacher, "feature_layers", ()))
    name = type(teacher).__name__
    if not layers or not all(hasattr(teacher, attr) for attr in ("features", "head")):
        raise HarnessError(f"ferd: the teacher {name} exposes no feature layers (features/head), "
                           "which FERD's information bottleneck needs")
    chosen = layer if layer is not None else getattr(teacher, "default_feature_layer", "") or layers[-1]
    if chosen not in layers:
        raise HarnessError(f"ferd.layer: the teacher {name} has no feature layer '{chosen}' "
                           f"(choose from {', '.join(layers)})")
    return chosen


CODE = {  # the released code (mayaobuduyao/FERD at d1d79c7), every switch on its side
    "utae_model": "student", "gamma": 0.0, "reweight": "minmax", "difficulty": "margin",
    "difficulty_images": "last_view", "absent_classes": "zero", "ib_kl_reduction": "half_mean",
    "ib_noise": "channel", "variance": "unbiased", "variance_guard": "offset", "mask_max": "batch",
    "mask_variance": "clean", "student_loss": "ikl", "adversarial_loss": "dkl"}
PRESETS = {
    "ferd-code": CODE,
    # the repository's first upload (bfb8be4, 2025-05-23): D_c = the teacher's CE on the last clean view
    "ferd-code-bfb8be4": CODE | {"difficulty": "clean_ce"},
    "ferd-no-reweight": {"reweight": "none"},
    "ferd-no-fae": {"lambda_uni": 0.0},
    "ferd-no-utae": {"gamma": 0.0},
    "ferd-no-fae-utae": {"lambda_uni": 0.0, "gamma": 0.0},
}


@register_method("ferd", presets=PRESETS)
class FERD(Method):
    display = Display(
        color="#d62728", order=60,
        ablation={"ferd": "FERD", "ferd-no-reweight": "w/o reweighting", "ferd-no-fae": "w/o FAEs",
                  "ferd-no-utae": "w/o UTAEs", "ferd-no-fae-utae": "w/o FAEs & UTAEs"},
        symbols={"gamma": "γ", "layer": "layer", "reweight": "reweighting", "lambda_clean": "λ₁",
                 "lambda_utae": "λ₂", "lambda_adv": "λ_adv", "lambda_bn": "λ_bn", "lambda_oh": "λ_oh",
                 "lambda_uni": "λ_uni"},
        value_titles={"reweight": {"softmax": "softmax (Eq. 2)", "minmax": "min-max (code)", "power": "LPS power",
                                   "linear": "LPS linear", "sigmoid": "LPS sigmoid", "tanh": "LPS tanh",
                                   "none": "uniform (none)"}},
        views={"reweighting": ("reweight", "Class-reweighting strategies (Table 6)"),
               "layer": ("layer", "Bottleneck layer of the FAEs (Table 9)"),
               "lambdas": ("lambda_", "Loss weights (Table 7)"),
               "gamma": ("gamma", "Uniform-target weight γ of the UTAEs (Fig. 5)")})
    version = "2"
    Params = Params

    @classmethod
    def default_params(cls, dataset: str) -> Params:
        """The paper's CIFAR values, with a smaller bottleneck budget on the CPU benchmarks:
        Fashion-MNIST 25 λ_r steps per generator step (the paper's 50 double the cost of a
        generator step there for little change in σ), the test-only ``synthetic`` dataset 5."""
        if dataset == "fashion-mnist":
            return Params(ib_steps=25)
        if dataset == "synthetic":
            return Params(ib_steps=5)
        return Params()

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        info, device = context.info, context.device
        self.layer = resolve_layer(context.teacher, params.layer)
        self.generator = Generator(params.nz, info.channels, info.image_size).to(device)
        self.generator_optimizer = self._new_generator_optimizer()
        self.stats = BNStatistics(context.teacher)
        self.pool = ImagePool(context.pool_size, info, context.device)
        c = info.num_classes
        self.class_weights = torch.full((c,), 1 / c, dtype=torch.float64)
        self.difficulty = torch.zeros(c, dtype=torch.float64)
        self.lps = torch.full((c,), params.reweight_steps / 2, dtype=torch.float64)
        self._reset_utae_log()

    def _new_generator_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.generator.parameters(), lr=self.params.lr_g, betas=ADAM_BETAS)

    def _reset_utae_log(self) -> None:
        self.utae_targets = torch.zeros(self.ctx.info.num_classes, dtype=torch.long)
        self.utae_total = 0

    # ------------------------------------------------------------------ (a) generation
    def _generator_loss(self, x: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """L_gen on one augmented view of x, its terms (detached device scalars) and the view."""
        ctx, p = self.ctx, self.params
        teacher = ctx.teacher
        view = global_view(x, ctx.info)
        with self.stats.record():
            features = teacher.features(view, self.layer)
            teacher_logits = teacher.head(features, self.layer)
        ctx.cost.teacher_forward_images += len(x)
        ctx.cost.teacher_backward_images += len(x)
        loss_bn = self.stats.loss()
        loss_oh = F.cross_entropy(teacher_logits, labels)
        total = p.lambda_bn * loss_bn + p.lambda_oh * loss_oh
        terms = {"bn": loss_bn.detach(), "oh": loss_oh.detach()}
        if p.lambda_adv > 0:
            loss_adv = generator_adversarial_loss(teacher_logits, ctx.student(view), p.adversarial_loss)
            sign = 1.0 if p.adversarial_sign == "ascent" else -1.0  # as printed, G would shrink the divergence
            total = total + sign * p.lambda_adv * loss_adv
            terms["adv"] = loss_adv.detach()
        if p.lambda_uni > 0:
            head = lambda z: teacher.head(z, self.layer)  # noqa: E731
            sigma, ib_value = fit_bottleneck(head, features, labels, steps=p.ib_steps, lr=p.ib_lr, beta=p.ib_beta,
                                             reduction=p.ib_kl_reduction, noise=p.ib_noise, variance=p.variance,
                                             guard=p.variance_guard)
            reference = features.detach()
            if p.mask_variance == "noisy":
                reference = reference + sigma * bottleneck_noise(features, p.ib_noise)
            mask = nonrobust_mask(sigma, reference, p.mask_max, p.variance)
            loss_uni = uniform_kl(head(mask * features))
            total = total + p.lambda_uni * loss_uni
            terms |= {"uni": loss_uni.detach(), "ib": ib_value, "mask": mask.mean()}
        return total, terms, view.detach()

    def _generate(self, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor, float, dict[str, float]]:
        """max(1, T_g) joint Adam steps on (G, z); the best iterate's images, the last iterate's
        augmented view, the best loss and its terms."""
        ctx, p = self.ctx, self.params
        if p.reset_generator:
            self.generator.reset()
            self.generator_optimizer = self._new_generator_optimizer()
        z = randn((len(labels), p.nz), device=ctx.device).requires_grad_(True)
        z_optimizer = torch.optim.Adam([z], lr=p.lr_z, betas=ADAM_BETAS)
        best = BestIterate()
        with self.student_for_synthesis(epoch):
            for _ in range(max(1, ctx.generator_steps)):
                x = self.generator(z)
                loss, terms, last_view = self._generator_loss(x, labels)
                best.update(loss, terms, images=x)
                self.generator_optimizer.zero_grad(set_to_none=True)
                z_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.generator_optimizer.step()
                z_optimizer.step()
        values = best.numbers()
        best_loss = values.pop("loss")
        return best["images"], last_view, best_loss, values

    # ------------------------------------------------------------------ (b) reweighting
    def _reweight(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Update D, κ and p from PGD-K on the teacher at the epoch's synthetic batch (Eqs. 1–2)."""
        ctx, p = self.ctx, self.params
        margins, lps = teacher_pgd_statistics(ctx.teacher, images, labels, epsilon=ctx.epsilon,
                                              step_size=ctx.step_size, steps=p.reweight_steps)
        previous = self.difficulty if p.absent_classes == "keep" else torch.zeros_like(self.difficulty)
        if p.difficulty == "margin":
            self.difficulty = class_means(-margins, labels, previous)
        else:
            with torch.no_grad():
                loss = F.cross_entropy(ctx.teacher(images), labels, reduction="none")
            ctx.cost.teacher_forward_images += len(images)
            self.difficulty = class_means(loss.to(torch.float64), labels, previous)
        self.lps = class_means(lps.to(torch.float64), labels, self.lps)
        if p.reweight == "softmax":
            self.class_weights = softmax_weights(self.difficulty, p.tau)
        elif p.reweight == "minmax":
            self.class_weights = minmax_weights(self.difficulty)
        elif p.reweight in LPS_WEIGHTINGS:
            self.class_weights = lps_weights(self.lps, p.reweight, p.reweight_steps, p.lps_beta, p.lps_lambda)
        # "none": p stays uniform

    def synthesize(self, epoch: int) -> dict[str, Any]:
        """(a) generation with y ~ Categorical(p), best batch to the pool; (b) reweighting of p."""
        ctx = self.ctx
        self._reset_utae_log()
        n = ctx.batch_size
        labels = place(torch.multinomial(self.class_weights, n, replacement=True), ctx.device)
        images, last_view, best_loss, terms = self._generate(labels, epoch)
        self.pool.add(images, labels)
        ctx.cost.images_synthesized += n
        self._reweight(images if self.params.difficulty_images == "best" else last_view, labels)
        counts = torch.bincount(to_host(labels), minlength=ctx.info.num_classes)
        return {"gen_loss": best_loss} | {f"gen_{name}": value for name, value in terms.items()} | {
            "class_weights": self.class_weights.tolist(), "class_difficulty": self.difficulty.tolist(),
            "class_lps": self.lps.tolist(), "class_counts": counts.tolist()}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.sample(batch_size, generator, self.ctx.device)

    # ------------------------------------------------------------------ (c) UTAEs and student loss
    def _utae_model(self) -> nn.Module:
        return self.ctx.teacher if self.params.utae_model == "teacher" else self.ctx.student

    def adversarial(self, x: torch.Tensor, teacher_logits: torch.Tensor, generator: torch.Generator,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """UTAEs (Eq. 10); also tallies the classes M predicts for the UTAEs it misclassifies."""
        ctx, model = self.ctx, self._utae_model()
        x_u = utae(model, x, teacher_logits, epsilon=ctx.epsilon, step_size=ctx.step_size, steps=ctx.attack_steps,
                   gamma=self.params.gamma, generator=generator)
        with attack_mode(model), torch.no_grad():
            predicted = model(x_u).argmax(1)
        wrong = predicted != teacher_logits.argmax(1)
        classes = len(self.utae_targets)  # a histogram without bincount: the tally stays on the device
        self.utae_targets = self.utae_targets.to(x_u.device) + (F.one_hot(predicted, classes) * wrong[:, None]).sum(0)
        self.utae_total += len(x_u)
        return x_u

    def student_loss(self, x: torch.Tensor, x_adv: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        p, student = self.params, self.ctx.student
        return ferd_student_loss(teacher_logits, student(x), student(x_adv), lambda_clean=p.lambda_clean,
                                 lambda_utae=p.lambda_utae, kind=p.student_loss, labels=labels)

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """The attack-target entropy of the epoch's UTAEs (nothing in warm-up epochs)."""
        if not self.utae_total:
            return {}
        histogram = to_host(self.utae_targets).numpy()
        line = {"utae_target_entropy": normalized_entropy(histogram),
                "utae_misclassified": float(histogram.sum() / self.utae_total)}
        self._reset_utae_log()
        return line

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The pool and the class statistics; G and its Adam only when they persist across epochs
        (``reset_generator: false``) — a reset generator is re-drawn at the next epoch anyway."""
        state = {"pool": self.pool.state_dict(), "class_weights": self.class_weights,
                 "class_difficulty": self.difficulty, "class_lps": self.lps}
        if not self.params.reset_generator:
            state |= {"generator": self.generator.state_dict(),
                      "generator_optimizer": self.generator_optimizer.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        if "generator" in state:  # checkpoints written before the reset generator was left out still load
            self.generator.load_state_dict(state["generator"])
            self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.class_weights = state["class_weights"].cpu().to(torch.float64)
        self.difficulty = state["class_difficulty"].cpu().to(torch.float64)
        self.lps = state["class_lps"].cpu().to(torch.float64)
