"""A small model zoo written as plain ``nn.Module`` classes (no torchvision).

torchvision does not import beside the pinned torch, so the architectures the secure engine is
measured on are defined here from the layers it supports: Conv2d (including grouped/depthwise),
Linear, BatchNorm2d, ReLU, ReLU6, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout and
residual additions.

Two rules the secure side relies on:

* Every activation is its own module instance (never one ``nn.ReLU`` reused twice), so a
  per-layer ReLU spec (``secinfer.knapsack``) can name each activation by its module path, and
  the captured graph has one node per activation.
* ``forward`` has no data-dependent Python control flow, so ``torch.fx.symbolic_trace`` works on
  every model (tested).

Shapes follow torchvision where a torchvision model exists (``resnet18``, ``resnet50``,
``mobilenet_v2``) so that externally trained state dicts load with the same key names; the
``stem='cifar'`` variants are the usual 3x3-stem versions for 32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "LeNet",
    "MNISTNet",
    "MobileNetV2",
    "ResNet",
    "VGG",
    "ZOO",
    "asset_path",
    "build",
    "fmnist_cnn",
    "fmnist_resnet",
    "lenet",
    "mobilenet_v2",
    "pretrained",
    "resnet18",
    "resnet50",
    "vgg",
]

Stem = Literal["cifar", "imagenet"]


class LeNet(nn.Module):
    """LeNet-5: two 5x5 convolutions with max pooling, then three fully connected layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        if input_size < 12:
            raise ValueError(f"LeNet needs input_size >= 12, got {input_size}")
        pad = 2 if input_size == 28 else 0  # the classic 28x28 variant pads to act like 32x32
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((input_size + 2 * pad - 4) // 2 - 4) // 2
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class MNISTNet(nn.Module):
    """Two 3x3 conv + max-pool stages and two linear layers (421,642 parameters for 1x28x28).

    The same shape as the pretrained MNIST CNN shipped by PyPI ``ccexam`` (see shared/data.md).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        if input_size % 4:
            raise ValueError(f"MNISTNet needs input_size divisible by 4, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (input_size // 4) ** 2, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (torchvision v1.5: stride on the 3x3): 1x1-3x3-1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU()
        self.downsample = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.downsample(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    # nn.Identity keeps forward free of "if downsample is None" branches and traces to nothing.
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNet(nn.Module):
    """ResNet with a configurable stem, stage widths and blocks per stage."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 10,
        stem: Stem = "cifar",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} differ in length")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        planes = widths[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, planes, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        in_planes = planes
        stages = []
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, width, stride))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        # Named layer1..layerN like torchvision, so state dicts and ReLU specs line up.
        self.num_stages = len(stages)
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"layer{i}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):  # fixed count: unrolled by fx
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:  # a constructor-time constant, so fx sees a fixed branch
            return x + self.conv(x)
        return self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s) from the MobileNetV2 paper.
_MBV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018); ``stem='cifar'`` uses stride 1 in the stem and the
    second stage, the usual adaptation for 32x32 inputs."""

    def __init__(
        self, num_classes: int = 10, width_mult: float = 1.0, stem: Stem = "cifar",
        in_channels: int = 3, dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        inp = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        first_stride = 1 if stem == "cifar" else 2
        feats: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, inp, 3, first_stride, 1, bias=False),
                          nn.BatchNorm2d(inp), nn.ReLU6())
        ]
        for idx, (t, c, n, s) in enumerate(_MBV2_CFG):
            out = _make_divisible(c * width_mult)
            if stem == "cifar" and idx == 1:
                s = 1
            for i in range(n):
                feats.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        feats.append(nn.Sequential(nn.Conv2d(inp, last, 1, bias=False), nn.BatchNorm2d(last),
                                   nn.ReLU6()))
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


_VGG_CFG: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG-style network in the CIFAR shape: 3x3 conv-BN-ReLU stacks, five 2x2 max pools,
    one linear classifier on the 512x1x1 features (for 32x32 inputs)."""

    def __init__(
        self, depth: int = 11, num_classes: int = 10, in_channels: int = 3,
        batch_norm: bool = True, width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if depth not in _VGG_CFG:
            raise ValueError(f"VGG depth must be one of {sorted(_VGG_CFG)}, got {depth}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG_CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(int(v) * width_mult))
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # makes non-32x32 inputs work too
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def lenet(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> LeNet:
    return LeNet(num_classes, in_channels, input_size)


def fmnist_cnn(num_classes: int = 10) -> MNISTNet:
    """The demo CNN for Fashion-MNIST (1x28x28); trained weights in ``secinfer/assets``."""
    return MNISTNet(num_classes, 1, 28)


def fmnist_cnn_avgpool(num_classes: int = 10) -> nn.Module:
    """The demo CNN with its max pools replaced by average pools (the Knapsack seed's swap,
    :func:`secinfer.models.transforms.maxpool_to_avgpool`); its fine-tuned weights are written
    by ``benchmarks/avgpool.py``."""
    from .transforms import maxpool_to_avgpool

    return maxpool_to_avgpool(MNISTNet(num_classes, 1, 28))[0]


def fmnist_resnet(
    num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (1, 1, 1)
) -> ResNet:
    """A small ResNet for Fashion-MNIST (1x28x28): 3x3 stem, stages of BasicBlocks at 28, 14, 7."""
    return ResNet(BasicBlock, blocks, widths, num_classes, "cifar", 1)


def resnet18(num_classes: int = 10, stem: Stem = "cifar", in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, stem, in_channels)


def resnet50(num_classes: int = 1000, stem: Stem = "imagenet", in_channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, stem, in_channels)


def mobilenet_v2(
    num_classes: int = 10, stem: Stem = "cifar", in_channels: int = 3, width_mult: float = 1.0
) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, stem, in_channels)


def vgg(depth: int = 11, num_classes: int = 10, in_channels: int = 3,
        batch_norm: bool = True, width_mult: float = 1.0) -> VGG:
    return VGG(depth, num_classes, in_channels, batch_norm, width_mult)


def deeplabv3_resnet(**kwargs: object) -> nn.Module:
    """DeepLabV3 over a small dilated ResNet (:mod:`secinfer.models.segmentation`)."""
    from .segmentation import deeplabv3_resnet as _build

    return _build(**kwargs)  # type: ignore[arg-type]


def deeplabv3_mobilenet(**kwargs: object) -> nn.Module:
    """DeepLabV3 over MobileNetV2 blocks (:mod:`secinfer.models.segmentation`)."""
    from .segmentation import deeplabv3_mobilenet as _build

    return _build(**kwargs)  # type: ignore[arg-type]


# name -> (factory, example input shape without batch). The shape lets tests and benchmarks build
# a matching input without knowing each model.
ZOO: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int]]] = {
    "lenet": (lenet, (1, 28, 28)),
    "fmnist_cnn": (fmnist_cnn, (1, 28, 28)),
    "fmnist_cnn_avgpool": (fmnist_cnn_avgpool, (1, 28, 28)),
    "fmnist_resnet": (fmnist_resnet, (1, 28, 28)),
    "resnet18": (resnet18, (3, 32, 32)),
    "resnet50": (resnet50, (3, 224, 224)),
    "mobilenet_v2": (mobilenet_v2, (3, 32, 32)),
    "vgg11": (vgg, (3, 32, 32)),
    "deeplabv3_resnet": (deeplabv3_resnet, (1, 32, 32)),
    "deeplabv3_mobilenet": (deeplabv3_mobilenet, (1, 32, 32)),
}


def build(name: str, **kwargs: object) -> nn.Module:
    """Build a zoo model by name; keyword arguments go to its factory."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name][0](**kwargs)


def asset_path(name: str) -> Path:
    """Where the project's trained weights for zoo model ``name`` live (may not exist)."""
    return Path(str(resources.files("secinfer"))) / "assets" / f"{name}.safetensors"


def pretrained(name: str) -> nn.Module:
    """Zoo model ``name`` with the project's trained weights (``scripts/train_fmnist.py``)."""
    from safetensors.torch import load_file

    path = asset_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained weights for {name!r} at {path}; train them with "
            f"scripts/train_fmnist.py --model {name}"
        )
    model = build(name)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
