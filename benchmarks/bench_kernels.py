"""Speed and memory of the C++ CPU kernels (torch.ops.tropfx), as ratios to baselines from the
same run (STYLE.md, point 10: measured here, never asserted in tests).

    python benchmarks/bench_kernels.py [--smoke] [--repeats 7] [--threads N] [--only P1,P3]

Goals (issue 6):

* P1  dense max-plus forward vs torch fp32 matmul of the same shape (256x512x512, 1024^3): <= 3x.
      Two kernel figures: inference (no argmax) and training (with the argmax backward needs).
* P2  sparse max-plus, k=2, B=4096, 4096 -> 4096: >= 50 % of the bandwidth of copying the same
      bytes (x read, y written; with the argmax, its int32 written too). The outputs come from
      the operators' output cache (tropfx.kernels.output_cache), as in any loop that calls the
      op again; the same without the cache (fresh pages every call) is printed too.
* P3  dilation 3x3 (per channel), 64 channels, 56x56, N=8: <= 2x torch max_pool2d of the same window,
      >= 10x faster than the unfold-based reference (tropfx.nn.morphology), memory ~ the output.
* P4  boolean conv 64 -> 64, 3x3, 56x56, N=8 (bit-packed, {0,1} weights; the bit-sliced kernel
      at this size) vs torch float conv2d of the same shape: >= 20x faster; weights 32x smaller.
      The threshold is each output's median count (half the outputs fire, no early exit);
      dilation-like (t = 1) and erosion-like (t = |S|) thresholds are timed too, and two
      binarized layers end to end, pure torch against lower_kernels.
* P11 dense max-plus forward + backward, B=4096, 4096 -> 4096: < 1 GiB of extra memory.

Timing: the candidates of one figure run interleaved in blocks of ``--block`` calls (A A A, B B B,
A A A, ...), each call timed; each keeps its best time, which is the least disturbed by other jobs
on a shared machine, and the median is printed too. Within a block the calls after the first find
the caches as a loop or a network of such layers leaves them (the candidate's own inputs, scratch
and code warm); ``--block 1`` alternates call by call, so every call starts where the other
candidate left the caches. P4 prints that figure too: after a float conv2d, the bit kernel's
input, scratch and weights are cold.
Memory: each measurement runs in a fresh subprocess that allocates its inputs, resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``, Linux) and reports peak RSS minus the RSS before the call:
every byte the call allocated and touched (outputs, temporaries, autograd's saved tensors, gradients),
which is what torch's CPU allocator takes from the OS. Where the mark cannot be reset the
peak is ``ru_maxrss`` and the figure is an upper bound.
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
import torch.nn.functional as F

GIB = 1 << 30


BLOCK = [3]  # calls per block (--block)


def race(fns: dict, repeats: int, block: int | None = None) -> dict[str, tuple[float, float]]:
    """Interleaved timing in blocks of back-to-back calls: name -> (best, median) seconds."""
    block = BLOCK[0] if block is None else block
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def fmt_ms(t: tuple[float, float]) -> str:
    return f"{t[0] * 1e3:.2f} (med {t[1] * 1e3:.2f})"


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, case: str, figure: str, value: str, goal: str = "") -> None:
        self.rows.append((case, figure, value, goal))
        print(f"  {figure}: {value}  {goal}", flush=True)

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows + [("case", "figure", "value", "goal")])
                  for i in range(4)]
        line = " | ".join(h.ljust(w) for h, w in zip(("case", "figure", "value", "goal"), widths,
                                                     strict=True))
        print("\n" + line + "\n" + "-" * len(line))
        for r in self.rows:
            print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --- P1 ---------------------------------------------------------------------------------------

def p1(table: Table, smoke: bool, repeats: int) -> None:
    ops = torch.ops.tropfx
    shapes = [(16, 32, 24)] if smoke else [(256, 512, 512), (1024, 1024, 1024)]
    for b, k, m in shapes:
        print(f"P1 dense max-plus {b}x{k} -> {m}", flush=True)
        x, w, bias = torch.randn(b, k), torch.randn(m, k), torch.randn(m)
        r = race({"matmul": lambda x=x, w=w: x @ w.T,
                  "maxplus": lambda x=x, w=w, bias=bias: ops.maxplus(x, w, bias, False, False),
                  "maxplus+argmax": lambda x=x, w=w, bias=bias: ops.maxplus(x, w, bias, False, True)},
                 repeats)
        case = f"P1 {b}x{k}x{m}"
        table.add(case, "matmul ms", fmt_ms(r["matmul"]))
        for name in ("maxplus", "maxplus+argmax"):
            ratio = r[name][0] / r["matmul"][0]
            table.add(case, f"{name} ms / x matmul", f"{fmt_ms(r[name])} / {ratio:.2f}x",
                      f"goal <= 3x: {verdict(ratio <= 3)}")


# --- P2 ---------------------------------------------------------------------------------------

def p2(table: Table, smoke: bool, repeats: int) -> None:
    ops = torch.ops.tropfx
    b, n, k = (64, 256, 2) if smoke else (4096, 4096, 2)
    print(f"P2 sparse max-plus B={b}, {n} -> {n}, k={k}", flush=True)
    x = torch.randn(b, n)
    index = torch.rand(n, n).topk(k, dim=1).indices.sort(dim=1).values
    value, bias = torch.randn(n, k) * 0.01, torch.zeros(n)
    # The same bytes copied: x read + y written (+ argmax written) = a copy of that many bytes.
    # clone() allocates its output as the operator does (page faults included); copy_() into a
    # preallocated tensor is the memory bandwidth alone.
    src_y, src_arg = torch.randn(b, n), torch.randn(b, n * 2)
    dst_y, dst_arg = torch.empty_like(src_y), torch.empty_like(src_arg)
    r = race({"clone_y": lambda: src_y.clone(),
              "clone_y_arg": lambda: src_arg.clone(),
              "copy_y": lambda: dst_y.copy_(src_y),
              "copy_y_arg": lambda: dst_arg.copy_(src_arg),
              "sparse": lambda: ops.sparse_maxplus(x, index, value, bias, -1, False, False),
              "sparse+argmax": lambda: ops.sparse_maxplus(x, index, value, bias, -1, False, True)},
             repeats)
    # The same without the output cache (tropfx.kernels.output_cache): every output on fresh pages.
    from tropfx import kernels as K

    limit = K.output_cache()["limit"]
    K.output_cache(0)
    try:
        r.update(race({"sparse, no output cache":
                           lambda: ops.sparse_maxplus(x, index, value, bias, -1, False, False),
                       "sparse+argmax, no output cache":
                           lambda: ops.sparse_maxplus(x, index, value, bias, -1, False, True)},
                      repeats))
    finally:
        K.output_cache(limit)
    case = f"P2 B={b} {n}->{n} k={k}"
    moved = {name: (3 if "argmax" in name else 2) * x.nbytes for name in r}
    for name, suffix in (("sparse", "y"), ("sparse+argmax", "y_arg"), ("sparse, no output cache", "y"),
                         ("sparse+argmax, no output cache", "y_arg")):
        gbs = moved[name] / r[name][0] / 1e9
        for base, what in ((f"clone_{suffix}", "clone (allocates, as the op)"),
                           (f"copy_{suffix}", "copy_ into a preallocated tensor")):
            copy_gbs = moved[name] / r[base][0] / 1e9
            frac = gbs / copy_gbs
            table.add(case, f"{name} ms (GB/s) vs {what}",
                      f"{fmt_ms(r[name])} ({gbs:.1f}) vs {fmt_ms(r[base])} ({copy_gbs:.1f}) "
                      f"= {100 * frac:.0f} %",
                      "" if "no output cache" in name else f"goal >= 50 %: {verdict(frac >= 0.5)}")


# --- P3 ---------------------------------------------------------------------------------------

def p3(table: Table, smoke: bool, repeats: int) -> None:
    from tropfx.nn.morphology import dilation2d as reference

    ops = torch.ops.tropfx
    n, c, hw = (2, 8, 12) if smoke else (8, 64, 56)
    print(f"P3 dilation 3x3, N={n}, C={c}, {hw}x{hw}", flush=True)
    x = torch.randn(n, c, hw, hw)
    flat, learned = torch.zeros(c, 3, 3), torch.randn(c, 3, 3) * 0.01
    args = ((1, 1), (1, 1), (1, 1), False)
    r = race({"max_pool2d": lambda: F.max_pool2d(x, 3, 1, 1),
              "max_pool2d_with_indices": lambda: F.max_pool2d_with_indices(x, 3, 1, 1),
              "flat": lambda: ops.dilation2d(x, flat, *args, False),
              "flat+argmax": lambda: ops.dilation2d(x, flat, *args, True),
              "learned": lambda: ops.dilation2d(x, learned, *args, False),
              "learned+argmax": lambda: ops.dilation2d(x, learned, *args, True)}, repeats)
    ref = race({"unfold reference": lambda: reference(x, learned, 1, 1)}, max(2, repeats // 3))
    case = f"P3 N={n} C={c} {hw}x{hw}"
    table.add(case, "max_pool2d ms (with indices)",
              f"{fmt_ms(r['max_pool2d'])} ({fmt_ms(r['max_pool2d_with_indices'])})")
    for name in ("flat", "flat+argmax", "learned", "learned+argmax"):
        base = "max_pool2d_with_indices" if name.endswith("argmax") else "max_pool2d"
        ratio = r[name][0] / r[base][0]
        table.add(case, f"dilation {name} ms / x {base}", f"{fmt_ms(r[name])} / {ratio:.2f}x",
                  f"goal <= 2x: {verdict(ratio <= 2)}")
    speedup = ref["unfold reference"][0] / r["learned+argmax"][0]
    table.add(case, "unfold reference ms / kernel (learned+argmax) speed-up",
              f"{fmt_ms(ref['unfold reference'])} / {speedup:.1f}x", f"goal >= 10x: {verdict(speedup >= 10)}")


# --- P4 ---------------------------------------------------------------------------------------

def p4(table: Table, smoke: bool, repeats: int) -> None:
    from tropfx import kernels as K

    ops = torch.ops.tropfx
    n, c, hw = (2, 64, 12) if smoke else (8, 64, 56)
    print(f"P4 boolean conv {c}->{c} 3x3, N={n}, {hw}x{hw}", flush=True)
    xb = torch.rand(n, c, hw, hw) > 0.5
    weight = torch.randint(0, 2, (c, c, 3, 3))
    # The median of each output's count on these inputs: half the outputs fire, no kernel can
    # stop counting early (the hardest case for the bit-sliced kernel's early exit).
    size = weight.sum((1, 2, 3))
    threshold = size // 2
    xf, wf = xb.float(), weight.float()
    packed = ops.pack_bits(xb)
    pos, neg = K.pack_conv_weight(weight)
    ones = torch.ones_like(size)
    r = race({"conv2d": lambda: F.conv2d(xf, wf, padding=1),
              "bool_conv2d": lambda: ops.bool_conv2d(packed, pos, neg, threshold, (1, 1), (1, 1), (1, 1)),
              "dilation": lambda: ops.bool_conv2d(packed, pos, neg, ones, (1, 1), (1, 1), (1, 1)),
              "erosion": lambda: ops.bool_conv2d(packed, pos, neg, size, (1, 1), (1, 1), (1, 1)),
              "pack_bits": lambda: ops.pack_bits(xb)}, repeats)
    case = f"P4 {c}->{c} 3x3 N={n} {hw}x{hw}"
    speedup = r["conv2d"][0] / r["bool_conv2d"][0]
    table.add(case, "float conv2d ms", fmt_ms(r["conv2d"]))
    table.add(case, "bool_conv2d ms / speed-up", f"{fmt_ms(r['bool_conv2d'])} / {speedup:.1f}x",
              f"goal >= 20x: {verdict(speedup >= 20)}")
    # Call by call against conv2d: every bool_conv2d call starts on caches the float conv2d filled.
    cold = race({"conv2d": lambda: F.conv2d(xf, wf, padding=1),
                 "bool_conv2d": lambda: ops.bool_conv2d(packed, pos, neg, threshold, (1, 1), (1, 1),
                                                        (1, 1))}, repeats * BLOCK[0], block=1)
    table.add(case, "call by call after a float conv2d (cold caches): ms / speed-up",
              f"{fmt_ms(cold['bool_conv2d'])} / {cold['conv2d'][0] / cold['bool_conv2d'][0]:.1f}x")
    for name, what in (("dilation", "t = 1"), ("erosion", "t = |S|")):
        table.add(case, f"{name}-like neurons ({what}): ms / speed-up (early exit)",
                  f"{fmt_ms(r[name])} / {r['conv2d'][0] / r[name][0]:.1f}x")
    table.add(case, "pack_bits of the input ms (once per bool net)", fmt_ms(r["pack_bits"]))
    smaller = wf.nbytes / (pos.nbytes + neg.nbytes)
    table.add(case, "weight bytes float / packed", f"{wf.nbytes} / {pos.nbytes + neg.nbytes} = "
              f"{smaller:.0f}x", f"goal 32x: {verdict(smaller >= 32)}")
    # End to end: two binarized conv layers (bool in, bool out) as binarize_bise leaves them (pure
    # torch, float conv2d on bits) and after lower_kernels (pack, two bool_conv2d, unpack).
    import tropfx
    from tropfx import passes as tp
    from tropfx.nn import ThresholdedConv2d

    gen = torch.Generator().manual_seed(0)
    layers = torch.nn.Sequential(*(ThresholdedConv2d(torch.randint(0, 2, (c, c, 3, 3), generator=gen),
                                                     2 * c, padding=1) for _ in range(2)))
    lowered = tropfx.compile(layers, [tp.lower_kernels()], example_inputs=(xb,))
    assert torch.equal(lowered(xb), layers(xb))
    r = race({"layers": lambda: layers(xb), "lowered": lambda: lowered(xb)}, repeats)
    table.add(f"P4 2 x ThresholdedConv2d {c}->{c} 3x3 N={n} {hw}x{hw}, bool in / out",
              "torch layers ms / lower_kernels ms / speed-up",
              f"{fmt_ms(r['layers'])} / {fmt_ms(r['lowered'])} / "
              f"{r['layers'][0] / r['lowered'][0]:.1f}x")


# --- P11 and P3's memory: in subprocesses -----------------------------------------------------

def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(case: str, smoke: bool) -> dict:
    """In a fresh process: the extra peak RSS of one call (see the module docstring)."""
    from tropfx import kernels as K

    K.load()
    ops = torch.ops.tropfx
    torch.manual_seed(0)
    if case == "P11":
        b = n = 256 if smoke else 4096
        x = torch.randn(b, n, requires_grad=True)
        w = torch.randn(n, n, requires_grad=True)
        bias = torch.zeros(n, requires_grad=True)

        def step():
            K.maxplus(x, w, bias).sum().backward()
        out_bytes = b * n * 4
    else:  # P3
        n_, c, hw = (2, 8, 12) if smoke else (8, 64, 56)
        x = torch.randn(n_, c, hw, hw)
        w = torch.randn(c, 3, 3)

        def step():
            return ops.dilation2d(x, w, (1, 1), (1, 1), (1, 1), False, True)
        out_bytes = x.nbytes
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark
        exact = True
    except OSError:
        exact = False
    before = _rss()
    t0 = time.perf_counter()
    kept = step()
    seconds = time.perf_counter() - t0
    peak = _peak() if exact else 0
    if not exact:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del kept
    return {"extra": peak - before, "output": out_bytes, "exact": exact, "seconds": seconds}


def memory(case: str, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", case] + (["--smoke"] if smoke else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def p3_memory(table: Table, smoke: bool) -> None:
    m = memory("P3", smoke)
    table.add("P3 memory", "extra peak RSS / output bytes (values + int32 argmax)",
              f"{m['extra'] / 2**20:.1f} MiB / {2 * m['output'] / 2**20:.1f} MiB = "
              f"{m['extra'] / (2 * m['output']):.2f}", "goal ~1: " + verdict(m["extra"] < 3 * m["output"]))


def p11(table: Table, smoke: bool) -> None:
    print("P11 dense max-plus forward + backward, memory", flush=True)
    m = memory("P11", smoke)
    table.add("P11 B=N=4096" if not smoke else "P11 (smoke)", "extra peak RSS, fwd + bwd "
              f"({'VmHWM reset' if m['exact'] else 'ru_maxrss: upper bound'}); seconds",
              f"{m['extra'] / 2**20:.0f} MiB; {m['seconds']:.1f} s",
              f"goal < 1 GiB: {verdict(m['extra'] < GIB)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--block", type=int, default=BLOCK[0],
                        help="back-to-back calls per block of the interleaved timing (1: alternate)")
    parser.add_argument("--only", default="P1,P2,P3,P4,P11")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    BLOCK[0] = max(1, args.block)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.smoke)))
        return

    from tropfx import kernels as K

    t0 = time.perf_counter()
    if not K.load():
        sys.exit(f"the kernels are unavailable: {K.build_info()['error']}")
    print(f"kernels loaded in {time.perf_counter() - t0:.1f} s (build or cache: "
          f"{K.build_info()['path']}); {platform.machine()} {platform.processor() or ''}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, timing blocks of {BLOCK[0]} calls, "
          f"load average {os.getloadavg()[0]:.1f}")
    table = Table()
    only = {s.strip().upper() for s in args.only.split(",")}
    repeats = 2 if args.smoke else args.repeats
    if "P1" in only:
        p1(table, args.smoke, repeats)
    if "P2" in only:
        p2(table, args.smoke, repeats)
    if "P3" in only:
        p3(table, args.smoke, repeats)
        p3_memory(table, args.smoke)
    if "P4" in only:
        p4(table, args.smoke, repeats)
    if "P11" in only:
        p11(table, args.smoke)
    table.print()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (a shared machine inflates every time)")


if __name__ == "__main__":
    main()
