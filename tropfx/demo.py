"""The main job: train a small CNN on bundled data, compile it through tropfx's passes, report.

Data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network needed), split
80 / 20 with a fixed seed. The pipeline grows as passes land.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.errors import InputError

__all__ = ["LOSSY_STAGE", "DemoResult", "SmallCNN", "load_digits", "run_demo"]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-pool twice, then a Linear-BN-ReLU-Linear head: 8x8 gray in, 10 logits out."""

    def __init__(self, channels: int = 16, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 2 * 2, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``; images as float32 (N, 1, 8, 8) scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
          max_seconds: float | None = None) -> int:
    """Adam on mini-batches of 64 for ``epochs`` epochs; return the number of epochs run.

    The epoch count, not the clock, decides how long it trains, so the same seed gives the same
    model on every run. ``max_seconds`` only caps a very slow machine: training then stops after
    the epoch that crossed it (at least one epoch runs), and the caller sees fewer epochs."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    done = 0
    while done < epochs:
        for idx in torch.randperm(len(y), generator=gen).split(64):
            if len(idx) < 2:  # BatchNorm needs two samples per batch in training mode
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        done += 1
        if deadline is not None and time.perf_counter() > deadline:
            break
    model.eval()
    return done


@dataclass
class DemoResult:
    model: nn.Module
    compiled: nn.Module
    epochs: int  # epochs run: the requested number, fewer only when max_seconds cut training short
    accuracy: float
    requested_epochs: int = 0

    @property
    def capped(self) -> bool:
        """True when the time cap stopped training before the requested epochs."""
        return self.epochs < self.requested_epochs


LOSSY_STAGE = "prune_l1"  # the demo's one lossy stage: 50 % magnitude pruning, no fine-tuning


def run_demo(epochs: int = 30, seed: int = 0, max_seconds: float | None = 60.0) -> DemoResult:
    """Train :class:`SmallCNN` for ``epochs`` epochs (deterministic for a seed; ``max_seconds`` caps
    a slow machine); compile it through every pass, verifying each: the exact rewrites (BatchNorm
    folding, ReLU and max pooling to max-plus / dilation), then the lossy stage, 50 % magnitude
    pruning of the conv and linear weights with no fine-tuning, whose accuracy cost the report
    shows."""
    if epochs < 1:
        raise InputError(f"demo: epochs={epochs}; train for at least 1 epoch")
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
        torch.manual_seed(seed)
        model = SmallCNN()
    x_train, y_train, x_test, y_test = load_digits(seed)
    requested = epochs
    epochs = train(model, x_train, y_train, epochs, seed, max_seconds)
    compiled = tropfx.compile(
        model,
        passes=[
            tp.fuse_batchnorm(),
            tp.relu_to_maxplus(),
            tp.maxpool_to_dilation(),
            tp.prune_l1(0.5, scope="layer", include=["features.*", "head.*"]),
        ],
        example_inputs=(x_test[:64],),
        evaluate=lambda m: {"test acc": accuracy(m, x_test, y_test)},
    )
    return DemoResult(model, compiled, epochs, accuracy(model, x_test, y_test), requested)
