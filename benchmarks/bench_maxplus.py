"""Forward + backward time and peak extra memory of the max-plus reference layers.

Baselines measured in the same run, same shapes: torch fp32 matmul (``x @ W.T``, forward +
backward) and the paper code's formulation (dense weights with -1e9 masks, broadcast to
``B x out x (in + 1)`` with the bias as an extra column, then max). Each measurement runs in its own
process so that its peak resident memory is its own.

    python benchmarks/bench_maxplus.py [--repeats 3]

Cases (issue 3): MaxPlus B=256, 512 -> 512; SparseMaxPlus B=4096, 4096 -> 4096, k=2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

CASES = {
    "dense": {"batch": 256, "inner": 512, "out": 512, "k": None},
    "sparse": {"batch": 4096, "inner": 4096, "out": 4096, "k": 2},
}
# The paper formulation materializes B x out x (in + 1) floats (and autograd keeps them).
PAPER_LIMIT_BYTES = 6 << 30


def paper_forward(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """The formulation of the paper's code: -1e9 masks, bias as an extra input column."""
    w = torch.where(mask, weight, torch.full_like(weight, -1e9))
    w = torch.cat([w, bias[:, None]], dim=1)
    xb = torch.cat([x, torch.zeros(x.shape[0], 1)], dim=1)
    return (xb[:, None, :] + w[None]).max(dim=-1).values


def build(case: str, impl: str):
    """A closure running one forward + backward of ``impl`` on ``case``."""
    from tropfx.nn import MaxPlus, SparseMaxPlus

    c = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(c["batch"], c["inner"], requires_grad=True)
    if impl == "matmul":
        w = torch.randn(c["out"], c["inner"], requires_grad=True)
        return lambda: (x @ w.T).sum().backward()
    if impl == "tropfx":
        layer = MaxPlus(c["inner"], c["out"]) if c["k"] is None else \
            SparseMaxPlus(c["inner"], c["out"], c["k"])
        return lambda: layer(x).sum().backward()
    # paper
    w = torch.randn(c["out"], c["inner"], requires_grad=True)
    b = torch.zeros(c["out"], requires_grad=True)
    if c["k"] is None:
        mask = torch.ones(c["out"], c["inner"], dtype=torch.bool)
    else:
        mask = torch.zeros(c["out"], c["inner"], dtype=torch.bool)
        mask.scatter_(1, torch.rand(c["out"], c["inner"]).topk(c["k"], 1).indices, True)
    return lambda: paper_forward(x, w, mask, b).sum().backward()


def paper_bytes(case: str) -> int:
    c = CASES[case]
    return c["batch"] * c["out"] * (c["inner"] + 1) * 4


def measure(case: str, impl: str, repeats: int) -> dict:
    """In this process: median seconds of forward + backward and the peak RSS growth."""
    step = build(case, impl)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up, and the peak-memory measurement
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_extra_bytes": peak}


def run_isolated(case: str, impl: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", case, impl, "--repeats",
                          str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.repeats)))
        return

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for case, shape in CASES.items():
        row = {impl: run_isolated(case, impl, args.repeats) for impl in ("matmul", "tropfx")}
        need = paper_bytes(case)
        row["paper"] = run_isolated(case, "paper", 1) if need <= PAPER_LIMIT_BYTES else {
            "seconds": None, "peak_extra_bytes": None,
            "not_run": f"needs {need / 2**30:.0f} GiB for B x out x (in+1) alone"}
        results[case] = row
        print(f"\n{case}: {shape}")
        for impl, r in row.items():
            if r.get("seconds") is None:
                print(f"  {impl:7s} not run: {r['not_run']}")
                continue
            ratio = r["seconds"] / row["matmul"]["seconds"]
            print(f"  {impl:7s} {r['seconds'] * 1e3:9.1f} ms  {ratio:7.2f}x matmul  "
                  f"peak +{r['peak_extra_bytes'] / 2**20:8.1f} MiB")
        paper, ours = row["paper"], row["tropfx"]
        if paper.get("seconds"):
            speed = paper["seconds"] / ours["seconds"]
            memory = paper["peak_extra_bytes"] / max(1, ours["peak_extra_bytes"])
            print(f"  paper / tropfx: {speed:.2f}x the time, {memory:.1f}x the memory")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
