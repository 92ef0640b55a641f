"""Train with tropfx: an ordinary PyTorch training loop in which one line compiles the model.

The compile line rewrites every ReLU into a max-plus layer and every max pool into a dilation
(``relu_to_maxplus``, ``maxpool_to_dilation``): exact at the start, so the network computes what
the plain one would, then trained like any parameters. Everything else is the usual loop: AdamW,
a one-cycle learning-rate schedule, bf16 autocast on the CPU, a checkpoint every epoch and
``--resume``. After training, a second compile prepares the model for deployment (BatchNorm
folded, 50 % of the conv / linear weights pruned, accuracy per stage in the report), which is
saved with ``tropfx.save`` (no pickle), reloaded with ``tropfx.load`` and summarized.

Usage::

    python examples/train_with_tropfx.py                  # MNIST, 3 epochs -> runs/train_with_tropfx
    python examples/train_with_tropfx.py --resume         # continue from OUT/checkpoint.pt
    python examples/train_with_tropfx.py --smoke          # seconds, on a slice of the data

The MNIST directory is ``--data``, else ``$TROPFX_MNIST_DIR``, else ``../shared/data/mnist`` next to
the repository. ``--smoke`` without MNIST falls back to scikit-learn's 8x8 digits upscaled to 28x28.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.data import ENV_VAR, load_mnist_splits, normalize_mnist
from tropfx.progress import progress

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


class Net(nn.Module):
    """Two conv blocks (conv, BN, ReLU, max pool) and a Linear-BN-ReLU-Linear head; 28x28 in."""

    def __init__(self, width: int = 16, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 5), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 4 * 4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --- data -------------------------------------------------------------------------------------

def load_data(data_dir: Path | None, smoke: bool) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: MNIST, or with ``smoke`` and no MNIST, sklearn's
    digits upscaled to 28x28."""
    try:
        x_train, y_train, x_test, y_test, source = load_mnist_splits(data_dir, fallback=smoke)
    except FileNotFoundError as exc:
        raise SystemExit(f"{exc}\n(--smoke runs on scikit-learn's digits instead)") from None
    print(source)
    return normalize_mnist(x_train), y_train, normalize_mnist(x_test), y_test


def default_data_dir() -> Path | None:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return SHARED_MNIST if SHARED_MNIST.is_dir() else None


# --- training ---------------------------------------------------------------------------------

def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(y), 1000):
            correct += int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
    model.train(was_training)
    return correct / len(y)


def save_checkpoint(path: Path, **state) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(args: argparse.Namespace, data: tuple[torch.Tensor, ...], out: Path) -> nn.Module:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)

    # The one tropfx line: ReLU -> max-plus, max pool -> dilation, then train as usual.
    model = tropfx.compile(Net(), passes=[tp.relu_to_maxplus(), tp.maxpool_to_dilation()],
                           example_inputs=(x_train[:64],))

    steps_per_epoch = max(1, len(y_train) // args.batch_size)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                    total_steps=args.epochs * steps_per_epoch)
    checkpoint, start_epoch = out / "checkpoint.pt", 0
    if args.resume:
        if not checkpoint.is_file():
            raise SystemExit(f"--resume: no checkpoint at {checkpoint}")
        state = torch.load(checkpoint, weights_only=True)  # tensors and numbers only: no pickle
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        print(f"resumed from {checkpoint} after epoch {start_epoch}")

    model.train()
    for epoch in range(start_epoch, args.epochs):
        start, total = time.perf_counter(), 0.0
        # Shuffling depends on the epoch only, so a resumed run sees the same batches.
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(
            args.seed * 1000 + epoch))
        batches = order[:steps_per_epoch * args.batch_size].split(args.batch_size)
        for idx in progress(batches, desc=f"epoch {epoch + 1}"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        acc = accuracy(model, x_test, y_test, args.bf16)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(batches):.4f}, test accuracy "
              f"{acc:.4f}, lr {scheduler.get_last_lr()[0]:.2e}, {time.perf_counter() - start:.1f} s",
              flush=True)
        save_checkpoint(checkpoint, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=torch.get_rng_state(),
                        epoch=epoch + 1)
    return model.eval()


def deploy(model: nn.Module, data: tuple[torch.Tensor, ...], args: argparse.Namespace,
           out: Path) -> None:
    """Fold BatchNorm, prune, save without pickle, reload and check, summarize."""
    _, _, x_test, y_test = data
    deployed = tropfx.compile(
        model, passes=[tp.fuse_batchnorm(),
                       tp.prune_l1(args.prune, scope="layer", include=["features.*", "head.*"])],
        example_inputs=(x_test[:64],),
        evaluate=lambda m: {"test acc": accuracy(m, x_test, y_test, bf16=False)},
    )
    print(deployed.report)
    path = out / "model.tropfx"
    tropfx.save(deployed, path)
    reloaded = tropfx.load(path)
    with torch.no_grad():
        same = torch.equal(reloaded(x_test[:256]), deployed(x_test[:256]))
    print(f"\nsaved to {path} ({path.stat().st_size / 1024:.0f} KiB); reloaded with tropfx.load: "
          f"{'identical outputs' if same else 'OUTPUTS DIFFER'}\n")
    print(tropfx.summary(reloaded, x_test[:1]))
    if not same:
        raise SystemExit("the reloaded model differs from the saved one")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"MNIST directory (default ${ENV_VAR}, else {SHARED_MNIST})")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint and model directory (default runs/train_with_tropfx; "
                             "a temp dir with --smoke)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--max-steps", type=int, default=None, help="at most this many steps per epoch")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="train in float32 instead of bf16 autocast")
    parser.add_argument("--prune", type=float, default=0.5,
                        help="share of conv / linear weights pruned for deployment (default 0.5)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 2 epochs of 4 steps of 32 images, 256 test images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args.data or default_data_dir(), args.smoke)
    if args.smoke:
        args.epochs, args.max_steps, args.batch_size = 2, 4, 32
        data = (data[0][:512], data[1][:512], data[2][:256], data[3][:256])
    out = args.out or (Path(tempfile.mkdtemp(prefix="train_with_tropfx_")) if args.smoke
                       else Path("runs/train_with_tropfx"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(data[1]):,} training / {len(data[3]):,} test images, {args.epochs} epochs, "
          f"bf16 autocast {'on' if args.bf16 else 'off'}, {torch.get_num_threads()} threads, "
          f"output in {out}", flush=True)
    model = train(args, data, out)
    deploy(model, data, args, out)
    return 0


if __name__ == "__main__":
    main()
