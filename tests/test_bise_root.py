"""binarize_bise reaches every BiSE computation: a root BiSEL(1, K), a BiSE bank sharing one input
channel, and, where it cannot (BiSE math traced op by op), lists it; hooked layers are skipped; the
count threshold of method="constant" is pinned at integral b / theta."""

import itertools
import math
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_binarize_bise import make_activated  # random activated neurons, complemented at random
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.nn import LUI, BiSE, BiSEL, DenseLUI
from tropfx.nn.binary import NonBinaryInputWarning
from tropfx.nn.bise import smooth_threshold
from tropfx.passes.binarize_bise import count_threshold

IDENTITY = {"weight_reparam": "identity", "bias_reparam": "identity"}
FLOAT_LAYERS = (BiSE, LUI, BiSEL, DenseLUI)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def all_images(h, w):
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=h * w)))
    return bits.view(-1, 1, h, w)


def assert_fully_binarized(cm, model, x):
    assert not any(isinstance(m, FLOAT_LAYERS) for m in cm.modules())
    assert not any(n.target is smooth_threshold for n in cm.graph.nodes)
    row = cm.report[-1]
    assert row.skipped == [] and row.info["all_exact"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonBinaryInputWarning)  # every binary layer gets bits
        out = cm(x)
    assert out.dtype == torch.bool
    with torch.no_grad():
        assert torch.equal(out, model(x) > 0.5)


@settings(max_examples=8)
@given(k=st.integers(1, 4), identity_lui=st.booleans(), seed=st.integers(0, 2**31))
def test_a_root_bisel_with_one_input_binarizes_every_neuron(k, identity_lui, seed):
    model = make_activated(BiSEL(1, k, 3, identity_lui=identity_lui, **IDENTITY), seed)
    x = all_images(3, 3)
    cm = tropfx.compile(model, [tp.binarize_bise()], example_inputs=(x,))
    assert_fully_binarized(cm, model, x)
    expected_rows = k if identity_lui else 2 * k  # BiSE neurons, and the LUIs unless identity
    assert len(cm.report[-1].info["neurons"]) == expected_rows


@pytest.mark.parametrize("op", ["dilation", "erosion"])
def test_a_trained_root_bisel_binarizes_to_its_operation(op):
    """BiSEL(1, 1) trained by Adam on a dilation / erosion, compiled as the root module."""
    torch.manual_seed(12)
    se = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 1, 1]] if op == "dilation"
                      else [[1, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=torch.float32)
    gen = torch.Generator().manual_seed(12)
    x = (torch.rand(32, 1, 16, 16, generator=gen) < (0.3 if op == "dilation" else 0.7)).float()
    hits = torch.nn.functional.conv2d(x, se.flip(0, 1)[None, None], padding=1)
    y = (hits >= 1).float() if op == "dilation" else (hits >= se.sum()).float()
    model = BiSEL(1, 1, kernel_size=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 1e-2
    fresh = (torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(13)) < 0.5).float()
    cm = tropfx.compile(model, [tp.binarize_bise()], example_inputs=(fresh,))
    assert_fully_binarized(cm, model, fresh)
    assert [r["operation"] for r in cm.report[-1].info["neurons"]][0] == op


def test_a_bise_bank_sharing_one_channel_gets_it_repeated():
    model = make_activated(nn.Sequential(BiSE(3, channels=3, **IDENTITY), LUI(3, 1, **IDENTITY)), 3)
    x = all_images(3, 3)
    cm = tropfx.compile(model, [tp.binarize_bise()], example_inputs=(x,))
    assert "repeat" in cm.code
    assert_fully_binarized(cm, model, x)


def test_without_shapes_a_bise_bank_expands_its_input():
    model = make_activated(nn.Sequential(BiSE(3, channels=2, **IDENTITY), LUI(2, 1, **IDENTITY)), 4)
    x = all_images(3, 3)
    cm = tropfx.compile(model, [tp.binarize_bise(inputs=(x,))])
    assert "expand" in cm.code
    assert_fully_binarized(cm, model, x)
    two = torch.cat([x, x.flip(0)], 1)  # and on inputs with one channel per neuron
    with torch.no_grad():
        assert torch.equal(cm(two), model(two) > 0.5)


class CallsForwardShared(nn.Module):
    def __init__(self):
        super().__init__()
        self.bise = BiSE(3, channels=2, **IDENTITY)

    def forward(self, x):
        return self.bise.forward_shared(x)


@pytest.mark.parametrize("model", [BiSE(3, **IDENTITY), LUI(2, 1, **IDENTITY), DenseLUI(4, 2, **IDENTITY),
                                   CallsForwardShared()], ids=["BiSE", "LUI", "DenseLUI", "shared"])
def test_bise_math_traced_op_by_op_is_listed_not_ignored(model):
    x = torch.ones(2, 4) if isinstance(model, DenseLUI) else torch.ones(2, 2 if isinstance(model, LUI)
                                                                         else 1, 4, 4)
    cm = tropfx.compile(model, [tp.binarize_bise()], example_inputs=(x,))
    (skip,) = cm.report[-1].skipped
    assert "a BiSE threshold traced op by op" in skip.reason and "nn.Sequential(layer)" in skip.reason


def test_a_hooked_bise_layer_is_skipped_with_the_reason():
    model = make_activated(nn.Sequential(BiSEL(1, 2, 3, **IDENTITY), BiSEL(2, 1, 3, **IDENTITY)), 5)
    model[1].lui.register_forward_hook(lambda m, i, o: None)
    x = all_images(3, 3)
    cm = tropfx.compile(model, [tp.binarize_bise()], example_inputs=(x,))
    row = cm.report[-1]
    assert len(row.rewritten) == 1
    (skip,) = row.skipped
    assert "1.lui (LUI) has 1 forward hook; binarizing it would drop it" in skip.reason


# --- the count threshold of method="constant" at integral b / theta ----------------------------------

def brute_threshold(theta, b, p, fan):
    """``1[p (theta c - b) > 0]`` for c = 0 .. fan in exact rational arithmetic, as bools."""
    theta, b = Fraction(theta), Fraction(b)
    return torch.tensor([p * (theta * c - b) > 0 for c in range(fan + 1)])


@settings(max_examples=300)
@given(theta=st.sampled_from([0.25, 0.375, 0.5, 1.0, 2.0, 3.0, 1.5]), m=st.integers(-3, 12),
       offset=st.sampled_from([0.0, 0.0, 0.5, -0.25]), sign=st.sampled_from([1.0, -1.0, 0.0]),
       fan=st.integers(1, 10))
def test_count_threshold_is_the_neuron_also_at_integral_b_over_theta(theta, m, offset, sign, fan):
    # offset 0 draws b / theta integral, where floor(b / theta) + 1 and ceil(b / theta) differ; the
    # others draw it between two counts. theta, b and b / theta are exact in binary floating point
    # here: the property is the threshold rule, not the rounding of a ratio within an ulp of an
    # integer (there the float neuron's own sum rounds as well).
    b = theta * (m + offset)
    t, complement = count_threshold(torch.tensor([theta], dtype=torch.float64),
                                    torch.tensor([b], dtype=torch.float64),
                                    torch.tensor([sign], dtype=torch.float64), fan)
    c = torch.arange(fan + 1)
    got = (c >= t) ^ complement
    assert torch.equal(got, brute_threshold(theta, b, sign, fan)), (theta, b, sign, t, complement)


def test_count_threshold_pins_both_sides_of_an_integral_ratio():
    theta, fan = torch.tensor([1.0, 1.0], dtype=torch.float64), 5
    b = torch.tensor([2.0, 2.0], dtype=torch.float64)
    t, complement = count_threshold(theta, b, torch.tensor([1.0, -1.0], dtype=torch.float64), fan)
    # p > 0: c > 2, so t = 3 = floor(2) + 1 (not ceil(2) = 2); p < 0: c < 2, the complement of c >= 2
    assert t.tolist() == [3, 2] and complement.tolist() == [False, True]


def test_constant_method_at_an_integral_ratio_matches_the_float_neuron():
    """End to end: a BiSE neuron with constant weights theta 1_S and b = 2 theta (b / theta = 2):
    binarized with method="constant" it is 1[|x & S| >= 3], the float neuron thresholded at 1/2."""
    layer = BiSE(3, **IDENTITY)
    se = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.float64)
    with torch.no_grad():
        layer.omega.copy_(0.5 * se.view_as(layer.omega))
        layer.beta.fill_(1.0)  # b / theta = 2: a count of exactly 2 gives p (theta c - b) = 0
        layer.scale.fill_(30.0)
    model = nn.Sequential(layer).double()
    x = all_images(3, 3).double()
    cm = tropfx.compile(model, [tp.binarize_bise(method="constant", inputs=(x,))], example_inputs=(x,))
    (row,) = cm.report[-1].info["neurons"]
    assert row["threshold"] == 3
    with torch.no_grad():
        counts = torch.nn.functional.conv2d(x, se.view(1, 1, 3, 3), padding=1)
        assert torch.equal(cm(x), counts >= 3)
        # the float neuron at a count of exactly 2 is xi(0) = 1/2, not above 1/2
        assert torch.equal(model(x) > 0.5, counts >= 3)
    assert math.isclose(float(smooth_threshold(torch.tensor(0.0))), 0.5)
