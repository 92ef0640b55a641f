"""Time of ``tropfx.compile(model, [tp.tropnnc(ratio=0.5)])`` on torchvision's alexnet, vgg11_bn
and vgg16 at 224 x 224, and on resnet50: the float32 matmul K-means (``KMEANS_BACKEND="torch"``,
the default) against scikit-learn's float64 ``KMeans`` (``"sklearn"``, the earlier default),
measured in the same run, interleaved (sklearn, torch, sklearn, torch, ...), medians.

Goals (issue 19): <= 20 s per VGG / AlexNet model, <= 10 s for resnet50, on 2 cores.

    python benchmarks/tropnnc_speed.py [--models alexnet,vgg16] [--repeats 1] [--threads 2]
    python benchmarks/tropnnc_speed.py --backends torch --verify both   # cost of verification

``--verify both`` times ``verify=False`` and ``verify=True`` (compile's default when
``example_inputs`` are given) interleaved, with the torch backend.

Needs torchvision (not a tropfx dependency); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

import tropfx
from tropfx import passes as tp
from tropfx import tropnnc as T
from tropfx.verify import VerificationWarning

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from tropnnc_zoo import load_torchvision  # noqa: E402 - the script's own directory

MODELS = ("alexnet", "vgg11_bn", "vgg16", "resnet50")


def once(torchvision, name: str, backend: str, ratio: float,
         verify: bool = False) -> tuple[float, float, int, int]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 224, 224)
    T.KMEANS_BACKEND = backend
    try:
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():  # random init: "verification is inconclusive"
            warnings.simplefilter("ignore", VerificationWarning)
            cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio, progress=False)],
                                example_inputs=(x,), verify=verify)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        T.KMEANS_BACKEND = "torch"
    return seconds, cpu, cm.report[0].params, cm.report[-1].params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default="sklearn,torch")
    ap.add_argument("--verify", choices=("off", "on", "both"), default="off")
    args = ap.parse_args(argv)
    torchvision = load_torchvision()
    if torchvision is None:
        print("torchvision is not installed; nothing to measure (pip install torchvision)")
        return 0
    torch.set_num_threads(args.threads)
    if args.verify != "off":
        return verify_cost(torchvision, args)
    backends = args.backends.split(",")
    print(f"tropnnc ratio={args.ratio}, torch {torch.__version__}, {args.threads} threads, "
          f"medians of {args.repeats}")
    print("wall seconds (CPU seconds of the process, less sensitive to a loaded machine)")
    print("| model | params | " + " | ".join(f"{b}: wall (CPU) s" for b in backends) +
          (" | sklearn / torch (wall) |" if backends == ["sklearn", "torch"] else " |"))
    print("| --- | --- | " + " | ".join("---" for _ in backends) + " |" +
          (" --- |" if backends == ["sklearn", "torch"] else ""))
    for name in args.models.split(","):
        times: dict[str, list[tuple[float, float]]] = {b: [] for b in backends}
        for _ in range(args.repeats):
            for b in backends:  # interleaved
                seconds, cpu, before, after = once(torchvision, name, b, args.ratio)
                times[b].append((seconds, cpu))
        med = {b: (statistics.median(s for s, _ in v), statistics.median(c for _, c in v))
               for b, v in times.items()}
        ratio = f" {med['sklearn'][0] / med['torch'][0]:.1f}x |" \
            if backends == ["sklearn", "torch"] else ""
        print(f"| {name} | {before / 1e6:.1f}M -> {after / 1e6:.1f}M | " +
              " | ".join(f"{med[b][0]:.1f} ({med[b][1]:.1f})" for b in backends) + " |" + ratio,
              flush=True)
    return 0


def verify_cost(torchvision, args: argparse.Namespace) -> int:
    """compile with verify=False and verify=True (torch backend), interleaved, medians."""
    modes = [False, True] if args.verify == "both" else [True]
    print(f"tropnnc ratio={args.ratio}, torch backend, torch {torch.__version__}, {args.threads} "
          f"threads, medians of {args.repeats}; wall (process CPU) s")
    print("| model | " + " | ".join(f"verify={v}" for v in modes) + " |")
    print("| --- | " + " | ".join("---" for _ in modes) + " |")
    for name in args.models.split(","):
        times: dict[bool, list[tuple[float, float]]] = {v: [] for v in modes}
        for _ in range(args.repeats):
            for v in modes:
                seconds, cpu, _, _ = once(torchvision, name, "torch", args.ratio, verify=v)
                times[v].append((seconds, cpu))
        print(f"| {name} | " + " | ".join(
            f"{statistics.median(s for s, _ in t):.1f} ({statistics.median(c for _, c in t):.1f})"
            for t in times.values()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
