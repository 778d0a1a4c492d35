"""CMI: Contrastive Model Inversion (Fang et al., IJCAI 2021), converted to DFRD (docs/methods.md).

Every round (one per epoch) the generator G is re-initialised (conv/linear N(0, 0.02),
BN γ N(1, 0.02)) and optimised jointly with a fresh z ~ N(0, I) and uniform labels y by
Adam (lr 1e-3, betas (0.5, 0.999)) for T_g steps on a batch of ``ctx.batch_size`` images
(the schedule's batch: 256 on CIFAR-10, as in the paper). Each step, x = G(z) gives two
views — global x_g (random crop, pad size/8, + flip) and local x_l (random resized crop,
scale [0.25, 1], + flip) — and the loss

    L_inv = λ_bn·L_bn(x_g) + λ_oh·CE(T(x_g), y) + λ_adv·L_adv,
    L_adv = −(1/N) Σ_i KL_i(T(x_g) ‖ S(x_g)) · 1[argmax S(x_g)_i = argmax T(x_g)_i]   (decision-adversarial),
    L_cr  = InfoNCE(h(f(x_l)), h(f(x_g)), τ = 0.1)  (below),     L = L_inv + λ_cr·L_cr.

f(x) is the concatenation of the per-sample channel means of the inputs of every teacher
BatchNorm2d (dimension D = Σ channels); h = Linear(D, D)–ReLU–Linear(D, 256), L2-normalised,
trained by its own persistent Adam (default betas). Each step draws K = min(``negatives``,
stored) (global, local) feature pairs of past rounds from the memory bank. The InfoNCE
anchors are the local projections of the N current images followed by the K cached ones,
a = h([f(x_l); f_l^bank]); the keys are the matching global projections, detached,
k = sg(h([f(x_g); f_g^bank])); the positive of row i is key i (the diagonal), every other of
the N + K keys is a negative:

    ℓ_i = −log softmax_j(a_i·k_j / τ)_i,      i, j = 1 … N + K,
    L_cr = (1/N) Σ_{i≤N} ℓ_i + (1/K) Σ_{i>N} ℓ_i          (``cr_reduction="split"``, the code),
    L_cr = (1/(N+K)) Σ_i ℓ_i                             (``"joint"``, version 1),

with only the first mean when no cached row is drawn (K = 0: the first round). Split keeps the generator's
contrastive gradient at the size of a batch-only loss (a joint mean scales it by N/(N+K)).
The generator gets its contrastive gradient only through the current local anchors (keys are
detached, cached rows are constants); the head through every anchor row. The best iterate of
the round — lowest total L = L_inv + λ_cr·L_cr — goes to the image pool with its labels, and
the (global, local) features of that same iterate to the memory bank (FIFO). Flips follow the
dataset (none on Fashion-MNIST / synthetic). The student is then trained by the shared RSLAD
step (the ``Method`` defaults). ``images_synthesized`` counts the images added to the pool.

The released code (zju-vipa CMI, ``datafree/synthesis/contrastive.py``; the copy in Fast-Datafree
computes the same loss) does the same on these points: split mean (one mean over all rows
while its bank has never been written); keys detached; one head pass over [local; cached local; global; cached
global]; the bank stores ``cat([local, global])`` of the best iterate and reads the halves back
as (local, global) — the harness stores (global, local) pairs, the same thing. Its temperature:
τ = 0.1 in the synthesizer's default and ``scripts/cmi/adv_cmi_cifar10_wrn402_wrn161.sh``, 0.2 in
``scripts/cmi/cmi_cifar10.sh``; the harness keeps 0.1.

Differences from the released code, on purpose:
- crops and flips are drawn per image (torchvision transforms on a batch tensor draw one crop
  for the whole batch); a resized crop whose box would leave the image is clamped to it
  instead of being re-drawn;
- the bank draws from every stored pair: the code's ring draws from the rows below its write
  pointer until more than its size has been written, so in the round after it has filled exactly
  (its size is asserted to be a multiple of the batch) it returns no cached row, and its split
  loss then takes the mean of an empty set (NaN, which the head's Adam step writes into the
  head's weights);
- features come from every teacher BatchNorm2d for every teacher (the code uses the inputs of
  the four residual stages for its ResNet-34 teacher);
- the student receives no gradient and stays in eval mode during synthesis.

``L_inv``, ``decision_adversarial_loss`` and the two views are shared with Fast (methods/fast.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbone.best_iterate import BestIterate
from harness.backbone.bn_hooks import BNStatistics, batchnorm_layers
from harness.backbone.devices import randint, randn, randperm
from harness.backbone.generator import Generator
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.backbone.synthesis import ADAM_BETAS, global_view, inversion_loss
from harness.schema import param

LOCAL_SCALE = (0.25, 1.0)  # area fraction of the local view's crop
LOCAL_RATIO = (3 / 4, 4 / 3)  # aspect ratio of the local view's crop (torchvision's default)


@dataclass(frozen=True)
class Params:
    """CMI hyper-parameters; defaults are the paper's / released code's CIFAR values."""

    nz: int = param(256, ge=1, doc="latent dimension of the generator")
    lr_g: float = param(1e-3, gt=0, doc="Adam lr of the generator and z (betas 0.5, 0.999)")
    lambda_bn: float = param(1.0, ge=0, doc="weight of the BN-statistics loss")
    lambda_oh: float = param(1.0, ge=0, doc="weight of CE(T(x_g), y)")
    lambda_adv: float = param(0.5, ge=0, doc="weight of the decision-adversarial term")
    lambda_cr: float = param(0.8, ge=0, doc="weight of the contrastive term")
    temperature: float = param(0.1, gt=0, doc="InfoNCE temperature")
    head_dim: int = param(256, ge=1, doc="output dimension of the projection head")
    lr_head: float = param(1e-3, gt=0, doc="Adam lr of the projection head")
    bank_size: int = param(40960, ge=1, doc="memory-bank slots (feature pairs of past rounds)")
    negatives: int = param(4096, ge=0, doc="feature pairs drawn from the bank per step")
    cr_reduction: Literal["split", "joint"] = param(
        "split", doc="L_cr: mean over the current rows + mean over the cached rows (code) | one mean over all "
                     "N + K rows (version 1)")

    def __post_init__(self) -> None:
        if self.negatives > self.bank_size:
            raise ValueError(f"negatives: must be <= bank_size ({self.bank_size}), got {self.negatives}")


# --------------------------------------------------------------------------- losses
def info_nce_rows(anchors: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row InfoNCE with positives on the diagonal: ℓ_i = −log softmax_j(a_i·k_j / τ)_i (docs/methods.md).

    ``anchors`` and ``keys`` are M×d, row i of each from the same image; all other keys are
    negatives. Returns the M losses ℓ_i (the caller detaches the keys if it wants to).
    """
    logits = anchors @ keys.T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device), reduction="none")


def info_nce(anchors: torch.Tensor, keys: torch.Tensor, temperature: float, *, current: int | None = None,
             reduction: Literal["split", "joint"] = "split") -> torch.Tensor:
    """InfoNCE of M = N + K rows, the first N from the current batch, the last K cached (docs/methods.md).

    With ℓ_i of :func:`info_nce_rows`,

        split: L = (1/N) Σ_{i≤N} ℓ_i + (1/K) Σ_{i>N} ℓ_i     (K = 0: the first mean only),
        joint: L = (1/M) Σ_i ℓ_i.

    ``current`` is N (None: all M rows are current, where both reductions are the plain mean).
    With detached keys anchor a_i enters ℓ_i only, so the joint gradient of a current row is
    N/M times the split one: split is the released code's "avoid too small gradients w.r.t. the
    generator".
    """
    if reduction not in ("split", "joint"):
        raise ValueError(f"reduction: must be 'split' or 'joint', got {reduction!r}")
    rows = info_nce_rows(anchors, keys, temperature)
    n = len(rows) if current is None else current
    if not 1 <= n <= len(rows):
        raise ValueError(f"current: must be in [1, {len(rows)}], got {n}")
    if reduction == "joint" or n == len(rows):
        return rows.mean()
    return rows[:n].mean() + rows[n:].mean()


# --------------------------------------------------------------------------- views
def local_view(x: torch.Tensor, hflip: bool, scale: tuple[float, float] = LOCAL_SCALE,
               ratio: tuple[float, float] = LOCAL_RATIO) -> torch.Tensor:
    """Random resized crop (area fraction in ``scale``, aspect in ``ratio``) + flip, per image.

    The crop box is resampled to full size bilinearly (differentiable in ``x``); draws use the
    global RNG. Boxes larger than the image are clamped to it.
    """
    n = len(x)
    area = torch.empty(n).uniform_(*scale)
    aspect = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    width = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the image side
    height = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(n) * (1 - width) + width / 2) * 2 - 1  # normalised coordinates
    centre_y = (torch.rand(n) * (1 - height) + height / 2) * 2 - 1
    mirror = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- pieces
class ChannelMeans:
    """CMI's features: per-sample channel means of the inputs of every BatchNorm2d ``model`` runs.

    Hooks record only inside ``with means.record():``; ``features()`` concatenates the layers
    in module order (N×D, D = Σ channels), keeping the graph to the input.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise ValueError("the model has no BatchNorm2d layer")
        self.dim = sum(layer.num_features for layer in self.layers)
        self.means: list[torch.Tensor] = []
        self.recording = False
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    @contextmanager
    def record(self) -> Iterator[None]:
        self.means, self.recording = [], True
        try:
            yield
        finally:
            self.recording = False

    def _hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self.recording:
            self.means.append(inputs[0].mean(dim=(2, 3)))

    def features(self) -> torch.Tensor:
        if not self.means:
            raise RuntimeError("no forward pass recorded: run the model inside `with means.record():`")
        return torch.cat(self.means, dim=1)


class ProjectionHead(nn.Module):
    """h = Linear(D, D)–ReLU–Linear(D, out), L2-normalised rows."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


class MemoryBank:
    """FIFO ring of (global, local) feature pairs of past rounds; negatives drawn without replacement."""

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.data = torch.zeros(size, 2, dim, device=device)
        self.count = 0  # pairs ever added

    def __len__(self) -> int:
        return min(self.count, len(self.data))

    def add(self, global_features: torch.Tensor, local_features: torch.Tensor) -> None:
        pairs = torch.stack([global_features, local_features], dim=1).detach()[-len(self.data):]
        slots = (self.count + torch.arange(len(pairs))) % len(self.data)
        self.data[slots.to(self.data.device)] = pairs.to(self.data.dtype)  # bf16 under autocast: kept in fp32
        self.count += len(pairs)

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """min(k, stored) random pairs (global RNG) as (global, local), each k×D."""
        index = randperm(len(self), device=self.data.device)[:k]
        pairs = self.data[index]
        return pairs[:, 0], pairs[:, 1]

    def state_dict(self) -> dict[str, Any]:
        full = len(self) == len(self.data)  # saved without a copy; a partial bank as a copy of its filled rows
        return {"data": self.data if full else self.data[: len(self)].clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.zero_()
        self.data[: len(state["data"])] = state["data"].to(self.data.device)
        self.count = state["count"]


# --------------------------------------------------------------------------- the method
@register_method("cmi")
class CMI(Method):
    display = Display(color="#2ca02c", order=30)
    version = "2"  # 2: the split InfoNCE mean (``cr_reduction="split"``) is the default
    Params = Params

    @classmethod
    def default_params(cls, dataset: str) -> Params:
        """CIFAR values, but a memory bank sized to the small CPU budgets of the offline benchmarks:
        Fashion-MNIST (batch ~128, tens of epochs) 4096 slots / 512 negatives, the test-only
        ``synthetic`` dataset 512 / 64 (the paper keeps ~160 rounds of 256 and draws 1/10)."""
        if dataset == "fashion-mnist":
            return Params(bank_size=4096, negatives=512)
        if dataset == "synthetic":
            return Params(bank_size=512, negatives=64)
        return Params()

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        info, device = context.info, context.device
        self.generator = Generator(params.nz, info.channels, info.image_size).to(device)
        self.stats = BNStatistics(context.teacher)
        self.means = ChannelMeans(context.teacher)
        self.head = ProjectionHead(self.means.dim, params.head_dim).to(device)
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=params.lr_head)
        self.bank = MemoryBank(params.bank_size, self.means.dim, device)
        self.pool = ImagePool(context.pool_size, info, context.device)

    def _loss(self, x: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """L = L_inv + λ_cr·L_cr on the two views of x; returns L, its terms and the (global, local) features."""
        p, ctx = self.params, self.ctx
        x_global, x_local = global_view(x, ctx.info), local_view(x, ctx.info.hflip)
        with self.stats.record(), self.means.record():
            teacher_logits = ctx.teacher(x_global)
        global_features = self.means.features()
        student_logits = ctx.student(x_global) if p.lambda_adv > 0 else None
        loss, terms = inversion_loss(self.stats.loss(), teacher_logits, labels, student_logits,
                                     lambda_bn=p.lambda_bn, lambda_oh=p.lambda_oh, lambda_adv=p.lambda_adv)
        with self.means.record():
            ctx.teacher(x_local)
        local_features = self.means.features()
        cached_global, cached_local = self.bank.sample(p.negatives)
        anchors = self.head(torch.cat([local_features, cached_local]))
        keys = self.head(torch.cat([global_features, cached_global])).detach()
        loss_cr = info_nce(anchors, keys, p.temperature, current=len(local_features), reduction=p.cr_reduction)
        terms["cr"] = loss_cr.detach()
        return loss + p.lambda_cr * loss_cr, terms, global_features.detach(), local_features.detach()

    def synthesize(self, epoch: int) -> dict[str, float]:
        """One CMI round of max(1, T_g) steps; the best iterate goes to the pool and the bank."""
        ctx, p = self.ctx, self.params
        n = ctx.batch_size
        self.generator.reset()
        z = randn((n, p.nz), device=ctx.device).requires_grad_(True)
        labels = randint(0, ctx.info.num_classes, (n,), device=ctx.device)
        optimizer = torch.optim.Adam([*self.generator.parameters(), z], lr=p.lr_g, betas=ADAM_BETAS)
        best = BestIterate()
        with self.student_for_synthesis(epoch):
            for _ in range(max(1, ctx.generator_steps)):
                x = self.generator(z)
                loss, terms, global_features, local_features = self._loss(x, labels)
                best.update(loss, terms, images=x, global_features=global_features, local_features=local_features)
                optimizer.zero_grad(set_to_none=True)
                self.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.head_optimizer.step()
        self.pool.add(best["images"], labels)
        self.bank.add(best["global_features"], best["local_features"])
        ctx.cost.images_synthesized += n
        return {f"gen_{name}": value for name, value in best.numbers().items()}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.sample(batch_size, generator, self.ctx.device)

    def steady_state_for_estimate(self) -> None:
        """A full pool and a full memory bank: each step then draws ``negatives`` cached pairs."""
        super().steady_state_for_estimate()
        self.bank.count = len(self.bank.data)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict(), "head": self.head.state_dict(),
                "head_optimizer": self.head_optimizer.state_dict(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.bank.load_state_dict(state["bank"])
