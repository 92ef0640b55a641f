"""The C++ CPU kernels (torch.ops.tropfx): bitwise equal to their pure-torch references, which are
bitwise equal to tropfx.nn; gradients; opcheck; dtypes; the fallback when the build fails.

Bitwise means: equal values, equal signs of zero, NaN at the same places (NaN payloads aside).
Gradients are compared as values: a zero gradient may be +0 in one and -0 in the other (autograd
writes a lone -0 contribution where the kernels add it to +0). Gradient sums over a batch round in
the kernels' order; where the reference sums in another order the tests use gradients of small
integers, whose sums are exact in any order.
"""

import functools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tropfx import kernels as K
from tropfx.kernels import _build
from tropfx.kernels import reference as R
from tropfx.nn import functional as TF
from tropfx.nn import morphology as TM

INF = math.inf
FLOATS = (torch.float32, torch.float64)


@pytest.fixture(scope="session")
def ops():
    """The compiled library, built once per session (cached across sessions in $TROPFX_CACHE)."""
    if not K.load():
        pytest.skip(f"C++ kernels unavailable: {K.build_info()['error']}")
    return torch.ops.tropfx


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, zero_sign: bool = True) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}"
    if not actual.is_floating_point():
        assert torch.equal(actual, expected)
        return
    nan_a, nan_e = actual.isnan(), expected.isnan()
    same = actual == expected
    if zero_sign:
        same &= actual.signbit() == expected.signbit()
    same |= nan_a & nan_e
    assert bool(same.all()), (
        f"{int((~same).sum())} of {same.numel()} differ, first at {(~same).nonzero()[0].tolist()}: "
        f"{actual[~same][:4].tolist()} vs {expected[~same][:4].tolist()}")


def grid(shape, dtype, gen, scale=4) -> torch.Tensor:
    """Values on a coarse grid (many exact ties between sums) with a sprinkle of -inf and of -0.0
    (+0 and -0 tie, and which one wins shows in the sign of the result)."""
    t = (torch.randint(-scale, scale + 1, shape, generator=gen) / 2).to(dtype)
    t[torch.rand(shape, generator=gen) < 0.05] = -INF
    t[torch.rand(shape, generator=gen) < 0.05] = -0.0
    return t


def spoil(x: torch.Tensor, gen) -> torch.Tensor:
    """A copy with some NaN, +inf and -inf entries (rows hit by them take the exact paths)."""
    x = x.clone()
    flat = x.view(-1)
    for value in (math.nan, INF, -INF):
        flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 50),), generator=gen)] = value
    return x


def int_grad(shape, dtype, gen) -> torch.Tensor:
    return torch.randint(-3, 4, shape, generator=gen).to(dtype)


def autograd_grads(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None
              for t in inputs]
    fn(*leaves).backward(grad)
    return [None if t is None or not t.is_floating_point() else t.grad for t in leaves]


# --- dense max-plus -----------------------------------------------------------------------------

# (12, 64, 64) and (5, 136, 96): inputs in whole blocks of 8 and whole panels (the argmax re-scan's
# straight loop).
DENSE_SHAPES = [(1, 1, 1), (3, 5, 2), (7, 13, 19), (37, 65, 33), (6, 64, 16), (50, 130, 70),
                (12, 64, 64), (5, 136, 96)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("batch,inner,out", DENSE_SHAPES)
def test_maxplus_forward_is_bitwise_the_reference(ops, dtype, batch, inner, out):
    gen = torch.Generator().manual_seed(batch * 1000 + inner)
    for minplus in (False, True):
        for has_bias in (False, True):
            x = grid((batch, inner), dtype, gen)
            if batch > 2:
                x = spoil(x, gen)
            w = grid((out, inner), dtype, gen)
            b = grid((out,), dtype, gen) if has_bias else None
            y, arg = ops.maxplus(x, w, b, minplus, True)
            y_ref, arg_ref = R.maxplus_reference(x, w, b, minplus, True)
            assert_bitwise(y, y_ref)
            assert_bitwise(arg, arg_ref)
            assert_bitwise(y_ref, (TF.minplus if minplus else TF.maxplus)(x, w, b))
            y_only, empty = ops.maxplus(x, w, b, minplus, False)
            assert_bitwise(y_only, y_ref)
            assert empty.shape == (0,)


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 20), inner=st.integers(1, 80), out=st.integers(1, 80),
       minplus=st.booleans(), has_bias=st.booleans(), spoiled_x=st.booleans(),
       spoiled_w=st.booleans(), seed=st.integers(0, 2**31))
def test_maxplus_random_shapes_are_bitwise_the_reference(ops, batch, inner, out, minplus, has_bias,
                                                         spoiled_x, spoiled_w, seed):
    # Whole and partial panels, inputs past and short of the packing's 8 x 8 blocks, NaN / +inf in
    # x (those rows take the exact path) or in w (then every row does).
    gen = torch.Generator().manual_seed(seed)
    x, w = grid((batch, inner), torch.float32, gen), grid((out, inner), torch.float32, gen)
    x, w = spoil(x, gen) if spoiled_x else x, spoil(w, gen) if spoiled_w else w
    b = grid((out,), torch.float32, gen) if has_bias else None
    y, arg = ops.maxplus(x, w, b, minplus, True)
    y_ref, arg_ref = R.maxplus_reference(x, w, b, minplus, True)
    assert_bitwise(y, y_ref)
    assert_bitwise(arg, arg_ref)
    assert_bitwise(ops.maxplus(x, w, b, minplus, False)[0], y_ref)


@pytest.mark.parametrize("minplus", [False, True])
@pytest.mark.parametrize("inner", [9, 64])
def test_maxplus_bias_wins_a_tie_with_the_maximum(ops, minplus, inner):
    # The bias equal to row 0's maximum for every output: row 0's argmax is -1 throughout, the other
    # rows' wherever they do not exceed it (64 inputs: whole blocks of 8; 64 outputs: whole panels).
    gen = torch.Generator().manual_seed(inner)
    x, w = grid((5, inner), torch.float32, gen), grid((64, inner), torch.float32, gen)
    b = R.maxplus_reference(x[:1], w, None, minplus, False)[0][0]
    y, arg = ops.maxplus(x, w, b, minplus, True)
    y_ref, arg_ref = R.maxplus_reference(x, w, b, minplus, True)
    assert_bitwise(y, y_ref)
    assert_bitwise(arg, arg_ref)
    assert bool((arg[0] == -1).all())


@pytest.mark.parametrize("minplus", [False, True])
def test_maxplus_bias_wins_a_tie_of_signed_zeros(ops, minplus):
    # Every term is -0 (max-plus: -0 + -0) and the bias +0, or the mirror for min-plus: the bias
    # wins the tie, which only the sign of the zero shows; 40 outputs = a whole panel and a part.
    zero = 0.0 if minplus else -0.0
    x, w, b = torch.full((7, 9), zero), torch.full((40, 9), zero), torch.full((40,), -zero)
    y, arg = ops.maxplus(x, w, b, minplus, True)
    y_ref, arg_ref = R.maxplus_reference(x, w, b, minplus, True)
    assert_bitwise(y, y_ref)
    assert_bitwise(arg, arg_ref)
    assert bool((y.signbit() == minplus).all()) and bool((arg == -1).all())
    assert_bitwise(ops.maxplus(x, w, b, minplus, False)[0], y_ref)


def test_maxplus_takes_leading_dims_and_nan_weights(ops):
    gen = torch.Generator().manual_seed(1)
    x = grid((2, 3, 9), torch.float32, gen)
    w = grid((4, 9), torch.float32, gen)
    w[1, 3] = math.nan
    w[2, 0] = INF
    bias = torch.tensor([0.0, math.nan, -INF, 1.0])
    y, arg = ops.maxplus(x, w, bias, False, True)
    y_ref, arg_ref = R.maxplus_reference(x, w, bias, False, True)
    assert_bitwise(y, y_ref)
    assert_bitwise(arg, arg_ref)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("minplus", [False, True])
def test_maxplus_gradients_are_the_reference_scatter(ops, dtype, minplus):
    gen = torch.Generator().manual_seed(2)
    x, w, b = grid((23, 37), dtype, gen), grid((19, 37), dtype, gen), grid((19,), dtype, gen)
    ref_fn = TF.minplus if minplus else TF.maxplus
    kernel_fn = K.minplus if minplus else K.maxplus
    for grad in (int_grad((23, 19), dtype, gen), torch.randn(23, 19, generator=gen).to(dtype)):
        got = autograd_grads(kernel_fn, (x, w, b), grad)
        want = autograd_grads(ref_fn, (x, w, b), grad)
        assert_bitwise(got[0], want[0], False)  # the same scatter order: equal for random grads
        assert_bitwise(got[1], want[1], False)
        torch.testing.assert_close(got[2], want[2], rtol=1e-12 if dtype == torch.float64 else 1e-6,
                                   atol=0)
        _, arg = ops.maxplus(x, w, b, minplus, True)
        for g_op, g_ref in zip(ops.maxplus_backward(grad, arg, 37, True, minplus),
                               R.maxplus_backward_reference(grad, arg, 37, True, minplus), strict=True):
            torch.testing.assert_close(g_op, g_ref, rtol=1e-6, atol=0)


def test_maxplus_gradcheck_float64_away_from_ties():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(K.maxplus, (x, w, b))
    assert torch.autograd.gradcheck(K.minplus, (x, w, b))


# --- sparse max-plus ----------------------------------------------------------------------------

SPARSE_CASES = [((1, 5), -1, 3, 1), ((9, 17), -1, 11, 2), ((17,), 0, 9, 3), ((13, 40), 1, 21, 6),
                ((3, 17, 4, 5), 1, 9, 3), ((2, 5, 33), -2, 7, 2), ((4, 3, 31), 2, 12, 5)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,dim,out,k", SPARSE_CASES)
def test_sparse_maxplus_forward_and_backward_are_the_reference(ops, dtype, shape, dim, out, k):
    gen = torch.Generator().manual_seed(len(shape) * 100 + out)
    n_in = shape[dim]
    index = torch.rand(out, n_in, generator=gen).topk(k, dim=1).indices.sort(dim=1).values
    for minplus in (False, True):
        for has_bias in (False, True):
            x = spoil(grid(shape, dtype, gen), gen) if math.prod(shape) > 40 else grid(shape, dtype, gen)
            value = grid((out, k), dtype, gen)
            bias = grid((out,), dtype, gen) if has_bias else None
            y, arg = ops.sparse_maxplus(x, index, value, bias, dim, minplus, True)
            y_ref, arg_ref = R.sparse_maxplus_reference(x, index, value, bias, dim, minplus, True)
            assert_bitwise(y, y_ref)
            assert_bitwise(arg, arg_ref)
            fn = TF.sparse_minplus if minplus else TF.sparse_maxplus
            assert_bitwise(y_ref, fn(x, index, value, bias, dim=dim))
            grad = int_grad(y.shape, dtype, gen)
            got = ops.sparse_maxplus_backward(grad, arg, index, n_in, dim, has_bias, minplus)
            want = R.sparse_maxplus_backward_reference(grad, arg_ref, index, n_in, dim, has_bias,
                                                       minplus)
            for g_op, g_ref in zip(got, want, strict=True):
                assert_bitwise(g_op, g_ref, False)
            # the reference backward is autograd's through tropfx.nn.functional
            finite = x.nan_to_num(0.0, 0.0, 0.0)
            wrapper = K.sparse_minplus if minplus else K.sparse_maxplus
            via_op = autograd_grads(lambda a, v, b, f=wrapper: f(a, index, v, b, dim=dim),
                                    (finite, value, bias), grad)
            via_ref = autograd_grads(lambda a, v, b, f=fn: f(a, index, v, b, dim=dim),
                                     (finite, value, bias), grad)
            for g_op, g_ref in zip(via_op, via_ref, strict=True):
                if g_ref is not None:
                    assert_bitwise(g_op, g_ref, False)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 20), n_in=st.integers(1, 40), out=st.integers(1, 40), k=st.integers(1, 6),
       spoiled=st.booleans(), nan_bias=st.booleans(), minplus=st.booleans(), seed=st.integers(0, 2**31))
def test_sparse_maxplus_rows_match_the_reference(ops, rows, n_in, out, k, spoiled, nan_bias, minplus,
                                                  seed):
    """The last-dim layout: gathered 8 outputs at a time, a row redone exactly when a term is NaN
    (NaN or +-inf in x meeting -+inf values), a NaN bias kept."""
    k = min(k, n_in)
    gen = torch.Generator().manual_seed(seed)
    index = torch.rand(out, n_in, generator=gen).topk(k, dim=1).indices.sort(dim=1).values
    x = grid((rows, n_in), torch.float32, gen)
    x = spoil(x, gen) if spoiled else x
    value = grid((out, k), torch.float32, gen)
    bias = grid((out,), torch.float32, gen)
    if nan_bias:
        bias[torch.rand(out, generator=gen) < 0.3] = math.nan
    for with_argmax in (False, True):
        y, arg = ops.sparse_maxplus(x, index, value, bias, -1, minplus, with_argmax)
        y_ref, arg_ref = R.sparse_maxplus_reference(x, index, value, bias, -1, minplus, with_argmax)
        assert_bitwise(y, y_ref)
        if with_argmax:
            assert_bitwise(arg, arg_ref)


def test_sparse_maxplus_grad_x_is_bitwise_for_random_grads(ops):
    gen = torch.Generator().manual_seed(4)
    x, value = torch.randn(6, 20, 5, generator=gen), torch.randn(30, 3, generator=gen)
    index = torch.rand(30, 20, generator=gen).topk(3, dim=1).indices.sort(dim=1).values
    grad = torch.randn(6, 30, 5, generator=gen)
    got = autograd_grads(lambda a: K.sparse_maxplus(a, index, value, dim=1), (x,), grad)
    want = autograd_grads(lambda a: TF.sparse_maxplus(a, index, value, dim=1), (x,), grad)
    assert_bitwise(got[0], want[0], False)


def test_sparse_maxplus_rejects_bad_indices(ops):
    with pytest.raises(IndexError, match=r"index holds 4, outside \[0, 4\)"):
        ops.sparse_maxplus(torch.randn(2, 4), torch.tensor([[0, 4]]), torch.zeros(1, 2), None)


# --- morphology ---------------------------------------------------------------------------------

# (x shape, weight shape, stride, padding, dilation, ceil_mode)
MORPH_CASES = [
    ((2, 3, 9, 11), (3, 3, 3), (1, 1), (1, 1), (1, 1), False),
    ((2, 3, 9, 11), (3, 3, 2), (2, 1), (1, 0), (1, 2), True),
    ((1, 4, 7, 40), (5, 4, 2, 3), (1, 1), (0, 1), (1, 1), False),
    ((2, 3, 10, 10), (3, 3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 2, 6, 6), (2, 2, 2), (1, 1), (3, 3), (1, 1), False),  # windows wholly in the padding
    ((3, 2, 5, 13), (3, 2, 1, 4), (1, 3), (0, 2), (1, 1), True),
    ((1, 5, 12, 70), (5, 2, 2), (2, 2), (0, 0), (1, 1), False),  # max pooling 2x2
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,ceil_mode", MORPH_CASES)
def test_morphology_is_bitwise_the_reference(ops, dtype, x_shape, w_shape, stride, padding,
                                             dilation, ceil_mode):
    gen = torch.Generator().manual_seed(sum(x_shape) + len(w_shape))
    x = spoil(grid(x_shape, dtype, gen), gen)
    x[0] = grid(x_shape[1:], dtype, gen)  # one clean sample: the fast paths
    for se in ("random", "flat", "flat_constant"):
        w = grid(w_shape, dtype, gen)
        if se != "random":
            w = torch.full(w_shape, 0.0 if se == "flat" else -1.5, dtype=dtype)
        for name in ("dilation2d", "erosion2d"):
            args = (stride, padding, dilation, ceil_mode)
            y, arg = getattr(ops, name)(x, w, *args, True)
            y_ref, arg_ref = getattr(R, f"{name}_reference")(x, w, *args, True)
            assert_bitwise(y, y_ref)
            assert_bitwise(arg, arg_ref)
            assert_bitwise(y_ref, getattr(TM, name)(x, w, *args))
            assert_bitwise(getattr(ops, name)(x, w, *args, False)[0], y_ref)
            grad = int_grad(y.shape, dtype, gen)
            got = getattr(ops, f"{name}_backward")(grad, arg, x.shape, w.shape, stride, padding,
                                                   dilation)
            want = getattr(R, f"{name}_backward_reference")(grad, arg_ref, x.shape, w.shape,
                                                             stride, padding, dilation)
            for g_op, g_ref in zip(got, want, strict=True):
                assert_bitwise(g_op, g_ref, False)
            finite = x.nan_to_num(0.0, 0.0, 0.0)
            via_op = autograd_grads(functools.partial(_call, getattr(K, name), args), (finite, w),
                                    grad)
            via_ref = autograd_grads(functools.partial(_call, getattr(TM, name), args), (finite, w),
                                     grad)
            for g_op, g_ref in zip(via_op, via_ref, strict=True):
                assert_bitwise(g_op, g_ref, False)


def _call(fn, args, x, w):
    return fn(x, w, *args)


def test_morphology_1d_and_flat_se_is_max_pooling(ops):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 29, generator=gen)
    for fn, ref in ((K.dilation1d, TM.dilation1d), (K.erosion1d, TM.erosion1d)):
        for w in (torch.randn(4, 3, generator=gen), torch.randn(6, 4, 2, generator=gen)):
            grad = int_grad(ref(x, w, 2, 1, 2, True).shape, torch.float32, gen)
            got = autograd_grads(lambda a, b, fn=fn: fn(a, b, 2, 1, 2, True), (x, w), grad)
            want = autograd_grads(lambda a, b, ref=ref: ref(a, b, 2, 1, 2, True), (x, w), grad)
            assert_bitwise(fn(x, w, 2, 1, 2, True), ref(x, w, 2, 1, 2, True))
            for g_op, g_ref in zip(got, want, strict=True):
                assert_bitwise(g_op, g_ref, False)
    x2 = torch.randn(2, 8, 15, 15, generator=gen)
    pooled = K.dilation2d(x2, torch.zeros(8, 3, 3), 2, 1)
    torch.testing.assert_close(pooled, torch.nn.functional.max_pool2d(x2, 3, 2, 1), rtol=0, atol=0)


def test_morphology_gradcheck_float64_away_from_ties():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    for w in (torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)):
        assert torch.autograd.gradcheck(lambda a, b: K.dilation2d(a, b, 1, 1), (x, w), fast_mode=True)
        assert torch.autograd.gradcheck(lambda a, b: K.erosion2d(a, b, 2, 0, 1, True), (x, w),
                                        fast_mode=True)


def test_morphology_large_planes_and_many_channels(ops):
    """Sizes past the vector tiles, both forms, stride 1 (the contiguous loads)."""
    gen = torch.Generator().manual_seed(7)
    x = grid((2, 16, 19, 45), torch.float32, gen)
    for w in (grid((16, 3, 5), torch.float32, gen), grid((9, 16, 2, 2), torch.float32, gen)):
        y, arg = ops.dilation2d(x, w, (1, 1), (1, 2), (1, 1), False, True)
        y_ref, arg_ref = R.dilation2d_reference(x, w, (1, 1), (1, 2), (1, 1), False, True)
        assert_bitwise(y, y_ref)
        assert_bitwise(arg, arg_ref)


# --- bit-packed boolean operators ---------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3, 64, 65, 130])
def test_pack_and_unpack_bits(ops, channels):
    gen = torch.Generator().manual_seed(channels)
    x = torch.rand(2, channels, 5, 7, generator=gen) > 0.5
    packed = ops.pack_bits(x)
    assert packed.dtype == torch.uint64 and packed.shape == (2, 5, 7, -(-channels // 64))
    assert_bitwise(packed, R.pack_bits_reference(x))
    assert_bitwise(ops.pack_bits(x.float() * 3.0), packed)  # nonzero = 1
    assert_bitwise(ops.unpack_bits(packed, channels, torch.bool), x)
    assert_bitwise(ops.unpack_bits(packed, channels, None), x.float())
    assert_bitwise(R.unpack_bits_reference(packed, channels, torch.bool), x)


@settings(max_examples=60, deadline=None)
@given(channels=st.integers(1, 140), h=st.integers(1, 3), w=st.integers(1, 140),
       dtype=st.sampled_from([torch.bool, torch.uint8, torch.int8, torch.int32, torch.float32,
                              torch.float64]),
       seed=st.integers(0, 2**31))
def test_pack_and_unpack_match_the_reference_for_every_dtype(ops, channels, h, w, dtype, seed):
    """Rows of any length (whole 32-byte / 8-float chunks, the tail), channels across words; for
    floats NaN and inf are nonzero, -0.0 is zero."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(2, channels, h, w, generator=gen) < 0.5).to(dtype)
    if dtype.is_floating_point:
        x = x * torch.randint(-3, 4, x.shape, generator=gen).to(dtype)
        flat = x.view(-1)
        for value in (math.nan, INF, -0.0):
            flat[torch.randint(0, flat.numel(), (3,), generator=gen)] = value
    packed = ops.pack_bits(x)
    assert_bitwise(packed, R.pack_bits_reference(x))
    for out in (torch.bool, torch.uint8, torch.float32, torch.float64):
        assert_bitwise(ops.unpack_bits(packed, channels, out), R.unpack_bits_reference(packed, channels, out))


@pytest.mark.parametrize("channels,out,low,high", [(3, 5, 0, 1), (64, 64, 0, 1), (64, 9, -1, 1),
                                                    (70, 130, -2, 3), (130, 7, -5, 6)])
def test_bool_conv2d_is_the_reference(ops, channels, out, low, high):
    gen = torch.Generator().manual_seed(channels * out)
    x = ops.pack_bits(torch.rand(2, channels, 9, 11, generator=gen) > 0.5)
    weight = torch.randint(low, high + 1, (out, channels, 3, 3), generator=gen)
    pos, neg = K.pack_conv_weight(weight)
    threshold = torch.randint(-5, 10, (out,), generator=gen)
    for stride, padding, dilation in [((1, 1), (1, 1), (1, 1)), ((2, 1), (0, 2), (1, 2)),
                                      ((1, 3), (2, 0), (2, 1))]:
        y = ops.bool_conv2d(x, pos, neg, threshold, stride, padding, dilation)
        assert_bitwise(y, R.bool_conv2d_reference(x, pos, neg, threshold, stride, padding, dilation))
    # the definition itself, on unpacked tensors
    xf = K.unpack_bits(x, channels, torch.float64)
    conv = torch.nn.functional.conv2d(xf, weight.double(), padding=1)
    expected = conv >= threshold.double()[:, None, None]
    assert_bitwise(K.unpack_bits(K.bool_conv2d(x, pos, neg, threshold, 1, 1), out, torch.bool),
                   expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bool_conv2d_matches_the_reference_on_random_shapes(ops, data):
    """Both CPU paths (bit-sliced at stride 1, popcount otherwise) over random geometry: rows longer
    than one 64-bit word, channels across words, dilation, padding beyond the kernel, signed
    multi-plane weights and thresholds past either end of the reachable sums."""
    draw = data.draw
    channels, out = draw(st.integers(1, 140)), draw(st.integers(1, 70))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    stride = draw(st.sampled_from([(1, 1), (1, 1), (2, 1), (1, 2)]))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 150))
    low, high = draw(st.sampled_from([(0, 1), (0, 1), (-1, 1), (-3, 2), (0, 5)]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = ops.pack_bits(torch.rand(draw(st.integers(1, 2)), channels, h, w, generator=gen) < draw(
        st.sampled_from([0.1, 0.5, 0.9])))
    weight = torch.randint(low, high + 1, (out, channels, kh, kw), generator=gen)
    pos, neg = K.pack_conv_weight(weight)
    reach = int(weight.clamp(min=0).sum((1, 2, 3)).max())
    threshold = torch.randint(-reach - 2, reach + 3, (out,), generator=gen)
    args = (stride, (ph, pw), (dh, dw))
    assert_bitwise(ops.bool_conv2d(x, pos, neg, threshold, *args),
                   R.bool_conv2d_reference(x, pos, neg, threshold, *args))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_bool_conv2d_shared_quads_match_the_reference(ops, data):
    """{0, 1} weights dense enough, and thresholds in the middle of each channel's count, make the
    bit-sliced kernel count four channels at a time (taps grouped by which of the four read them,
    the groups' counts added per channel); some channels with thresholds at either end or past them
    break quads up. Rows long enough for the sliced path, channels across words, kernels up to 5 x 5."""
    draw = data.draw
    channels, out = draw(st.integers(1, 140)), draw(st.integers(4, 40))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
    w = draw(st.integers(max(48, dw * (kw - 1) + 1 - 2 * pw), 140))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    # up to 4 images: more images than threads, and fewer
    x = ops.pack_bits(torch.rand(draw(st.integers(1, 4)), channels, h, w, generator=gen) < draw(
        st.sampled_from([0.2, 0.5, 0.8])))
    weight = (torch.rand(out, channels, kh, kw, generator=gen) < draw(
        st.sampled_from([0.4, 0.6, 0.9]))).long()
    size = weight.sum((1, 2, 3))
    # mostly between a quarter and three quarters of |S|, a few anywhere in [-1, |S| + 1]
    mid = size // 4 + 1 + (torch.rand(out, generator=gen) * (size // 2).clamp(min=1)).long()
    anywhere = (torch.rand(out, generator=gen) * (size + 3).double()).long() - 1
    threshold = torch.where(torch.rand(out, generator=gen) < 0.9, mid, anywhere)
    pos, neg = K.pack_conv_weight(weight)
    args = ((1, 1), (ph, pw), (dh, dw))
    assert_bitwise(ops.bool_conv2d(x, pos, neg, threshold, *args),
                   R.bool_conv2d_reference(x, pos, neg, threshold, *args))


@pytest.mark.parametrize("density", [1.0, 0.97])
def test_bool_conv2d_quad_sums_carry_into_their_top_planes(ops, density):
    """A quad whose pattern counts fill their planes: patterns 1 (channel 0 alone), 5 (channels 0
    and 2) and 15 (all four) of 120 taps each, so every pattern count needs 7 planes and channel
    0's partial sum of patterns 1 and 5 (240 on all-ones input) carries into an eighth; the
    thresholds sit where a lost carry flips the output."""
    gen = torch.Generator().manual_seed(7)
    taps = torch.randperm(64 * 9, generator=gen)
    one, five, fifteen = taps[:120], taps[120:240], taps[240:360]
    weight = torch.zeros(4, 64 * 9, dtype=torch.long)
    weight[0, torch.cat([one, five, fifteen])] = 1
    weight[2, torch.cat([five, fifteen])] = 1
    weight[[1, 3], fifteen[:, None]] = 1
    weight = weight.view(4, 64, 3, 3)
    threshold = torch.tensor([250, 61, 121, 61])
    x = ops.pack_bits(torch.rand(2, 64, 12, 60, generator=gen) < density)
    pos, neg = K.pack_conv_weight(weight)
    args = ((1, 1), (0, 0), (1, 1))
    y = ops.bool_conv2d(x, pos, neg, threshold, *args)
    assert_bitwise(y, R.bool_conv2d_reference(x, pos, neg, threshold, *args))
    if density == 1.0:  # every count is |S|: all fire
        assert bool(K.unpack_bits(y, 4, torch.bool).all())


@pytest.mark.parametrize("density", [0.02, 0.5, 0.98])
def test_bool_conv2d_extreme_thresholds_exit_early_and_exactly(ops, density):
    """Dilation-like (t = 1, 2) and erosion-like (t = |S|, |S| - 1) neurons over many taps: the
    bit-sliced kernel may stop counting once every lane is decided; the bits must not change."""
    gen = torch.Generator().manual_seed(int(density * 100))
    x = ops.pack_bits(torch.rand(2, 96, 7, 64, generator=gen) < density)
    weight = (torch.rand(8, 96, 3, 3, generator=gen) < 0.6).long()
    size = weight.sum((1, 2, 3))
    threshold = torch.stack([torch.tensor(1), torch.tensor(2), size[2], size[3] - 1, size[4] - 5,
                             size[5] // 5, size[6], size[7] + 1])
    pos, neg = K.pack_conv_weight(weight)
    for padding in ((1, 1), (0, 0)):
        assert_bitwise(ops.bool_conv2d(x, pos, neg, threshold, (1, 1), padding, (1, 1)),
                       R.bool_conv2d_reference(x, pos, neg, threshold, (1, 1), padding, (1, 1)))


@pytest.mark.parametrize("width", [41, 62, 64, 100, 128])
def test_bool_conv2d_early_exit_waits_for_the_last_pixel_of_a_row(ops, width):
    """Every pixel decided early but one at the end of a row (and one in the last row): a dilation
    over ones with a hole, an erosion over zeros with a spot. The undecided pixel must not be
    taken for padding."""
    weight = torch.ones(4, 96, 3, 3, dtype=torch.long)
    pos, neg = K.pack_conv_weight(weight)
    for value, threshold in ((True, torch.ones(4, dtype=torch.long)), (False, weight.sum((1, 2, 3)))):
        x = torch.full((1, 96, 9, width), value)
        x[:, :, 2:7, width - 3:] = not value  # around the last pixel of rows 3..5
        x[:, :, 6:, width // 2 - 2:width // 2 + 2] = not value  # in the last rows
        packed = ops.pack_bits(x)
        for padding in ((1, 1), (0, 0)):
            assert_bitwise(ops.bool_conv2d(packed, pos, neg, threshold, (1, 1), padding, (1, 1)),
                           R.bool_conv2d_reference(packed, pos, neg, threshold, (1, 1), padding, (1, 1)))


def test_bool_conv2d_scratch_past_the_kept_size_and_reused(ops):
    """The sliced path's scratch: per thread and kept between calls up to 16 MiB, allocated for
    the call past that. 18 images of 512 channels need ~17 MiB of planes; a smaller call after it
    reuses (and must fully overwrite) the kept buffer."""
    gen = torch.Generator().manual_seed(5)
    weight = (torch.rand(4, 512, 3, 3, generator=gen) < 0.5).long()
    pos, neg = K.pack_conv_weight(weight)
    threshold = weight.sum((1, 2, 3)) // 2
    for n, h, w in ((18, 64, 64), (2, 8, 64), (1, 5, 50)):
        x = ops.pack_bits(torch.rand(n, 512, h, w, generator=gen) < 0.5)
        args = ((1, 1), (1, 1), (1, 1))
        assert_bitwise(ops.bool_conv2d(x, pos, neg, threshold, *args),
                       R.bool_conv2d_reference(x, pos, neg, threshold, *args))


def test_bool_conv2d_kept_preprocessing_follows_every_change(ops):
    """The sliced path keeps its weight preprocessing for weights it has seen. A later call with
    the same weight tensors written in place, other thresholds, or another input size (other tap
    offsets) must not reuse what no longer applies; the first weights, seen again, must."""
    gen = torch.Generator().manual_seed(6)
    args = ((1, 1), (1, 1), (1, 1))
    weight = (torch.rand(16, 64, 3, 3, generator=gen) < 0.5).long()
    pos, neg = K.pack_conv_weight(weight)
    first = pos.clone()
    threshold = weight.sum((1, 2, 3)) // 2
    x = ops.pack_bits(torch.rand(2, 64, 6, 56, generator=gen) < 0.5)

    def check(x, threshold):
        assert_bitwise(ops.bool_conv2d(x, pos, neg, threshold, *args),
                       R.bool_conv2d_reference(x, pos, neg, threshold, *args))

    check(x, threshold)
    check(x, threshold)  # the kept preprocessing
    new_weight = (torch.rand(16, 64, 3, 3, generator=gen) < 0.5).long()
    pos.copy_(K.pack_conv_weight(new_weight)[0])  # in place: same tensor, same version-free data
    check(x, threshold)
    check(x, threshold + 3)
    check(x, torch.ones_like(threshold))  # early-exit thresholds: no quads
    check(x, threshold)
    far = threshold.clone()
    far[::2] = 10**6  # constant outputs, past any count's width: never in a quad
    check(x, far)
    check(ops.pack_bits(torch.rand(1, 64, 11, 60, generator=gen) < 0.5), threshold)
    pos.copy_(first)
    check(x, threshold)


def test_bool_conv2d_kept_preprocessing_evicts_and_stays_exact(ops):
    """More layers than the kept preprocessing holds (64), cycled twice: every call exact."""
    gen = torch.Generator().manual_seed(7)
    args = ((1, 1), (1, 1), (1, 1))
    x = ops.pack_bits(torch.rand(1, 8, 3, 48, generator=gen) < 0.5)
    layers = []
    for _ in range(70):
        weight = (torch.rand(4, 8, 3, 3, generator=gen) < 0.5).long()
        layers.append((*K.pack_conv_weight(weight), weight.sum((1, 2, 3)) // 2))
    for _ in range(2):
        for pos, neg, threshold in layers:
            assert_bitwise(ops.bool_conv2d(x, pos, neg, threshold, *args),
                           R.bool_conv2d_reference(x, pos, neg, threshold, *args))


def test_binary_weights_are_one_bit_each():
    weight = torch.randint(0, 2, (64, 64, 3, 3))
    pos, neg = K.pack_conv_weight(weight)
    assert neg.numel() == 0
    assert weight.float().nbytes == 32 * pos.nbytes


@pytest.mark.parametrize("channels", [3, 64, 100])
def test_binary_dilation_and_erosion_are_the_reference(ops, channels):
    gen = torch.Generator().manual_seed(channels)
    x = ops.pack_bits(torch.rand(2, channels, 8, 13, generator=gen) > 0.6)
    se = torch.rand(channels, 3, 2, generator=gen) > 0.5
    se[0] = False  # an empty SE: 0 for dilation, 1 for erosion
    for stride, padding, dilation in [((1, 1), (1, 1), (1, 1)), ((2, 1), (0, 1), (1, 2))]:
        for name in ("binary_dilation2d", "binary_erosion2d"):
            y = getattr(ops, name)(x, se, stride, padding, dilation)
            assert_bitwise(y, getattr(R, f"{name}_reference")(x, se, stride, padding, dilation))
    # dilation by a full 3x3 SE is max pooling of {0, 1} (its padding, -inf, never wins either)
    full = torch.ones(channels, 3, 3, dtype=torch.bool)
    xf = K.unpack_bits(x, channels)
    assert_bitwise(K.unpack_bits(K.binary_dilation2d(x, full, 1, 1), channels),
                   torch.nn.functional.max_pool2d(xf, 3, 1, 1))
    # erosion pads with 1: the border is eroded only by the image itself
    assert_bitwise(K.unpack_bits(K.binary_erosion2d(x, full, 1, 1), channels),
                   -torch.nn.functional.max_pool2d(-xf, 3, 1, 1))


# --- opcheck ------------------------------------------------------------------------------------

def _samples():
    gen = torch.Generator().manual_seed(8)
    d = dict(dtype=torch.float64)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, **d).requires_grad_()

    index = torch.tensor([[0, 2], [1, 4], [3, 4]])
    y, arg = R.maxplus_reference(torch.randn(5, 7, **d), torch.randn(3, 7, **d), torch.zeros(3, **d))
    ys, args_ = R.sparse_maxplus_reference(torch.randn(4, 5, 2, **d), index, torch.randn(3, 2, **d),
                                           None, 1)
    ym, argm = R.dilation2d_reference(torch.randn(2, 3, 6, 7, **d), torch.randn(4, 3, 2, 3, **d),
                                      (1, 2), (1, 0), (1, 1), True)
    bits = R.pack_bits_reference(torch.rand(2, 70, 5, 6, generator=gen) > 0.5)
    pos, neg = R.pack_bits_reference(torch.ones(3, 70, 3, 2))[:, :, :, None], \
        torch.zeros(3, 3, 2, 0, 2, dtype=torch.uint64)
    win = ([1, 2], [1, 0], [1, 1])
    return {
        "maxplus": [(leaf(5, 7), leaf(3, 7), leaf(3), False, True),
                    (leaf(2, 5, 7), leaf(3, 7), None, True, True)],
        "maxplus_backward": [(torch.randn(5, 3, **d), arg, 7, True, False)],
        "sparse_maxplus": [(leaf(4, 5, 2), index, leaf(3, 2), leaf(3), 1, False, True),
                           (leaf(6, 5), index, leaf(3, 2), None, -1, True, True)],
        "sparse_maxplus_backward": [(torch.randn(4, 3, 2, **d), args_, index, 5, 1, False, False)],
        "dilation2d": [(leaf(2, 3, 6, 7), leaf(3, 2, 3), *win, True, True)],
        "erosion2d": [(leaf(2, 3, 6, 7), leaf(4, 3, 2, 3), *win, False, True)],
        "dilation2d_backward": [(torch.randn(ym.shape, **d), argm, [2, 3, 6, 7], [4, 3, 2, 3],
                                 *win)],
        "erosion2d_backward": [(torch.randn(ym.shape, **d), argm, [2, 3, 6, 7], [4, 3, 2, 3],
                                *win)],
        "pack_bits": [(torch.rand(2, 70, 5, 6, generator=gen) > 0.5,)],
        "unpack_bits": [(bits, 70, torch.float32)],
        "bool_conv2d": [(bits, pos, neg, torch.tensor([3, 0, 7]), *win)],
        "binary_dilation2d": [(bits, torch.rand(70, 3, 2, generator=gen) > 0.5, *win)],
        "binary_erosion2d": [(bits, torch.rand(70, 3, 2, generator=gen) > 0.5, *win)],
    }


@pytest.mark.parametrize("name", K.OPS)
def test_opcheck(ops, name):
    samples = _samples()[name]
    for args in samples:
        torch.library.opcheck(getattr(ops, name).default, args)


# --- dtypes and errors --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_rejected_clearly(ops, dtype):
    x, w = torch.randn(3, 4, dtype=dtype), torch.randn(2, 4, dtype=dtype)
    with pytest.raises(RuntimeError, match="support float32 and float64"):
        K.maxplus(x, w)
    with pytest.raises(RuntimeError, match="support float32 and float64"):
        K.dilation2d(torch.randn(1, 2, 5, 5, dtype=dtype), torch.zeros(2, 3, 3, dtype=dtype))
    with pytest.raises(RuntimeError, match="support float32 and float64"):
        K.sparse_maxplus(x, torch.tensor([[0, 1]]), torch.zeros(1, 2, dtype=dtype))


def test_no_argmax_means_no_gradient(ops):
    x = torch.randn(3, 4, requires_grad=True)
    y, _ = ops.maxplus(x, torch.randn(2, 4), None, False, False)
    with pytest.raises(RuntimeError, match="with_argmax=False"):
        y.sum().backward()


def test_wrappers_skip_the_argmax_without_autograd(ops):
    x, w = torch.randn(3, 4), torch.randn(2, 4, requires_grad=True)
    with torch.no_grad():
        assert K.maxplus(x, w).grad_fn is None
    K.maxplus(x, w).sum().backward()
    assert w.grad is not None


def test_build_failure_falls_back_to_the_reference_with_one_warning(monkeypatch):
    saved = {k: getattr(_build._State, k) for k in ("loaded", "tried", "error", "seconds", "path")}

    def no_compiler():
        raise OSError("c++: command not found")

    monkeypatch.setattr(_build, "_build", no_compiler)
    for k in ("loaded", "tried"):
        monkeypatch.setattr(_build._State, k, False)
    try:
        with pytest.warns(K.KernelBuildWarning, match="c\\+\\+: command not found"):
            assert not K.load()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only once
            assert not K.available()
            x, w, b = torch.randn(4, 6), torch.randn(3, 6), torch.randn(3)
            assert_bitwise(K.maxplus(x, w, b), TF.maxplus(x, w, b))
            xb = torch.rand(1, 3, 4, 4) > 0.5
            assert_bitwise(K.pack_bits(xb), R.pack_bits_reference(xb))
        assert "command not found" in K.build_info()["error"]
    finally:
        for k, v in saved.items():
            setattr(_build._State, k, v)
