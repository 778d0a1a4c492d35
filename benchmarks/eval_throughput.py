"""Is the PGD-20 evaluation free of wasted passes?

Prints time(PGD-20 evaluation through the engine) / time(21 forward+backward passes over
the same batches). PGD-20 needs 20 forward+backward passes plus one forward for the
prediction, so a ratio ≤ 1.1 means no extra work. Usage:

    python benchmarks/eval_throughput.py [--model cnn5] [--dataset fashion-mnist] [--n 1000] [--repeats 3]

The two are timed alternately ``--repeats`` times and the median ratio is reported, so
load from other processes affects both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from harness.attacks import attack_mode
from harness.data import get_dataset, stratified_indices
from harness.evaluate import evaluate
from harness.models import create_model


def reference_passes(model, dataset, indices, batch_size: int, passes: int) -> float:
    """Seconds for ``passes`` forward+backward passes w.r.t. the input on every batch."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices.tolist()), batch_size=batch_size)
    start = time.perf_counter()
    with attack_mode(model):
        for x, y in loader:
            for _ in range(passes):
                x_grad = x.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(x_grad), y), x_grad)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn5")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    info = get_dataset(args.dataset)
    test = info.load("test")
    model = create_model(args.model, in_channels=info.channels, num_classes=info.num_classes,
                         image_size=info.image_size)
    indices = stratified_indices(torch.as_tensor(test.targets), args.n, 0).numpy()
    reference_passes(model, test, indices[: args.batch_size], args.batch_size, 2)  # warm-up
    print(f"{args.model} on {args.dataset}, {args.n} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    ratios = []
    for repeat in range(args.repeats):
        reference = reference_passes(model, test, indices, args.batch_size, 21)
        result = evaluate(model, test, ["pgd20"], epsilon=info.epsilon, step_size=info.step_size,
                          num_classes=info.num_classes, n_eval=args.n, batch_size=args.batch_size, progress=False)
        engine = result.seconds["pgd20"]
        ratios.append(engine / reference)
        print(f"repeat {repeat + 1}: PGD-20 evaluation {engine:.2f} s, 21 forward+backward passes "
              f"{reference:.2f} s, ratio {ratios[-1]:.3f}")
    print(f"ratio (median of {args.repeats}): {statistics.median(ratios):.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
