"""The paths the layers take while torch.compile traces them (issue 18, item 3): the same values,
zero signs, NaNs and gradients as the eager reference, and graphs that inductor can fuse -- no
gather for an identity max-plus, no ``isnan`` (inductor's CPU code computes it one element at a
time), no opaque ``tropfx::dilation2d`` call for a per-channel SE. Traced with the ``aot_eager``
backend (no C++ compiler needed), plus one small inductor run."""

import math
import shutil

import pytest
import torch
import torch._dynamo.testing
from functorch.compile import make_boxed_func
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fast_paths import assert_bitwise, grid, int_grad

from tropfx import kernels as K
from tropfx.kernels import ops as KO
from tropfx.kernels import reference as R
from tropfx.nn import SparseMaxPlus, SparseMinPlus
from tropfx.nn import morphology as TM
from tropfx.nn.morphology import Dilation2d

pytestmark = pytest.mark.usefixtures("one_thread")

INF = math.inf


def traced(fn):
    """``fn`` compiled whole (fullgraph: no graph break may hide an eager fallback), with the
    ATen graphs it was compiled to recorded in ``.graphs``."""
    torch._dynamo.reset()  # fresh caches: never dynamo's silent eager fallback after recompiles
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.common.aot_autograd(fw_compiler=_record(graphs))(
            gm, example_inputs)

    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)
    compiled.graphs = graphs
    return compiled


def _record(graphs):
    def compiler(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)
    return compiler


def targets(compiled) -> set[str]:
    return {str(n.target) for gm in compiled.graphs for n in gm.graph.nodes
            if n.op == "call_function"}


# --- morphology ----------------------------------------------------------------------------------

@st.composite
def cases(draw):
    c = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = (draw(st.integers(3, 6)), draw(st.integers(3, 6)))
    full = draw(st.booleans())
    w_shape = (draw(st.integers(1, 2)), c, *kernel) if full else (c, *kernel)
    return (draw(st.integers(1, 2)), c, *size), w_shape, stride, padding, draw(st.booleans())


@settings(max_examples=6, deadline=None)
@given(cases(), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_traced_morphology_is_the_reference_bitwise(case, erode, flat, seed):
    """Values (ties, -0, NaN, +-inf inputs, the infinite padding), and with gradients the argmax
    rule: the traced shift-and-max is the unfold reference's, forward and backward."""
    x_shape, w_shape, stride, padding, ceil_mode = case
    gen = torch.Generator().manual_seed(seed)
    x = grid(x_shape, gen)
    w = torch.zeros(w_shape) if flat else grid(w_shape, gen, specials=False)
    args = (stride, padding, (1, 1), ceil_mode)
    fn = TM.erosion2d if erode else TM.dilation2d
    ref = R.erosion2d_reference if erode else R.dilation2d_reference
    y_ref, _ = ref(x, w, *args)
    compiled = traced(lambda a, b: fn(a, b, *args))
    with torch.no_grad():
        assert_bitwise(compiled(x, w), y_ref)
    finite = x.nan_to_num(0.0, 0.0, 0.0)
    up = int_grad(y_ref.shape, gen)
    a, b = finite.clone().requires_grad_(), w.clone().requires_grad_()
    y = compiled(a, b)
    y.backward(up)
    _, arg = ref(finite, w, *args)
    want = (R.erosion2d_backward_reference if erode else R.dilation2d_backward_reference)(
        up, arg, x.shape, w.shape, stride, padding, (1, 1))
    assert_bitwise(y.detach(), ref(finite, w, *args)[0])
    assert_bitwise(a.grad, want[0], zero_sign=False)
    assert_bitwise(b.grad, want[1], zero_sign=False)


def test_traced_inference_dilation_has_no_isnan_and_one_se_buffer():
    """inductor's CPU backend computes ``isnan`` element by element: the window loop tests NaN as
    ``t != t``, which it vectorizes. The SE entries come from one stacked buffer with the
    channels last (contiguous vectors), not strided reads of the (C, kh, kw) parameter."""
    x, w = torch.randn(2, 3, 6, 6), torch.randn(3, 3, 3)
    compiled = traced(lambda a, b: TM.dilation2d(a, b, 2, 1))
    with torch.no_grad():
        assert torch.equal(compiled(x, w), R.dilation2d_reference(x, w, (2, 2), (1, 1), (1, 1), False)[0])
    found = targets(compiled)
    assert "aten.isnan.default" not in found and "aten.ne.Tensor" in found
    assert "aten.stack.default" in found or "aten.cat.default" in found


def test_an_se_of_0_and_minus_0_is_not_flat():
    """max(x + 0, y + -0) is -0 for x = -2, y = -0; the flat path (max pooling plus the first
    entry) made it +0: 0 == -0, but they are different SE entries."""
    x = torch.tensor([-2.0, -0.0]).view(1, 1, 1, 2)
    w = torch.tensor([0.0, -0.0]).view(1, 1, 2)
    for fn, ref in ((TM.dilation2d, R.dilation2d_reference),
                    (TM.erosion2d, R.erosion2d_reference)):
        sign = 1 if fn is TM.dilation2d else -1
        assert_bitwise(fn(sign * x, w), ref(sign * x, w, (1, 1), (0, 0), (1, 1), False)[0])


# --- lowered morphology ---------------------------------------------------------------------------

@pytest.fixture
def kernels():
    if not K.load():
        pytest.skip(f"C++ kernels unavailable: {K.build_info()['error']}")


needs_kernels = pytest.mark.usefixtures("kernels")


@needs_kernels
@pytest.mark.parametrize("erode", [False, True])
def test_lowered_per_channel_morphology_is_traced_not_an_opaque_call(erode):
    gen = torch.Generator().manual_seed(5)
    x, w = grid((2, 3, 7, 7), gen), grid((3, 3, 3), gen, specials=False)
    fn = KO.erosion2d if erode else KO.dilation2d
    compiled = traced(lambda a, b: fn(a, b, 2, 1, 1, True))
    with torch.no_grad():
        assert_bitwise(compiled(x, w), fn(x, w, 2, 1, 1, True))
    assert not any("tropfx" in t for t in targets(compiled))
    # the gradient of the traced path is the kernel's (its argmax: the first extreme)
    finite = x.nan_to_num(0.0, 0.0, 0.0)
    up = int_grad((2, 3, 4, 4), gen)
    grads = []
    for f in (compiled, lambda a, b: fn(a, b, 2, 1, 1, True)):
        a, b = finite.clone().requires_grad_(), w.clone().requires_grad_()
        f(a, b).backward(up)
        grads.append((a.grad, b.grad))
    for got, want in zip(*grads, strict=True):
        assert_bitwise(got, want, zero_sign=False)


@needs_kernels
def test_a_full_se_keeps_the_operator_under_torch_compile():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 2, 2)
    compiled = traced(lambda a, b: KO.dilation2d(a, b))
    with torch.no_grad():
        assert torch.equal(compiled(x, w), KO.dilation2d(x, w))
    assert any("tropfx.dilation2d" in t for t in targets(compiled))


# --- identity max-plus ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [SparseMaxPlus, SparseMinPlus])
def test_traced_identity_maxplus_is_element_wise_after_an_eager_call(cls):
    """The identity index of an exact ReLU rewrite: no gather (inductor would load it element by
    element, with a bounds check each) and no isnan, once an eager call has seen the index."""
    gen = torch.Generator().manual_seed(1)
    layer = cls.identity(4, dim=1)
    with torch.no_grad():
        layer.value.copy_(grid((4, 1), gen, specials=False))
        layer.bias.copy_(torch.tensor([0.0, -INF, -0.0, 2.0]) * cls._sign)
    x = grid((3, 4, 5), gen)
    with torch.no_grad():
        expected = layer(x)  # eager: remembers that the index is the identity
        compiled = traced(layer)
        assert_bitwise(compiled(x), expected)
    found = targets(compiled)
    assert not {"aten.index_select.default", "aten.index.Tensor", "aten.gather.default"} & found
    assert "aten.isnan.default" not in found
    # with gradients too (ReLU's rule: the bias takes a tie)
    finite = x.nan_to_num(0.0, 0.0, 0.0)
    up = int_grad(x.shape, gen)
    grads = []
    for f in (compiled, layer):
        layer.zero_grad()
        a = finite.clone().requires_grad_()
        f(a).backward(up)
        grads.append((a.grad, layer.value.grad.clone(), layer.bias.grad.clone()))
    for got, want in zip(*grads, strict=True):
        assert_bitwise(got, want, zero_sign=False)


def test_an_index_changed_in_place_after_tracing_raises_until_an_eager_call():
    layer = SparseMaxPlus.identity(3, dim=1)
    x = torch.randn(2, 3)
    with torch.no_grad():
        layer(x)
        compiled = traced(layer)
        assert torch.equal(compiled(x), torch.relu(x))
        layer.index.copy_(torch.tensor([[1], [0], [2]]))
        with pytest.raises(RuntimeError, match="changed in place"):
            compiled(x)
        layer(x)  # an eager call sees the new index: the compiled layer retraces with a gather
        assert torch.equal(compiled(x), torch.relu(x[:, [1, 0, 2]]))


def test_without_an_eager_call_the_traced_layer_gathers_and_is_right():
    layer = SparseMaxPlus.identity(3, dim=1)
    with torch.no_grad():
        layer.index.copy_(torch.tensor([[2], [0], [1]]))
        x = torch.randn(2, 3)
        assert torch.equal(traced(layer)(x), torch.relu(x[:, [2, 0, 1]]))


# --- one inductor run ------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
def test_inductor_compiles_the_exact_rewrite_of_conv_relu_maxpool_bitwise():
    """A conv, an identity max-plus (ReLU) and a flat dilation (max pool): inductor's code is
    bitwise the eager layers on a channels-last activation, and has no element-by-element
    fallbacks (a scalar isnan, a bounds-checked gather)."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    relu = SparseMaxPlus.identity(16, dim=1)
    pool = Dilation2d.flat(16, kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        pool.weight.copy_(torch.randn(16, 3, 3))  # trained: not flat any more
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h = relu(conv(x))
        expected = pool(h)
        torch._dynamo.reset()
        compiled = torch.compile(torch.nn.Sequential(relu, pool))
        y, code = run_and_get_code(compiled, h)
    assert_bitwise(y, expected)
    text = "\n".join(code)
    assert "std::isnan" not in text and "index out of bounds" not in text
