"""FERD's information bottleneck on the shipped Fashion-MNIST teacher: how many of the 128 channels of
its last block Eq. 6 flags non-robust, with the noise drawn per channel (default, the released code) or
per element, and where the fitted noise variances σ² sit against the channels' own variances v.

The features are those of FERD's first generation step (a freshly initialised generator, labels
uniform, the fashion-mnist default of 25 λ_r steps), for 3 seeds.

    PYTHONPATH=. python reports/fmnist_small/bottleneck.py      # about 10 s
"""

import torch

from harness.backbone.generator import Generator
from harness.backbone.synthesis import global_view
from harness.config import TeacherSpec
from harness.data import get_dataset
from harness.teacher import load_teacher
from methods.ferd import FERD, bottleneck_noise, fit_bottleneck, nonrobust_mask, spatial_variance

torch.set_num_threads(1)
info = get_dataset("fashion-mnist")
teacher = load_teacher(TeacherSpec("cnn5", "teachers/fashion-mnist/cnn5.pt"), info)
params = FERD.default_params("fashion-mnist")
layer = teacher.default_feature_layer
print(f"layer {layer}; {'noise':<8} seed  flagged (paper: Var(Z_I), per sample)  flagged (code: Var(Z), batch max)  "
      "unflagged channels per sample  median σ²/v  share σ² > max_c v")
for noise in ("channel", "element"):
    for seed in range(3):
        torch.manual_seed(seed)
        generator = Generator(params.nz, info.channels, info.image_size)
        labels = torch.randint(0, info.num_classes, (128,))
        with torch.no_grad():
            z = teacher.features(global_view(generator(torch.randn(128, params.nz)), info), layer)
        sigma, _ = fit_bottleneck(lambda features: teacher.head(features, layer), z, labels, steps=params.ib_steps,
                                  lr=params.ib_lr, beta=params.ib_beta, noise=noise)
        paper = nonrobust_mask(sigma, z + sigma * bottleneck_noise(z, noise), "per_sample")
        code = nonrobust_mask(sigma, z, "batch", "unbiased")
        v = spatial_variance(z).clamp_min(1e-6)
        ratio = (sigma**2 / v).flatten()
        above = (sigma**2 > spatial_variance(z).amax(dim=1, keepdim=True)).float().mean().item()
        unflagged = (1 - paper).flatten(1).sum(1)
        print(f"{'':<14} {noise:<8} {seed:>4}  {paper.mean().item():>38.4f}  {code.mean().item():>33.4f}  "
              f"{unflagged.mean().item():>29.2f}  {ratio.median().item():>11.3f}  {above:>19.4f}")
