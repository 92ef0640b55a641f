"""Compile time of ResNet-18 with fuse_batchnorm and verification on.

Goal (issue 2): tropfx.compile(resnet18, [fuse_batchnorm()], example_inputs, verify=True) < 2 s on
2 cores. Baselines measured in the same run: torch's own conv+BN fusion
(``torch.fx.experimental.optimization.fuse``, no verification, no report) and one eager forward.

"cold" is the first compile in a fresh Python process (what a script pays once; median of
--cold-runs processes): it includes torch's lazy one-time import of ``torch._dynamo``, which
the first TorchDispatchMode (``torch.utils.flop_counter.FlopCounterMode``, used for MACs)
triggers. "warm" is the median of
later compiles in the same process.

    python benchmarks/bench_compile.py [--repeats 5] [--size 224] [--cold-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import tropfx
from tropfx import passes as tp
from tropfx.testing.models import randomize_batchnorm_stats, resnet18


def build(size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_batchnorm_stats(resnet18()).eval(), torch.randn(1, 3, size, size)


def tropfx_compile(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    return tropfx.compile(model, [tp.fuse_batchnorm()], example_inputs=(x,), verify=True)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold(size: int) -> float:
    """Seconds of the first compile in a fresh process (model built before the clock starts)."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import time, sys; sys.path.insert(0, {here!r})\n"
        "from bench_compile import build, tropfx_compile\n"
        f"m, x = build({size})\n"
        "t = time.perf_counter(); tropfx_compile(m, x); print(time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes for 'cold'")
    args = parser.parse_args()

    from torch.fx.experimental.optimization import fuse

    model, x = build(args.size)
    cold_s = statistics.median(cold(args.size) for _ in range(args.cold_runs))
    cm = tropfx_compile(model, x)  # warm-up
    warm_s = timed(lambda: tropfx_compile(model, x), args.repeats)
    fx_fuse_s = timed(lambda: fuse(model), args.repeats)
    with torch.no_grad():
        model(x)
        eager_s = timed(lambda: model(x), args.repeats)
    rows = {r.stage: r for r in cm.report.rows}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "model": f"ResNet-18, {rows['traced'].params:,} params, input 1x3x{args.size}x{args.size}",
        "cold_s": round(cold_s, 3),
        "warm_s": round(warm_s, 3),
        "torch_fx_fuse_s": round(fx_fuse_s, 3),
        "eager_forward_s": round(eager_s, 4),
        "warm_vs_fx_fuse": round(warm_s / fx_fuse_s, 2),
        "warm_vs_eager_forward": round(warm_s / eager_s, 2),
        "batchnorms_folded": len(rows["fuse_batchnorm"].rewritten),
        "max_rel_err": rows["fuse_batchnorm"].max_rel_err,
        "goal_cold_under_2s": cold_s < 2.0,
        "goal_warm_under_2s": warm_s < 2.0,
    }
    print(cm.report)
    print()
    for key, value in result.items():
        print(f"{key:24s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
