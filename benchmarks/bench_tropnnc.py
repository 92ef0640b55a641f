"""Time to compress VGG-16 (14.7 M parameters, CIFAR layout with BatchNorm) with the tropnnc pass.

Goal (issue 4): 50 % uniform compression of every compressible layer in < 60 s on 2 cores.
``tropfx.compile`` runs the whole pipeline: trace, verify the trace, the pass, measurement.
Baselines measured in the same run: the same compile with ``method="l1"`` (no clustering: the
cost of graph analysis, surgery and measurement alone) and with no pass at all.

    python benchmarks/bench_tropnnc.py [--ratio 0.5] [--method multi] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import tropfx
from tropfx import passes as tp
from tropfx.testing.models import randomize_batchnorm_stats, vgg16


def run(method: str, ratio: float) -> tuple[float, torch.nn.Module]:
    torch.manual_seed(0)
    model = randomize_batchnorm_stats(vgg16()).eval()
    x = torch.randn(1, 3, 32, 32)
    passes = [tp.tropnnc(ratio=ratio, method=method)] if method else []
    start = time.perf_counter()
    cm = tropfx.compile(model, passes, example_inputs=(x,))
    return time.perf_counter() - start, cm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--method", default="multi")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {}
    for label, method in (("compile, no pass", ""), ("tropnnc l1", "l1"),
                          (f"tropnnc {args.method}", args.method)):
        times = []
        for _ in range(args.repeats):
            seconds, cm = run(method, args.ratio)
            times.append(seconds)
        results[label] = (min(times), cm)
    base = results["tropnnc l1"][0]
    print(f"VGG-16 (CIFAR, BN), ratio {args.ratio}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'run':<22}{'seconds':>9}{'x l1':>7}{'params':>14}{'MACs':>14}  layers")
    out = {}
    for label, (seconds, cm) in results.items():
        row = cm.report[-1]
        layers = row.info.get("layers", [])
        print(f"{label:<22}{seconds:>9.2f}{seconds / base:>7.2f}{row.params:>14,}{row.macs:>14,}  "
              f"{len(layers)}")
        out[label] = {"seconds": seconds, "params": row.params, "macs": row.macs,
                      "params_before": cm.report[0].params, "layers": len(layers)}
    cm = results[f"tropnnc {args.method}"][1]
    print(cm.report)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
