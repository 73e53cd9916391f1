"""Small CNNs for the enclave-split tests: every op the split supports, at toy sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secinfer.mpc.prg import PRG, new_seed
from secinfer.tee.rand import EnclaveRandomness


class TinyNet(nn.Module):
    """conv-BN-ReLU, max pool, a residual block, a depthwise conv, avg pool, two linears."""

    def __init__(self, cin: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = nn.ReLU6()
        self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
        self.relu3 = nn.ReLU()
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(24, 16)
        self.relu4 = nn.ReLU()
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = x + self.relu2(self.conv2(x))
        x = self.avg(self.relu3(self.dw(x)))
        return self.fc2(self.drop(self.relu4(self.fc1(self.flat(x)))))


def randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


@pytest.fixture
def gen() -> torch.Generator:
    # Tests use fresh randomness; the seed is printed by pytest on failure via the fixture repr.
    import secrets

    return torch.Generator().manual_seed(secrets.randbits(62))


@pytest.fixture
def rng() -> EnclaveRandomness:
    return EnclaveRandomness()


@pytest.fixture
def prg() -> PRG:
    return PRG(new_seed())


@pytest.fixture
def tiny(gen: torch.Generator) -> nn.Module:
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return randomize_bn(TinyNet(), gen)


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    # On a shared 2-core machine, torch's spinning worker threads make small ops 5x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
