"""TropNNC against Torch-Pruning on a trained residual CNN (MNIST), data-free, at equal parameter counts.

Issue 19, item 5. A small residual CNN (written here) has a residual add across a stage, a 1x1
downsample, a depthwise-separable block and a concat. For each seed it is trained for a short fixed
budget, then compressed, with no calibration data, by

* ``tropfx.compile(model, [tp.tropnnc(ratio=r, method=m)])`` keeping ``r`` of the channels in every
  group (``m`` = ``"multi"`` and one other method, ``--other``);
* Torch-Pruning's ``MagnitudePruner`` with ``GroupMagnitudeImportance(p=1)``, its pruning ratio
  bisected so that its parameter count matches TropNNC-multi's as closely as possible (both counts
  are reported).

Test accuracy is measured without fine-tuning and after fine-tuning with the training budget
(one pass over the same training subset, Adam). Mean +- std over seeds, as a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/tropnnc_vs_torchpruning.py            # 5 seeds
    OMP_NUM_THREADS=1 python benchmarks/tropnnc_vs_torchpruning.py --quick    # 2 seeds, small subset

Needs the ``bench`` extra (``pip install -e .[bench]``) for ``torch-pruning``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.data import ENV_VAR, load_mnist_splits, normalize_mnist

try:
    import torch_pruning
except ImportError:  # a benchmark-only dependency
    torch_pruning = None


# the project's shared copy of MNIST, next to the repository (the issue's ``../shared/data/mnist``)
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class ResCNN(nn.Module):
    """stem -> residual stage (two blocks adding onto one stream) -> downsampling block with a
    1x1 projection -> depthwise-separable block -> two-branch concat -> pool -> Linear."""

    def __init__(self, c1: int = 16, c2: int = 32) -> None:
        super().__init__()
        self.stem = conv_bn(1, c1, 3, stride=2)                     # 28 -> 14
        self.b1a, self.b1b = conv_bn(c1, c1, 3), conv_bn(c1, c1, 3)  # stage 1, block 1
        self.b2a, self.b2b = conv_bn(c1, c1, 3), conv_bn(c1, c1, 3)  # stage 1, block 2 (same stream)
        self.d1, self.d2 = conv_bn(c1, c2, 3, stride=2), conv_bn(c2, c2, 3)  # 14 -> 7
        self.down = conv_bn(c1, c2, 1, stride=2)                     # 1x1 downsample
        self.dw, self.pw = conv_bn(c2, c2, 3, groups=c2), conv_bn(c2, c2, 1)  # depthwise-separable
        self.cat_a, self.cat_b = conv_bn(c2, c2 // 2, 1), conv_bn(c2, c2 // 2, 3)  # concat branches
        self.fc = nn.Linear(c2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.b1b(F.relu(self.b1a(x))))
        x = F.relu(x + self.b2b(F.relu(self.b2a(x))))
        x = F.relu(self.down(x) + self.d2(F.relu(self.d1(x))))
        x = F.relu(self.pw(F.relu(self.dw(x))))
        x = F.relu(torch.cat([self.cat_a(x), self.cat_b(x)], 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, lr: float = 1e-3) -> float:
    """One epoch of Adam over ``x`` in shuffled mini-batches of 128; the seconds it took."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    model.train()
    for idx in torch.randperm(len(y), generator=gen).split(128):
        if len(idx) < 2:  # BatchNorm needs two samples per batch
            continue
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    return time.perf_counter() - t0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(xb).argmax(1) == yb).sum())
                      for xb, yb in zip(x.split(1000), y.split(1000), strict=True))
    return correct / len(y)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tropnnc(model: nn.Module, example: torch.Tensor, ratio: float, method: str) -> nn.Module:
    cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio, method=method)], example_inputs=(example,))
    row = cm.report.rows[-1]
    if row.skipped:
        print(f"  tropnnc {method} r={ratio} skipped: {[(s.node, s.reason) for s in row.skipped]}")
    return cm


def torchpruning(model: nn.Module, example: torch.Tensor, pruning_ratio: float) -> nn.Module:
    """Torch-Pruning, data-free: L1 group magnitude, the same ratio in every group, the classifier's
    outputs kept."""
    pruned = copy.deepcopy(model)
    pruner = torch_pruning.pruner.MagnitudePruner(
        pruned, example, importance=torch_pruning.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=pruning_ratio, ignored_layers=[pruned.fc])
    pruner.step()
    return pruned


def torchpruning_matched(model: nn.Module, example: torch.Tensor, target: int, hint: float,
                         ) -> tuple[nn.Module, float]:
    """Torch-Pruning with the pruning ratio whose parameter count is nearest ``target``: ``hint``
    (the same channel fraction as TropNNC's) first, then bisection."""
    lo, hi, best = 0.0, 0.95, None
    for step in range(15):
        mid = hint if step == 0 else (lo + hi) / 2
        pruned = torchpruning(model, example, mid)
        n = n_params(pruned)
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (pruned, mid, n)
        if n > target:
            lo = mid
        else:
            hi = mid
    return best[0], best[1]


def fmt(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=30000,
                        help="training images (a fixed random subset of MNIST's 60k), default 30000")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--other", default="l1", help="the second TropNNC method (default l1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"MNIST directory (default ${ENV_VAR}, else {SHARED_MNIST} if present)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 10000 training images")
    args = parser.parse_args(argv)
    if torch_pruning is None:
        print("torch_pruning is not installed: pip install -e '.[bench]' (or pip install torch-pruning)",
              file=sys.stderr)
        return 1
    if args.quick:
        args.seeds, args.train_size = min(args.seeds, 2), 10000
    torch.set_num_threads(1)
    data_dir = args.data_dir or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else
                                 SHARED_MNIST if SHARED_MNIST.is_dir() else None)

    x_train, y_train, x_test, y_test, source = load_mnist_splits(data_dir)
    sub = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(1234))[:args.train_size]
    x_train, y_train = normalize_mnist(x_train[sub]), y_train[sub]
    x_test = normalize_mnist(x_test)
    example = x_test[:1]
    print(f"data: {source}; training subset {len(y_train)} images, test {len(y_test)}; "
          f"torch {torch.__version__}, torch-pruning {torch_pruning.__version__}")

    methods = ["tropnnc-multi", f"tropnnc-{args.other}", "torch-pruning"]
    acc0: dict = {}
    acc1: dict = {}
    params: dict = {}
    base = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = ResCNN()
        seconds = train(model, x_train, y_train, seed)
        base.append(accuracy(model, x_test, y_test))
        print(f"seed {seed}: trained in {seconds:.1f}s, {n_params(model)} params, acc {base[-1]:.4f}",
              flush=True)
        for r in args.ratios:
            compressed = {"tropnnc-multi": tropnnc(model, example, r, "multi"),
                          f"tropnnc-{args.other}": tropnnc(model, example, r, args.other)}
            target = n_params(compressed["tropnnc-multi"])
            compressed["torch-pruning"], tp_ratio = torchpruning_matched(model, example, target, 1 - r)
            for name in methods:
                m = compressed[name]
                a0 = accuracy(m, x_test, y_test)
                train(m, x_train, y_train, seed + 1000)  # fine-tune: the same budget as training
                a1 = accuracy(m, x_test, y_test)
                acc0.setdefault((r, name), []).append(a0)
                acc1.setdefault((r, name), []).append(a1)
                params.setdefault((r, name), set()).add(n_params(m))
                extra = f" (pruning_ratio {tp_ratio:.4f})" if name == "torch-pruning" else ""
                print(f"  r={r} {name}: {n_params(m)} params{extra}, acc {a0:.4f} -> fine-tuned {a1:.4f}",
                      flush=True)

    print(f"\nuncompressed: {n_params(ResCNN())} params, test accuracy {fmt(base)} % "
          f"({args.seeds} seeds)\n")
    print("| kept r | method | params | acc, no fine-tuning (%) | acc, 1 epoch fine-tuning (%) |")
    print("| --- | --- | --- | --- | --- |")
    for r in args.ratios:
        for name in methods:
            counts = "/".join(str(c) for c in sorted(params[(r, name)]))
            print(f"| {r} | {name} | {counts} | {fmt(acc0[(r, name)])} | {fmt(acc1[(r, name)])} |")
    print()
    for r in args.ratios:
        trop = max(statistics.fmean(acc0[(r, m)]) for m in methods[:2])
        ref = statistics.fmean(acc0[(r, "torch-pruning")])
        verdict = "met" if trop >= ref else "NOT met"
        print(f"goal r={r} (best TropNNC >= Torch-Pruning, no fine-tuning): {verdict} "
              f"({100 * trop:.2f} vs {100 * ref:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
