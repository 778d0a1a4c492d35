"""Tests for harness.data: loaders (real Fashion-MNIST, fakes for the rest) and subsets."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import data
from harness.data import DATASETS, class_counts, get_dataset, read_idx, stratified_indices
from harness.errors import HarnessError


@pytest.fixture(autouse=True)
def no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_DATA", raising=False)


# ------------------------------------------------------------------------ registry


def test_registry_entries() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "tinyimagenet", "fashion-mnist", "synthetic"]
    assert get_dataset("fmnist") is get_dataset("fashion-mnist")
    for name in DATASETS:
        info = get_dataset(name)
        assert len(info.class_names) == info.num_classes
        assert 0 < info.step_size < info.epsilon
    cifar10, cifar100 = get_dataset("cifar10"), get_dataset("cifar100")
    assert (cifar10.channels, cifar10.image_size, cifar10.epsilon, cifar10.hflip) == (3, 32, 8 / 255, True)
    assert cifar10.class_names[0] == "airplane" and cifar10.class_names[-1] == "truck"
    assert list(cifar100.class_names) == sorted(cifar100.class_names)
    assert cifar100.class_names[0] == "apple" and cifar100.class_names[-1] == "worm"
    fmnist = get_dataset("fashion-mnist")
    assert (fmnist.channels, fmnist.image_size, fmnist.epsilon, fmnist.step_size) == (1, 28, 0.1, 0.025)
    assert not fmnist.hflip and fmnist.class_names[-1] == "Ankle boot"
    assert get_dataset("tinyimagenet").image_size == 64


def test_unknown_name_and_bad_split() -> None:
    with pytest.raises(HarnessError, match="did you mean 'cifar10'"):
        get_dataset("cifar11")
    with pytest.raises(HarnessError, match="unknown split 'val'"):
        get_dataset("synthetic").load("val")


# ------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not data.FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason=f"{data.FASHION_MNIST_SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize(("split", "size"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_system(split: str, size: int) -> None:
    dataset = get_dataset("fashion-mnist").load(split)
    assert len(dataset) == size
    assert dataset.targets.dtype == torch.long and dataset.targets.shape == (size,)
    assert class_counts(dataset.targets, 10).tolist() == [size // 10] * 10
    items = [dataset[i] for i in range(0, size, size // 300)]
    images = torch.stack([image for image, _ in items])
    assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert all(isinstance(label, int) and 0 <= label < 10 for _, label in items)


def write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(folder: Path, n_train: int = 20, n_test: int = 10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_idx_parser(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    parsed = read_idx(tmp_path / "a.gz", ndim=3)
    assert parsed.dtype == torch.uint8 and parsed.tolist() == array.tolist()
    with pytest.raises(HarnessError, match="expected 1-d"):
        read_idx(tmp_path / "a.gz", ndim=1)
    write_idx(tmp_path / "bad.gz", array, magic=bytes([0, 0, 0x0D, 3]))  # float32 type code
    with pytest.raises(HarnessError, match="magic"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as stream:
        stream.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(HarnessError, match="holds 3 bytes"):
        read_idx(tmp_path / "short.gz")


@pytest.mark.parametrize("subdir", ["", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_fake_root(tmp_path: Path, subdir: str) -> None:
    write_fake_fashion_mnist(tmp_path / subdir)
    train = get_dataset("fmnist").load("train", root=tmp_path)
    test = get_dataset("fmnist").load("test", root=tmp_path)
    assert (len(train), len(test)) == (20, 10)
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    assert 0 <= image.min() and image.max() <= 1
    assert test.targets.tolist() == list(range(10))
    assert train.class_names[0] == "T-shirt/top"


def test_fashion_mnist_env_root_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(HarnessError, match="apt-get install dataset-fashion-mnist") as caught:
        get_dataset("fmnist").load("test", root=tmp_path)
    assert "\n" not in str(caught.value)
    write_fake_fashion_mnist(tmp_path / "env")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "env"))
    assert len(get_dataset("fmnist").load("test")) == 10


# ------------------------------------------------------------------- Tiny-ImageNet


def write_fake_tiny_imagenet(base: Path) -> list[str]:
    wnids = ["n01443537", "n01629819", "n01641577"]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text(
        "n00000001\tentity\nn01443537\tgoldfish, Carassius auratus\n"
        "n01629819\tEuropean fire salamander, Salamandra salamandra\nn01641577\tbullfrog\n"
    )
    for i, wnid in enumerate(wnids):
        (base / "train" / wnid / "images").mkdir(parents=True)
        for j in range(2):
            color = (80 * i, 40 * j, 200)
            Image.new("RGB", (64, 64), color).save(base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG")
    Image.new("L", (32, 32), 128).save(base / "val" / "images" / "val_0.JPEG")  # resized, RGB
    Image.new("RGB", (64, 64), (10, 20, 30)).save(base / "val" / "images" / "val_1.JPEG")
    (base / "val" / "val_annotations.txt").write_text(
        f"val_0.JPEG\t{wnids[2]}\t0\t0\t10\t10\nval_1.JPEG\t{wnids[0]}\t1\t2\t30\t40\n"
    )
    return wnids


@pytest.mark.parametrize("nested", [True, False])
def test_tiny_imagenet_fake(tmp_path: Path, nested: bool) -> None:
    wnids = write_fake_tiny_imagenet(tmp_path / "tiny-imagenet-200" if nested else tmp_path)
    info = get_dataset("tinyimagenet")
    train, test = info.load("train", root=tmp_path), info.load("test", root=tmp_path)
    assert (len(train), len(test)) == (6, 2)
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2] and test.targets.tolist() == [2, 0]
    assert train.class_names == ("goldfish", "European fire salamander", "bullfrog")
    assert train.wnids == tuple(wnids)
    for dataset in (train, test):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.shape == (3, 64, 64) and image.dtype == torch.float32
            assert 0 <= image.min() and image.max() <= 1 and label == dataset.targets[i]


def test_tiny_imagenet_without_wnids_and_missing(tmp_path: Path) -> None:
    write_fake_tiny_imagenet(tmp_path)
    (tmp_path / "wnids.txt").unlink()
    (tmp_path / "words.txt").unlink()
    train = get_dataset("tinyimagenet").load("train", root=tmp_path)
    assert train.class_names == ("n01443537", "n01629819", "n01641577")
    with pytest.raises(HarnessError, match="Tiny-ImageNet not found"):
        get_dataset("tinyimagenet").load("test", root=tmp_path / "nowhere")


# --------------------------------------------------------------------------- CIFAR


@pytest.fixture
def no_cifar_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the real files' md5 sums; accept any existing file instead."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as stream:
        pickle.dump(obj, stream)


def fake_batch(n: int, offset: int, label_key: str, num_classes: int) -> dict:
    images = (np.arange(n * 3072) + offset).reshape(n, 3072) % 256
    return {"data": images.astype(np.uint8), label_key: [(offset + i) % num_classes for i in range(n)]}


def test_cifar10_fake(tmp_path: Path, no_cifar_checksums: None) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k in range(1, 6):
        write_pickle(folder / f"data_batch_{k}", fake_batch(4, 4 * (k - 1), "labels", 10))
    write_pickle(folder / "test_batch", fake_batch(3, 0, "labels", 10))
    write_pickle(folder / "batches.meta", {"label_names": list(data.CIFAR10_CLASSES)})
    train = get_dataset("cifar10").load("train", root=tmp_path)
    test = get_dataset("cifar10").load("test", root=tmp_path)
    assert (len(train), len(test)) == (20, 3)
    assert train.targets.tolist() == [i % 10 for i in range(20)]
    assert train.class_names == data.CIFAR10_CLASSES
    image, label = test[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1
    # CHW layout: the first row of channel 0 is bytes 3072..3103 of the flat record.
    expected = (torch.arange(32) + 3072) % 256
    assert torch.equal(image[0, 0], expected.float() / 255)


def test_cifar100_fake(tmp_path: Path, no_cifar_checksums: None) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_pickle(folder / "train", fake_batch(5, 0, "fine_labels", 100))
    write_pickle(folder / "test", fake_batch(2, 7, "fine_labels", 100))
    write_pickle(folder / "meta", {"fine_label_names": list(data.CIFAR100_CLASSES)})
    test = get_dataset("cifar100").load("test", root=tmp_path)
    assert test.targets.tolist() == [7, 8] and test[0][0].shape == (3, 32, 32)


def test_cifar_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="--download") as caught:
        get_dataset("cifar10").load("train", root=tmp_path)
    assert str(tmp_path) in str(caught.value)
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(HarnessError, match="cannot load CIFAR-100"):
        get_dataset("cifar100").load("test", root=tmp_path)


# ----------------------------------------------------------------------- synthetic


def stack(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_synthetic() -> None:
    info = get_dataset("synthetic")
    train, test = info.load("train"), info.load("test")
    assert (len(train), len(test)) == (1000, 500)
    assert class_counts(train.targets, 10).tolist() == [100] * 10
    assert class_counts(test.targets, 10).tolist() == [50] * 10
    x_train, y_train = stack(train)
    x_test, y_test = stack(test)
    assert x_train.shape == (1000, 3, 16, 16) and x_train.dtype == torch.float32
    assert x_train.min() >= 0 and x_train.max() <= 1
    assert torch.equal(y_train, train.targets) and torch.equal(y_test, test.targets)
    again, _ = stack(info.load("train"))
    assert torch.equal(x_train, again)
    assert not torch.equal(x_train[:500], x_test)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = torch.randint(0, len(x_train), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.8


# ------------------------------------------------------------------------- subsets


def test_stratified_equal_share() -> None:
    targets = torch.arange(1000) % 10
    indices = stratified_indices(targets, 100, seed=0)
    assert indices.dtype == torch.long and len(indices) == 100
    assert torch.equal(indices, indices.sort().values) and len(indices.unique()) == 100
    assert class_counts(targets[indices], 10).tolist() == [10] * 10


def test_stratified_remainder_and_small_class() -> None:
    targets = torch.arange(1000) % 10
    counts = class_counts(targets[stratified_indices(targets, 57, seed=1)], 10)
    assert counts.sum() == 57 and sorted(counts.tolist()) == [5] * 3 + [6] * 7
    skewed = torch.tensor([0] * 50 + [1] * 2 + [2] * 50)
    counts = class_counts(skewed[stratified_indices(skewed, 30, seed=0)], 3)
    assert counts[1] == 2 and counts.sum() == 30 and sorted(counts.tolist()) == [2, 14, 14]


def test_stratified_determinism_and_all() -> None:
    targets = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(3))
    first = stratified_indices(targets, 70, seed=5)
    assert torch.equal(first, stratified_indices(targets, 70, seed=5))
    assert not torch.equal(first, stratified_indices(targets, 70, seed=6))
    assert torch.equal(stratified_indices(targets, None, seed=0), torch.arange(500))
    assert torch.equal(stratified_indices(targets, 500, seed=0), torch.arange(500))
    assert torch.equal(stratified_indices(targets.tolist(), 10_000, seed=0), torch.arange(500))
