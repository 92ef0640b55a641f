"""Small modules the test files share (pytest puts tests/ on sys.path: ``from helpers import Fn``)."""

from torch import nn

BITWISE = {"rtol": 0.0, "atol": 0.0}  # assert_pass_preserves' tolerances for a bitwise rewrite


class Fn(nn.Module):
    """A module whose forward is ``fn``: a function spelling (F.relu6, torch.clamp, ...) as a model."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
