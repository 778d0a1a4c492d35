"""Datasets: static metadata (:class:`DatasetInfo`), loaders and stratified subsets.

Every loaded dataset yields ``(image, label)`` with ``image`` a float32 C×H×W tensor in
[0, 1] and ``label`` an int, and carries

- ``targets``: a 1-D LongTensor of all labels in index order (for stratified subsets
  without reading images);
- ``class_names``: the class names read with the data. For Tiny-ImageNet these are the
  readable names from ``words.txt`` (or the wnids), whereas ``DatasetInfo.class_names``
  is only ``class0``..``class199``; ``wnids`` holds the folder ids.

Data roots: ``load(root=None)`` uses the environment variable ``HARNESS_DATA``, or
``./data`` when it is unset. Fashion-MNIST also looks in ``/usr/share/datasets/fashion-mnist``
(Debian package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from harness.backbone.devices import place, randint
from harness.errors import HarnessError
from harness.registry import Registry, suggest

SPLITS = ("train", "test")
DEFAULT_ROOT = "data"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

Loader = Callable[[bool, Path | None, bool], Dataset]  # (train, root or None, download)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def data_root(root: str | Path | None) -> Path:
    """``root`` if given, else ``$HARNESS_DATA``, else ``./data``."""
    return Path(root if root is not None else os.environ.get("HARNESS_DATA", DEFAULT_ROOT))


@dataclass(frozen=True)
class DatasetInfo:
    """Shape, classes and attack budget of a dataset, plus how to load it."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    class_names: tuple[str, ...]
    epsilon: float  # L-inf attack budget
    step_size: float  # PGD step
    hflip: bool  # horizontal flips are a natural augmentation
    has_train: bool
    loader: Loader = field(repr=False, compare=False)

    def load(self, split: str, root: str | Path | None = None, download: bool = False) -> Dataset:
        """The ``"train"`` or ``"test"`` split (see the module docstring for ``root``)."""
        if split not in SPLITS:
            raise HarnessError(
                f"unknown split '{split}' for dataset '{self.name}'{suggest(split, SPLITS)}; "
                f"choose from {', '.join(SPLITS)}"
            )
        if split == "train" and not self.has_train:
            raise HarnessError(f"dataset '{self.name}' has no train split")
        return self.loader(split == "train", None if root is None else Path(root), download)


class ImageTensorDataset(Dataset):
    """Images kept in memory as a uint8 N×C×H×W tensor, converted to float per item."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(targets):
            raise ValueError("images must be uint8 N×C×H×W with one target per image")
        self.images = images
        self.targets = targets.long()
        self.class_names = tuple(class_names)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.targets[index])


# --------------------------------------------------------------------------- CIFAR


def _cifar_loader(label: str, tv_class_name: str, folder: str) -> Loader:
    def load(train: bool, root: Path | None, download: bool) -> Dataset:
        import torchvision.datasets

        where = data_root(root)
        if not download and not (where / folder).is_dir():
            raise HarnessError(f"{label} not found under {where}: pass --download or put {folder} under {where}")
        try:
            tv = getattr(torchvision.datasets, tv_class_name)(str(where), train=train, download=download)
        except (RuntimeError, OSError) as exc:  # corrupted files or failed download
            raise HarnessError(f"cannot load {label} from {where / folder}: {_one_line(exc)}") from exc
        images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()
        return ImageTensorDataset(images, torch.tensor(tv.targets, dtype=torch.long), tv.classes)

    return load


# ------------------------------------------------------------------- Tiny-ImageNet

TINY_IMAGENET_SIZE = 64
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class ImageFileDataset(Dataset):
    """Image files read lazily with PIL, converted to RGB ``size``×``size``."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: torch.Tensor,
        class_names: Sequence[str],
        wnids: Sequence[str],
        size: int,
    ) -> None:
        self.paths = list(paths)
        self.targets = targets.long()
        self.class_names = tuple(class_names)
        self.wnids = tuple(wnids)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
            return pil_to_tensor(image).float().div_(255), int(self.targets[index])


def _tiny_imagenet_dir(where: Path) -> Path:
    for candidate in (where / "tiny-imagenet-200", where):
        if (candidate / "train").is_dir() or (candidate / "val").is_dir():
            return candidate
    raise HarnessError(
        f"Tiny-ImageNet not found under {where}: unzip tiny-imagenet-200.zip there "
        "(expects tiny-imagenet-200/train and tiny-imagenet-200/val)"
    )


def _read_words(path: Path, wnids: Sequence[str]) -> list[str]:
    """Readable names (first synonym) from ``words.txt``; wnids where it has none."""
    wanted = set(wnids)
    names: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            wnid, _, words = line.partition("\t")
            if wnid in wanted and words.strip():
                names[wnid] = words.split(",")[0].strip()
    return [names.get(wnid, wnid) for wnid in wnids]


def _load_tiny_imagenet(train: bool, root: Path | None, download: bool) -> Dataset:
    base = _tiny_imagenet_dir(data_root(root))
    if (base / "wnids.txt").is_file():
        wnids = (base / "wnids.txt").read_text(encoding="utf-8").split()
    elif (base / "train").is_dir():
        wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    else:
        wnids = []
    if not wnids:
        raise HarnessError(f"Tiny-ImageNet under {base} has neither wnids.txt nor train/<wnid> folders")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    paths: list[Path] = []
    labels: list[int] = []
    if train:
        for wnid in wnids:
            folder = base / "train" / wnid / "images"
            if not folder.is_dir():
                raise HarnessError(f"Tiny-ImageNet train folder missing: {folder}")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            paths += files
            labels += [index[wnid]] * len(files)
    else:
        annotations = base / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise HarnessError(f"Tiny-ImageNet val annotations missing: {annotations}")
        for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            filename, wnid = (line.split("\t") + [""])[:2]
            if wnid not in index:
                raise HarnessError(f"{annotations}:{number}: unknown wnid '{wnid}'")
            paths.append(base / "val" / "images" / filename)
            labels.append(index[wnid])
    return ImageFileDataset(
        paths,
        torch.tensor(labels, dtype=torch.long),
        _read_words(base / "words.txt", wnids),
        wnids,
        TINY_IMAGENET_SIZE,
    )


# ------------------------------------------------------------------- Fashion-MNIST

_IDX_UBYTE = 0x08
FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """Parse an unsigned-byte IDX file (gzip if it ends in ``.gz``) into a uint8 tensor.

    The result is cached per resolved path and shared: do not modify it in place.
    """
    array = _read_idx_cached(str(Path(path).resolve()))
    if ndim is not None and array.ndim != ndim:
        raise HarnessError(f"{path}: expected {ndim}-d IDX data, found {array.ndim}-d")
    return array


@lru_cache(maxsize=None)
def _read_idx_cached(path: str) -> torch.Tensor:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise HarnessError(f"cannot read IDX file {path}: {_one_line(exc)}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise HarnessError(f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = 1
    for dim in shape:
        size *= dim
    if len(raw) != header + size:
        raise HarnessError(f"{path}: IDX header says {shape} but holds {len(raw) - header} bytes")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _fashion_mnist_dirs(root: Path | None) -> list[Path]:
    dirs: list[Path] = []
    user_root = root if root is not None else os.environ.get("HARNESS_DATA")
    if user_root is not None:
        base = Path(user_root)
        dirs += [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    return dirs + [FASHION_MNIST_SYSTEM_DIR]


def _load_fashion_mnist(train: bool, root: Path | None, download: bool) -> Dataset:
    files = FASHION_MNIST_FILES[train]
    dirs = _fashion_mnist_dirs(root)
    found = next((d for d in dirs if all((d / f).is_file() for f in files)), None)
    if found is None and download:
        import torchvision.datasets

        target = data_root(root)
        try:
            torchvision.datasets.FashionMNIST(str(target), train=train, download=True)
        except (RuntimeError, OSError) as exc:
            raise HarnessError(f"cannot download Fashion-MNIST to {target}: {_one_line(exc)}") from exc
        found = target / "FashionMNIST" / "raw"
    if found is None:
        raise HarnessError(
            f"Fashion-MNIST not found (looked in {', '.join(map(str, dirs))}): "
            "apt-get install dataset-fashion-mnist, or pass a data root, or --download"
        )
    images = read_idx(found / files[0], ndim=3)
    labels = read_idx(found / files[1], ndim=1)
    if len(images) != len(labels):
        raise HarnessError(f"Fashion-MNIST in {found}: {len(images)} images but {len(labels)} labels")
    return ImageTensorDataset(images.unsqueeze(1), labels.long(), FASHION_MNIST.class_names)


# ----------------------------------------------------------------------- synthetic

SYNTHETIC_SEED = 0
SYNTHETIC_SIZES = {True: 1000, False: 500}
SYNTHETIC_NOISE = 0.1


def _load_synthetic(train: bool, root: Path | None, download: bool) -> Dataset:
    """Per-class smooth random templates (4×4 upsampled) plus gaussian noise, quantised to uint8.

    Both splits share the templates (seed ``SYNTHETIC_SEED``) and differ in noise.
    """
    info = SYNTHETIC
    templates_rng = torch.Generator().manual_seed(SYNTHETIC_SEED)
    coarse = torch.rand(info.num_classes, info.channels, 4, 4, generator=templates_rng)
    templates = torch.nn.functional.interpolate(
        coarse, size=info.image_size, mode="bilinear", align_corners=False
    )
    n = SYNTHETIC_SIZES[train]
    targets = torch.arange(n) % info.num_classes
    noise_rng = torch.Generator().manual_seed(SYNTHETIC_SEED + (1 if train else 2))
    noise = torch.randn(n, info.channels, info.image_size, info.image_size, generator=noise_rng)
    images = (templates[targets] + SYNTHETIC_NOISE * noise).clamp_(0, 1)
    return ImageTensorDataset(images.mul_(255).round_().to(torch.uint8), targets, info.class_names)


# ------------------------------------------------------------------------ registry

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

DATASETS: Registry[DatasetInfo] = Registry("dataset")

CIFAR10 = DatasetInfo(
    "cifar10", 3, 32, 10, CIFAR10_CLASSES, 8 / 255, 2 / 255, True, True,
    _cifar_loader("CIFAR-10", "CIFAR10", "cifar-10-batches-py"),
)  # fmt: skip
CIFAR100 = DatasetInfo(
    "cifar100", 3, 32, 100, CIFAR100_CLASSES, 8 / 255, 2 / 255, True, True,
    _cifar_loader("CIFAR-100", "CIFAR100", "cifar-100-python"),
)  # fmt: skip
TINY_IMAGENET = DatasetInfo(
    "tinyimagenet", 3, TINY_IMAGENET_SIZE, 200, tuple(f"class{i}" for i in range(200)),
    8 / 255, 2 / 255, True, True, _load_tiny_imagenet,
)  # fmt: skip
FASHION_MNIST = DatasetInfo(
    "fashion-mnist", 1, 28, 10, FASHION_MNIST_CLASSES, 0.1, 0.025, False, True, _load_fashion_mnist
)
SYNTHETIC = DatasetInfo(
    "synthetic", 3, 16, 10, tuple(f"class{i}" for i in range(10)), 8 / 255, 2 / 255, False, True,
    _load_synthetic,
)  # fmt: skip

DATASETS.register("cifar10", CIFAR10)
DATASETS.register("cifar100", CIFAR100)
DATASETS.register("tinyimagenet", TINY_IMAGENET, aliases=("tiny-imagenet",))
DATASETS.register("fashion-mnist", FASHION_MNIST, aliases=("fmnist",))
DATASETS.register("synthetic", SYNTHETIC)


def get_dataset(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered as ``name`` (or an alias)."""
    return DATASETS.get(name)


# ------------------------------------------------------------------------- subsets


def class_counts(targets: torch.Tensor | Sequence[int], num_classes: int) -> torch.Tensor:
    """Number of samples per class, a LongTensor of length ``num_classes``."""
    return torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=num_classes)


def stratified_indices(targets: torch.Tensor | Sequence[int], n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified random subset of size ``n``.

    Each class present gets ``n // C`` samples, the remainder going one each to the first
    classes in a seeded random order; a class with too few samples gives all of them and
    its shortfall is spread over the others the same way. ``n`` None or ``>= len`` gives
    every index in order.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    if n is None or n >= len(targets):
        return torch.arange(len(targets))
    if n < 0:
        raise HarnessError(f"subset size must be >= 0, got {n}")
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(targets, return_counts=True)
    order = torch.randperm(len(classes), generator=generator).tolist()
    capacity = counts.tolist()
    quota = [0] * len(classes)
    remaining = n
    while remaining > 0:
        open_classes = [c for c in order if quota[c] < capacity[c]]
        share, extra = divmod(remaining, len(open_classes))
        for rank, c in enumerate(open_classes):
            take = min(share + (rank < extra), capacity[c] - quota[c])
            quota[c] += take
            remaining -= take
    chosen = []
    for c, label in enumerate(classes.tolist()):
        members = torch.nonzero(targets == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: quota[c]]])
    return torch.cat(chosen).sort().values


def augment_batch(x: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding of size/8, and a horizontal flip where natural.

    Random draws come from the CPU ``generator``; ``x`` may live on any device.
    """
    pad = max(1, info.image_size // 8)
    padded = F.pad(x, (pad,) * 4)
    n, channels, h, w = x.shape
    device = x.device
    dy = randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    out = padded[batch, torch.arange(channels, device=device)[None, :, None, None], rows, cols]
    if info.hflip:
        flip = place(torch.rand(n, generator=generator) < 0.5, device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
