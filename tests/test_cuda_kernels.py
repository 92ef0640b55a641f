"""The CUDA kernels (kernels/cuda) against the CPU kernels: forward passes bit for bit (NaN payloads
aside), gradients up to the order of atomic sums, and on a GPU ``opcheck`` and ``torch.compile``.

Two backends run the same checks:

* ``cuda``: ``torch.ops.tropfx`` on CUDA tensors (skipped without a GPU);
* ``emulated``: the same CUDA sources built for the CPU emulator (kernels/cuda/emulation) as
  ``torch.ops.tropfx_emu`` on CPU tensors. Opt in with ``TROPFX_CUDA_EMULATION=1``: its build takes
  about a minute. It checks the kernels' index math and semantics, not races or speed.

The CPU kernels are the reference here; their own tests compare them with the pure-torch twins.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pytest
import torch

from tropfx.kernels import _build
from tropfx.kernels.cuda_build import build_emulation, load_cuda
from tropfx.kernels.ops import pack_conv_weight


@dataclass(frozen=True)
class Backend:
    name: str
    ops: object  # torch.ops.tropfx or torch.ops.tropfx_emu
    device: str

    def __call__(self, op: str, *args):
        """Run ``op`` on this backend's device; tensors come back on the CPU."""
        moved = [a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args]
        out = getattr(self.ops, op)(*moved)
        if isinstance(out, torch.Tensor):
            return out.cpu()
        return tuple(o.cpu() for o in out)


def cpu(op: str, *args):
    return getattr(torch.ops.tropfx, op)(*args)


@pytest.fixture(scope="module", params=["cuda", "emulated"])
def backend(request) -> Backend:
    available = torch.cuda.is_available() if request.param == "cuda" else \
        os.environ.get("TROPFX_CUDA_EMULATION") == "1"
    if available and not _build.load():
        pytest.skip("the CPU kernels (the reference) are not built")
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if os.environ.get("TROPFX_CUDA", "1") == "0":
            pytest.skip("TROPFX_CUDA=0")
        if not load_cuda():
            pytest.fail("a GPU is visible but the CUDA kernels did not build or load (see the warning)")
        return Backend("cuda", torch.ops.tropfx, "cuda")
    if os.environ.get("TROPFX_CUDA_EMULATION") != "1":
        pytest.skip("the CUDA emulation is opt-in: TROPFX_CUDA_EMULATION=1")
    build_emulation()
    return Backend("emulated", torch.ops.tropfx_emu, "cpu")


@pytest.fixture
def gpu(backend) -> Backend:
    if backend.name != "cuda":
        pytest.skip("needs a GPU")
    return backend


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal bit for bit; NaN matches NaN whatever its payload (a GPU makes canonical NaNs)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{what}: {actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}"
    if not actual.dtype.is_floating_point:
        assert torch.equal(actual, expected), f"{what}: {(actual != expected).sum()} entries differ"
        return
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    a, e = actual.masked_fill(nan_a, 0).view(bits), expected.masked_fill(nan_e, 0).view(bits)
    bad = (a != e) | (nan_a != nan_e)
    if bad.any():
        at = bad.nonzero()[:4].tolist()
        got = [actual[tuple(i)].item() for i in at]
        want = [expected[tuple(i)].item() for i in at]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} differ, e.g. at {at}: "
                             f"{got} vs {want}")


def assert_grad(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Close (atomicAdd sums in another order), and -0.0 / +0.0 where both are zero."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: {m}")
    zero = (actual == 0) & (expected == 0)
    assert torch.equal(actual[zero].signbit(), expected[zero].signbit()), f"{what}: signs of zeros"


def values(*shape: int, seed: int, special: bool = True) -> torch.Tensor:
    """Quarter-integers (many ties), some -inf, +0.0 and -0.0."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 4).round() / 4
    if special:
        u = torch.rand(*shape, generator=g)
        x[u < 0.05] = -torch.inf
        x[(u > 0.3) & (u < 0.35)] = 0.0
        x[(u > 0.35) & (u < 0.4)] = -0.0
    return x


def spoil(t: torch.Tensor, seed: int, *fills: float) -> torch.Tensor:
    """A copy with one entry set to each of ``fills`` (NaN, +inf, ...) at random places."""
    g = torch.Generator().manual_seed(seed)
    t = t.clone()
    for fill in fills:
        t.view(-1)[torch.randint(t.numel(), (1,), generator=g)] = fill
    return t


# --- dense max-plus -----------------------------------------------------------------------------

# (B, K, M): single elements, boundary tiles (rows, outputs, inputs past a tile), interior tiles
# (K a multiple of 16), K not a multiple of 4 (no vector loads), several argmax blocks of 32.
DENSE = [(1, 1, 1), (3, 5, 7), (130, 33, 129), (128, 64, 128), (257, 17, 65), (5, 300, 3),
         (64, 100, 200)]


@pytest.mark.parametrize("shape", DENSE)
@pytest.mark.parametrize("bias,minplus,with_argmax", list(itertools.product([False, True], repeat=3)))
def test_maxplus_forward(backend, shape, bias, minplus, with_argmax):
    B, K, M = shape
    x, w = values(B, K, seed=1), values(M, K, seed=2)
    b = values(M, seed=3) if bias else None
    got, want = backend("maxplus", x, w, b, minplus, with_argmax), cpu("maxplus", x, w, b, minplus,
                                                                      with_argmax)
    assert_bitwise(got[0], want[0], "y")
    assert_bitwise(got[1], want[1], "argmax")


@pytest.mark.parametrize("shape", [(3, 5, 7), (130, 33, 129), (128, 64, 128)])
@pytest.mark.parametrize("minplus", [False, True])
def test_maxplus_special_values(backend, shape, minplus):
    """NaN and +inf rows (torch's scan, literally), -inf rows, zeros of both signs."""
    B, K, M = shape
    x = spoil(values(B, K, seed=4), 5, torch.nan, torch.inf, torch.nan)
    x[-1] = -torch.inf
    x[0] = 0.0
    x[0, ::3] = -0.0
    w = spoil(values(M, K, seed=6), 7, torch.nan, -torch.inf)
    for b in (None, spoil(values(M, seed=8), 9, torch.nan)):
        for with_argmax in (False, True):
            got = backend("maxplus", x, w, b, minplus, with_argmax)
            want = cpu("maxplus", x, w, b, minplus, with_argmax)
            assert_bitwise(got[0], want[0], "y")
            assert_bitwise(got[1], want[1], "argmax")


@pytest.mark.parametrize("shape", [(3, 5, 7), (130, 33, 129), (64, 100, 200)])
@pytest.mark.parametrize("bias,minplus", list(itertools.product([False, True], repeat=2)))
def test_maxplus_backward(backend, shape, bias, minplus):
    B, K, M = shape
    x, w = values(B, K, seed=10), values(M, K, seed=11)
    b = values(M, seed=12) if bias else None
    _, arg = cpu("maxplus", x, w, b, minplus, True)
    g = torch.randn(B, M, generator=torch.Generator().manual_seed(13))
    got = backend("maxplus_backward", g, arg, K, bias, minplus)
    want = cpu("maxplus_backward", g, arg, K, bias, minplus)
    for a, e, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias"), strict=True):
        assert_grad(a, e, name)


# --- sparse max-plus ----------------------------------------------------------------------------

# (x shape, dim, out, k): the product along the last dim (rows: 16, 4 or 1 per block, k % 4 == 0
# or not) and along a middle dim (columns: inner a multiple of 4 or not, tiles across samples).
SPARSE = [((40, 24), -1, 30, 4), ((3, 24), -1, 300, 3), ((5, 9), 1, 5, 2), ((20, 8), -1, 7, 8),
          ((2, 50, 3), 1, 6, 5), ((3, 12, 40), 1, 9, 4), ((2, 16, 64), 1, 20, 8),
          ((1, 7, 5, 6), 1, 4, 3), ((4, 10, 33), -2, 3, 2)]


def sparse_args(xshape, dim, out, k, seed):
    g = torch.Generator().manual_seed(seed)
    n_in = xshape[dim]
    index = torch.stack([torch.randperm(n_in, generator=g)[:k] for _ in range(out)])
    return values(*xshape, seed=seed + 1), index, values(out, k, seed=seed + 2)


@pytest.mark.parametrize("case", SPARSE)
@pytest.mark.parametrize("bias,minplus", list(itertools.product([False, True], repeat=2)))
def test_sparse_maxplus(backend, case, bias, minplus):
    check_sparse(backend, case, bias, minplus)


# Wide inputs, for the launch paths the shapes above never take (kernels/cuda/sparse_maxplus.cu,
# sparse_maxplus_forward; the emulated device opts in to 227 KiB, the kernels use at most 96 KiB):
# staged x above the default 48 KiB of dynamic shared memory (cudaFuncSetAttribute's opt-in) for
# each layout, and x too wide for shared memory (the global-memory fallback).
SPARSE_PATHS = {
    "rows16_optin": ((16, 1000), -1, 5, 4),    # 16 rows x 4000 B = 64000 B
    "rows4_optin": ((4, 4000), -1, 5, 4),      # 4 x 16000 B
    "rows1_optin": ((1, 15000), -1, 3, 5),     # 60000 B
    "rows1_global": ((1, 25000), -1, 3, 5),    # 100000 B > 96 KiB: gathered from global memory
    "cols_optin": ((2, 500, 3), 1, 4, 4),      # 500 x 32 columns x 4 B = 64000 B
    "cols_global": ((2, 800, 3), 1, 4, 4),     # 102400 B > 96 KiB
}


@pytest.mark.parametrize("path", SPARSE_PATHS)
@pytest.mark.parametrize("bias,minplus", [(True, False), (False, True)])
def test_sparse_paths(backend, path, bias, minplus):
    check_sparse(backend, SPARSE_PATHS[path], bias, minplus)


def check_sparse(backend, case, bias, minplus):
    """Forward (spoiled with NaN / +inf or not, argmax or not) bit for bit, then backward."""
    xshape, dim, out, k = case
    x, index, value = sparse_args(xshape, dim, out, k, seed=20)
    b = values(out, seed=23) if bias else None
    for spoiled in (False, True):
        if spoiled:
            x = spoil(x, 24, torch.nan, torch.inf)
            value = spoil(value, 25, torch.nan)
            b = None if b is None else spoil(b, 26, torch.nan)
        for with_argmax in (False, True):
            got = backend("sparse_maxplus", x, index, value, b, dim, minplus, with_argmax)
            want = cpu("sparse_maxplus", x, index, value, b, dim, minplus, with_argmax)
            assert_bitwise(got[0], want[0], "y")
            assert_bitwise(got[1], want[1], "argmax")
    grad = torch.randn(want[0].shape, generator=torch.Generator().manual_seed(27))
    n_in = xshape[dim]
    got = backend("sparse_maxplus_backward", grad, want[1], index, n_in, dim, bias, minplus)
    expected = cpu("sparse_maxplus_backward", grad, want[1], index, n_in, dim, bias, minplus)
    for a, e, name in zip(got, expected, ("grad_x", "grad_value", "grad_bias"), strict=True):
        assert_grad(a, e, name)


# --- morphology ---------------------------------------------------------------------------------

# (x shape, kernel, stride, padding, dilation, ceil_mode)
MORPH = [((2, 3, 9, 11), (3, 3), (1, 1), (1, 1), (1, 1), False),
         ((1, 2, 10, 13), (2, 3), (2, 3), (1, 0), (1, 2), True),
         ((2, 4, 7, 7), (3, 3), (2, 2), (1, 1), (2, 1), True),
         ((1, 3, 5, 40), (1, 4), (1, 3), (0, 2), (1, 1), False)]


@pytest.mark.parametrize("case", MORPH)
@pytest.mark.parametrize("full,erode", list(itertools.product([False, True], repeat=2)))
def test_morphology(backend, case, full, erode):
    xshape, kernel, stride, padding, dilation, ceil_mode = case
    wshape = (5, xshape[1], *kernel) if full else (xshape[1], *kernel)
    op = "erosion2d" if erode else "dilation2d"
    x, w = values(*xshape, seed=30), values(*wshape, seed=31)
    for spoiled in (False, True):
        if spoiled:
            x = spoil(x, 32, torch.nan, torch.inf, -torch.inf, torch.nan)
        for with_argmax in (False, True):
            args = (x, w, list(stride), list(padding), list(dilation), ceil_mode, with_argmax)
            got, want = backend(op, *args), cpu(op, *args)
            assert_bitwise(got[0], want[0], "y")
            assert_bitwise(got[1], want[1], "argmax")
    grad = torch.randn(want[0].shape, generator=torch.Generator().manual_seed(33))
    args = (grad, want[1], list(xshape), list(wshape), list(stride), list(padding), list(dilation))
    got, expected = backend(f"{op}_backward", *args), cpu(f"{op}_backward", *args)
    for a, e, name in zip(got, expected, ("grad_x", "grad_weight"), strict=True):
        assert_grad(a, e, name)


def test_morphology_large_se_backward(backend):
    """C * kh * kw past the shared-memory sum of the SE gradient."""
    x, w = values(1, 1000, 3, 3, seed=34, special=False), values(2, 1000, 3, 3, seed=35, special=False)
    y, arg = cpu("dilation2d", x, w, [1, 1], [1, 1], [1, 1], False, True)
    assert_bitwise(backend("dilation2d", x, w, [1, 1], [1, 1], [1, 1], False, True)[1], arg, "argmax")
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(36))
    args = (grad, arg, [1, 1000, 3, 3], [2, 1000, 3, 3], [1, 1], [1, 1], [1, 1])
    got, expected = backend("dilation2d_backward", *args), cpu("dilation2d_backward", *args)
    for a, e in zip(got, expected, strict=True):
        assert_grad(a, e)


# --- bit-packed boolean operators ---------------------------------------------------------------

BIT_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
              torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", BIT_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 130, 3, 2)])
def test_pack_unpack(backend, dtype, shape):
    x = torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(40)).to(dtype)
    if dtype.is_floating_point:
        x.view(-1)[0], x.view(-1)[-1] = -0.0, torch.nan  # a zero, and a one
    packed = backend("pack_bits", x)
    assert_bitwise(packed, cpu("pack_bits", x), "packed")
    assert_bitwise(backend("unpack_bits", packed, shape[1], dtype),
                   cpu("unpack_bits", packed, shape[1], dtype), "unpacked")


# (N, C, H, W, O, kh, kw, stride, padding, dilation, weight range)
BOOL_CONV = [(2, 64, 6, 7, 64, 3, 3, (1, 1), (1, 1), (1, 1), (0, 2)),
             (1, 70, 5, 5, 10, 3, 2, (2, 1), (1, 0), (1, 2), (-1, 2)),
             (2, 130, 4, 4, 65, 1, 1, (1, 1), (0, 0), (1, 1), (-3, 4)),
             (1, 5, 8, 8, 3, 3, 3, (1, 1), (2, 2), (2, 2), (-7, 8)),
             (1, 100, 4, 4, 5, 3, 3, (1, 1), (1, 1), (1, 1), (-2**25, 2**25))]  # int64 sums


@pytest.mark.parametrize("case", BOOL_CONV)
def test_bool_conv2d(backend, case):
    n, c, h, w, o, kh, kw, stride, padding, dilation, (lo, hi) = case
    g = torch.Generator().manual_seed(41)
    x = cpu("pack_bits", torch.randint(0, 2, (n, c, h, w), generator=g))
    pos, neg = pack_conv_weight(torch.randint(lo, hi, (o, c, kh, kw), generator=g))
    threshold = torch.randint(-5, 6, (o,), generator=g) * max(1, hi // 8)
    args = (x, pos, neg, threshold, list(stride), list(padding), list(dilation))
    assert_bitwise(backend("bool_conv2d", *args), cpu("bool_conv2d", *args))


@pytest.mark.parametrize("whole_words", [False, True])
def test_bool_conv2d_extreme_thresholds(backend, whole_words):
    """int32 counters start at -threshold clamped to +-(S + 1), S the largest |sum| (here
    64 * 9 * 1 = 576): thresholds far past it and at its edges. whole_words: enough pixels for
    whole-word (64-channel) threads on the emulated 4 SMs, else quarter words."""
    g = torch.Generator().manual_seed(43)
    n, hw = (4, 24) if whole_words else (1, 5)
    x = cpu("pack_bits", torch.randint(0, 2, (n, 64, hw, hw), generator=g))
    o = 70
    pos, neg = pack_conv_weight(torch.randint(-1, 2, (o, 64, 3, 3), generator=g))
    edges = [-2**62, 2**62, -2**40, 2**40, -578, -577, -576, -575, 575, 576, 577, 578, 0, 1, -1]
    threshold = torch.tensor(edges + torch.randint(-40, 41, (o - len(edges),), generator=g).tolist())
    x_all = x.clone()
    x_all[0] = -1  # all ones (every bit set): sums reach the bound where the weights allow
    for xs in (x, x_all):
        args = (xs, pos, neg, threshold, [1, 1], [1, 1], [1, 1])
        assert_bitwise(backend("bool_conv2d", *args), cpu("bool_conv2d", *args))


@pytest.mark.parametrize("op", ["binary_dilation2d", "binary_erosion2d"])
@pytest.mark.parametrize("case", [(2, 3, 7, 8, 3, 3, (1, 1), (1, 1), (1, 1)),
                                  (1, 70, 6, 5, 2, 3, (2, 1), (0, 1), (2, 1)),
                                  (1, 128, 4, 4, 3, 3, (1, 1), (1, 1), (1, 1))])
def test_binary_morphology(backend, op, case):
    n, c, h, w, kh, kw, stride, padding, dilation = case
    g = torch.Generator().manual_seed(42)
    x = cpu("pack_bits", torch.randint(0, 2, (n, c, h, w), generator=g))
    se = torch.rand(c, kh, kw, generator=g) < 0.6
    se[0] = False  # an empty SE: 0 for dilation, 1 for erosion
    args = (x, se, list(stride), list(padding), list(dilation))
    assert_bitwise(backend(op, *args), cpu(op, *args))


# --- GPU only: dtypes, autograd, opcheck, torch.compile -------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rejects_other_float_dtypes(gpu, dtype):
    x, w = torch.randn(4, 8, device="cuda", dtype=dtype), torch.randn(3, 8, device="cuda", dtype=dtype)
    with pytest.raises(RuntimeError, match="float32 only"):
        torch.ops.tropfx.maxplus(x, w, None, False, True)


def test_autograd_matches_cpu(gpu):
    x, w, b = values(70, 40, seed=50), values(30, 40, seed=51), values(30, seed=52)
    grads = []
    for device in ("cpu", "cuda"):
        leaves = [t.to(device).requires_grad_() for t in (x, w, b)]
        y, _ = torch.ops.tropfx.maxplus(*leaves, False, True)
        (y * torch.arange(30, device=device)).sum().backward()
        grads.append([t.grad.cpu() for t in leaves])
    for a, e in zip(*reversed(grads), strict=True):
        assert_grad(a, e)


def _opcheck_args(case: str) -> tuple:
    g = torch.Generator().manual_seed(60)
    x, w, b = torch.randn(6, 10, generator=g), torch.randn(4, 10, generator=g), torch.randn(4, generator=g)
    img = torch.randn(2, 3, 6, 6, generator=g)
    bits = torch.randint(0, 2, (1, 8, 5, 5), generator=g)
    packed = torch.ops.tropfx.pack_bits(bits)
    if case == "maxplus":
        return x, w, b, False, True
    if case == "minplus":
        return x, w, None, True, True
    if case == "sparse_maxplus":
        index = torch.stack([torch.randperm(10, generator=g)[:3] for _ in range(5)])
        return x, index, torch.randn(5, 3, generator=g), None, -1, False, True
    if case == "dilation2d":
        return img, torch.randn(3, 3, 3, generator=g), [1, 1], [1, 1], [1, 1], False, True
    if case == "erosion2d":
        return img, torch.randn(4, 3, 3, 3, generator=g), [2, 2], [1, 1], [1, 1], True, True
    if case == "pack_bits":
        return (bits,)
    if case == "unpack_bits":
        return packed, 8, None
    if case == "bool_conv2d":
        pos, neg = pack_conv_weight(torch.randint(-1, 2, (4, 8, 3, 3), generator=g))
        return packed, pos, neg, torch.zeros(4, dtype=torch.int64), [1, 1], [1, 1], [1, 1]
    assert case == "binary_dilation2d"
    return packed, torch.rand(8, 3, 3, generator=g) < 0.5, [1, 1], [1, 1], [1, 1]


@pytest.mark.parametrize("case", ["maxplus", "minplus", "sparse_maxplus", "dilation2d", "erosion2d",
                                  "pack_bits", "unpack_bits", "bool_conv2d", "binary_dilation2d"])
def test_opcheck(gpu, case):
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _opcheck_args(case))
    if args[0].is_floating_point():
        args = (args[0].requires_grad_(),) + args[1:]
    op = "maxplus" if case == "minplus" else case
    torch.library.opcheck(getattr(torch.ops.tropfx, op).default, args)


def test_torch_compile(gpu):
    x, w, b = (values(33, 20, seed=70).cuda(), values(9, 20, seed=71).cuda(), values(9, seed=72).cuda())
    img, se = values(2, 3, 8, 8, seed=73).cuda(), values(3, 3, 3, seed=74).cuda()

    def f(x, w, b, img, se):
        y = torch.ops.tropfx.maxplus(x, w, b, False, False)[0]
        z = torch.ops.tropfx.dilation2d(img, se, [1, 1], [1, 1], [1, 1], False, False)[0]
        return y, z

    compiled = torch.compile(f, fullgraph=True)
    for a, e in zip(compiled(x, w, b, img, se), f(x, w, b, img, se), strict=True):
        assert_bitwise(a.cpu(), e.cpu())
