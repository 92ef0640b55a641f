"""Max-plus layers: values against a naive oracle, ties, gradients, memory, bad parameters."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tropfx
from tropfx.errors import InputError, ParameterError
from tropfx.nn import Maxout, MaxPlus, MinPlus, SparseMaxPlus, SparseMinPlus
from tropfx.nn import functional as TF
from tropfx.passes.relu_to_maxplus import identity_maxplus


def naive_maxplus(x, w, b=None):
    """The paper code's formulation: broadcast B x out x in, then max."""
    y = (x[..., None, :] + w).amax(-1)
    return y if b is None else torch.maximum(y, b)


shapes = st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 6))


@settings(max_examples=60)
@given(shapes, st.booleans(), st.integers(1, 64), st.integers(0, 2**31))
def test_dense_equals_the_naive_formulation_bitwise_for_any_chunking(shape, bias, budget, seed):
    batch, inner, out = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, inner, generator=gen)
    w = torch.randn(out, inner, generator=gen)
    w[torch.rand(out, inner, generator=gen) < 0.3] = -math.inf
    w[:, 0] = torch.randn(out, generator=gen)  # every row keeps a finite weight
    b = torch.randn(out, generator=gen) if bias else None
    expected = naive_maxplus(x, w, b)
    assert torch.equal(TF.maxplus(x, w, b, chunk_elements=budget), expected)
    assert torch.equal(TF.minplus(-x, -w, None if b is None else -b, chunk_elements=budget),
                       -expected)


@settings(max_examples=60)
@given(shapes, st.integers(1, 4), st.booleans(), st.integers(0, 2**31))
def test_sparse_equals_its_dense_form(shape, k, bias, seed):
    batch, inner, out = shape
    k = min(k, inner)
    gen = torch.Generator().manual_seed(seed)
    layer = SparseMaxPlus(inner, out, k, bias, generator=gen)
    x = torch.randn(batch, 3, inner, generator=gen)
    dense, b = layer.to_dense()
    assert torch.equal(layer(x), naive_maxplus(x, dense, b))
    again = SparseMaxPlus.from_dense(dense, b)
    assert torch.equal(again.index, layer.index) and torch.equal(again(x), layer(x))


def test_sparse_layer_works_along_the_channel_dimension():
    layer = SparseMaxPlus(4, 3, k=2, dim=1)
    x = torch.randn(2, 4, 5, 6)
    per_pixel = layer(x).permute(0, 2, 3, 1)
    dense, b = layer.to_dense()
    assert torch.equal(per_pixel, naive_maxplus(x.permute(0, 2, 3, 1), dense, b))


def test_paper_initialization_is_sparse_seeded_and_sorted():
    a = SparseMaxPlus(50, 40, k=2, generator=torch.Generator().manual_seed(1))
    b = SparseMaxPlus(50, 40, k=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.index, b.index) and torch.equal(a.value, b.value)
    assert a.index.shape == (40, 2) and (a.index[:, 0] < a.index[:, 1]).all()
    assert a.value.abs().max() <= 0.01 and torch.equal(a.bias, torch.zeros(40))
    assert "weight" not in dict(a.named_parameters())  # no dense mask anywhere
    dense, _ = a.to_dense()
    assert (torch.isfinite(dense).sum(1) == 2).all()


def test_ties_go_to_the_bias_then_to_the_lowest_index():
    x = torch.tensor([[1.0, 3.0, 3.0]], requires_grad=True)
    w = torch.zeros(2, 3, requires_grad=True)
    b = torch.tensor([3.0, 0.0], requires_grad=True)
    TF.maxplus(x, w, b).sum().backward()
    assert b.grad.tolist() == [1.0, 0.0]  # output 0: the bias ties with x_1, x_2 and wins
    assert w.grad.tolist() == [[0, 0, 0], [0, 1, 0]]  # output 1: x_1 beats the later tie x_2
    assert x.grad.tolist() == [[0, 1, 0]]
    layer = SparseMaxPlus.from_dense(w.detach(), b.detach())
    xs = x.detach().clone().requires_grad_()
    layer(xs).sum().backward()
    assert xs.grad.tolist() == [[0, 1, 0]] and layer.bias.grad.tolist() == [1.0, 0.0]


def test_identity_maxplus_is_relu_including_its_gradient_at_zero():
    x = torch.tensor([[-2.0, -0.0, 0.0, 1.5, math.inf, -math.inf, math.nan]]).repeat(2, 1)
    x = x.T.reshape(1, 7, 2).requires_grad_()
    layer = identity_maxplus(7, dim=1)
    y = layer(x)
    x2 = x.detach().clone().requires_grad_()
    expected = torch.relu(x2)
    assert torch.equal(y.nan_to_num(7.0), expected.nan_to_num(7.0))
    y.nan_to_num(0).sum().backward()
    expected.nan_to_num(0).sum().backward()
    assert torch.equal(x.grad.nan_to_num(5.0), x2.grad.nan_to_num(5.0))


@pytest.mark.parametrize("layer", ["dense", "sparse", "dense-min", "sparse-min"])
def test_gradcheck_in_float64_on_tie_free_inputs(layer):
    torch.manual_seed(0)
    module = {"dense": lambda: MaxPlus(6, 4), "sparse": lambda: SparseMaxPlus(6, 4, k=3),
              "dense-min": lambda: MinPlus(6, 4), "sparse-min": lambda: SparseMinPlus(6, 4, k=3)
              }[layer]().double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))  # spread out: no ties within 1e-6 (finite differences)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    params = tuple(module.parameters())

    names = [n for n, _ in module.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_maxout_groups_consecutive_features():
    x = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(Maxout(3)(x), torch.tensor([[2.0, 5.0], [8.0, 11.0]]))
    with pytest.raises(InputError, match="not a multiple of pool=4"):
        Maxout(4)(x)


@pytest.mark.parametrize("k", [0, 6])
def test_k_out_of_range_is_a_clear_error(k):
    with pytest.raises(InputError, match=rf"k={k} must be in \[1, in_features=5\]"):
        SparseMaxPlus(5, 3, k=k)


def test_nan_weights_and_dead_rows_are_clear_errors_not_silent_nans():
    layer = MaxPlus(3, 2)
    with torch.no_grad():
        layer.weight[0, 1] = math.nan
    with pytest.raises(ParameterError, match="NaN weights"):
        layer(torch.randn(1, 3))
    dead = MaxPlus(3, 2, bias=False)
    with torch.no_grad():
        dead.weight[1] = -math.inf
    with pytest.raises(ParameterError, match=r"output\(s\) \[1\] have every weight -inf"):
        dead(torch.randn(1, 3))
    # With a finite bias the row is defined: it outputs the bias.
    alive = MaxPlus(3, 2)
    with torch.no_grad():
        alive.weight[1] = -math.inf
        alive.bias[1] = 0.25
    assert alive(torch.randn(4, 3))[:, 1].eq(0.25).all()
    with pytest.raises(ParameterError, match="NaN"):
        sparse = SparseMaxPlus(3, 2)
        with torch.no_grad():
            sparse.value[0, 0] = math.nan
        sparse(torch.randn(1, 3))


def test_dense_forward_backward_memory_is_bounded():
    """B=512, 2048 -> 2048: the naive broadcast needs 8 GiB; the reference must stay < 1 GiB."""
    code = textwrap.dedent("""
        import resource, torch
        from tropfx.nn import MaxPlus
        torch.manual_seed(0)
        layer = MaxPlus(2048, 2048)
        x = torch.randn(512, 2048, requires_grad=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        layer(x).sum().backward()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra = int(out.stdout.strip().splitlines()[-1])
    assert extra < 1 << 30, f"{extra / 2**20:.0f} MiB of extra memory"


@pytest.mark.parametrize("make", [lambda: MaxPlus(4, 3), lambda: SparseMaxPlus(4, 3),
                                  lambda: MinPlus(4, 3, bias=False), lambda: Maxout(2)])
def test_a_layer_compiles_as_the_root_model_and_reports_its_maxplus_ops(make, tmp_path):
    layer = make()
    x = torch.randn(2, 4)
    cm = tropfx.compile(layer, [], example_inputs=(x,))
    terms = {"MaxPlus": 5, "SparseMaxPlus": 3, "MinPlus": 4, "Maxout": 2}[type(layer).__name__]
    assert cm.report[0].counts == {"maxplus": cm(x).numel() * terms}
    torch.save(cm, tmp_path / "cm.pt")
    assert torch.equal(torch.load(tmp_path / "cm.pt", weights_only=False)(x), layer(x))
