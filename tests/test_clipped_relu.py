"""relu_to_maxplus on clipped ReLUs (ReLU6, Hardtanh, clamp, ...), and what it lists unrewritten."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import BITWISE, Fn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.nn import SparseMaxPlus, SparseMinPlus
from tropfx.testing import assert_pass_preserves

CLIPS = {  # spelling: (module, lo, hi)
    "nn.ReLU6": (lambda: nn.Sequential(nn.ReLU6()), 0.0, 6.0),
    "nn.ReLU6-inplace": (lambda: nn.Sequential(nn.Identity(), nn.ReLU6(inplace=True)), 0.0, 6.0),
    "nn.Hardtanh": (lambda: nn.Sequential(nn.Hardtanh(-0.3, 2.5)), -0.3, 2.5),
    "F.relu6": (lambda: Fn(F.relu6), 0.0, 6.0),
    "F.hardtanh": (lambda: Fn(lambda x: F.hardtanh(x, -1.5, 0.7)), -1.5, 0.7),
    "F.hardtanh-default": (lambda: Fn(F.hardtanh), -1.0, 1.0),
    "torch.clamp": (lambda: Fn(lambda x: torch.clamp(x, 0.1, 3)), 0.1, 3.0),
    "x.clamp-min": (lambda: Fn(lambda x: x.clamp(min=0)), 0.0, None),
    "x.clamp-max": (lambda: Fn(lambda x: x.clamp(max=0.25)), None, 0.25),
    "torch.clip": (lambda: Fn(lambda x: torch.clip(x, -2, 2)), -2.0, 2.0),
    "x.clip_": (lambda: Fn(lambda x: (x * 1).clip_(0, 1)), 0.0, 1.0),
    "torch.clamp_min": (lambda: Fn(lambda x: torch.clamp_min(x, 0)), 0.0, None),
    "x.clamp_max": (lambda: Fn(lambda x: x.clamp_max(6)), None, 6.0),
    "torch.maximum-zeros_like": (lambda: Fn(lambda x: torch.maximum(x, torch.zeros_like(x))), 0.0,
                                 None),
    "torch.maximum-tensor": (lambda: Fn(lambda x: torch.maximum(x, torch.tensor(0.0))), 0.0, None),
    "torch.max-zeros_like": (lambda: Fn(lambda x: torch.max(x, torch.zeros_like(x))), 0.0, None),
    "x.min-tensor": (lambda: Fn(lambda x: x.min(torch.tensor(2.0))), None, 2.0),
    "torch.minimum-full_like": (lambda: Fn(lambda x: torch.minimum(x, torch.full_like(x, 6.0))),
                                None, 6.0),
    "F.threshold": (lambda: Fn(lambda x: F.threshold(x, 0.0, 0.0)), 0.0, None),
    "nn.Threshold": (lambda: nn.Sequential(nn.Threshold(0.5, 0.5)), 0.5, None),
}


def boundary_input(lo, hi, shape=(2, 3, 4, 5), dtype=torch.float32):
    """Random values plus every boundary: the bounds themselves, +-0, +-inf and NaN."""
    x = torch.randn(*shape, dtype=dtype) * 4
    special = [0.0, -0.0, math.inf, -math.inf, math.nan, 6.0, -1.0, 1.0]
    special += [b for b in (lo, hi) if b is not None]
    flat = x.view(-1)
    for i, v in enumerate(special):
        flat[i * 3] = v
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spelling", list(CLIPS))
def test_every_clipped_relu_becomes_exact_maxplus_minplus_nodes(spelling, dtype):
    make, lo, hi = CLIPS[spelling]
    x = boundary_input(lo, hi, dtype=dtype)
    cm = assert_pass_preserves(tp.relu_to_maxplus(), make(), (x,), dtype=dtype, **BITWISE)
    layers = [m for m in cm.modules() if isinstance(m, SparseMaxPlus)]
    expected = ([SparseMaxPlus] if lo is not None else []) + ([SparseMinPlus] if hi is not None else [])
    assert [type(m) for m in layers] == expected
    for layer, bound in zip(layers, [b for b in (lo, hi) if b is not None], strict=True):
        assert layer.k == 1 and torch.equal(layer.index.flatten(), torch.arange(3))
        assert torch.equal(layer.bias, torch.full((3,), bound, dtype=dtype))
        assert layer.value.dtype == dtype
    row = cm.report[1]
    assert len(row.rewritten) == 1 and row.skipped == [] and row.exact
    with torch.no_grad():  # NaN in the same places, and +-inf, as the original
        assert torch.equal(cm(x).isnan(), make()(x).isnan())


@pytest.mark.parametrize("module", [nn.ReLU6(), nn.Hardtanh(-1.0, 2.0), Fn(F.relu6)])
def test_gradient_is_relu6s_also_at_the_bounds(module):
    lo, hi = (-1.0, 2.0) if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6) \
        else (0.0, 6.0)
    model = nn.Sequential(nn.Linear(4, 6), module)
    x = torch.randn(8, 4)
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(x,))
    # Pre-activations exactly at lo and hi, and on both sides of them.
    pre = torch.tensor([lo, hi, lo - 1, hi + 1, (lo + hi) / 2, lo + 1e-3, hi - 1e-3, lo]) \
        .repeat(6, 1).T.contiguous().requires_grad_()
    ours = pre.detach().clone().requires_grad_()
    act = [m for m in cm.modules() if isinstance(m, SparseMaxPlus)]
    y_ref = module(pre)
    y = act[1](act[0](ours))
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    assert torch.equal(ours.grad, pre.grad)
    assert torch.equal(ours.grad[0], torch.zeros(6)) and torch.equal(ours.grad[1], torch.zeros(6))


def test_training_step_after_the_rewrite_matches_relu6_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU6(), nn.Linear(8, 3))
    x = torch.randn(32, 5) * 10  # many pre-activations above 6
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(x,))
    for m in (model, cm):
        m.train()
        m(x).square().sum().backward()
    for name in ("0.weight", "0.bias", "2.weight"):
        assert torch.equal(dict(cm.named_parameters())[name].grad,
                           dict(model.named_parameters())[name].grad)


@given(lo=st.floats(-10, 10, allow_nan=False), width=st.floats(0, 10, allow_nan=False),
       seed=st.integers(0, 2**16), functional=st.booleans())
def test_hardtanh_with_random_bounds_is_bitwise_equal(lo, width, seed, functional):
    hi = lo + width
    if hi <= lo:
        hi = math.nextafter(lo, math.inf)
    model = Fn(lambda x: F.hardtanh(x, lo, hi)) if functional else nn.Sequential(nn.Hardtanh(lo, hi))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, generator=gen) * 8
    x.view(-1)[:4] = torch.tensor([lo, hi, -0.0, 0.0])  # the bounds, rounded to float32
    assert_pass_preserves(tp.relu_to_maxplus(), model, (x,), **BITWISE)


NOT_TROPICAL = [
    (nn.GELU(), "GELU"), (nn.SiLU(), "SiLU"), (nn.Hardswish(), "Hardswish"),
    (nn.LeakyReLU(0.1), "LeakyReLU"), (nn.Sigmoid(), "Sigmoid"), (nn.Tanh(), "Tanh"),
    (nn.ELU(), "ELU"), (nn.Mish(), "Mish"), (nn.Softplus(), "Softplus"), (nn.PReLU(), "PReLU"),
    (Fn(F.gelu), "GELU"), (Fn(F.silu), "SiLU"), (Fn(lambda x: x * x.sigmoid()), "Sigmoid"),
    (Fn(lambda x: F.leaky_relu(x, 0.2)), "LeakyReLU"), (Fn(F.hardsigmoid), "Hardsigmoid"),
]


@pytest.mark.parametrize(("act", "kind"), NOT_TROPICAL)
def test_activations_without_tropical_form_are_listed_by_kind(act, kind):
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), nn.ReLU(), act)
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(torch.randn(2, 4),))
    row = cm.report[1]
    assert len(row.rewritten) == 1
    assert [s.reason for s in row.skipped] == [f"{kind} has no exact tropical form"] * 2
    assert row.info["not_tropical"] == {kind: 2}
    assert f"2 × {row.skipped[0].reason}" in str(cm.report)


def test_leaky_relu_with_slope_zero_is_not_relu_at_minus_infinity():
    x = torch.tensor([[-math.inf, -1.0, 0.0, 2.0]])
    assert torch.isnan(F.leaky_relu(x, 0.0)[0, 0])  # why it is listed, not rewritten
    cm = tropfx.compile(nn.Sequential(nn.LeakyReLU(0.0)), [tp.relu_to_maxplus()], example_inputs=(x,))
    assert "maps -inf to NaN" in cm.report[1].skipped[0].reason
    assert cm.report[1].info["not_tropical"] == {"LeakyReLU": 1}


def test_non_constant_and_broadcasting_bounds_are_skipped_with_the_reason():
    class Runtime(nn.Module):
        def forward(self, x):
            return x.clamp(min=x.mean()) + torch.maximum(x, x.flip(0)) + F.threshold(x, 0.0, 1.0)

    cm = tropfx.compile(Runtime(), [tp.relu_to_maxplus()], example_inputs=(torch.randn(3, 4),))
    reasons = [s.reason for s in cm.report[1].skipped]
    assert "its min bound is a tensor computed at run time, not a constant" in reasons
    assert any("other is computed at run time" in r for r in reasons)
    assert any("a step, not a clamp" in r for r in reasons)
    assert cm.report[1].rewritten == []


def test_integer_clamp_is_skipped():
    cm = tropfx.compile(Fn(lambda x: x.clamp(0, 3)), [tp.relu_to_maxplus()],
                        example_inputs=(torch.arange(-4, 8).view(3, 4),))
    assert "torch.int64 tensor" in cm.report[1].skipped[0].reason


def test_hooks_are_carried_over_to_a_relu_and_block_a_split_clip():
    seen = []
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU6())
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    model[3].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    x = torch.randn(6, 4)
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(x,))
    row = cm.report[1]
    assert len(row.rewritten) == 1 and "3 (ReLU6) has 1 forward hook" in row.skipped[0].reason
    seen.clear()
    model(x)
    expected = list(seen)
    seen.clear()
    cm(x)
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))


def test_the_exact_pass_leaves_the_global_rng_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU6(), nn.ReLU())
    torch.manual_seed(5)
    tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(torch.randn(2, 4),))
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.randn(2, 4)
    assert torch.equal(torch.rand(3), after)


def test_clipped_relu_rewrite_saves_loads_and_lowers_bitwise(tmp_path):
    from tropfx import kernels as K

    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(27, 4),
                          nn.Hardtanh(-1.0, 0.5))
    x = boundary_input(0.0, 6.0, shape=(2, 2, 5, 5))
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(x,))
    tropfx.save(cm, tmp_path / "m.tropfx")
    again = tropfx.load(tmp_path / "m.tropfx")
    same = {"rtol": 0, "atol": 0, "equal_nan": True}
    with torch.no_grad():
        torch.testing.assert_close(again(x), cm(x), **same)
    if not K.load():
        pytest.skip(f"C++ kernels unavailable: {K.build_info()['error']}")
    lowered = tropfx.compile(model, [tp.relu_to_maxplus(), tp.lower_kernels()], example_inputs=(x,))
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), **same)
