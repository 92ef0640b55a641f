"""GPU speed of the hand-written CUDA kernels (issue 7) against baselines measured in the same run.

P5  dense max-plus GEMM, 4096 x 4096 x 4096, against torch's fp32 SGEMM (TF32 off) of the same
    shape. Goal: at most 2.5x SGEMM's time. Prints the achieved max-plus ops/s (one op = one add
    and one max, the counterpart of SGEMM's multiply-add), with and without argmax.
P6  sparse max-plus, memory-bound: achieved bandwidth (the bytes a perfect kernel moves: x read
    once, y and argmax written once, index and value read once) against the device's copy
    bandwidth measured in this run (a device-to-device copy: read + write). Goal: >= 70 %.
P7  boolean convolution on packed bits, 64 -> 64, 3 x 3, 56 x 56, N = 8, and a larger one, against
    cuDNN's fp16 convolution of the same shape (channels-last, cudnn.benchmark). Goal: >= 10x faster.

    python benchmarks/bench_cuda.py [--only P5,P6,P7] [--repeats 20] [--json results.json]

Timing: CUDA events around each call on the current stream, after warm-up; the median of
``--repeats``. Each case first checks a slice of its output against the CPU kernels. Without a CUDA
device (or if the kernels do not build) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

CASES = ("P5", "P6", "P7")


def time_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    if a.dtype.is_floating_point:
        nan = torch.isnan(a)
        return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])
    return torch.equal(a, b)


def copy_bandwidth(repeats: int) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def p5(repeats: int) -> dict:
    n = 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, n, device="cuda", generator=g)
    w = torch.randn(n, n, device="cuda", generator=g)
    torch.backends.cuda.matmul.allow_tf32 = False
    sgemm = time_ms(lambda: x @ w.T, repeats)
    out = {"shape": [n, n, n], "sgemm_ms": sgemm, "sgemm_tflops": 2 * n**3 / (sgemm * 1e-3) / 1e12}
    for with_argmax in (False, True):
        ms = time_ms(lambda wa=with_argmax: torch.ops.tropfx.maxplus(x, w, None, False, wa), repeats)
        y, arg = torch.ops.tropfx.maxplus(x[:8], w, None, False, with_argmax)
        y_cpu, arg_cpu = torch.ops.tropfx.maxplus(x[:8].cpu(), w.cpu(), None, False, with_argmax)
        key = "argmax" if with_argmax else "values"
        out[key] = {"ms": ms, "x_sgemm": ms / sgemm, "tops": n**3 / (ms * 1e-3) / 1e12,
                    "checked": same_bits(y, y_cpu) and same_bits(arg, arg_cpu)}
    print(f"P5 max-plus GEMM {n}^3 (goal: <= 2.5x SGEMM)")
    print(f"  SGEMM fp32, TF32 off   {sgemm:9.3f} ms  {out['sgemm_tflops']:7.2f} TFLOP/s")
    for key in ("values", "argmax"):
        r = out[key]
        print(f"  max-plus, {key:<12} {r['ms']:9.3f} ms  {r['tops']:7.2f} T max-plus ops/s  "
              f"{r['x_sgemm']:5.2f}x SGEMM  (8 rows == CPU: {r['checked']})")
    return out


def _sparse_case(name: str, xshape, dim: int, out_features: int, k: int, peak: float,
                 repeats: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(*xshape, device="cuda", generator=g)
    n_in = xshape[dim]
    index = torch.rand(out_features, n_in, device="cuda", generator=g).topk(k, 1).indices
    index = index.sort(1).values.contiguous()
    value = torch.randn(out_features, k, device="cuda", generator=g)
    bias = torch.zeros(out_features, device="cuda")
    y_elems = x.numel() // n_in * out_features
    result = {"x": list(xshape), "dim": dim, "out": out_features, "k": k}
    for with_argmax in (False, True):
        ms = time_ms(lambda wa=with_argmax: torch.ops.tropfx.sparse_maxplus(
            x, index, value, bias, dim, False, wa), repeats)
        moved = (x.numel() + y_elems * (2 if with_argmax else 1) + value.numel() + bias.numel()) * 4 \
            + index.numel() * 8
        bandwidth = moved / (ms * 1e-3)
        result["argmax" if with_argmax else "values"] = {
            "ms": ms, "gb_s": bandwidth / 1e9, "of_copy": bandwidth / peak}
    sample = x.narrow(0, 0, 2)
    got = torch.ops.tropfx.sparse_maxplus(sample, index, value, bias, dim, False, True)
    want = torch.ops.tropfx.sparse_maxplus(sample.cpu(), index.cpu(), value.cpu(), bias.cpu(), dim,
                                           False, True)
    result["checked"] = same_bits(got[0], want[0]) and same_bits(got[1], want[1])
    for key in ("values", "argmax"):
        r = result[key]
        print(f"  {name:<34} {key:<7} {r['ms']:8.3f} ms  {r['gb_s']:7.0f} GB/s  "
              f"{100 * r['of_copy']:5.1f} % of copy  (2 samples == CPU: {result['checked']})")
    return result


def p6(repeats: int) -> dict:
    peak = copy_bandwidth(repeats)
    print(f"P6 sparse max-plus bandwidth (goal: >= 70 % of copy); copy: {peak / 1e9:.0f} GB/s")
    cases = {  # the first: issue 3's SparseMaxPlus case (4096 -> 4096, k = 2), a larger batch
        "last dim k=2": ("x (16384, 4096), 4096 out, k=2", (16384, 4096), -1, 4096, 2),
        "last dim k=16": ("x (16384, 4096), 4096 out, k=16", (16384, 4096), -1, 4096, 16),
        "channels k=8": ("x (64, 256, 56, 56) dim 1, 256 out, k=8", (64, 256, 56, 56), 1, 256, 8),
    }
    out = {"copy_gb_s": peak / 1e9}
    for key, (label, xshape, dim, n_out, k) in cases.items():
        out[key] = _sparse_case(label, xshape, dim, n_out, k, peak, repeats)
    return out


def p7(repeats: int) -> dict:
    from tropfx.kernels.ops import pack_conv_weight

    torch.backends.cudnn.benchmark = True
    print("P7 boolean conv (packed bits, {0,1} weights) vs cuDNN fp16 conv (goal: >= 10x faster)")
    out = {}
    for n, c, hw in ((8, 64, 56), (64, 256, 28)):
        g = torch.Generator(device="cuda").manual_seed(2)
        bits = torch.randint(0, 2, (n, c, hw, hw), device="cuda", generator=g)
        weight = torch.randint(0, 2, (c, c, 3, 3), device="cuda", generator=g)
        threshold = torch.full((c,), c * 9 // 4, dtype=torch.int64, device="cuda")
        packed = torch.ops.tropfx.pack_bits(bits)
        pos, neg = pack_conv_weight(weight)
        args = (packed, pos, neg, threshold, [1, 1], [1, 1], [1, 1])
        boolean = time_ms(lambda a=args: torch.ops.tropfx.bool_conv2d(*a), repeats)
        xh = bits.half().contiguous(memory_format=torch.channels_last)
        wh = weight.half().contiguous(memory_format=torch.channels_last)
        cudnn = time_ms(lambda x=xh, w=wh: torch.nn.functional.conv2d(x, w, padding=1), repeats)
        got = torch.ops.tropfx.bool_conv2d(packed[:1], pos, neg, threshold, [1, 1], [1, 1], [1, 1])
        want = torch.ops.tropfx.bool_conv2d(*(a.cpu() if isinstance(a, torch.Tensor) else a
                                              for a in (packed[:1], *args[1:])))
        key = f"N={n} {c}->{c} 3x3 {hw}x{hw}"
        out[key] = {"bool_ms": boolean, "cudnn_fp16_ms": cudnn, "speedup": cudnn / boolean,
                    "checked": same_bits(got, want)}
        print(f"  {key:<26} bool {boolean:8.4f} ms  cuDNN fp16 {cudnn:8.4f} ms  "
              f"{cudnn / boolean:6.2f}x  (1 sample == CPU: {out[key]['checked']})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated subset of P5,P6,P7")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: needs a CUDA GPU and a CUDA build of torch (torch "
              f"{torch.__version__}, CUDA {torch.version.cuda}); nothing measured.", file=sys.stderr)
        return 2
    from tropfx.kernels import _build
    from tropfx.kernels.cuda_build import load_cuda

    if not (_build.load() and load_cuda(verbose=True)):
        print("bench_cuda: the kernels did not build (see the warnings above); nothing measured.",
              file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; median of {args.repeats} after warm-up")
    results = {"device": props.name, "torch": torch.__version__, "cuda": torch.version.cuda}
    for case in args.only.split(","):
        results[case] = {"P5": p5, "P6": p6, "P7": p7}[case.strip()](args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
