"""tropfx in one screen: compile a model with an untraceable block, verify, read the report.

    python examples/quickstart.py
"""

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.testing.models import randomize_batchnorm_stats


class NoisyGate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so tropfx keeps it as a leaf."""

    def forward(self, x):
        return x if x.mean() > 0 else x.abs()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.gate = NoisyGate()
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
                                  nn.BatchNorm1d(10))

    def forward(self, x):
        y = self.gate(self.stem(x))
        return self.head(torch.relu(self.body(y) + y))


def main() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_stats(Net()).eval()
    x = torch.randn(4, 3, 32, 32)
    compiled = tropfx.compile(model, passes=[tp.fuse_batchnorm()], example_inputs=(x,))
    print(compiled.report)
    print("\nmax |compiled - original| =", (compiled(x) - model(x)).abs().max().item())
    print("\n" + compiled.code.strip())


if __name__ == "__main__":
    main()
