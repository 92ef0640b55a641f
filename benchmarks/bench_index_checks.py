"""What the kernel operators' index checks cost (issue 17 item 2): the backward operators of a
kernel library built before the checks against one built with them, in alternating processes
(A, B, A, B, ...), medians per round, and the ratio of the medians.

    python benchmarks/bench_index_checks.py --baseline OLD/tropfx_kernels.so \\
        [--candidate NEW/tropfx_kernels.so] [--rounds 6] [--threads 1]

The candidate defaults to this checkout's build (tropfx.kernels.build_info()["path"]). A baseline
library: check out the commit before the checks, ``tropfx kernels build``, and give its
``tropfx_kernels.so`` (``tropfx kernels info`` prints the directory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

# (name, operator, arguments builder): the backward operators, at training-sized shapes and at a
# small one where a fixed cost would show.
CASES = {
    "maxplus_backward 256x512x512": "dense(256, 512, 512)",
    "maxplus_backward 32x64x64": "dense(32, 64, 64)",
    "sparse_maxplus_backward 256x4096, k=16": "sparse(256, 4096, 4096, 16)",
    "dilation2d_backward 8x64x56x56, 3x3": "morph(8, 64, 56, 3)",
    "erosion2d_backward full 4x16x28x28 -> 32, 3x3": "morph_full(4, 16, 28, 32, 3)",
}


def _child(library: str, repeats: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.ops.load_library(library)
    ops = torch.ops.tropfx
    g = torch.Generator().manual_seed(0)

    def dense(b, k, m):
        x, w = torch.randn(b, k, generator=g), torch.randn(m, k, generator=g)
        _, arg = ops.maxplus(x, w, None, False, True)
        grad = torch.randn(b, m, generator=g)
        return lambda: ops.maxplus_backward(grad, arg, k, False, False)

    def sparse(b, n_in, out, k):
        x = torch.randn(b, n_in, generator=g)
        index = torch.randint(0, n_in, (out, k), generator=g)
        value = torch.randn(out, k, generator=g)
        _, arg = ops.sparse_maxplus(x, index, value, None, -1, False, True)
        grad = torch.randn(b, out, generator=g)
        return lambda: ops.sparse_maxplus_backward(grad, arg, index, n_in, -1, False, False)

    def morph(n, c, hw, k):
        x, w = torch.randn(n, c, hw, hw, generator=g), torch.randn(c, k, k, generator=g)
        y, arg = ops.dilation2d(x, w, [1, 1], [1, 1], [1, 1], False, True)
        grad = torch.randn(y.shape, generator=g)
        return lambda: ops.dilation2d_backward(grad, arg, list(x.shape), list(w.shape), [1, 1],
                                               [1, 1], [1, 1])

    def morph_full(n, c, hw, o, k):
        x, w = torch.randn(n, c, hw, hw, generator=g), torch.randn(o, c, k, k, generator=g)
        y, arg = ops.erosion2d(x, w, [1, 1], [1, 1], [1, 1], False, True)
        grad = torch.randn(y.shape, generator=g)
        return lambda: ops.erosion2d_backward(grad, arg, list(x.shape), list(w.shape), [1, 1],
                                              [1, 1], [1, 1])

    scope = {"dense": dense, "sparse": sparse, "morph": morph, "morph_full": morph_full}
    medians = {}
    for name, build in CASES.items():
        fn = eval(build, scope)  # noqa: S307 -- the literal table above
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
    print(json.dumps(medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the library without the checks")
    parser.add_argument("--candidate", help="the library with them (default: this checkout's)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per case per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.repeats, args.threads)
        return
    if args.candidate is None:
        import tropfx.kernels as K

        if not K.load():
            sys.exit(f"the kernels are unavailable: {K.build_info()['error']}")
        args.candidate = f"{K.build_info()['path']}/tropfx_kernels.so"
    runs: dict[str, dict[str, list[float]]] = {"baseline": {}, "candidate": {}}
    for _ in range(args.rounds):
        for which in ("baseline", "candidate"):  # interleaved: A, B, A, B, ...
            out = subprocess.run([sys.executable, __file__, "--baseline", args.baseline, "--child",
                                  getattr(args, which), "--repeats", str(args.repeats),
                                  "--threads", str(args.threads)], capture_output=True, text=True,
                                 check=True).stdout
            for name, t in json.loads(out.splitlines()[-1]).items():
                runs[which].setdefault(name, []).append(t)
    print(f"{'operator':48s} {'baseline':>11s} {'checked':>11s} {'ratio':>7s} {'paired':>7s} "
          f"{'IQR':>13s}  (medians of {args.rounds} rounds x {args.repeats} calls, "
          f"{args.threads} thread(s); paired: median of the rounds' ratios)")
    for name in CASES:
        a, b = runs["baseline"][name], runs["candidate"][name]
        ratios = sorted(y / x for x, y in zip(a, b, strict=True))
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        print(f"{name:48s} {statistics.median(a) * 1e6:9.1f} us {statistics.median(b) * 1e6:9.1f} us "
              f"{statistics.median(b) / statistics.median(a):7.3f} {statistics.median(ratios):7.3f} "
              f"{q1:6.3f}-{q3:6.3f}")


if __name__ == "__main__":
    main()
