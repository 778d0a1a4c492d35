"""What a run costs: wall seconds per stage, teacher queries, images synthesized."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


class Cost:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.teacher_forward_images = 0
        self.teacher_backward_images = 0
        self.images_synthesized = 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    @contextmanager
    def unmetered(self) -> Iterator[None]:
        """Teacher passes of the harness's own bookkeeping (e.g. the pool's class histogram): not counted."""
        counts = self.teacher_forward_images, self.teacher_backward_images
        try:
            yield
        finally:
            self.teacher_forward_images, self.teacher_backward_images = counts

    def watch_teacher(self, teacher: nn.Module) -> None:
        """Count images through the teacher's forward and (input-gradient) backward passes."""

        def forward(module: nn.Module, inputs: tuple, output: Any) -> None:
            self.teacher_forward_images += len(inputs[0])

        def backward(module: nn.Module, grad_inputs: tuple, grad_outputs: tuple) -> None:
            self.teacher_backward_images += len(grad_outputs[0])

        teacher.register_forward_hook(forward)
        teacher.register_full_backward_hook(backward)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "total_seconds": round(sum(self.seconds.values()), 3),
            "teacher_forward_images": self.teacher_forward_images,
            "teacher_backward_images": self.teacher_backward_images,
            "images_synthesized": self.images_synthesized,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.seconds = defaultdict(float, state["seconds"])
        self.teacher_forward_images = state["teacher_forward_images"]
        self.teacher_backward_images = state["teacher_backward_images"]
        self.images_synthesized = state["images_synthesized"]
