"""DeepLabV3-style semantic segmentation nets (Chen et al. 2017), CPU-sized, for secure inference.

The head is DeepLabV3's: an ASPP block (a 1x1 branch, three 3x3 branches with dilations, and an
image-pooling branch: global average pool, 1x1 conv, ReLU, bilinear upsampling back to the
feature size), the five branches concatenated along channels, a 1x1 projection, a 3x3 conv, a
1x1 classifier, and bilinear upsampling of the logits to the input size. Every op is one the
secure engine runs: dilated and depthwise convolutions and the average pool are linear,
concatenation is local, and bilinear upsampling is a public linear map
(:mod:`secinfer.mpc.upsample`); the comparisons are the ReLUs (ReLU6 in the MobileNetV2
backbone).

Two backbones, both output stride 4 (a 32x32 input gives 8x8 features):

* ``deeplabv3_resnet``: a 3x3 stride-2 stem and three ResNet BasicBlock stages; the last stage
  keeps 8x8 and uses dilation 2 instead of a stride (DeepLabV3's "atrous" backbone).
* ``deeplabv3_mobilenet``: MobileNetV2 inverted residuals (:class:`~secinfer.models.zoo.
  InvertedResidual`, ReLU6) with a small expansion ratio.

Each activation is its own module (the knapsack names activations by module path), and sizes are
fixed at construction, so ``torch.fx`` traces every model to a static graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .zoo import BasicBlock, InvertedResidual

__all__ = ["ASPP", "DeepLabV3", "DilatedBasicBlock", "deeplabv3_mobilenet", "deeplabv3_resnet"]


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1, stride: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling on ``[C, H, W]`` features of a fixed size."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], feature_size: int) -> None:
        super().__init__()
        self.b0 = _cbr(cin, cout, 1)
        self.rates = nn.ModuleList(_cbr(cin, cout, 3, r) for r in rates)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Upsample(size=(feature_size, feature_size),
                                              mode="bilinear", align_corners=False))
        self.project = _cbr(cout * (2 + len(rates)), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.b0(x)] + [branch(x) for branch in self.rates] + [self.pool(x)]
        return self.project(torch.cat(outs, dim=1))


class DilatedBasicBlock(BasicBlock):
    """A ResNet BasicBlock whose 3x3 convolutions are dilated (stride 1, same size)."""

    def __init__(self, in_planes: int, planes: int, dilation: int) -> None:
        super().__init__(in_planes, planes, 1)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, 1, dilation, dilation, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)


class DeepLabV3(nn.Module):
    """A backbone at output stride ``stride``, the ASPP head, logits upsampled to the input."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int, input_size: int,
                 stride: int, head: int = 32, rates: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        if input_size % stride:
            raise ValueError(f"input size {input_size} is not a multiple of the output stride "
                             f"{stride}")
        self.backbone = backbone
        self.aspp = ASPP(channels, head, rates, input_size // stride)
        self.head = _cbr(head, head, 3)
        self.classifier = nn.Conv2d(head, num_classes, 1)
        self.upsample = nn.Upsample(size=(input_size, input_size), mode="bilinear",
                                    align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.classifier(self.head(self.aspp(self.backbone(x)))))


def _resnet_backbone(in_channels: int, widths: Sequence[int]) -> tuple[nn.Module, int]:
    w0, w1, w2 = widths
    stem = _cbr(in_channels, w0, 3, stride=2)
    return nn.Sequential(stem, BasicBlock(w0, w0, 1), BasicBlock(w0, w1, 2),
                         DilatedBasicBlock(w1, w2, 2)), w2


def _mobilenet_backbone(in_channels: int, expand: int) -> tuple[nn.Module, int]:
    stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU6())
    return nn.Sequential(stem, InvertedResidual(16, 16, 1, 1),
                         InvertedResidual(16, 24, 2, expand), InvertedResidual(24, 24, 1, expand),
                         InvertedResidual(24, 32, 1, expand)), 32


def deeplabv3_resnet(num_classes: int = 6, in_channels: int = 1, input_size: int = 32,
                     widths: Sequence[int] = (16, 32, 48), head: int = 32) -> DeepLabV3:
    """DeepLabV3 over a small dilated ResNet (BasicBlocks), output stride 4."""
    body, ch = _resnet_backbone(in_channels, widths)
    return DeepLabV3(body, ch, num_classes, input_size, 4, head)


def deeplabv3_mobilenet(num_classes: int = 6, in_channels: int = 1, input_size: int = 32,
                        expand: int = 2, head: int = 32) -> DeepLabV3:
    """DeepLabV3 over MobileNetV2 inverted residuals (ReLU6), output stride 4."""
    body, ch = _mobilenet_backbone(in_channels, expand)
    return DeepLabV3(body, ch, num_classes, input_size, 4, head)
