"""The image pool: synthetic images kept on the run's device (float16), bounded, sampled with augmentation."""

from __future__ import annotations

from typing import Any

import torch

from harness.backbone.devices import randint, randperm
from harness.data import DatasetInfo, augment_batch


class ImagePool:
    """FIFO store of at most ``capacity`` images (and labels, −1 where a method has none).

    A preallocated ring buffer on ``device``: adding a batch writes its slots in place (no copy
    of the pool), and sampling indexes it where the student trains (no host-to-device copy).
    Before the ring first wraps, slot order is arrival order.
    """

    def __init__(self, capacity: int, info: DatasetInfo, device: torch.device | str = "cpu") -> None:
        self.capacity, self.info, self.device = capacity, info, torch.device(device)
        self._images: torch.Tensor | None = None  # allocated at the first add
        self._labels: torch.Tensor | None = None
        self._teacher_classes: torch.Tensor | None = None  # the teacher's class of each slot (−1: not noted)
        self.count = 0  # images ever added

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def _allocate(self) -> None:
        info = self.info
        self._images = torch.empty(self.capacity, info.channels, info.image_size, info.image_size,
                                   dtype=torch.float16, device=self.device)
        self._labels = torch.full((self.capacity,), -1, dtype=torch.long, device=self.device)
        self._teacher_classes = torch.full((self.capacity,), -1, dtype=torch.long, device=self.device)

    @property
    def images(self) -> torch.Tensor:
        """The stored images, in slot order (a view)."""
        if self._images is None:
            info = self.info
            return torch.empty(0, info.channels, info.image_size, info.image_size, dtype=torch.float16,
                               device=self.device)
        return self._images[: len(self)]

    @property
    def labels(self) -> torch.Tensor:
        if self._labels is None:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return self._labels[: len(self)]

    def add(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Write a batch (images in [0, 1]) over the oldest slots once the pool is full."""
        if self._images is None:
            self._allocate()
        added = len(images)
        images = images.detach()[-self.capacity:]  # a batch larger than the pool keeps its newest images
        start = (self.count + added - len(images)) % self.capacity
        slots = (start + torch.arange(len(images), device=self.device)) % self.capacity
        self._images[slots] = images.to(self.device, torch.float16)
        if labels is None:
            self._labels[slots] = -1
        else:
            self._labels[slots] = labels.detach()[-self.capacity:].to(self.device, torch.long)
        self._teacher_classes[slots] = -1
        self.count += added

    def _newest_slots(self, n: int) -> torch.Tensor:
        n = min(n, len(self))
        return (self.count - n + torch.arange(n, device=self.device)) % self.capacity

    def newest(self, n: int) -> torch.Tensor:
        """The ``n`` most recently added images (at most the pool), oldest first, as float."""
        if not len(self):
            return self.images.float()
        return self._images[self._newest_slots(n)].float()

    def note_teacher_classes(self, classes: torch.Tensor) -> None:
        """Record the teacher's class of the ``len(classes)`` newest images (for the pool's histogram)."""
        self._teacher_classes[self._newest_slots(len(classes))] = classes.to(self.device, torch.long)

    @property
    def teacher_classes(self) -> torch.Tensor:
        """The teacher's class of each stored image, in slot order (−1 where none was noted)."""
        if self._teacher_classes is None:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return self._teacher_classes[: len(self)]

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device | str | None = None,
               augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (with replacement), random crop + natural flips when ``augment``."""
        if not len(self):
            raise RuntimeError("the image pool is empty: synthesize before sampling")
        index = randint(0, len(self), (batch_size,), generator=generator, device=self.device)
        target = self.device if device is None else torch.device(device)
        images = self._images[index].to(target, torch.float32)
        if augment:
            images = augment_batch(images, self.info, generator)
        return images, self._labels[index].to(target)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Up to ``n`` distinct stored images in random order, as stored (no augmentation), as float."""
        index = randperm(len(self), generator=generator, device=self.device)[:n]
        return self._images[index].float()

    def fill_for_estimate(self) -> None:
        """Count every slot as filled (their contents as allocated): a late epoch's pool for cost estimates."""
        if self._images is None:
            self._allocate()
        self.count = max(self.count, self.capacity)

    def state_dict(self) -> dict[str, Any]:
        """The filled slots in slot order and the count: a restored pool continues exactly.

        A full pool is saved as it is (no copy); a partly filled one as a copy of its filled slots
        (``torch.save`` of a view would write the whole preallocated buffer)."""
        if len(self) == self.capacity:
            return {"images": self._images, "labels": self._labels, "teacher_classes": self._teacher_classes,
                    "count": self.count}
        return {"images": self.images.clone(), "labels": self.labels.clone(),
                "teacher_classes": self.teacher_classes.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        images, labels = state["images"], state["labels"]
        self.count = int(state.get("count", len(images)))  # pools saved before the ring: arrival order
        self._allocate()
        self._images[: len(images)] = images.to(self.device, torch.float16)
        self._labels[: len(labels)] = labels.to(self.device, torch.long)
        if "teacher_classes" in state:  # pools saved before the histogram: none noted
            self._teacher_classes[: len(labels)] = state["teacher_classes"].to(self.device, torch.long)
