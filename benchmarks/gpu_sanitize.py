"""A small workload for compute-sanitizer (memcheck, racecheck, synccheck): every CUDA kernel of
tropfx once, forward and backward, on small shapes that still take each code path (dense tiles with
edges, argmax, sparse rows / columns and the global-memory fallback, per-channel and full
morphology, bit packing, both boolean-convolution paths, binary morphology). Used by
benchmarks/gpu_check.sh:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python benchmarks/gpu_sanitize.py

(without the caching allocator, each tensor is its own allocation, so an access past its end is
seen). ``--emulated`` runs the same calls through the CPU emulator (torch.ops.tropfx_emu), the
dry run of the script on a machine without a GPU. Each result is compared with the CPU kernels.
"""

from __future__ import annotations

import argparse
import sys

import torch


def _check(name: str, got, want) -> None:
    got = got if isinstance(got, tuple | list) else (got,)
    want = want if isinstance(want, tuple | list) else (want,)
    for g, w in zip(got, want, strict=True):
        g = g.cpu()
        if g.is_floating_point():
            ok = torch.allclose(g, w, rtol=1e-4, atol=1e-4, equal_nan=True)
        else:
            ok = torch.equal(g, w)
        if not ok:
            raise SystemExit(f"gpu_sanitize: {name} differs from the CPU kernels")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emulated", action="store_true", help="run on the CPU emulator")
    args = parser.parse_args()
    from tropfx.kernels import _build
    from tropfx.kernels.cuda_build import build_emulation, load_cuda

    if not _build.load():
        raise SystemExit(f"gpu_sanitize: CPU kernels unavailable: {_build.build_info()['error']}")
    if args.emulated:
        build_emulation()
        ops, device = torch.ops.tropfx_emu, "cpu"
    else:
        if not (torch.cuda.is_available() and load_cuda()):
            raise SystemExit("gpu_sanitize: needs a GPU and the CUDA kernels")
        ops, device = torch.ops.tropfx, "cuda"
    cpu = torch.ops.tropfx
    g = torch.Generator().manual_seed(0)
    calls = 0

    def run(op: str, *a):
        nonlocal calls
        moved = [t.to(device) if isinstance(t, torch.Tensor) else t for t in a]
        out = getattr(ops, op)(*moved)
        _check(op, out, getattr(cpu, op)(*a))
        calls += 1
        return out

    # dense max-plus: tile edges (B, K, M not multiples of the tiles), with and without argmax
    for b, k, m in ((37, 70, 45), (1, 3, 130)):
        x, w = torch.randn(b, k, generator=g), torch.randn(m, k, generator=g)
        bias = torch.randn(m, generator=g)
        run("maxplus", x, w, bias, False, False)
        _, arg = cpu.maxplus(x, w, bias, True, True)
        run("maxplus", x, w, bias, True, True)
        run("maxplus_backward", torch.randn(b, m, generator=g), arg, k, True, True)
    # sparse max-plus: along the last dim, along a middle dim, and a wide input (global fallback)
    for shape, dim, out, k in (((20, 33), -1, 17, 3), ((2, 19, 7), 1, 5, 4), ((3, 20000), -1, 9, 5)):
        x = torch.randn(*shape, generator=g)
        index = torch.randint(0, shape[dim], (out, k), generator=g)
        value, bias = torch.randn(out, k, generator=g), torch.randn(out, generator=g)
        run("sparse_maxplus", x, index, value, bias, dim, False, False)
        _, arg = cpu.sparse_maxplus(x, index, value, bias, dim, False, True)
        y_shape = list(shape)
        y_shape[dim] = out
        run("sparse_maxplus_backward", torch.randn(y_shape, generator=g), arg, index, shape[dim], dim,
            True, False)
    # morphology: per channel and full SE, dilation and erosion, stride / padding / dilation
    for full, name in ((False, "dilation2d"), (True, "erosion2d")):
        x = torch.randn(2, 3, 11, 9, generator=g)
        w = torch.randn(*((4, 3) if full else (3,)), 3, 2, generator=g)
        window = ([2, 1], [1, 1], [1, 2])
        y, arg = getattr(cpu, name)(x, w, *window, True, True)
        run(name, x, w, *window, True, True)
        run(f"{name}_backward", torch.randn(y.shape, generator=g), arg, list(x.shape),
            list(w.shape), *window)
    # bits: pack / unpack, boolean convolution (stride 1 and 2), binary morphology
    bits = torch.randint(0, 2, (2, 70, 9, 10), generator=g)
    run("pack_bits", bits)
    run("unpack_bits", cpu.pack_bits(bits), 70, torch.float32)
    from tropfx.kernels.ops import pack_conv_weight

    pos, neg = pack_conv_weight(torch.randint(-2, 3, (65, 70, 3, 3), generator=g))
    threshold = torch.randint(-20, 20, (65,), generator=g)
    for stride in ([1, 1], [2, 1]):
        run("bool_conv2d", cpu.pack_bits(bits), pos, neg, threshold, stride, [1, 1], [1, 1])
    se = torch.rand(70, 3, 3, generator=g) < 0.5
    for op in ("binary_dilation2d", "binary_erosion2d"):
        run(op, cpu.pack_bits(bits), se, [1, 1], [1, 1], [1, 1])
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_sanitize: {calls} calls on {device} ({'emulated' if args.emulated else 'GPU'}), "
          "all equal to the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
