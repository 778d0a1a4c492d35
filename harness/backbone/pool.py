"""The image pool: synthetic batches kept in memory (float16), bounded, sampled with augmentation."""

from __future__ import annotations

import torch

from harness.data import DatasetInfo, augment_batch


class ImagePool:
    """FIFO store of at most ``capacity`` images (and labels, −1 where a method has none)."""

    def __init__(self, capacity: int, info: DatasetInfo) -> None:
        self.capacity, self.info = capacity, info
        self.images = torch.empty(0, info.channels, info.image_size, info.image_size, dtype=torch.float16)
        self.labels = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def add(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Append a batch (images in [0, 1]); the oldest images leave beyond the capacity."""
        images = images.detach().to("cpu", torch.float16)
        labels = torch.full((len(images),), -1, dtype=torch.long) if labels is None else labels.detach().cpu().long()
        self.images = torch.cat([self.images, images])[-self.capacity:]
        self.labels = torch.cat([self.labels, labels])[-self.capacity:]

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu",
               augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (with replacement), random crop + natural flips when ``augment``."""
        if not len(self):
            raise RuntimeError("the image pool is empty: synthesize before sampling")
        index = torch.randint(0, len(self), (batch_size,), generator=generator)
        images = self.images[index].to(device, torch.float32)
        if augment:
            images = augment_batch(images, self.info, generator)
        return images, self.labels[index].to(device)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Up to ``n`` distinct stored images in random order, as stored (no augmentation)."""
        index = torch.randperm(len(self), generator=generator)[:n]
        return self.images[index].float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "labels": self.labels}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.images, self.labels = state["images"], state["labels"]
