"""Projection onto activable parameters (BiSE §3.2.1, Eq. 19): the fast exact solver vs OSQP.

The paper solves one OSQP quadratic program per neuron, prefix set S_k and operation (2 |Omega| QPs
per neuron) and reports "up to 28 days" for a 4096 x 4096 layer. This script measures, in one run:

1. a small layer projected completely by both solvers (``solver="fast"`` and ``solver="osqp"``):
   same-run wall times, their ratio, and the largest difference between the two distances;
2. the fast solver on a DenseLUI of ``--neurons`` x ``--inputs`` (default 4096 x 4096);
3. OSQP on ``--osqp-samples`` random (neuron, |S|, operation) QPs of that layer, the mean time per QP
   extrapolated to all ``2 * neurons * inputs`` QPs (the paper's method), and the fast solver's
   distances for the same QPs (agreement check).

Weights are positive (softplus of N(0, 1), the paper's positive reparametrization) and biases
spread over ``[0.05, 0.95] * sum(W)`` so that both operations and many |S| occur.

    python benchmarks/bench_bise_projection.py [--neurons 4096] [--inputs 4096] [--osqp-samples 24]
    python benchmarks/bench_bise_projection.py --smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from tropfx.bise_math import activable_qp_duals, project_activable

PAPER_SECONDS = 28 * 24 * 3600  # "up to 28 days" for 4096 x 4096 with OSQP (Intel Xeon W-2265)


def layer(neurons: int, inputs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.functional.softplus(torch.randn(neurons, inputs, generator=g, dtype=torch.float64))
    b = w.sum(1) * (0.05 + 0.9 * torch.rand(neurons, generator=g, dtype=torch.float64))
    return w, b


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def small_layer_both_solvers(neurons: int, inputs: int) -> None:
    w, b = layer(neurons, inputs, seed=1)
    fast, t_fast = timed(lambda: project_activable(w, b, solver="fast"))
    ref, t_osqp = timed(lambda: project_activable(w, b, solver="osqp"))
    diff = float((fast.distance - ref.distance).abs().max())
    same_se = int((fast.se == ref.se).all(1).sum())
    print(f"[1] full layer {neurons} x {inputs}, both solvers ({2 * neurons * inputs} QPs for OSQP)")
    print(f"    fast {t_fast:.3f} s | osqp {t_osqp:.2f} s | osqp / fast = {t_osqp / t_fast:,.0f}x")
    print(f"    max |distance_fast - distance_osqp| = {diff:.2e}; same (S, psi) for {same_se}/{neurons}")


def big_layer(neurons: int, inputs: int, samples: int) -> None:
    w, b = layer(neurons, inputs, seed=2)
    proj, t_fast = timed(lambda: project_activable(w, b, solver="fast"))
    n_qp = 2 * neurons * inputs
    ops = proj.operation
    print(f"[2] fast projection of a {neurons} x {inputs} DenseLUI ({n_qp:,} QPs of size {inputs + 1})")
    print(f"    wall {t_fast:.3g} s ({t_fast / 60:.3g} min) = {t_fast / neurons * 1e3:.3g} ms per neuron")
    print(f"    {ops.count('dilation')} dilations, {ops.count('erosion')} erosions, "
          f"{int(proj.exact.sum())} already activated; mean |S| = {proj.se.sum(1).double().mean():.0f}")

    rng = np.random.default_rng(3)
    rows = rng.integers(0, neurons, samples)
    ks = rng.integers(1, inputs + 1, samples)
    names = [("dilation", "erosion")[i % 2] for i in range(samples)]
    order = torch.sort(w[rows], dim=1, descending=True, stable=True).indices
    se = torch.arange(inputs)[None] < torch.from_numpy(ks)[:, None]
    se = torch.zeros_like(se).scatter(1, order, se)
    per_qp, dists = [], []
    for i in range(samples):     # one QP at a time, as the paper does
        res, dt = timed(lambda i=i: activable_qp_duals(w[rows[i]], b[rows[i]], se[i], names[i],
                                                       solver="osqp"))
        per_qp.append(dt)
        dists.append(float(res.distance))
    fast_same, t_fast_same = timed(lambda: activable_qp_duals(w[rows], b[rows], se, names, solver="fast"))
    agree = float(np.max(np.abs(np.array(dists) - fast_same.distance.numpy())))
    mean = float(np.mean(per_qp))
    total = mean * n_qp
    print(f"[3] OSQP on {samples} sampled QPs of that layer (|S| from {ks.min()} to {ks.max()}, both ops)")
    print(f"    {mean * 1e3:.1f} ms per QP (median {np.median(per_qp) * 1e3:.1f}, "
          f"max {max(per_qp) * 1e3:.1f}) -> {total:,.0f} s = {total / 86400:.2f} days for the whole layer")
    print(f"    fast solver on the same {samples} QPs: {t_fast_same * 1e3:.1f} ms in one batch; "
          f"max |distance difference| = {agree:.2e}")
    print(f"    extrapolated OSQP / measured fast = {total / t_fast:,.0f}x")
    if (neurons, inputs) == (4096, 4096):
        print(f"    paper's 28 days / measured fast = {PAPER_SECONDS / t_fast:,.0f}x (different CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurons", type=int, default=4096)
    parser.add_argument("--inputs", type=int, default=4096)
    parser.add_argument("--osqp-samples", type=int, default=24)
    parser.add_argument("--small", type=int, nargs=2, default=(16, 48), metavar=("NEURONS", "INPUTS"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.neurons, args.inputs, args.osqp_samples, args.small = 32, 64, 4, (4, 8)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average {load[0]:.1f}")
    small_layer_both_solvers(*args.small)
    big_layer(args.neurons, args.inputs, args.osqp_samples)


if __name__ == "__main__":
    main()
