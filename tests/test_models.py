"""The classifier contract for every registered architecture, and TRADES checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from harness.checkpoint import clean_state_dict
from harness.errors import HarnessError
from harness.models import MODELS, Classifier, create_model

BATCH = 2
# (in_channels, image_size, num_classes): Fashion-MNIST, CIFAR-100, Tiny-ImageNet, synthetic.
SHAPES = ((1, 28, 10), (3, 32, 100), (3, 64, 200), (3, 16, 7))
# WideResNet-34-20 (~185M parameters) is too slow on CPU for every shape.
SHAPES_BY_MODEL = {"wrn-34-20": ((3, 16, 7),)}
CASES = [(name, *shape) for name in MODELS.names() for shape in SHAPES_BY_MODEL.get(name, SHAPES)]


def build(
    name: str, in_channels: int, image_size: int, num_classes: int, seed: int = 0, **kwargs
) -> Classifier:
    torch.manual_seed(seed)
    return create_model(
        name, in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs
    ).eval()


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "in_channels", "image_size", "num_classes"),
    CASES,
    ids=[f"{name}-{c}x{s}" for name, c, s, _ in CASES],
)
def test_contract(name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    model = build(name, in_channels, image_size, num_classes)
    x = torch.rand(BATCH, in_channels, image_size, image_size)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (BATCH, num_classes)
        assert torch.isfinite(logits).all()

        features = {}
        for layer in model.feature_layers:
            features[layer] = model.features(x, layer)
            assert torch.equal(model.head(features[layer], layer), logits), layer

        block_logits, blocks = model.forward_blocks(x)
    assert torch.equal(block_logits, logits)
    assert len(blocks) == len(model.block_layers) > 0
    for layer, block in zip(model.block_layers, blocks, strict=True):
        assert torch.equal(block, features[layer]), layer

    assert model.default_feature_layer in model.feature_layers
    assert set(model.feature_layers) <= set(model.stages)
    assert model.bn_layers()


def test_unknown_layer_raises() -> None:
    model = build("resnet8", 1, 28, 10)
    x = torch.rand(BATCH, 1, 28, 28)
    with pytest.raises(HarnessError, match="no feature layer"):
        model.features(x, "layer9")
    with pytest.raises(HarnessError, match="no feature layer"):
        model.head(x, "stem")  # a stage, but not a feature layer


def test_unknown_model_suggests_a_name() -> None:
    with pytest.raises(HarnessError, match="did you mean"):
        create_model("resnet81", in_channels=3, num_classes=10, image_size=32)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("cnn5", 270_000, 290_000), ("resnet8", 75_000, 80_000), ("mobilenetv2-tiny", 50_000, 150_000)],
)
def test_small_model_sizes(name: str, low: int, high: int) -> None:
    assert low <= num_parameters(build(name, 1, 28, 10)) <= high


@pytest.mark.parametrize("name", ["cnn5", "resnet8", "mobilenetv2-tiny", "resnet18"])
def test_input_normalisation_matches_normalised_input(name: str) -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    normalising = build(name, 3, 32, 10, input_mean=mean, input_std=std)
    plain = build(name, 3, 32, 10)
    plain.load_state_dict(normalising.state_dict())
    x = torch.rand(BATCH, 3, 32, 32)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(normalising(x), plain(normalised))
        assert not torch.equal(plain(x), plain(normalised))


def trades_keys(blocks_per_group: int = 5) -> set[str]:
    """State-dict keys of the TRADES WideResNet-34 without its unused ``sub_block1``."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{k}" for k in bn)}
    for group in (1, 2, 3):
        for i in range(blocks_per_group):
            prefix = f"block{group}.layer.{i}."
            keys |= {f"{prefix}bn1.{k}" for k in bn} | {f"{prefix}bn2.{k}" for k in bn}
            keys |= {f"{prefix}conv1.weight", f"{prefix}conv2.weight"}
            if i == 0:
                keys.add(f"{prefix}convShortcut.weight")
    return keys


@pytest.fixture(scope="module")
def wrn_34_10() -> Classifier:
    model = build("wrn-34-10", 3, 32, 10)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so loading them matters
        for bn in model.bn_layers():
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model


def test_wrn_has_trades_layout(wrn_34_10: Classifier) -> None:
    state = wrn_34_10.state_dict()
    assert set(state) == trades_keys()
    assert state["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
    assert state["block2.layer.0.convShortcut.weight"].shape == (320, 160, 1, 1)
    assert state["block3.layer.4.conv2.weight"].shape == (640, 640, 3, 3)
    assert state["fc.weight"].shape == (10, 640)
    assert num_parameters(wrn_34_10) == 46_160_474  # the 46.16M reported for TRADES / RobustBench


@pytest.mark.parametrize("variant", ["plain", "data_parallel", "no_num_batches_tracked"])
def test_wrn_loads_trades_checkpoint(wrn_34_10: Classifier, variant: str, tmp_path) -> None:
    state = dict(wrn_34_10.state_dict())
    state |= {
        "sub_block1." + key.removeprefix("block1."): value.clone()
        for key, value in state.items()
        if key.startswith("block1.")
    }
    if variant == "data_parallel":
        state = {"module." + k: v for k, v in state.items()}
    elif variant == "no_num_batches_tracked":  # checkpoints from PyTorch < 0.4.1
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "model_cifar_wrn.pt"
    torch.save(state, path)

    fresh = build("wrn-34-10", 3, 32, 10, seed=1)
    x = torch.rand(BATCH, 3, 32, 32)
    with torch.no_grad():
        expected = wrn_34_10(x)
        assert not torch.equal(fresh(x), expected)
        state = clean_state_dict(torch.load(path, weights_only=True), fresh.ignored_checkpoint_prefixes)
        fresh.load_state_dict(state, strict=True)
        assert torch.equal(fresh(x), expected)
