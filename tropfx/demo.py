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

__all__ = ["DemoResult", "SmallCNN", "load_digits", "run_demo"]


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


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float | None, seed: int,
          epochs: int | None = None) -> int:
    """Adam on mini-batches of 64 for ``epochs`` epochs, stopping early once ``seconds`` have
    passed (a time cap; ``None``: none); return the number of epochs run (at least one). With
    ``epochs`` and a cap the machine meets, the result depends only on ``seed``."""
    if epochs is None and seconds is None:
        raise ValueError("train: give epochs, seconds, or both")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    deadline = None if seconds is None else time.perf_counter() + seconds
    done = 0
    while done == 0 or ((epochs is None or done < epochs)
                        and (deadline is None or time.perf_counter() < deadline)):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            if len(idx) < 2:  # BatchNorm needs two samples per batch in training mode
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        done += 1
    model.eval()
    return done


@dataclass
class DemoResult:
    model: nn.Module
    compiled: nn.Module
    epochs: int
    accuracy: float
    capped: bool = False  # the time cap stopped training before ``epochs``


DEMO_EPOCHS = 15  # about 2 s on one core: 0.98 test accuracy on the digits


def run_demo(seconds: float | None = 60.0, seed: int = 0, epochs: int | None = DEMO_EPOCHS
             ) -> DemoResult:
    """Train :class:`SmallCNN` for ``epochs`` epochs (deterministic for a ``seed``), stopping early
    at the time cap ``seconds``; compile it through every pass, verifying each: the exact rewrites
    (BatchNorm folding, ReLU and max pooling to max-plus / dilation), then the lossy 50 %
    magnitude pruning of the conv and linear weights, whose accuracy cost the report shows."""
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
        torch.manual_seed(seed)
        model = SmallCNN()
    x_train, y_train, x_test, y_test = load_digits(seed)
    done = train(model, x_train, y_train, seconds, seed, epochs)
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
    return DemoResult(model, compiled, done, accuracy(model, x_test, y_test),
                      capped=epochs is not None and done < epochs)
