"""Sparse Hybrid Linear-Morphological Networks (Fotopoulos, Garoufis, Maragos 2025) on MNIST.

The paper replaces the ReLU between the two linear layers of a classification head with a
(sparse) max-plus layer and finds the hybrid head more prunable under L1 unstructured pruning
(CIFAR-10, r1 = 0.7, r2 = 0.95: ReLU 36.5 % vs Sparse-Morph 67.4 % test accuracy). This script
repeats that protocol on MNIST (CIFAR-10 is not available here):

* trunk: Conv(1,16,5)-BN-ReLU-MaxPool2, Conv(16,32,5)-BN-ReLU-MaxPool2, flatten: 512 features;
* head ``fc1 -> BN -> <layer> -> BN -> fc2`` with <layer> one of ``relu`` (ReLU), ``maxout``
  (fc1 twice as wide, Maxout(pool=2)), ``dense-morph`` (MaxPlus(512, 512)) and ``sparse-morph``
  (SparseMaxPlus(512, 512, k=2));
* every head x seed is trained from scratch with Adam (lr 1e-3, batch 128) for ``--epochs`` epochs
  on the 60k training images and evaluated on the full 10k test set;
* then pruned with ``tropfx.compile(model, passes=[tp.prune_l1(r1, include=["head.fc1"]),
  tp.prune_l1(r2, include=["head.fc2"])])``: **r1 is the pruning ratio of head.fc1 and r2 that of
  head.fc2** (the paper's claim is that the morphological layer makes the *linear* layers
  prunable; the trunk and the morphological layer are not pruned), each layer on its own
  (``scope="layer"``), with **no fine-tuning after pruning**. Accuracy and parameter counts are
  read from the compile report.

Usage::

    python examples/sparse_hybrid_mnist.py                     # the experiment -> examples/results/
    python examples/sparse_hybrid_mnist.py --smoke             # seconds; writes into a temp dir
    python examples/sparse_hybrid_mnist.py --seeds 5 --epochs 1 --data DIR --out DIR

The MNIST directory is ``--data``, else ``$TROPFX_MNIST_DIR``, else ``../shared/data/mnist`` next
to the repository. ``--smoke`` without MNIST falls back to scikit-learn's bundled 8x8 digits
upscaled to 28x28, so that the example runs anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.data import ENV_VAR, load_mnist_splits, normalize_mnist
from tropfx.measure import count_active_params
from tropfx.nn import Maxout, MaxPlus, SparseMaxPlus

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
SETTINGS = [(0.7, 0.7), (0.7, 0.95), (0.9, 0.9), (0.95, 0.95)]  # (r1 of head.fc1, r2 of head.fc2)
PAPER_SETTING = (0.7, 0.95)
PAPER_CIFAR10 = {"relu": 36.5, "sparse-morph": 67.4}  # test accuracy in % at PAPER_SETTING
FEATURES, HIDDEN, CLASSES = 512, 512, 10

# The layer between the head's two BatchNorms, and how many times wider fc1 must be to feed it.
HEADS = {
    "relu": (1, lambda: nn.ReLU()),
    "maxout": (2, lambda: Maxout(pool=2)),
    "dense-morph": (1, lambda: MaxPlus(HIDDEN, HIDDEN)),
    "sparse-morph": (1, lambda: SparseMaxPlus(HIDDEN, HIDDEN, k=2)),
}


class Net(nn.Module):
    """The conv trunk (512 features) and a head ``fc1 -> BN -> <layer> -> BN -> fc2``."""

    def __init__(self, head: str):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 12 x 12
            nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 4 x 4
            nn.Flatten(),
        )
        widen, layer = HEADS[head]
        self.head = nn.Sequential(OrderedDict(
            fc1=nn.Linear(FEATURES, HIDDEN * widen, bias=False),
            bn1=nn.BatchNorm1d(HIDDEN * widen),
            act=layer(),
            bn2=nn.BatchNorm1d(HIDDEN),
            fc2=nn.Linear(HIDDEN, CLASSES),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str


def default_data_dir() -> Path | None:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return SHARED_MNIST if SHARED_MNIST.is_dir() else None


def load_data(data_dir: Path | None, smoke: bool) -> Data:
    """MNIST from ``data_dir``; with ``smoke`` and no MNIST, sklearn's digits upscaled to 28x28."""
    x_train, y_train, x_test, y_test, source = load_mnist_splits(data_dir, fallback=smoke)
    return Data(normalize_mnist(x_train), y_train, normalize_mnist(x_test), y_test, source)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
          max_steps: int | None = None) -> None:
    """Adam (lr 1e-3) on shuffled mini-batches of 128 for ``epochs`` epochs (or ``max_steps``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    steps = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(128):
            if len(idx) < 2 or steps == max_steps:  # BatchNorm needs two samples per batch
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        batches = zip(x.split(2000), y.split(2000), strict=True)
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return correct / len(y)


def fingerprint(module: nn.Module) -> str:
    """A digest of every parameter and buffer value of ``module``."""
    digest = hashlib.blake2b(digest_size=16)
    for t in itertools.chain(module.parameters(), module.buffers()):
        digest.update(t.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Run:
    """One trained model and its pruning sweep; accuracies in [0, 1]."""

    head: str
    seed: int
    train_seconds: float
    acc: float  # unpruned, from the report's "traced" row
    head_params: int  # every parameter entry of the head (BatchNorm included)
    head_active_unpruned: int = 0  # from the report's "traced" row
    pruned_acc: dict[str, float] = field(default_factory=dict)  # "r1,r2" -> accuracy
    head_active: dict[str, int] = field(default_factory=dict)  # "r1,r2" -> active head entries
    fc_active: dict[str, list[int]] = field(default_factory=dict)  # "r1,r2" -> [fc1, fc2] weights


def setting_key(setting: tuple[float, float]) -> str:
    return f"{setting[0]},{setting[1]}"


def prune_sweep(model: Net, run: Run, data: Data, settings: list[tuple[float, float]],
                show: tuple[float, float] | None) -> None:
    """Compile ``model`` once per (r1, r2) with two prune_l1 passes; read the report into ``run``."""
    trunk_active = count_active_params(model.trunk)  # never pruned: the report's count minus this
    # compile evaluates every stage; a stage whose weights equal an earlier one (the traced model
    # in every compile, fc1 pruned at an r1 seen before) has the same accuracy: evaluate it once.
    seen: dict[str, float] = {}

    def test_accuracy(m: nn.Module) -> dict[str, float]:
        digest = fingerprint(m)
        if digest not in seen:
            seen[digest] = accuracy(m, data.x_test, data.y_test)
        return {"acc": seen[digest]}

    for r1, r2 in settings:
        cm = tropfx.compile(
            model,
            passes=[tp.prune_l1(r1, scope="layer", include=["head.fc1"]),
                    tp.prune_l1(r2, scope="layer", include=["head.fc2"])],
            example_inputs=(data.x_test[:128],),
            evaluate=test_accuracy,
        )
        report = cm.report
        assert [r.stage for r in report.rows] == ["traced", "prune_l1", "prune_l1"], report
        run.acc = report[0].metrics["acc"]
        run.head_active_unpruned = report[0].active_params - trunk_active
        run.pruned_acc[setting_key((r1, r2))] = report[-1].metrics["acc"]
        run.head_active[setting_key((r1, r2))] = report[-1].active_params - trunk_active
        run.fc_active[setting_key((r1, r2))] = [
            int((cm.get_submodule(f"head.{fc}").weight != 0).sum()) for fc in ("fc1", "fc2")]
        if (r1, r2) == show:
            print(f"\n{run.head} head, seed {run.seed}, r1={r1} (head.fc1), r2={r2} (head.fc2):")
            print(report)
            print()


def run_experiment(heads: list[str], seeds: int, epochs: int, data: Data,
                   settings: list[tuple[float, float]], max_steps: int | None = None) -> list[Run]:
    runs = []
    show = PAPER_SETTING if PAPER_SETTING in settings else settings[0]
    show_head = "sparse-morph" if "sparse-morph" in heads else heads[-1]
    for seed in range(seeds):
        for head in heads:
            torch.manual_seed(seed)  # the same trunk initialization for every head of a seed
            model = Net(head)
            t0 = time.perf_counter()
            train(model, data.x_train, data.y_train, epochs, seed, max_steps)
            seconds = time.perf_counter() - t0
            run = Run(head, seed, seconds, acc=float("nan"),
                      head_params=sum(p.numel() for p in model.head.parameters()))
            prune_sweep(model, run, data, settings,
                        show if (head, seed) == (show_head, 0) else None)
            runs.append(run)
            pruned = "  ".join(f"({k}) {100 * a:.2f}" for k, a in run.pruned_acc.items())
            print(f"{head:>12} seed {seed}: trained {seconds:5.1f} s, test acc {100 * run.acc:.2f} %;"
                  f" pruned (r1,r2): {pruned}", flush=True)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std([scale * v for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def results_markdown(runs: list[Run], config: dict, settings: list[tuple[float, float]]) -> str:
    heads = list(dict.fromkeys(r.head for r in runs))
    by_head = {h: [r for r in runs if r.head == h] for h in heads}
    cols = ["unpruned", *(f"r1={r1}, r2={r2}" for r1, r2 in settings)]
    lines = [
        "# Sparse hybrid linear-morphological heads on MNIST: prunability",
        "",
        f"Generated by `{config['command']}` ({config['date']}).",
        "",
        "Protocol (Fotopoulos, Garoufis & Maragos 2025, on MNIST instead of CIFAR-10): conv trunk "
        "Conv(1,16,5)-BN-ReLU-MaxPool2, Conv(16,32,5)-BN-ReLU-MaxPool2 -> 512 features; head "
        "`fc1 -> BN -> <layer> -> BN -> fc2` (512 hidden, 10 classes). "
        f"{config['seeds']} seeds x {len(heads)} heads, each trained from scratch with Adam "
        f"(lr 1e-3, batch 128) for {config['epochs']} epoch(s) on {config['train_images']:,} "
        f"training images; accuracy on the full {config['test_images']:,}-image test set. "
        f"Data: {config['data']}.",
        "",
        "Pruning: `tropfx.compile(model, passes=[tp.prune_l1(r1, scope=\"layer\", "
        "include=[\"head.fc1\"]), tp.prune_l1(r2, scope=\"layer\", include=[\"head.fc2\"])])`: "
        "**r1 is the L1 unstructured pruning ratio of `head.fc1`, r2 that of `head.fc2`** (the "
        "fraction of each layer's weights with the smallest |w| set to 0). The trunk and the "
        "morphological layer are not pruned. **No fine-tuning after pruning.** Accuracies and "
        "parameter counts are read from the compile report (`traced` row = unpruned, last "
        "`prune_l1` row = pruned).",
        "",
        f"## Test accuracy (%), mean ± std over {config['seeds']} seeds",
        "",
        "| head | " + " | ".join(cols) + " |",
        "| --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    for h in heads:
        cells = [pm([r.acc for r in by_head[h]])]
        cells += [pm([r.pruned_acc[setting_key(s)] for r in by_head[h]]) for s in settings]
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Head parameters: all entries, and active entries after pruning",
        "",
        "Active = the report's `active_params` (non-zero entries; finite for max-plus weights) "
        "minus the trunk's, which is never pruned: the head's weights, biases and BatchNorm "
        "affine parameters. `fc1 / fc2` = the non-zero weights left in the two linear layers. "
        "The counts do not depend on the seed except through exact zeros.",
        "",
        "| head | all | active, unpruned | " + " | ".join(cols[1:]) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in cols[1:]) + " |",
    ]
    for h in heads:
        first = by_head[h][0]
        cells = []
        for s in settings:
            active = round(statistics.fmean(r.head_active[setting_key(s)] for r in by_head[h]))
            fc1, fc2 = first.fc_active[setting_key(s)]
            cells.append(f"{active:,} (fc1 {fc1:,} / fc2 {fc2:,})")
        unpruned = round(statistics.fmean(r.head_active_unpruned for r in by_head[h]))
        lines.append(f"| {h} | {first.head_params:,} | {unpruned:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Runtime",
        "",
        f"Machine: {config['machine']}, torch {config['torch']} with {config['threads']} threads "
        "(CPU shared with other jobs, so times are indicative).",
        "",
        "| head | training time per model (s), mean ± std |",
        "| --- | --- |",
    ]
    for h in heads:
        lines.append(f"| {h} | {pm([r.train_seconds for r in by_head[h]], scale=1.0, digits=1)} |")
    lines += ["", f"Total runtime (data loading, {len(runs)} trainings, "
              f"{len(runs) * len(settings)} compiles, each evaluating its 3 stages on the test "
              f"set): {config['total_seconds'] / 60:.1f} min.", ""]
    lines += comparison(by_head, config, settings)
    return "\n".join(lines)


def comparison(by_head: dict[str, list[Run]], config: dict,
               settings: list[tuple[float, float]]) -> list[str]:
    """What these numbers say next to the paper's CIFAR-10 figures at (r1, r2) = (0.7, 0.95)."""
    if not {"relu", "sparse-morph"} <= by_head.keys() or PAPER_SETTING not in settings:
        return []
    (relu, relu_sd), (sparse, sparse_sd) = (
        mean_std([100 * r.pruned_acc[setting_key(PAPER_SETTING)] for r in by_head[h]])
        for h in ("relu", "sparse-morph"))
    gap, paper_gap = sparse - relu, PAPER_CIFAR10["sparse-morph"] - PAPER_CIFAR10["relu"]
    spread = max(relu_sd, sparse_sd)
    if abs(gap) <= max(2 * spread, 0.5):
        verdict = (f"there is **no clear gap**: {gap:+.2f} points, within the seed-to-seed "
                   f"spread (std up to {spread:.2f})")
    elif gap > 0:
        verdict = (f"the sparse-morph head **is more prunable**, as in the paper, by {gap:.2f} "
                   f"points (std up to {spread:.2f}), against {paper_gap:.1f} points there")
    else:
        verdict = (f"the ReLU head is **more prunable here**, the opposite of the paper, by "
                   f"{-gap:.2f} points (std up to {spread:.2f})")
    unpruned = {h: statistics.fmean(100 * r.acc for r in runs) for h, runs in by_head.items()}
    gaps = "; ".join(f"({r1}, {r2}): {difference(by_head, 'sparse-morph', 'relu', (r1, r2))}"
                     for r1, r2 in settings)
    notes = []
    slowest = min(unpruned, key=unpruned.get)
    if max(unpruned.values()) - unpruned[slowest] > 1:
        notes.append(f"The {slowest} head is undertrained ({unpruned[slowest]:.1f} % unpruned, "
                     f"against {max(unpruned.values()):.1f} % for the best head), which confounds "
                     "its pruning numbers; the paper, too, finds the dense morphological layer "
                     "slow to train.")
    spread = max(mean_std([100 * r.pruned_acc[setting_key(s)] for r in runs])[1]
                 for runs in by_head.values() for s in settings)
    if spread > 5:
        notes.append(f"At the high ratios accuracy without fine-tuning varies a lot from seed to "
                     f"seed (std up to {spread:.1f} points): {len(next(iter(by_head.values())))} "
                     "seeds separate only large differences.")
    return [
        "## Compared with the paper",
        "",
        f"At the paper's setting r1 = 0.7, r2 = 0.95 the pruned MNIST accuracies are ReLU "
        f"{relu:.2f} ± {relu_sd:.2f} % and sparse-morph {sparse:.2f} ± {sparse_sd:.2f} %; the "
        f"paper reports {PAPER_CIFAR10['relu']} % and {PAPER_CIFAR10['sparse-morph']} % on "
        f"CIFAR-10. On MNIST {verdict}.",
        "",
        "Sparse-morph minus ReLU, pruned accuracy, mean difference in points (± its standard "
        f"error over seeds) per (r1, r2): {gaps}. {' '.join(notes)}",
        "",
        "Caveats. MNIST is far easier than CIFAR-10 (unpruned, the heads reach "
        f"{min(unpruned.values()):.1f}-{max(unpruned.values()):.1f} % here after "
        f"{config['epochs']} epoch(s)); the models are small and trained briefly on a CPU budget, "
        "not on the paper's schedule; there is no fine-tuning after pruning; and reading r1 / r2 "
        "as the ratios of fc1 / fc2, each pruned on its own, is our interpretation of the "
        "paper's protocol. A gap or its absence on MNIST therefore neither confirms nor refutes "
        "the CIFAR-10 figures: it shows what this protocol gives on an easier task at this "
        "training budget.",
        "",
    ]


def difference(by_head: dict[str, list[Run]], a: str, b: str,
               setting: tuple[float, float]) -> str:
    """Mean pruned accuracy of head ``a`` minus head ``b`` in points, ± the (Welch) standard error."""
    (ma, sa), (mb, sb) = (mean_std([100 * r.pruned_acc[setting_key(setting)] for r in by_head[h]])
                          for h in (a, b))
    se = (sa ** 2 / len(by_head[a]) + sb ** 2 / len(by_head[b])) ** 0.5
    return f"{ma - mb:+.1f} ± {se:.1f}"


def write_plot(runs: list[Run], settings: list[tuple[float, float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install tropfx[plot]): skipping the plot")
        return False
    labels = ["unpruned", *(f"r1={r1}\nr2={r2}" for r1, r2 in settings)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for h in dict.fromkeys(r.head for r in runs):
        mine = [r for r in runs if r.head == h]
        stats = [mean_std([100 * r.acc for r in mine])]
        stats += [mean_std([100 * r.pruned_acc[setting_key(s)] for r in mine]) for s in settings]
        ax.errorbar(range(len(labels)), [m for m, _ in stats], yerr=[s for _, s in stats],
                    marker="o", capsize=3, label=h)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("L1 pruning ratio of head.fc1 (r1) and head.fc2 (r2), no fine-tuning")
    ax.set_ylabel("MNIST test accuracy (%)")
    seeds = len({r.seed for r in runs})
    ax.set_title(f"Prunability of the classification head ({seeds} seed{'s' * (seeds > 1)}, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per head (default 5)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--data", type=Path, default=None,
                        help=f"MNIST directory (default ${ENV_VAR}, else {SHARED_MNIST})")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default examples/results; a temp dir with --smoke)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N training images only (default: all 60,000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    parser.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                        help="re-render the table and plot from a results JSON, without training")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 1 seed, 10 steps on 512 images, 500 test images, one setting")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return render_json(args.from_json, args.out or args.from_json.parent)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args.data or default_data_dir(), args.smoke)
    if args.train_size:
        data.x_train, data.y_train = data.x_train[:args.train_size], data.y_train[:args.train_size]
    settings, max_steps = SETTINGS, None
    if args.smoke:
        args.seeds, args.epochs, settings, max_steps = 1, 1, [PAPER_SETTING], 10
        data.x_train, data.y_train = data.x_train[:512], data.y_train[:512]
        data.x_test, data.y_test = data.x_test[:500], data.y_test[:500]
    out = args.out or (Path(tempfile.mkdtemp(prefix="sparse_hybrid_mnist_")) if args.smoke
                       else REPO / "examples" / "results")
    out.mkdir(parents=True, exist_ok=True)
    print(f"{data.source}: {len(data.y_train):,} training / {len(data.y_test):,} test images; "
          f"heads {args.heads}, {args.seeds} seed(s), {args.epochs} epoch(s), "
          f"torch {torch.__version__} on {torch.get_num_threads()} threads", flush=True)

    runs = run_experiment(args.heads, args.seeds, args.epochs, data, settings, max_steps)

    config = {
        "command": "python examples/sparse_hybrid_mnist.py " + " ".join(sys.argv[1:] if argv is None
                                                                        else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seeds": args.seeds, "epochs": args.epochs, "heads": args.heads, "smoke": args.smoke,
        "settings": [list(s) for s in settings], "settings_meaning": "[r1 of head.fc1, r2 of head.fc2]",
        "data": data.source, "train_images": len(data.y_train), "test_images": len(data.y_test),
        "optimizer": "Adam lr 1e-3, batch 128, no fine-tuning after pruning",
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPU cores",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "paper_cifar10_at_0.7_0.95": PAPER_CIFAR10,
    }
    config["total_seconds"] = time.perf_counter() - start
    (out / "sparse_hybrid_mnist.json").write_text(json.dumps(
        {"config": config, "runs": [asdict(r) for r in runs]}, indent=1))
    print(f"wrote {out / 'sparse_hybrid_mnist.json'} (raw numbers per seed)")
    return write_results(runs, config, out)


def write_results(runs: list[Run], config: dict, out: Path) -> int:
    settings = [tuple(s) for s in config["settings"]]
    text = results_markdown(runs, config, settings)
    print("\n" + text)
    (out / "sparse_hybrid_mnist.md").write_text(text)
    plotted = write_plot(runs, settings, out / "sparse_hybrid_mnist.png")
    print(f"wrote {out / 'sparse_hybrid_mnist.md'}{' and .png' if plotted else ''}")
    return 0


def render_json(path: Path, out: Path) -> int:
    raw = json.loads(path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    return write_results([Run(**r) for r in raw["runs"]], raw["config"], out)


if __name__ == "__main__":
    main()
