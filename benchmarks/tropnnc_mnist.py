"""TropNNC (Fotopoulos, Maragos & Misiakos) on real MNIST: the paper's §7.2 and §7.5 experiments.

Every model is trained here (and cached outside git), then compressed **by the tropfx pass**,
``tropfx.compile(model, [tp.tropnnc(...)], example_inputs=(x,))``, never by calling the math in
``tropfx.tropnnc`` directly, and evaluated on the full 10,000-image MNIST test set. No
fine-tuning after compression (the paper's protocol).

Parts (``--parts a,b,c,d``):

* **a** -- Table 3: a simple CNN (conv 16-32, fc 512 -> **1000** -> 10, the "final hidden linear
  layer of size 1000" of Misiakos et al. 2022); only ``fc1`` (the 1000 hidden neurons) is
  compressed to 50 / 25 / 10 / 5 %; 5 independently trained models, mean ± std.
* **b** -- Figure 7a/b: "deepNN", 784-512-256-128-10; every hidden layer compressed to the same
  ratio.
* **c** -- Figure 7c/d: "deepCNN2D", a LeNet-type CNN (conv 20 -> pool -> conv 50 -> pool -> fc
  500 -> 10); the two conv layers (their output channels) are compressed.
* **d** -- Tables 5-6: non-uniform TropNNC (hierarchical clustering cut at a threshold, variants
  v1 / v2) against CUP on a VGG-style CNN with BatchNorm (6 conv layers, 32-128 channels). For each
  method the threshold is searched (bisection on the pass's report) to hit a grid of parameter
  budgets, so the methods are compared at (nearly) equal size; params and MACs come from the report.

Methods (a-c): TropNNC (Alg. 2, ``method="multi"``), TropNNC iterative (Alg. 3), Neural Path
K-means (Misiakos et al. 2022), ThiNet (Luo et al. 2017, calibrated on 256 training images), L1 and
random structured pruning.

Usage::

    python benchmarks/tropnnc_mnist.py                      # parts a-d -> benchmarks/results/
    python benchmarks/tropnnc_mnist.py --parts a,b --seeds 5 --threads 1
    python benchmarks/tropnnc_mnist.py --train-only         # fill the model cache, compress nothing
    python benchmarks/tropnnc_mnist.py --smoke --out DIR    # < 1 minute, tiny everything
    python benchmarks/tropnnc_mnist.py --from-json benchmarks/results/tropnnc_mnist.json

Trained models are cached in ``$TROPFX_CACHE`` (default ``~/.cache/tropfx/models``), keyed by
architecture, seed, epochs, training-set size and training recipe, so a re-run only compresses.
The MNIST directory is ``--data``, else ``$TROPFX_MNIST_DIR``, else ``../shared/data/mnist`` next
to the repository; ``--smoke`` without MNIST falls back to scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.data import ENV_VAR, load_mnist_splits, normalize_mnist

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_OUT = REPO / "benchmarks" / "results"
CACHE_ENV = "TROPFX_CACHE"
# Part of every cache key: change it whenever train() changes, so stale models are not reused.
RECIPE = "adam1e-3-b128-cosine-v1"
CALIBRATION_IMAGES = 256  # ThiNet's calibration batch (training images)
STEM = "tropnnc_mnist"

# TropNNC Table 3 (MNIST): % of remaining neurons -> (mean, std) test accuracy in %.
PAPER_TABLE3 = {
    "tropnnc": {100: (98.54, 0.16), 50: (98.49, 0.14), 25: (98.36, 0.14), 10: (97.96, 0.35),
                5: (97.06, 0.73)},
    "npkmeans": {100: (98.54, 0.16), 50: (97.85, 0.39), 25: (96.69, 1.06), 10: (96.25, 1.39),
                 5: (95.17, 2.36)},
}


# ---------------------------------------------------------------------------------- models


class TableCNN(nn.Module):
    """Table 3's "simple CNN with two fully connected layers and a final hidden linear layer of
    size 1000" (Misiakos et al. 2022): two conv-ReLU-pool blocks, fc1 512 -> 1000, fc2 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)   # 16 x 24 x 24 -> pool 12 x 12
        self.conv2 = nn.Conv2d(16, 32, 5)  # 32 x 8 x 8 -> pool 4 x 4
        self.fc1 = nn.Linear(32 * 4 * 4, 1000)
        self.fc2 = nn.Linear(1000, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class DeepNN(nn.Module):
    """The paper's "deepNN": a fully connected 784-512-256-128-10 ReLU network."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 512), nn.Linear(512, 256)
        self.fc3, self.fc4 = nn.Linear(256, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc4(F.relu(self.fc3(F.relu(self.fc2(x)))))


class DeepCNN2D(nn.Module):
    """The paper's "deepCNN2D", a LeNet-type ReLU CNN (Caffe's LeNet sizes): conv 20 -> pool ->
    conv 50 -> pool -> fc 500 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)   # 20 x 24 x 24 -> 12 x 12
        self.conv2 = nn.Conv2d(20, 50, 5)  # 50 x 8 x 8 -> 4 x 4
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


VGG_WIDTHS = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class VGG(nn.Module):
    """A VGG-style CNN for 28x28 inputs: 6 conv3x3-BN-ReLU layers (32-32, 64-64, 128-128, a max
    pool after each pair) and one Linear(128 * 3 * 3, 10), like the CIFAR VGG of CUP / TropNNC."""

    def __init__(self) -> None:
        super().__init__()
        layers, c, i = OrderedDict(), 1, 0
        for w in VGG_WIDTHS:
            if w == "M":
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                continue
            i += 1
            layers[f"conv{i}"] = nn.Conv2d(c, w, 3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(w)
            layers[f"relu{i}"] = nn.ReLU()
            c = w
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(c * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


ARCHS: dict[str, Callable[[], nn.Module]] = {
    "cnn1000": TableCNN, "deepnn": DeepNN, "deepcnn2d": DeepCNN2D, "vgg6bn": VGG,
}


# ---------------------------------------------------------------------------------- parts

METHODS: dict[str, tuple[str, dict[str, Any]]] = {  # key -> (label, tropnnc kwargs)
    "tropnnc": ("TropNNC", {"method": "multi"}),
    "tropnnc_iter": ("TropNNC iterative", {"method": "iterative"}),
    "npkmeans": ("Neural Path K-means", {"method": "neural_path_kmeans"}),
    "thinet": ("ThiNet", {"method": "thinet"}),
    "l1": ("L1", {"method": "l1"}),
    "random": ("random", {"method": "random"}),
}
NONUNIFORM: dict[str, tuple[str, dict[str, Any], float]] = {  # key -> (label, kwargs, first probe)
    "tropnnc_v1": ("TropNNC (v1)", {"method": "multi", "nonuniform": "v1"}, 0.01),
    "tropnnc_v2": ("TropNNC (v2)", {"method": "multi", "nonuniform": "v2"}, 1.0),
    "cup": ("CUP", {"method": "cup", "nonuniform": None}, 0.5),
}
ALL_METHODS = tuple(METHODS)


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    arch: str
    epochs: int
    include: tuple[str, ...] | None = None
    ratios: tuple[float, ...] = (0.5, 0.25, 0.1, 0.05)
    methods: tuple[str, ...] = ALL_METHODS
    targets: tuple[float, ...] = ()  # part d: fractions of the parameters kept


PARTS = {
    "a": Part("a", "Table 3: simple CNN, final hidden linear layer (1000 neurons) compressed",
              "cnn1000", epochs=2, include=("fc1",)),
    "b": Part("b", "deepNN 784-512-256-128-10, all hidden layers compressed", "deepnn", epochs=5,
              include=("fc1", "fc2", "fc3")),
    "c": Part("c", "deepCNN2D (LeNet-type), both conv layers compressed", "deepcnn2d", epochs=1,
              include=("conv1", "conv2"), ratios=(0.75, 0.5, 0.25, 0.1)),
    "d": Part("d", "Non-uniform TropNNC (v1, v2) vs CUP on a VGG-style CNN with BatchNorm",
              "vgg6bn", epochs=2, targets=(0.8, 0.6, 0.45, 0.3)),
}


# ---------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------- training


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """Adam (lr 1e-3, cosine decay to 0), shuffled mini-batches of 128, ``epochs`` epochs."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * math.ceil(len(y) / 128)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(128):
            if len(idx) < 2:  # BatchNorm needs two samples per batch
                continue
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/tropfx/models").expanduser()


def trained_model(arch: str, seed: int, epochs: int, data: Data, cache: Path | None,
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``arch`` trained from ``torch.manual_seed(seed)``; from ``cache`` when there."""
    key = f"{arch}-seed{seed}-ep{epochs}-n{len(data.y_train)}-{RECIPE}.pt"
    torch.manual_seed(seed)
    model = ARCHS[arch]()
    path = cache / key if cache is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return model, {"cache": str(path), "cached": True,
                       "train_seconds": saved["train_seconds"]}
    t0 = time.perf_counter()
    train(model, data.x_train, data.y_train, epochs, seed)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": model.state_dict(), "train_seconds": seconds}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent run never reads half a file
    return model, {"cache": str(path) if path else None, "cached": False,
                   "train_seconds": seconds}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        batches = zip(x.split(1000), y.split(1000), strict=True)
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return correct / len(y)


# ---------------------------------------------------------------------------------- compression


def compress(model: nn.Module, data: Data, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``tropfx.compile(model, [tp.tropnnc(**kwargs)])`` on one test image (so the report's MACs
    are per image); the facts of the report's tropnnc row."""
    t0 = time.perf_counter()
    cm = tropfx.compile(model, [tp.tropnnc(**kwargs)], example_inputs=(data.x_test[:1],))
    seconds = time.perf_counter() - t0
    row, base = cm.report.rows[-1], cm.report.rows[0]
    assert row.stage == "tropnnc", cm.report
    if row.skipped:
        print(f"  warning: tropnnc skipped {[(s.node, s.reason) for s in row.skipped]}", flush=True)
    return cm, {
        "params": row.params, "macs": row.macs, "params_before": base.params,
        "macs_before": base.macs, "compile_seconds": round(seconds, 3),
        "layers": {r["layer"]: [r["n"], r["K"]] for r in row.info.get("layers", [])},
        "skipped": [f"{s.node}: {s.reason}" for s in row.skipped],
    }


def calibration_batch(data: Data, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + seed)
    n = min(CALIBRATION_IMAGES, len(data.y_train))
    return data.x_train[torch.randperm(len(data.y_train), generator=gen)[:n]]


def run_uniform(part: Part, data: Data, seeds: list[int], epochs: int, cache: Path | None,
                train_only: bool) -> dict[str, Any]:
    """Parts a-c: every method x ratio on every seed's model."""
    runs = []
    for seed in seeds:
        model, info = trained_model(part.arch, seed, epochs, data, cache)
        acc = accuracy(model, data.x_test, data.y_test)
        what = "cached" if info["cached"] else f"trained in {info['train_seconds']:.0f} s"
        print(f"[{part.key}] {part.arch} seed {seed}: {what}, test acc {100 * acc:.2f} %", flush=True)
        run = {"seed": seed, "acc": acc, **info, "params": sum(p.numel() for p in model.parameters()),
               "results": {}}
        runs.append(run)
        if train_only:
            continue
        t0 = time.perf_counter()
        calib = calibration_batch(data, seed)
        for method in part.methods:
            kwargs = dict(METHODS[method][1])
            if method == "thinet":
                kwargs["calibration"] = (calib,)
            per_ratio = {}
            for ratio in part.ratios:
                cm, facts = compress(model, data, ratio=ratio, include=list(part.include),
                                     seed=seed, **kwargs)
                facts["acc"] = accuracy(cm, data.x_test, data.y_test)
                per_ratio[ratio_key(ratio)] = facts
                run["macs"] = facts["macs_before"]
            run["results"][method] = per_ratio
            cells = "  ".join(f"{k}: {100 * v['acc']:.2f}" for k, v in per_ratio.items())
            print(f"[{part.key}]   {METHODS[method][0]:>20}  {cells}", flush=True)
        run["compress_seconds"] = time.perf_counter() - t0
    return {"runs": runs}


def ratio_key(ratio: float) -> str:
    return f"{100 * ratio:g}"


def run_nonuniform(part: Part, data: Data, seeds: list[int], epochs: int, cache: Path | None,
                   train_only: bool, max_probes: int) -> dict[str, Any]:
    """Part d: for every method and parameter budget, the threshold that meets the budget."""
    runs = []
    for seed in seeds:
        model, info = trained_model(part.arch, seed, epochs, data, cache)
        acc = accuracy(model, data.x_test, data.y_test)
        what = "cached" if info["cached"] else f"trained in {info['train_seconds']:.0f} s"
        print(f"[{part.key}] {part.arch} seed {seed}: {what}, test acc {100 * acc:.2f} %", flush=True)
        run = {"seed": seed, "acc": acc, **info, "params": sum(p.numel() for p in model.parameters()),
               "results": {}, "probes": {}}
        runs.append(run)
        if train_only:
            continue
        t0 = time.perf_counter()
        for method, (label, kwargs, start) in NONUNIFORM.items():
            probes: dict[float, dict[str, Any]] = {}  # threshold -> report facts
            probe = functools.partial(probe_threshold, model, data, probes, seed=seed, **kwargs)
            chosen = {}
            for target in part.targets:
                budget = target * run["params"]
                t = find_threshold(probe, probes, budget, start, max_probes)
                cm, facts = compress(model, data, threshold=t, seed=seed, **kwargs)
                facts.update(threshold=t, target=target, acc=accuracy(cm, data.x_test, data.y_test))
                chosen[ratio_key(target)] = facts
                run["macs"] = facts["macs_before"]
                print(f"[{part.key}]   {label:>13} target {100 * target:g} % params: threshold "
                      f"{t:.4g} -> params {facts['params']:,} ({100 * facts['params'] / run['params']:.1f}"
                      f" %), MACs {facts['macs'] / facts['macs_before']:.1%}, acc "
                      f"{100 * facts['acc']:.2f} %", flush=True)
            run["results"][method] = chosen
            run["probes"][method] = [{"threshold": t, "params": f["params"], "macs": f["macs"]}
                                     for t, f in sorted(probes.items())]
        run["compress_seconds"] = time.perf_counter() - t0
    return {"runs": runs}


def probe_threshold(model: nn.Module, data: Data, probes: dict[float, dict[str, Any]], t: float,
                    **kwargs: Any) -> dict[str, Any]:
    """The report facts of the model compressed at threshold ``t`` (memoized in ``probes``)."""
    if t not in probes:
        probes[t] = compress(model, data, threshold=t, **kwargs)[1]
    return probes[t]


def find_threshold(probe: Callable[[float], dict], probes: dict[float, dict], budget: float,
                   start: float, max_probes: int, rtol: float = 0.01) -> float:
    """A threshold whose compressed model has about ``budget`` parameters (within ``rtol``, else
    the closest found in ``max_probes`` probes). Parameters fall as the threshold grows: bracket by
    factors of 4, then bisect geometrically; earlier probes (other budgets) are reused."""
    for _ in range(max_probes):
        over = [t for t, f in probes.items() if f["params"] > budget]
        under = [t for t, f in probes.items() if f["params"] <= budget]
        lo, hi = (max(over) if over else None), (min(under) if under else None)
        if any(abs(f["params"] - budget) <= rtol * budget for f in probes.values()):
            break
        if lo is None and hi is None:
            t = start
        elif hi is None:
            t = lo * 4
        elif lo is None:
            t = hi / 4
        else:
            t = math.sqrt(lo * hi)
            if hi / lo < 1.0001:
                break
        probe(t)
    return min(probes, key=lambda t: (abs(probes[t]["params"] - budget), t))


# ---------------------------------------------------------------------------------- reporting


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: list[float]) -> str:
    m, s = mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}"


def uniform_markdown(key: str, part: dict[str, Any], config: dict[str, Any]) -> str:
    spec = PARTS[key]
    runs = part["runs"]
    done = [r for r in runs if r["results"]]
    methods = [m for m in METHODS if done and m in done[0]["results"]]
    ratios = list(done[0]["results"][methods[0]]) if done else []
    lines = [f"## Part {key}: {spec.title}", "",
             f"`{spec.arch}` ({runs[0]['params']:,} parameters), {len(runs)} model(s) trained "
             f"with seeds {[r['seed'] for r in runs]} for {part['epochs']} epoch(s); compressed "
             f"layers `{', '.join(spec.include or ())}` (`include=`), every one to the same ratio. "
             f"Test accuracy (%) on the {config['test_images']:,} test images, mean ± std over "
             "models; no fine-tuning.", ""]
    if not done:
        return "\n".join(lines + ["(training only: nothing compressed)", ""])
    head = ["% remaining", *(METHODS[m][0] for m in methods)]
    paper = key == "a" and config.get("train_images") == 60000
    if paper:
        head += ["paper TropNNC", "paper NP K-means"]
    head += ["params", "MACs"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    base = [r["acc"] for r in done]
    cells = [pm(base)] * len(methods)
    if paper:
        cells += [f"{m:.2f} ± {s:.2f}" for m, s in (PAPER_TABLE3["tropnnc"][100],
                                                    PAPER_TABLE3["npkmeans"][100])]
    lines.append(f"| 100 | {' | '.join(cells)} | {done[0]['params']:,} | "
                 f"{si(done[0].get('macs'))} |")
    for rk in ratios:
        accs = {m: [100 * r["results"][m][rk]["acc"] for r in done] for m in methods}
        best = max(statistics.fmean(a) for a in accs.values())
        cells = []
        for m in methods:
            mu, sd = mean_std(accs[m])
            cell = f"{mu:.2f} ± {sd:.2f}"
            cells.append(f"**{cell}**" if mu == best else cell)
        if paper:
            cells += [f"{m:.2f} ± {s:.2f}" for m, s in (PAPER_TABLE3["tropnnc"][float(rk)],
                                                        PAPER_TABLE3["npkmeans"][float(rk)])]
        facts = done[0]["results"]["tropnnc"][rk] if "tropnnc" in methods else \
            done[0]["results"][methods[0]][rk]
        kept = ", ".join(f"{n}→{k}" for n, k in facts["layers"].values())
        lines.append(f"| {rk} ({kept}) | {' | '.join(cells)} | {facts['params']:,} | "
                     f"{si(facts['macs'])} |")
    lines += ["", "Bold: best mean. Params / MACs (per image) of the whole compressed model, from "
              "the compile report (TropNNC's row; every method keeps the same number of neurons "
              "unless K-means finds fewer distinct clusters).", ""]
    lines += timing_lines(runs)
    return "\n".join(lines)


def nonuniform_markdown(key: str, part: dict[str, Any], config: dict[str, Any]) -> str:
    spec = PARTS[key]
    runs = part["runs"]
    lines = [f"## Part {key}: {spec.title}", "",
             f"`{spec.arch}`: {', '.join(str(w) for w in VGG_WIDTHS)} (conv3x3-BN-ReLU, M = max "
             f"pool) then Linear(1152, 10); {runs[0]['params']:,} parameters, trained for "
             f"{part['epochs']} epoch(s). Every conv layer is compressed (the last one into the "
             "Linear); BatchNorm is folded layer by layer with the clusters found on the "
             "pre-fusion weights (`batchnorm=\"prefusion\"`, §7.5). For each method and each "
             "parameter budget the threshold is searched by bisection on the pass's report; "
             "accuracy is then measured once at that threshold. No fine-tuning.", ""]
    for run in runs:
        if not run["results"]:
            lines += ["(training only: nothing compressed)", ""]
            continue
        lines += [f"Seed {run['seed']}: original test accuracy {100 * run['acc']:.2f} %, "
                  f"{run['params']:,} params, {si(run.get('macs'))} MACs per image.", "",
                  "| budget (% params) | method | threshold | params (%) | MACs (%) | "
                  "channels per layer | acc (%) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        targets = list(next(iter(run["results"].values())))
        for tk in targets:
            best = max(run["results"][m][tk]["acc"] for m in run["results"])
            for m, per in run["results"].items():
                f = per[tk]
                acc = f"{100 * f['acc']:.2f}"
                lines.append(
                    f"| {tk} | {NONUNIFORM[m][0]} | {f['threshold']:.4g} | "
                    f"{f['params']:,} ({100 * f['params'] / run['params']:.1f}) | "
                    f"{si(f['macs'])} ({100 * f['macs'] / f['macs_before']:.1f}) | "
                    f"{'-'.join(str(k) for _, k in f['layers'].values())} | "
                    f"{'**' + acc + '**' if f['acc'] == best else acc} |")
        lines.append("")
    lines += [f"Channels per layer of the original: "
              f"{'-'.join(str(w) for w in VGG_WIDTHS if w != 'M')}. Bold: best at that budget.", ""]
    lines += timing_lines(runs)
    return "\n".join(lines)


def timing_lines(runs: list[dict]) -> list[str]:
    trained = [r["train_seconds"] for r in runs]
    comp = [r["compress_seconds"] for r in runs if "compress_seconds" in r]
    when = ("measured when trained; loaded from the model cache in this run"
            if all(r["cached"] for r in runs) else "this run")
    text = f"Time per model: training {statistics.fmean(trained):.0f} s ({when})"
    if comp:
        text += f"; compressing + evaluating every setting {statistics.fmean(comp):.0f} s"
    return [text + ".", ""]


def si(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def write_plot(key: str, part: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot")
        return False
    runs = [r for r in part["runs"] if r["results"]]
    if not runs:
        return False
    spec = PARTS[key]
    if spec.targets:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
        run = runs[0]
        for m, per in run["results"].items():
            f = list(per.values())
            for ax, what in zip(axes, ("params", "macs"), strict=True):
                full = run["params"] if what == "params" else f[0]["macs_before"]
                xs = [100.0] + [100 * v[what] / full for v in f]
                ys = [100 * run["acc"]] + [100 * v["acc"] for v in f]
                ax.plot(xs, ys, marker="o", label=NONUNIFORM[m][0])
        for ax, what in zip(axes, ("parameters", "MACs per image"), strict=True):
            ax.set_xlabel(f"% of {what} remaining")
            ax.grid(alpha=0.3)
            ax.invert_xaxis()
        axes[0].set_ylabel("MNIST test accuracy (%)")
        axes[0].legend()
        fig.suptitle(f"Part {key}: non-uniform TropNNC vs CUP, VGG-style CNN with BatchNorm "
                     "(no fine-tuning)", fontsize=10)
    else:
        # left: the whole range; right: zoomed on the best methods (the weak ones fall far below)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        methods = [m for m in METHODS if m in runs[0]["results"]]
        ratios = list(runs[0]["results"][methods[0]])
        xs = [100.0] + [float(rk) for rk in ratios]
        curves = {}
        for m in methods:
            stats = [mean_std([100 * r["acc"] for r in runs])]
            stats += [mean_std([100 * r["results"][m][rk]["acc"] for r in runs]) for rk in ratios]
            curves[m] = stats
        best_low = min(max(curves[m][i][0] - curves[m][i][1] for m in methods)
                       for i in range(len(xs)))
        for ax in axes:
            for m in methods:
                ax.errorbar(xs, [s[0] for s in curves[m]], yerr=[s[1] for s in curves[m]],
                            marker="o", capsize=3, label=METHODS[m][0])
            if key == "a":
                for pk, style in (("tropnnc", "k--"), ("npkmeans", "k:")):
                    px = sorted(PAPER_TABLE3[pk])
                    ax.plot(px, [PAPER_TABLE3[pk][x][0] for x in px], style, alpha=0.6,
                            label=f"paper {'TropNNC' if pk == 'tropnnc' else 'NP K-means'}")
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
            ax.set_xlabel("% of neurons / channels remaining in the compressed layers")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("MNIST test accuracy (%)")
        axes[0].legend(fontsize=8)
        axes[1].set_ylim(best_low - 0.5, curves[methods[0]][0][0] + 0.3)
        axes[1].set_title("zoom on the best methods", fontsize=9)
        fig.suptitle(f"Part {key}: {spec.title} ({len(runs)} model(s), mean ± std, no "
                     "fine-tuning)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(parts: dict[str, Any], config: dict[str, Any], out: Path) -> None:
    """Per part: JSON, markdown, PNG; then the merged ``tropnnc_mnist.json`` / ``.md`` of every
    part found in ``out`` (parts run in separate processes merge here)."""
    out.mkdir(parents=True, exist_ok=True)
    for key, part in parts.items():
        (out / f"{STEM}_{key}.json").write_text(json.dumps({"config": config, "part": part},
                                                           indent=1))
        render = nonuniform_markdown if PARTS[key].targets else uniform_markdown
        text = render(key, part, config)
        (out / f"{STEM}_{key}.md").write_text(text)
        print("\n" + text)
        write_plot(key, part, out / f"{STEM}_{key}.png")
    merged, configs, texts = {}, {}, []
    for key in PARTS:
        path = out / f"{STEM}_{key}.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            merged[key], configs[key] = raw["part"], raw["config"]
            texts.append((out / f"{STEM}_{key}.md").read_text())
    (out / f"{STEM}.json").write_text(json.dumps({"configs": configs, "parts": merged}, indent=1))
    (out / f"{STEM}.md").write_text("# TropNNC on MNIST\n\n" + "\n".join(texts))
    print(f"wrote {out}/{STEM}[_{''.join(merged)}].json/.md/.png")


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    parser.add_argument("--seeds", type=int, default=5,
                        help="models per part a-c, seeds 0..N-1 (default 5; part d uses 1)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs for every part (default per part: a 2, b 5, c 1, d 2)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"MNIST directory (default ${ENV_VAR}, else {SHARED_MNIST})")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default benchmarks/results; a temp dir with --smoke)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared machine)")
    parser.add_argument("--no-cache", action="store_true", help=f"neither read nor write ${CACHE_ENV}")
    parser.add_argument("--train-only", action="store_true", help="train and cache the models only")
    parser.add_argument("--max-probes", type=int, default=16,
                        help="part d: compiles per threshold search at most (default 16)")
    parser.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                        help="re-render markdown and plots from a tropnnc_mnist*.json")
    parser.add_argument("--smoke", action="store_true",
                        help="< 1 min: 1 seed, 300 training images, 1 epoch, 1 ratio, 500 test images")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {','.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        if "parts" in raw:
            parts, config = raw["parts"], next(iter(raw["configs"].values()))
        else:
            key = args.from_json.stem.rsplit("_", 1)[-1]
            parts, config = {key: raw["part"]}, raw["config"]
        write_outputs(parts, config, args.out or args.from_json.parent)
        return 0
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    data = load_data(args.data or default_data_dir(), args.smoke)
    seeds, cache = list(range(args.seeds)), (None if args.no_cache else cache_dir())
    parts = {k: PARTS[k] for k in args.parts}
    if args.smoke:
        seeds = [0]
        data.x_train, data.y_train = data.x_train[:300], data.y_train[:300]
        data.x_test, data.y_test = data.x_test[:500], data.y_test[:500]
        parts = {k: Part(p.key, p.title, p.arch, 1, p.include, p.ratios[-1:], p.methods,
                         p.targets[1:2]) for k, p in parts.items()}
        args.max_probes = min(args.max_probes, 4)
        cache = None  # tiny models, trained in seconds: keep the cache for real runs
    out = args.out or (Path(tempfile.mkdtemp(prefix="tropnnc_mnist_")) if args.smoke
                       else DEFAULT_OUT)
    print(f"{data.source}: {len(data.y_train):,} training / {len(data.y_test):,} test images; "
          f"parts {list(parts)}, seeds {seeds}, torch {torch.__version__} on "
          f"{torch.get_num_threads()} thread(s); model cache {cache}", flush=True)
    config = {
        "command": "python benchmarks/tropnnc_mnist.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "smoke": args.smoke, "data": data.source, "train_images": len(data.y_train),
        "test_images": len(data.y_test), "recipe": RECIPE,
        "training": "Adam lr 1e-3 with cosine decay to 0, batch 128, torch.manual_seed(seed)",
        "calibration": f"ThiNet: {CALIBRATION_IMAGES} training images drawn with seed 10000+seed",
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPU cores (shared)",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    results = {}
    for key, part in parts.items():
        t0 = time.perf_counter()
        epochs = args.epochs or part.epochs
        if part.targets:
            result = run_nonuniform(part, data, seeds[:1], epochs, cache, args.train_only,
                                    args.max_probes)
        else:
            result = run_uniform(part, data, seeds, epochs, cache, args.train_only)
        result.update(epochs=epochs, seconds=time.perf_counter() - t0,
                      include=list(part.include) if part.include else None,
                      ratios=list(part.ratios), targets=list(part.targets))
        results[key] = result
        print(f"[{key}] done in {result['seconds']:.0f} s", flush=True)
    config["total_seconds"] = time.perf_counter() - start
    if not args.train_only:
        write_outputs(results, config, out)
    print(f"total {config['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
