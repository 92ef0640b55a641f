"""TropNNC against Torch-Pruning on a trained residual CNN (MNIST), data-free, at equal parameter counts.

Issue 19, item 5. A small residual CNN (written here) has a residual add across a stage, a 1x1
downsample, a depthwise-separable block and a concat. Each seed is trained on MNIST's 60,000
training images (``--epochs``, Adam with a one-cycle learning rate; cached under
``benchmarks/.cache/``, so re-runs skip it), then compressed, with no calibration data, by

* ``tropfx.compile(model, [tp.tropnnc(ratio=r, method=m)])`` keeping ``r`` of the channels in every
  group, for ``m = "multi"`` and every method of ``--others`` (``nonuniform-v1`` / ``-v2``: a
  ``threshold`` bisected to TropNNC-multi's parameter count; ``multi-keep``: ``batchnorm="keep"``,
  every BatchNorm kept and merged per cluster instead of folded);
* Torch-Pruning's ``MagnitudePruner`` with ``GroupMagnitudeImportance(p=1)``, on the model as
  trained (``torch-pruning``: BatchNorm kept) and on a copy with every BatchNorm folded into its
  conv (``torch-pruning-folded``: the model TropNNC sees, since TropNNC folds BatchNorm, TropNNC
  §6). Its pruning ratio is bisected so that its parameter count is nearest TropNNC-multi's.

Test accuracy is measured without fine-tuning, and after one epoch of fine-tuning (Adam, cosine
learning rate from ``--finetune-lr`` to 0) for the methods of ``--finetune`` (``best``: the other
TropNNC method with the best mean accuracy without fine-tuning at that ratio). Mean +- std over
seeds as markdown tables; the raw numbers go to ``--json`` and, when matplotlib imports, a plot of
accuracy against parameter count to ``--plot``.

    OMP_NUM_THREADS=1 python benchmarks/tropnnc_vs_torchpruning.py              # 5 seeds, r = 0.9 .. 0.25
    OMP_NUM_THREADS=1 python benchmarks/tropnnc_vs_torchpruning.py --smoke      # seconds: 1 seed, tiny
    python benchmarks/tropnnc_vs_torchpruning.py --plot-only                   # redraw from --json

Needs the ``bench`` extra (``pip install -e .[bench]``) for ``torch-pruning``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import tropfx
from tropfx import passes as tp
from tropfx.data import ENV_VAR, load_mnist_splits, normalize_mnist

try:
    import torch_pruning
except ImportError:  # a benchmark-only dependency
    torch_pruning = None

HERE = Path(__file__).resolve().parent
# the project's shared copy of MNIST, next to the repository (the issue's ``../shared/data/mnist``)
SHARED_MNIST = HERE.parents[1] / "shared" / "data" / "mnist"
CACHE = HERE / ".cache" / "tropnnc_vs_torchpruning"  # trained weights (gitignored)
FIGURES = HERE / "figures"
ARCH = "rescnn-v1"  # part of the cache key: bump it when ResCNN changes

NONUNIFORM = {"nonuniform-v1": "v1", "nonuniform-v2": "v2"}
# "multi-keep": Alg. 2 with batchnorm="keep" (BatchNorm kept, merged per cluster; not folded)
TROP_OTHERS = ["iterative", "neural_path_kmeans", "zonotope_kmeans", "l1", *NONUNIFORM, "multi-keep"]
TP_METHODS = ["torch-pruning", "torch-pruning-folded"]
MATCH = 0.05  # a method's parameter count counts as matched within 5 % of TropNNC-multi's
CHANCE = 0.2  # mean accuracies both below this are "near chance" (10 classes)


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


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, lr: float,
          schedule: str = "onecycle", batch: int = 128) -> float:
    """``epochs`` passes of Adam over ``x`` in shuffled mini-batches; the learning rate follows a
    one-cycle schedule peaking at ``lr`` (training) or a cosine from ``lr`` to 0 (fine-tuning).
    The seconds it took."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(y) / batch)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
             if schedule == "onecycle" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            if len(idx) >= 2:  # BatchNorm needs two samples per batch
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            sched.step()
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


def trained(seed: int, data: dict, args: argparse.Namespace) -> tuple[ResCNN, dict]:
    """The model of ``seed``, from the cache when it was trained with the same settings."""
    wide = f"_w{args.width}" if args.width != 1 else ""
    key = f"{ARCH}{wide}_seed{seed}_n{len(data['y_train'])}_e{args.epochs}_lr{args.lr:g}.pt"
    path = CACHE / key
    torch.manual_seed(seed)
    model = ResCNN(16 * args.width, 32 * args.width)
    if path.is_file() and not args.retrain:
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        model.eval()
        return model, {"seconds": saved["seconds"], "cached": True}
    seconds = train(model, data["x_train"], data["y_train"], seed, args.epochs, args.lr)
    if not args.smoke:
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "seconds": seconds}, path)
    return model, {"seconds": seconds, "cached": False}


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every ``conv_bn``'s BatchNorm folded into its conv (the conv gains a bias)."""
    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if isinstance(block, nn.Sequential) and len(block) == 2 and \
                isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            del block[1]
    return folded


def tropnnc(model: nn.Module, example: torch.Tensor, **kw) -> tuple[nn.Module, list]:
    """The compressed model and the groups the pass skipped (with the reasons)."""
    cm = tropfx.compile(model, [tp.tropnnc(**kw)], example_inputs=(example,))
    return cm, [(s.node, s.reason) for s in cm.report.rows[-1].skipped]


def tropnnc_matched(model: nn.Module, example: torch.Tensor, target: int, nonuniform: str,
                    steps: int) -> tuple[nn.Module, float, list]:
    """Non-uniform TropNNC (``method="multi"``, TropNNC §6) with the threshold whose parameter
    count is nearest ``target`` (bisection on log threshold; more threshold, fewer channels)."""
    lo, hi, best = math.log(1e-3), math.log(1e3), None
    for _ in range(steps):
        mid = (lo + hi) / 2
        m, skipped = tropnnc(model, example, threshold=math.exp(mid), nonuniform=nonuniform)
        n = n_params(m)
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, m, math.exp(mid), skipped)
        if n == target:
            break
        lo, hi = (mid, hi) if n > target else (lo, mid)
    return best[1], best[2], best[3]


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
                         steps: int) -> tuple[nn.Module, float]:
    """Torch-Pruning with the pruning ratio whose parameter count is nearest ``target``: ``hint``
    (the same channel fraction as TropNNC's) first, then bisection."""
    lo, hi, best = 0.0, 0.95, None
    for step in range(steps):
        mid = hint if step == 0 else (lo + hi) / 2
        pruned = torchpruning(model, example, mid)
        n = n_params(pruned)
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (pruned, mid, n)
        lo, hi = (mid, hi) if n > target else (lo, mid)
    return best[0], best[1]


def compress_all(model: nn.Module, example: torch.Tensor, r: float, args: argparse.Namespace,
                 ) -> dict[str, tuple[nn.Module, dict]]:
    """``{method: (compressed model, facts)}`` at kept ratio ``r``."""
    out = {}
    t0 = time.perf_counter()
    multi, skipped = tropnnc(model, example, ratio=r, method="multi")
    out["tropnnc-multi"] = (multi, {"skipped": skipped, "seconds": time.perf_counter() - t0})
    target = n_params(multi)
    for name in args.others:
        t0 = time.perf_counter()
        if name in NONUNIFORM:
            m, thr, skipped = tropnnc_matched(model, example, target, NONUNIFORM[name], args.steps)
            facts = {"threshold": thr}
        else:
            keep = name == "multi-keep"
            m, skipped = tropnnc(model, example, ratio=r, method="multi" if keep else name,
                                 batchnorm="keep" if keep else "prefusion")
            facts = {}
        out[f"tropnnc-{name}"] = (m, {**facts, "skipped": skipped,
                                      "seconds": time.perf_counter() - t0})
    if torch_pruning is None:
        return out
    for name, base in (("torch-pruning", model), ("torch-pruning-folded", fold_batchnorm(model))):
        t0 = time.perf_counter()
        m, ratio = torchpruning_matched(base, example, target, 1 - r, args.steps)
        out[name] = (m, {"pruning_ratio": ratio, "seconds": time.perf_counter() - t0})
    return out


def matched(n: int, target: int) -> bool:
    """Whether a parameter count ``n`` is within ``MATCH`` of ``target``."""
    return abs(n - target) <= MATCH * target


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def mean_std(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def tables(raw: dict) -> str:
    """The markdown tables and the goal's verdict per ratio, from the raw results."""
    runs, ratios = raw["runs"], raw["config"]["ratios"]
    methods = list(dict.fromkeys(m for run in runs for r in run["ratios"].values() for m in r))
    base = [run["acc"] for run in runs]
    lines = [f"uncompressed: {raw['params']} params, test accuracy {fmt(base)} % "
             f"({len(runs)} seeds: {', '.join(f'{100 * a:.2f}' for a in base)})", "",
             "| kept r | method | params | acc, no fine-tuning (%) | acc, 1 epoch fine-tuning (%) |",
             "| --- | --- | --- | --- | --- |"]
    for r in ratios:
        for name in methods:
            rows = [run["ratios"][str(r)][name] for run in runs if name in run["ratios"][str(r)]]
            if not rows:
                continue
            counts = sorted({row["params"] for row in rows})
            shown = "/".join(str(c) for c in counts) if len(counts) <= 3 else \
                f"{counts[0]}–{counts[-1]}"
            if all(row["params"] == raw["params"] for row in rows):
                shown += " (nothing compressed)"
            elif not all(matched(row["params"], run["ratios"][str(r)]["tropnnc-multi"]["params"])
                         for row, run in zip(rows, runs, strict=True)):
                shown += " (not matched)"
            tuned = [row["acc_ft"] for row in rows if row.get("acc_ft") is not None]
            few = f" ({len(tuned)} seeds)" if 0 < len(tuned) < len(rows) else ""
            lines.append(f"| {r} | {name} | {shown} | {fmt([row['acc'] for row in rows])} | "
                         f"{fmt(tuned)}{few} |")
    lines.append("")
    for r in ratios:
        at = [run["ratios"][str(r)] for run in runs]
        per = {name: [row[name]["acc"] for row in at] for name in methods
               if all(name in row and matched(row[name]["params"], row["tropnnc-multi"]["params"])
                      for row in at)}
        best = max((k for k in per if k.startswith("tropnnc")), key=lambda k: statistics.fmean(per[k]))
        for trop in dict.fromkeys(["tropnnc-multi", best]):
            for ref in (m for m in TP_METHODS if m in per):
                a, b = statistics.fmean(per[trop]), statistics.fmean(per[ref])
                wins = sum(x >= y for x, y in zip(per[trop], per[ref], strict=True))
                chance = " -- both near chance (10 %): not a meaningful difference" \
                    if max(a, b) < CHANCE else ""
                lines.append(f"goal r={r}, no fine-tuning, {trop} >= {ref}: "
                             f"{'met' if a >= b else 'NOT met'} ({100 * a:.2f} vs {100 * b:.2f} %; "
                             f"per seed {wins} of {len(per[ref])}){chance}")
    return "\n".join(lines)


def plot(raw: dict, path: Path) -> str:
    """Accuracy against parameter count, mean +- std over seeds, without and with fine-tuning."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install -e '.[plot]')"
    runs, ratios = raw["runs"], raw["config"]["ratios"]
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    styles = {"tropnnc-multi": ("tab:blue", "o"), "tropnnc-multi-keep": ("tab:purple", "v"),
              "torch-pruning": ("tab:red", "s"), "torch-pruning-folded": ("tab:orange", "^")}
    best = raw.get("best", {})
    for ax, key, title in ((axes[0], "acc", "no fine-tuning"),
                           (axes[1], "acc_ft", "after 1 epoch of fine-tuning")):
        series = dict.fromkeys([*styles, "tropnnc-best-other"])
        for name in series:
            pts = []
            for r in ratios:
                method = best.get(str(r)) if name == "tropnnc-best-other" else name
                rows = [run["ratios"][str(r)].get(method) for run in runs]
                rows = [row for row in rows if row and row.get(key) is not None]
                if rows:
                    pts.append((statistics.fmean(row["params"] for row in rows),
                                *mean_std([100 * row[key] for row in rows])))
                    if name == "tropnnc-best-other":  # which method it is at this ratio
                        ax.annotate(method.removeprefix("tropnnc-"), pts[-1][:2], fontsize=7,
                                    xytext=(-4, 6), textcoords="offset points", ha="right",
                                    color="tab:green")
            if pts:
                color, marker = styles.get(name, ("tab:green", "D"))
                x, y, e = zip(*sorted(pts), strict=True)
                label = "tropnnc, best other method" if name == "tropnnc-best-other" else name
                ax.errorbar(x, y, yerr=e, color=color, marker=marker, capsize=3, label=label)
        base = mean_std([100 * run["acc"] for run in runs])
        ax.axhline(base[0], color="gray", ls="--", lw=1, label="uncompressed")
        if key == "acc":  # fine-tuned accuracies are far from chance: let that axis zoom in
            ax.axhline(10, color="gray", ls=":", lw=1, label="chance")
            ax.set_ylim(0, 100)
        ax.set_xscale("log")
        thousands = FuncFormatter(lambda v, _: f"{v / 1000:g}k")
        ax.xaxis.set_major_formatter(thousands)
        ax.xaxis.set_minor_formatter(thousands)
        ax.set_xlabel("parameters")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MNIST test accuracy (%)")
    axes[0].legend(fontsize=8, loc="upper left")
    width = raw["config"].get("width", 1)
    fig.suptitle(f"ResCNN{f' x{width} wide' if width != 1 else ''} on MNIST "
                 f"({raw['params']} params), data-free compression, mean ± std over {len(runs)} seeds",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return f"plot: {path} ({path.stat().st_size // 1024} kB)"


def load_data(args: argparse.Namespace) -> dict:
    data_dir = args.data_dir or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else
                                 SHARED_MNIST if SHARED_MNIST.is_dir() else None)
    x_train, y_train, x_test, y_test, source = load_mnist_splits(data_dir, fallback=args.smoke)
    if args.train_size < len(y_train):
        sub = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(1234))
        x_train, y_train = x_train[sub[:args.train_size]], y_train[sub[:args.train_size]]
    if args.test_size < len(y_test):
        x_test, y_test = x_test[:args.test_size], y_test[:args.test_size]
    return {"x_train": normalize_mnist(x_train), "y_train": y_train,
            "x_test": normalize_mnist(x_test), "y_test": y_test, "source": str(source)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.75, 0.5, 0.25])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak one-cycle learning rate")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=1,
                        help="channel multiplier (1: 16 / 32 channels, the model of RESULTS.md)")
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--others", nargs="*", default=TROP_OTHERS, choices=TROP_OTHERS,
                        help="the other TropNNC methods (default: all)")
    parser.add_argument("--finetune", nargs="*",
                        default=["tropnnc-multi", "tropnnc-multi-keep", "best", *TP_METHODS],
                        help="methods fine-tuned for one epoch ('best': the best other TropNNC "
                             "method at each ratio); none: no fine-tuning")
    parser.add_argument("--steps", type=int, default=12, help="bisection steps (parameter match)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"MNIST directory (default ${ENV_VAR}, else {SHARED_MNIST} if present)")
    parser.add_argument("--finetune-ratios", type=float, nargs="*", default=None,
                        help="the ratios at which to fine-tune (default: all of --ratios)")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"raw results (default {FIGURES / 'tropnnc_vs_torchpruning.json'}; "
                             "none in a --smoke run)")
    parser.add_argument("--plot", type=Path, default=None,
                        help=f"the plot (default {FIGURES / 'tropnnc_vs_torchpruning.png'}; "
                             "none in a --smoke run)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached trained weights")
    parser.add_argument("--plot-only", action="store_true", help="redraw tables and plot from --json")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="with --plot-only: fine-tuned results of other runs of the same seeds "
                             "(e.g. other --finetune-ratios) to merge into --json")
    parser.add_argument("--train-only", action="store_true", help="train (and cache) the seeds only")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 1 seed, 2000 training / 1000 test images, r = 0.5, no cache")
    args = parser.parse_args(argv)
    if not args.smoke:
        args.json = args.json or FIGURES / "tropnnc_vs_torchpruning.json"
        args.plot = args.plot or FIGURES / "tropnnc_vs_torchpruning.png"
    if args.plot_only:
        raw = json.loads(args.json.read_text())
        for other in args.merge:
            merge(raw, json.loads(other.read_text()))
            save(raw, args)
        print(tables(raw))
        print(plot(raw, args.plot))
        return 0
    if torch_pruning is None:  # the TropNNC rows still run (and the smoke test in CI)
        print("torch_pruning is not installed: the Torch-Pruning rows are LEFT OUT (pip install -e "
              "'.[bench]' or pip install torch-pruning)", file=sys.stderr)
    if args.smoke:
        args.seeds, args.train_size, args.test_size, args.ratios = 1, 2000, 1000, [0.5]
        args.epochs, args.steps = 1, 4
    if args.finetune_ratios is None:
        args.finetune_ratios = args.ratios
    torch.set_num_threads(1)
    data = load_data(args)
    x_test, y_test = data["x_test"], data["y_test"]
    example = x_test[:1]
    print(f"data: {data['source']}; {len(data['y_train'])} training images, {len(y_test)} test; "
          f"torch {torch.__version__}, torch-pruning "
          f"{getattr(torch_pruning, '__version__', 'NOT INSTALLED')}", flush=True)

    raw = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "params": n_params(ResCNN(16 * args.width, 32 * args.width)), "runs": [], "best": {},
           "data": data["source"],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "torch_pruning": getattr(torch_pruning, "__version__", None)}
    models = []
    for seed in range(args.seeds):
        model, facts = trained(seed, data, args)
        acc = accuracy(model, x_test, y_test)
        print(f"seed {seed}: {'cached' if facts['cached'] else 'trained'} "
              f"({facts['seconds']:.0f} s of training), acc {acc:.4f}", flush=True)
        if args.train_only:
            continue
        run = {"seed": seed, "acc": acc, "train_seconds": facts["seconds"], "ratios": {}}
        kept = {}
        for r in args.ratios:
            compressed = compress_all(model, example, r, args)
            run["ratios"][str(r)] = {}
            for name, (m, facts) in compressed.items():
                row = {"params": n_params(m), "acc": accuracy(m, x_test, y_test), "acc_ft": None,
                       **facts}
                run["ratios"][str(r)][name] = row
                extra = "".join(f", {k} {row[k]:.4g}" for k in ("pruning_ratio", "threshold")
                                if k in row)
                print(f"  r={r} {name}: {row['params']} params{extra}, acc {row['acc']:.4f}"
                      f"{'; skipped ' + str(len(row['skipped'])) if row.get('skipped') else ''}",
                      flush=True)
            kept[str(r)] = {name: m for name, (m, _) in compressed.items()}
        raw["runs"].append(run)
        models.append(kept)

    if args.train_only:
        return 0
    # the best other TropNNC method per ratio: highest mean accuracy without fine-tuning, among
    # those within MATCH of TropNNC-multi's parameter count on every seed
    for r in map(str, args.ratios):
        scores = {}
        for name in (f"tropnnc-{o}" for o in args.others):
            rows = [run["ratios"][r] for run in raw["runs"]]
            if all(matched(row[name]["params"], row["tropnnc-multi"]["params"]) for row in rows):
                scores[name] = statistics.fmean(row[name]["acc"] for row in rows)
        if scores:
            raw["best"][r] = max(scores, key=scores.get)
    save(raw, args)
    # ratio-major, the required ratios first: a run stopped early keeps whole ratios
    order = sorted(map(str, args.finetune_ratios), key=lambda r: (float(r) not in (0.5, 0.25), -float(r)))
    for r in order:
        names = [raw["best"].get(r) if n == "best" else n for n in args.finetune]
        for seed, (run, kept) in enumerate(zip(raw["runs"], models, strict=True)):
            for name in dict.fromkeys(n for n in names if n in kept.get(r, {})):
                m, row = kept[r][name], run["ratios"][r][name]
                row["ft_seconds"] = train(m, data["x_train"], data["y_train"], seed + 1000, 1,
                                          args.finetune_lr, schedule="cosine")
                row["acc_ft"] = accuracy(m, x_test, y_test)
                print(f"seed {seed} r={r} {name}: fine-tuned {row['acc']:.4f} -> {row['acc_ft']:.4f} "
                      f"({row['ft_seconds']:.0f} s)", flush=True)
            save(raw, args)  # keep what is done so far
    print()
    print(tables(raw))
    if args.json is not None:
        print(f"raw results: {args.json}")
    if args.plot is not None:
        print(plot(raw, args.plot))
    return 0


def merge(raw: dict, other: dict) -> None:
    """Take ``other``'s fine-tuned accuracies where ``raw`` has none (the same seeds and models:
    their accuracies without fine-tuning must agree)."""
    for run, theirs in zip(raw["runs"], other["runs"], strict=False):
        for r, rows in theirs["ratios"].items():
            for name, row in rows.items():
                mine = run["ratios"].get(r, {}).get(name)
                if mine is None and r in run["ratios"]:  # a method this run did not have
                    run["ratios"][r][name] = row
                    continue
                if mine is None or row.get("acc_ft") is None or mine.get("acc_ft") is not None:
                    continue
                if (mine["params"], mine["acc"]) != (row["params"], row["acc"]):
                    raise SystemExit(f"--merge: seed {run['seed']} r={r} {name} differs "
                                     f"({mine['params']}, {mine['acc']}) vs ({row['params']}, "
                                     f"{row['acc']}): not the same model")
                mine.update(acc_ft=row["acc_ft"], ft_seconds=row["ft_seconds"])


def save(raw: dict, args: argparse.Namespace) -> None:
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    sys.exit(main())
