"""The pure-torch fast paths keep the reference semantics bit for bit: shift-and-max morphology
(values, argmax, gradients) against the unfold reference of kernels/reference.py, the flat-SE
pooling path, and the identity max-plus of an exact ReLU rewrite against the general gather."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tropfx.kernels import reference as R
from tropfx.nn import SparseMaxPlus, SparseMinPlus
from tropfx.nn import functional as TF
from tropfx.nn import morphology as TM

INF = math.inf


def assert_bitwise(actual, expected, zero_sign=True):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    if zero_sign:
        same &= (actual.signbit() == expected.signbit()) | actual.isnan()
    assert bool(same.all()), f"{int((~same).sum())} differ: {actual[~same][:4]} vs {expected[~same][:4]}"


def grid(shape, gen, dtype=torch.float32, specials=True):
    """A coarse grid (many ties) with -0.0, -inf and, with ``specials``, NaN and +inf."""
    t = (torch.randint(-4, 5, shape, generator=gen) / 2).to(dtype)
    t[torch.rand(shape, generator=gen) < 0.1] = -0.0
    t[torch.rand(shape, generator=gen) < 0.05] = -INF
    if specials:
        t[torch.rand(shape, generator=gen) < 0.03] = math.nan
        t[torch.rand(shape, generator=gen) < 0.03] = INF
    return t


def int_grad(shape, gen, dtype=torch.float32):
    return torch.randint(-3, 4, shape, generator=gen).to(dtype)


# --- morphology --------------------------------------------------------------------------------

@st.composite
def morph_cases(draw):
    full = draw(st.booleans())
    c = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    ceil_mode = draw(st.booleans())
    size = (draw(st.integers(4, 8)), draw(st.integers(4, 8)))
    w_shape = (draw(st.integers(1, 3)), c, *kernel) if full else (c, *kernel)
    se = draw(st.sampled_from(["random", "flat", "flat_constant"]))
    return (draw(st.integers(1, 3)), c, *size), w_shape, stride, padding, dilation, ceil_mode, se


def _se(w_shape, se, gen):
    if se == "random":
        return grid(w_shape, gen, specials=False)
    if se == "flat":
        return torch.zeros(w_shape)
    w = grid((w_shape[0],), gen, specials=False).view(-1, *(1,) * (len(w_shape) - 1))
    return w.expand(w_shape).contiguous()  # one value per channel, -inf included


@settings(max_examples=80, deadline=None)
@given(morph_cases(), st.booleans(), st.integers(0, 2**31))
def test_shift_and_max_is_the_unfold_reference_bitwise(case, erode, seed):
    x_shape, w_shape, stride, padding, dilation, ceil_mode, se = case
    gen = torch.Generator().manual_seed(seed)
    x, w = grid(x_shape, gen), _se(w_shape, se, gen)
    args = (stride, padding, dilation, ceil_mode)
    try:
        y_ref, arg_ref = (R.erosion2d_reference if erode else R.dilation2d_reference)(x, w, *args)
    except RuntimeError:  # the kernel does not fit the padded input
        return
    fn = TM.erosion2d if erode else TM.dilation2d
    assert_bitwise(fn(x, w, *args), y_ref)  # no grad: the flat pooling path or plain shift-and-max
    grid_ = TM._Grid(tuple(w_shape[-2:]), stride, dilation, tuple(y_ref.shape[2:]))
    xp = TM._pad(x, grid_, padding, INF if erode else -INF)
    y, arg = TM._shift_reduce(xp, w, grid_, len(w_shape) == 4, erode, with_argmax=True)
    assert_bitwise(y, y_ref)
    assert torch.equal(arg.long(), arg_ref.long())  # the same first extreme, NaN included
    # gradients: finite inputs, integer upstream gradients (exact sums in any order)
    finite = x.nan_to_num(0.0, 0.0, 0.0)
    up = int_grad(y_ref.shape, gen)
    a, b = finite.clone().requires_grad_(), w.clone().requires_grad_()
    y_grad = fn(a, b, *args)
    y_grad.backward(up)
    _, arg_f = (R.erosion2d_reference if erode else R.dilation2d_reference)(finite, w, *args)
    want = (R.erosion2d_backward_reference if erode else R.dilation2d_backward_reference)(
        up, arg_f, x.shape, w.shape, stride, padding, dilation)
    assert_bitwise(y_grad.detach(), (R.erosion2d_reference if erode else R.dilation2d_reference)(
        finite, w, *args)[0])
    assert_bitwise(a.grad, want[0], zero_sign=False)
    assert_bitwise(b.grad, want[1], zero_sign=False)


@pytest.mark.parametrize("erode", [False, True])
def test_1d_is_the_2d_reference_with_a_height_1_kernel(erode):
    gen = torch.Generator().manual_seed(3)
    x, w = grid((2, 3, 17), gen), grid((3, 4), gen, specials=False)
    args = (2, 1, 2, True)
    y = (TM.erosion1d if erode else TM.dilation1d)(x, w, *args)
    ref = (R.erosion2d_reference if erode else R.dilation2d_reference)(
        x[:, :, None], w[:, None], (1, 2), (0, 1), (1, 2), True)[0][:, :, 0]
    assert_bitwise(y, ref)


def test_memory_is_of_the_order_of_the_output():
    """No x + w window tensor: the largest intermediate is the (padded) input or the output."""
    from test_morphology import _Allocations

    x = torch.randn(2, 8, 20, 20, requires_grad=True)
    w = torch.randn(8, 5, 5, requires_grad=True)
    with _Allocations() as seen:
        y = TM.dilation2d(x, w, padding=2)
        y.backward(torch.ones_like(y))
    assert seen.largest <= 2 * 8 * 24 * 24  # the padded input; unfold's terms: 25x the output


def test_flat_se_without_grad_is_max_pooling_plus_the_constant():
    gen = torch.Generator().manual_seed(4)
    x = grid((2, 3, 9, 9), gen)
    w = torch.tensor([0.0, -1.5, -INF]).view(3, 1, 1).expand(3, 3, 3)
    for erode in (False, True):
        fn = TM.erosion2d if erode else TM.dilation2d
        ref = (R.erosion2d_reference if erode else R.dilation2d_reference)(x, w, (2, 2), (1, 1),
                                                                           (1, 1), True)[0]
        assert_bitwise(fn(x, w, 2, 1, 1, True), ref)
        assert_bitwise(fn(x, w, 2, 4, 2, True), (R.erosion2d_reference if erode else
                                                 R.dilation2d_reference)(x, w, (2, 2), (4, 4),
                                                                         (2, 2), True)[0])


def test_empty_batch_and_zero_channels():
    for x, w, shape in ((torch.randn(0, 3, 5, 5), torch.randn(3, 2, 2), (0, 3, 4, 4)),
                        (torch.randn(2, 3, 5, 5), torch.randn(0, 3, 2, 2), (2, 0, 4, 4)),
                        (torch.randn(2, 0, 5, 5), torch.randn(0, 2, 2), (2, 0, 4, 4))):
        a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = TM.dilation2d(a, b)
        assert y.shape == shape
        y.sum().backward()
        assert a.grad.shape == x.shape and b.grad.shape == w.shape
    layer = TM.Dilation2d(0, kernel_size=3)
    assert layer(torch.randn(2, 0, 6, 6)).shape == (2, 0, 4, 4)
    assert TM.Erosion1d(2, 0, kernel_size=2)(torch.randn(0, 2, 5)).shape == (0, 0, 4)


# --- identity max-plus -------------------------------------------------------------------------

def _general(x, index, value, bias, dim, minplus):
    """The general gather path, forced: the identity check is what the fast path keys on."""
    moved = x.movedim(dim, -1)
    out, k = index.shape
    gathered = moved.index_select(-1, index.reshape(-1)).unflatten(-1, (out, k)) + value
    if minplus:
        return -_general(-x, index, -value, None if bias is None else -bias, dim, False)
    if bias is not None:
        first = bias.to(gathered.dtype)[:, None].expand(gathered.shape[:-1] + (1,))
        gathered = torch.cat([first, gathered], dim=-1)
    return gathered.max(dim=-1).values.movedim(-1, dim)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([((5,), 0), ((3, 6), -1), ((2, 4, 3, 3), 1), ((2, 3, 5), 1)]),
       st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_identity_maxplus_is_the_general_path_bitwise(shape_dim, has_bias, zero, minplus, seed):
    shape, dim = shape_dim
    gen = torch.Generator().manual_seed(seed)
    c = shape[dim]
    x = grid(shape, gen)
    index = torch.arange(c)[:, None]
    value = torch.zeros(c, 1) if zero else grid((c, 1), gen, specials=False)
    bias = None if not has_bias else torch.zeros(c) if zero else grid((c,), gen)
    fn = TF.sparse_minplus if minplus else TF.sparse_maxplus
    y = fn(x, index, value, bias, dim=dim)
    expected = _general(x, index, value, bias, dim, minplus)
    assert_bitwise(y, expected)
    assert y.stride() == expected.contiguous().stride()
    y_ref, _ = R.sparse_maxplus_reference(x, index, value, bias, dim, minplus)
    assert_bitwise(y, y_ref)
    # gradients (the tie x == bias included: the bias takes it): finite x, integer gradients
    finite = x.nan_to_num(0.0, 0.0, 0.0)
    up = int_grad(y.shape, gen)
    grads = []
    for f in (lambda a, v, b: fn(a, index, v, b, dim=dim),
              lambda a, v, b: _general(a, index, v, b, dim, minplus)):
        leaves = [t if t is None else t.clone().requires_grad_() for t in (finite, value, bias)]
        f(*leaves).backward(up)
        grads.append([t if t is None else t.grad for t in leaves])
    for got, want in zip(*grads, strict=True):
        if want is not None:
            assert_bitwise(got, want, zero_sign=False)


def test_identity_relu_gradient_goes_to_the_bias_at_zero():
    x = torch.tensor([-1.0, 0.0, -0.0, 2.0, math.nan], requires_grad=True)
    layer = SparseMaxPlus(5, 5, k=1, dim=0)
    with torch.no_grad():
        layer.index.copy_(torch.arange(5)[:, None])
        layer.value.zero_()
    y = layer(x)
    assert torch.equal(y[:4], torch.relu(x[:4].detach())) and y[4].isnan()
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # ReLU's gradient; NaN is the input's
    assert layer.bias.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_nan_bias_wins_as_in_the_general_path():
    x = torch.tensor([[1.0, math.nan]])
    index, value = torch.arange(2)[:, None], torch.zeros(2, 1)
    bias = torch.tensor([math.nan, 0.0])
    assert_bitwise(TF.sparse_maxplus(x, index, value, bias), _general(x, index, value, bias, -1,
                                                                       False))


def test_non_identity_k1_and_permutations_take_the_general_path():
    gen = torch.Generator().manual_seed(0)
    x = grid((3, 4), gen)
    for index in (torch.tensor([[1], [0], [2], [3]]), torch.tensor([[0], [1], [2]])):
        value, bias = torch.zeros(index.shape[0], 1), torch.zeros(index.shape[0])
        assert_bitwise(TF.sparse_maxplus(x, index, value, bias),
                       _general(x, index, value, bias, -1, False))


def test_minplus_layer_identity_too():
    layer = SparseMinPlus(3, 3, k=1, dim=1)
    with torch.no_grad():
        layer.index.copy_(torch.arange(3)[:, None])
        layer.value.zero_()
        layer.bias.fill_(6.0)
    x = torch.tensor([[-1.0, 6.0, 7.0]]).view(1, 3, 1)
    assert layer(x).flatten().tolist() == [-1.0, 6.0, 6.0]


@pytest.mark.parametrize("shape", list(itertools.product([0, 2], [0, 3])))
def test_sparse_empty_batch_and_zero_outputs(shape):
    batch, out = shape
    layer = SparseMaxPlus(4, out, k=2) if out else SparseMaxPlus(4, 0, k=1)
    y = layer(torch.randn(batch, 4))
    assert y.shape == (batch, out)


# --- empty batches and zero-width layers -------------------------------------------------------

@pytest.mark.parametrize("batch,inner,out,bias", [(0, 4, 3, True), (2, 4, 0, True), (0, 0, 0, False),
                                                  (2, 0, 3, True), (0, 4, 3, False)])
@pytest.mark.parametrize("cls", ["MaxPlus", "MinPlus"])
def test_dense_empty_batch_and_zero_width(batch, inner, out, bias, cls):
    import tropfx.nn as tnn

    layer = getattr(tnn, cls)(inner, out, bias=bias)
    x = torch.randn(batch, inner, requires_grad=True)
    y = layer(x)
    assert y.shape == (batch, out)
    if inner == 0 and batch:  # the bias alone
        assert torch.equal(y, layer.bias.detach().expand(batch, out))
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.shape == layer.weight.shape


def test_flat_and_identity_layers_draw_nothing_from_the_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    flat = TM.Dilation2d.flat(4, kernel_size=3, stride=2, padding=1)
    ero = TM.Erosion1d.flat(2, 3, kernel_size=2, dtype=torch.float64)
    ident = SparseMaxPlus.identity(5, dim=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(flat.weight, torch.zeros(4, 3, 3)) and ero.weight.dtype == torch.float64
    assert not ero.weight.any() and flat.weight.device.type == "cpu"
    x = torch.randn(2, 5, 3)
    assert torch.equal(ident(x), torch.relu(x)) and ident.k == 1


def test_binary_layers_take_empty_batches_and_zero_width():
    from tropfx.nn import BinaryLinear, BinaryMorphology2d, ThresholdedConv2d

    cases = [(ThresholdedConv2d(torch.ones(2, 3, 3, 3), 2), torch.zeros(0, 3, 5, 5), (0, 2, 3, 3)),
             (ThresholdedConv2d(torch.ones(0, 3, 3, 3), []), torch.zeros(2, 3, 5, 5), (2, 0, 3, 3)),
             (BinaryMorphology2d(torch.ones(3, 3, 3, dtype=torch.bool)), torch.zeros(0, 3, 5, 5),
              (0, 3, 5, 5)),
             (BinaryMorphology2d(torch.ones(0, 3, 3, dtype=torch.bool)), torch.zeros(2, 0, 5, 5),
              (2, 0, 5, 5)),
             (BinaryLinear(torch.ones(4, 6), 2), torch.zeros(0, 6), (0, 4)),
             (BinaryLinear(torch.ones(0, 6), []), torch.zeros(3, 6), (3, 0)),
             (BinaryLinear(torch.ones(4, 0), 0), torch.zeros(3, 0), (3, 4))]
    for layer, x, shape in cases:
        assert tuple(layer(x).shape) == shape, layer
    assert BinaryLinear(torch.ones(4, 0), 0)(torch.zeros(3, 0)).all()  # 0 >= 0: every sum is 0


def test_parameter_checks_are_remembered_until_the_parameters_change():
    from tropfx.errors import ParameterError

    layer = SparseMaxPlus.identity(3)
    x = torch.randn(2, 3)
    layer(x)
    with torch.no_grad():
        layer.value[1] = math.nan  # in place: a new version
    with pytest.raises(ParameterError, match="NaN"):
        layer(x)
    layer.value.data = torch.zeros(3, 1)  # a swapped storage
    layer(x)
    layer.value.data = torch.full((3, 1), math.inf)
    with pytest.raises(ParameterError, match=r"\+inf"):
        layer(x)
    layer.value.data = torch.zeros(3, 1)
    with torch.no_grad():
        layer.index[0, 0] = 1  # not the identity any more: the general gather
    assert torch.equal(layer(x)[:, 0], torch.maximum(x[:, 1], torch.zeros(2)))


def test_the_value_path_follows_bias_changes():
    x = torch.tensor([[-1.0, 0.0, -0.0, 2.0]])
    index, value = torch.arange(4)[:, None], torch.zeros(4, 1)
    bias = torch.zeros(4)
    general = _general(x, index, value, bias, -1, False)
    assert_bitwise(TF.sparse_maxplus(x, index, value, bias), general)
    bias[1] = -0.0  # a -0 bias: the exact where path, remembered per version
    assert_bitwise(TF.sparse_maxplus(x, index, value, bias), _general(x, index, value, bias, -1, False))
    bias.fill_(1.0)
    assert TF.sparse_maxplus(x, index, value, bias).tolist() == [[1.0, 1.0, 1.0, 2.0]]


def test_se_checks_are_remembered_until_the_se_changes():
    from tropfx.errors import ParameterError

    layer = TM.Dilation2d.flat(2, kernel_size=2)
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.max_pool2d(x, 2, 1))  # the flat path
        layer.weight[0, 0, 0] = 1.0  # no longer flat: shift-and-max
        assert_bitwise(layer(x), R.dilation2d_reference(x, layer.weight, (1, 1), (0, 0), (1, 1))[0])
        layer.weight[1, 1, 1] = math.nan
    with pytest.raises(ParameterError, match="NaN"):
        layer(x)


@pytest.mark.parametrize("grad", [False, True])
def test_an_in_place_relus_rewrite_writes_into_its_input_on_the_value_path(grad):
    """relu_to_maxplus marks the rewrite of ReLU(inplace=True) in place: without autograd it writes
    into its input (no output to allocate, as the ReLU did), bitwise ReLU; with autograd it is the
    out-of-place path, with ReLU's gradient. A ReLU that was not in place stays out of place."""
    import tropfx
    from tropfx import passes as tp

    gen = torch.Generator().manual_seed(5)
    x = grid((2, 3, 4, 4), gen, specials=False)
    for inplace in (True, False):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU(inplace=inplace))
        cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(x,))
        layer = next(m for m in cm.modules() if isinstance(m, SparseMaxPlus))
        assert layer.inplace is inplace
        conv_out = model[0](x).detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            ref = torch.relu(conv_out.clone())  # before the layer may overwrite conv_out
            y = layer(conv_out)
        assert_bitwise(y, ref)
        wrote_into_input = y.data_ptr() == conv_out.data_ptr()
        assert wrote_into_input is (inplace and not grad)
        if grad:
            (g,) = torch.autograd.grad(y.sum(), conv_out)
            (g_ref,) = torch.autograd.grad(torch.relu(conv_out).sum(), conv_out)
            assert_bitwise(g, g_ref)
        lowered = tropfx.compile(model, [tp.relu_to_maxplus(), tp.lower_kernels()],
                                 example_inputs=(x,))
        calls = [n for n in lowered.graph.nodes if n.target is TF.diagonal_maxplus]
        assert len(calls) == 1 and calls[0].kwargs.get("inplace", False) is inplace
        with torch.no_grad():
            assert_bitwise(cm(x), model(x))
            assert_bitwise(lowered(x), model(x))


@pytest.mark.parametrize("k", [1, 2])
def test_an_in_place_layer_compiled_as_the_root_model_lowers(k):
    """Traced as the root, the layer's call names inplace=True; lowering maps it to the kernels'
    twin, which takes the same keywords (it raised TypeError)."""
    import tropfx
    from tropfx import passes as tp

    layer = SparseMaxPlus(4, 4, k=k) if k > 1 else SparseMaxPlus.identity(4)
    layer.inplace = True
    x = grid((3, 4), torch.Generator().manual_seed(2), specials=False)
    with torch.no_grad():
        ref = layer(x.clone())
        for passes in ([], [tp.lower_kernels()]):
            cm = tropfx.compile(layer, passes, example_inputs=(x,))
            assert_bitwise(cm(x.clone()), ref)
