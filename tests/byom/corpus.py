"""Models written the way their authors write them (not for secinfer): the capture's corpus.

Each factory returns ``(model, input_shape)``; weights are random (seeded by the caller).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShapeCheckNet(nn.Module):
    """A forward that checks its input's shape (torch.fx cannot trace this)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        if x.size(1) != 1 or x.dim() != 4:
            raise ValueError(f"expected N x 1 x H x W, got {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class FunctionalCNN(nn.Module):
    """Parameters used directly with F.conv2d / F.linear (get_attr)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(6) * 0.1)
        self.w2 = nn.Parameter(torch.randn(10, 6 * 4 * 4) * 0.1)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, stride=1, padding=1))
        x = F.avg_pool2d(x, 2)
        x = torch.flatten(x, 1)
        return F.linear(x, self.w2)


class Conv2dSame(nn.Conv2d):
    """TensorFlow 'SAME' padding (uneven pads for even kernels / strides), as timm writes it."""

    def forward(self, x):
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        sh, sw = self.stride
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        ph = max((oh - 1) * sh + (kh - 1) + 1 - ih, 0)
        pw = max((ow - 1) * sw + (kw - 1) + 1 - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class TFSameNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = Conv2dSame(3, 8, 3, stride=2)
        self.c2 = Conv2dSame(8, 8, 4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        return self.fc(torch.mean(x, dim=(2, 3)))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style blocks with ReLU6 and hard-swish, 'same' via ZeroPad2d."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu6(self.bn(self.stem(self.pad(x))))
        x = F.hardswish(self.pw(F.relu6(self.dw(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SqueezeExcite(8)
        self.act = nn.SiLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.se(self.act(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).view(-1, 8))


class BNAfterReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.bn2 = nn.BatchNorm1d(8 * 2 * 2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.bn1(F.relu(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(self.bn2(F.relu(x.flatten(1))))


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(nn.Conv2d(12, 4, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        d = torch.cat([self.up(e2), e1], dim=1)
        d = self.dec(d)
        return F.interpolate(self.out(d), scale_factor=1, mode="nearest").flatten(1)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.short(x)
        return F.relu(out)


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size(3))
        return self.linear(out.view(out.size(0), -1))


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hid = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
            nn.ReLU6(inplace=True), nn.Conv2d(hid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU6(inplace=True)),
            InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 2))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(12, 10))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class VGGTiny(nn.Module):
    cfg = [8, "M", 16, "M"]

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 16), nn.ReLU(True),
                                        nn.Dropout(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(),
                                       nn.Linear(2 * tokens, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                         nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_mlp(y).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.block = MixerBlock(4, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)                       # N, 8, 2, 2
        x = x.flatten(2).transpose(1, 2)       # N, 4 tokens, 8
        x = self.block(x)
        return self.head(x.mean(dim=1))


class ShuffleNetUnit(nn.Module):
    """Grouped 1x1 convs with a channel shuffle (view / transpose / view) and softmax output."""

    def __init__(self):
        super().__init__()
        self.g = 2
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gconv = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        n, c, h, w = x.size()
        x = x.view(n, self.g, c // self.g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = F.gelu(self.gconv(x))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return torch.softmax(self.fc(x) * 0.5 - 1.0, dim=-1) * 10


class DigitsNet(nn.Module):
    """A user's MNIST-style CNN (for 8x8 digits), BatchNorm after ReLU, a shape check."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        if x.shape[1:] != (1, 8, 8):
            raise ValueError("DigitsNet takes N x 1 x 8 x 8")
        x = F.max_pool2d(self.bn1(F.relu(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


def digits_cnn() -> nn.Module:
    """Factory for ``secinfer ... --model tests.byom.corpus:digits_cnn``."""
    return DigitsNet()


CORPUS = {
    "shape_check": (ShapeCheckNet, (1, 14, 14)),
    "functional_cnn": (FunctionalCNN, (3, 8, 8)),
    "tf_same": (TFSameNet, (3, 9, 9)),
    "depthwise_hswish": (DepthwiseSeparable, (3, 8, 8)),
    "squeeze_excite": (SENet, (3, 8, 8)),
    "bn_after_relu": (BNAfterReLU, (1, 8, 8)),
    "unet": (TinyUNet, (1, 8, 8)),
    "resnet": (ResNetTiny, (3, 8, 8)),
    "mobilenet_v2": (MobileNetV2Tiny, (3, 8, 8)),
    "vgg": (VGGTiny, (3, 8, 8)),
    "mlp_mixer": (MLPMixer, (3, 8, 8)),
    "shufflenet_softmax": (ShuffleNetUnit, (3, 8, 8)),
    "digits_export_bn": (DigitsNet, (1, 8, 8)),  # torch.export path with batch norm
}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A corpus model with random weights and non-trivial batch-norm statistics."""
    cls, shape = CORPUS[name]
    model = cls()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval(), shape
