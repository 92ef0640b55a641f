"""maxpool_to_dilation on adaptive and global max pooling, and on hooked pooling modules."""

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
from tropfx.nn.morphology import Dilation1d, Dilation2d
from tropfx.passes.maxpool_to_dilation import adaptive_window
from tropfx.testing import assert_pass_preserves


def special(shape, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    x.view(-1)[0] = -math.inf
    x.view(-1)[3] = math.inf
    x.view(-1)[-1] = math.nan
    x.view(-1)[5:9] = 1.5  # ties
    return x


GLOBAL = {
    "AdaptiveMaxPool2d(1)": (lambda: nn.Sequential(nn.AdaptiveMaxPool2d(1)), (2, 3, 5, 6), Dilation2d),
    "AdaptiveMaxPool2d((2,3))": (lambda: nn.Sequential(nn.AdaptiveMaxPool2d((2, 3))), (2, 3, 4, 6),
                                 Dilation2d),
    "AdaptiveMaxPool2d((None,1))": (lambda: nn.Sequential(nn.AdaptiveMaxPool2d((None, 1))),
                                    (1, 2, 3, 4), Dilation2d),
    "AdaptiveMaxPool1d(2)": (lambda: nn.Sequential(nn.AdaptiveMaxPool1d(2)), (2, 3, 8), Dilation1d),
    "F.adaptive_max_pool2d": (lambda: Fn(lambda x: F.adaptive_max_pool2d(x, (1, 1))), (2, 2, 3, 3),
                              Dilation2d),
    "amax(2,3)": (lambda: Fn(lambda x: x.amax(dim=(2, 3))), (2, 3, 4, 5), Dilation2d),
    "amax(-1,-2)-keepdim": (lambda: Fn(lambda x: torch.amax(x, (-1, -2), keepdim=True)),
                            (2, 3, 4, 5), Dilation2d),
    "amax(-1) 1-D": (lambda: Fn(lambda x: x.amax(-1)), (2, 3, 7), Dilation1d),
    "flatten(2).max(2)[0]": (lambda: Fn(lambda x: x.flatten(2).max(2)[0]), (2, 3, 4, 5), Dilation1d),
    "torch.max(x, -1).values": (lambda: Fn(lambda x: torch.max(x, -1).values), (2, 3, 7), Dilation1d),
    "x.max(2, keepdim=True)[0]": (lambda: Fn(lambda x: x.max(2, keepdim=True)[0]), (2, 3, 7),
                                  Dilation1d),
}


@pytest.mark.parametrize("pool", list(GLOBAL))
def test_adaptive_and_global_max_become_exact_dilations(pool):
    make, shape, cls = GLOBAL[pool]
    x = special(shape)
    cm = assert_pass_preserves(tp.maxpool_to_dilation(), make(), (x,), **BITWISE)
    (layer,) = [m for m in cm.modules() if isinstance(m, (Dilation1d, Dilation2d))]
    assert type(layer) is cls and torch.equal(layer.weight, torch.zeros_like(layer.weight))
    assert len(cm.report[1].rewritten) == 1 and cm.report[1].skipped == []
    assert cm(x).shape == make()(x).shape


def test_adaptive_pool_gradient_goes_to_the_first_maximum_as_in_torch():
    x = torch.tensor([[[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 1.0, 3.0]]]])
    model = nn.Sequential(nn.AdaptiveMaxPool2d((1, 2)))
    cm = tropfx.compile(model, [tp.maxpool_to_dilation()], example_inputs=(x,))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(a).sum().backward()
    cm(b).sum().backward()
    assert torch.equal(a.grad, b.grad)


@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 4), ow=st.integers(1, 4),
       seed=st.integers(0, 1000))
def test_adaptive_max_pool_is_rewritten_exactly_when_windows_are_equal(h, w, oh, ow, seed):
    x = special((2, 2, h, w), seed) if h * w > 9 else torch.randn(2, 2, h, w)
    model = nn.Sequential(nn.AdaptiveMaxPool2d((oh, ow)))
    cm = assert_pass_preserves(tp.maxpool_to_dilation(), model, (x,), **BITWISE)
    uniform = adaptive_window(h, oh) is not None and adaptive_window(w, ow) is not None
    assert len(cm.report[1].rewritten) == int(uniform)
    if not uniform:
        assert "windows of unequal sizes" in cm.report[1].skipped[0].reason


def test_declined_global_max_forms_say_why():
    class Several(nn.Module):
        def forward(self, x):
            return (x.amax(dim=(1, 2, 3)).sum() + x.amax(dim=2).sum() + x.amax(dim=1).sum()
                    + F.adaptive_max_pool2d(x, 2, return_indices=True)[0].sum()
                    + nn.functional.adaptive_max_pool3d(x[None], 1).sum())

    cm = tropfx.compile(Several(), [tp.maxpool_to_dilation()],
                        example_inputs=(torch.randn(2, 3, 4, 4),))
    reasons = [s.reason for s in cm.report[1].skipped]
    assert sum("only the global max over all spatial dims" in r for r in reasons) == 2
    assert any("return_indices=True" in r for r in reasons)
    assert any("3-D adaptive pooling" in r for r in reasons)
    assert len(reasons) == 4  # amax over the channels alone is not a pooling: not a candidate


def test_a_pooling_modules_hooks_move_to_its_dilation():
    seen = []
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(1))
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    model[2].register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    x = torch.randn(2, 1, 8, 8)
    cm = tropfx.compile(model, [tp.maxpool_to_dilation()], example_inputs=(x,))
    assert len(cm.report[1].rewritten) == 2
    seen.clear()
    model(x)
    expected = list(seen)
    seen.clear()
    cm(x)
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))


def test_a_max_whose_indices_are_used_or_over_one_of_two_dims_is_declined():
    class Indices(nn.Module):
        def forward(self, x):
            values, indices = x.flatten(2).max(2)
            return values + indices + x.max(2)[0].sum() + x.max(1)[0].sum() + torch.max(x).sum()

    cm = tropfx.compile(Indices(), [tp.maxpool_to_dilation()], example_inputs=(torch.randn(2, 3, 4, 5),))
    reasons = sorted(s.reason for s in cm.report[1].skipped)
    assert len(reasons) == 2 and "its indices are used" in reasons[0]
    assert "max over one of two spatial dims" in reasons[1]


def test_functional_pools_with_indices_are_seen_and_declined():
    class WithIndices(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 2, return_indices=True)[0]

    cm = tropfx.compile(WithIndices(), [tp.maxpool_to_dilation()],
                        example_inputs=(torch.randn(1, 2, 4, 4),))
    assert "return_indices=True" in cm.report[1].skipped[0].reason


def test_the_pass_leaves_the_global_rng_alone():
    model = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(1))
    x = torch.randn(1, 2, 4, 4)
    torch.manual_seed(5)
    tropfx.compile(model, [tp.maxpool_to_dilation()], example_inputs=(x,))
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)
