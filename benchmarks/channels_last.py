"""How much does the channels-last layout of ``create_model`` speed up an attack step?

Prints, per architecture, time(input-gradient pass, contiguous NCHW weights and activations) /
time(the same pass as ``create_model`` builds it: channels-last). An attack step (training
PGD, evaluation PGD/CW, FERD's FAEs) is one such pass, so a ratio above 1 is the speed-up of every
attack in the harness. Usage:

    python benchmarks/channels_last.py [--models resnet8,mobilenetv2-tiny,cnn5] [--batch-size 128]
        [--channels 1] [--image-size 28] [--seconds 3] [--repeats 3]

The two layouts are timed alternately ``--repeats`` times and the median ratio is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from harness.models import create_model
from harness.models.base import Classifier


def passes_per_second(model: Classifier, x: torch.Tensor, y: torch.Tensor, seconds: float) -> float:
    """Forward + backward-to-the-input passes per second on one batch."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x_grad = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_grad), y), x_grad)
        count += 1
    return count / (time.perf_counter() - start)


def as_nchw(model: Classifier) -> Classifier:
    """``model`` with contiguous NCHW weights and activations (the layout before channels-last)."""
    model = model.to(memory_format=torch.contiguous_format)
    model._prepare = lambda x: x.contiguous()  # type: ignore[method-assign]
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet8,mobilenetv2-tiny,cnn5")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    x = torch.rand(args.batch_size, args.channels, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    print(f"batch {args.batch_size} of {args.channels}x{args.image_size}x{args.image_size}, "
          f"{torch.get_num_threads()} threads")
    for name in args.models.split(","):
        kwargs = dict(in_channels=args.channels, num_classes=10, image_size=args.image_size)
        channels_last = create_model(name, **kwargs).eval()
        nchw = as_nchw(create_model(name, **kwargs).eval())
        for model in (nchw, channels_last):
            passes_per_second(model, x, y, 0.5)  # warm-up
        ratios = [passes_per_second(channels_last, x, y, args.seconds) / passes_per_second(nchw, x, y, args.seconds)
                  for _ in range(args.repeats)]
        print(f"{name}: channels-last / NCHW attack-step throughput = {statistics.median(ratios):.2f}x "
              f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
