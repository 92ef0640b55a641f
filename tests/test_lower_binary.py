"""lower_kernels on binarized layers: packed bool_conv2d chains, bitwise equal to the layers."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import kernels as K
from tropfx import passes as tp
from tropfx.errors import PassError
from tropfx.kernels.binary import PackedBinaryConv2d
from tropfx.nn import BinaryLinear, BinaryMorphology2d, BiSEL, DenseLUI, ThresholdedConv2d

pytestmark = pytest.mark.skipif(not K.available(), reason="the C++ kernels could not be built")


def lowered(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return tropfx.compile(model, [tp.lower_kernels()], example_inputs=(x,))


def assert_same(model: nn.Module, cm: nn.Module, x: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-binary inputs: the layers warn, the lowered graph not
        want = model(x)
    got = cm(x)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for w, g in zip(want, got, strict=True):
        assert g.dtype == torch.bool and g.shape == w.shape
        assert torch.equal(g, w)


@st.composite
def conv_layer(draw, channels: int, gen: torch.Generator) -> nn.Module:
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.sampled_from(["same", 0, 1, (2, 0)]))
    complement = draw(st.booleans())  # one flag for the whole layer
    if draw(st.booleans()):
        se = torch.rand(channels, kh, kw, generator=gen) < 0.5
        se[:, 0, 0] = True
        ops = [draw(st.sampled_from(["dilation", "erosion"])) for _ in range(channels)]
        comp = torch.rand(channels, generator=gen) < 0.5 if draw(st.booleans()) else complement
        return BinaryMorphology2d(se, ops, comp, padding=padding)
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
    out = groups * draw(st.integers(1, 4))
    low, high = draw(st.sampled_from([(0, 1), (-1, 1), (-3, 4)]))
    weight = torch.randint(low, high + 1, (out, channels // groups, kh, kw), generator=gen)
    reach = int(weight.abs().sum((1, 2, 3)).max())
    threshold = torch.randint(-reach - 1, reach + 2, (out,), generator=gen)
    comp = torch.rand(out, generator=gen) < 0.5 if draw(st.booleans()) else complement
    return ThresholdedConv2d(weight, threshold, comp, groups=groups, padding=padding)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_binary_conv_chains_lower_bitwise(data):
    """Random chains of BinaryMorphology2d / ThresholdedConv2d (groups, asymmetric "same" padding,
    signed weights, complements), rows shorter and longer than a 64-bit word, input bool or 0 / 1
    floats or arbitrary floats (read as x > 1/2): the lowered graph equals the layers bit for bit."""
    draw = data.draw
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    channels = draw(st.integers(1, 6))
    layers, c = [], channels
    for _ in range(draw(st.integers(1, 3))):
        layer = draw(conv_layer(c, gen))
        layers.append(layer)
        c = layer.out_channels if isinstance(layer, ThresholdedConv2d) else c
    model = nn.Sequential(*layers)
    h, w = draw(st.integers(4, 9)), draw(st.sampled_from([5, 30, 64, 70]))
    x = torch.rand(draw(st.integers(1, 3)), channels, h, w, generator=gen)
    x = draw(st.sampled_from([x > 0.5, (x > 0.5).float(), x]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(x)
    except tropfx.TropfxError:
        return  # the window does not fit the padded input: nothing to lower
    cm = lowered(model, x)
    assert sum(isinstance(m, PackedBinaryConv2d) for m in cm.modules()) == len(layers)
    packs = [n for n in cm.graph.nodes if n.op == "call_function" and "pack" in n.target.__name__]
    assert len(packs) == 2  # one pack before the chain, one unpack after it
    assert_same(model, cm, x)


@pytest.mark.parametrize("batch", [3, 40, 130])
def test_binary_linear_chains_lower_bitwise(batch):
    gen = torch.Generator().manual_seed(batch)
    model = nn.Sequential(
        BinaryLinear(torch.randint(0, 2, (70, 100), generator=gen),
                     torch.randint(0, 40, (70,), generator=gen)),
        BinaryLinear(torch.randint(-2, 3, (9, 70), generator=gen), 1, torch.rand(9, generator=gen) < 0.5))
    x = torch.rand(batch, 100, generator=gen) > 0.3
    cm = lowered(model, x)
    assert_same(model, cm, x)


def test_mixed_network_with_flatten_and_two_outputs():
    gen = torch.Generator().manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = BinaryMorphology2d(torch.rand(3, 3, 3, generator=gen) > 0.4,
                                        ["dilation", "erosion", "erosion"], [False, True, False])
            self.c = ThresholdedConv2d(torch.randint(-2, 3, (5, 3, 2, 2), generator=gen), 1,
                                       padding="same")
            self.fc = BinaryLinear(torch.randint(0, 2, (7, 5 * 9 * 10), generator=gen), 20)

        def forward(self, x):
            y = self.c(self.m(x))
            return self.fc(y.flatten(1)), y

    model, x = Net(), torch.rand(6, 3, 9, 10, generator=gen) > 0.5
    cm = lowered(model, x)
    assert_same(model, cm, x)
    assert cm.report[-1].exact and len(cm.report[-1].rewritten) == 3
    assert {"m.weight_pos", "c.threshold", "fc.weight_neg"} <= set(cm.state_dict())


def test_a_shared_layer_is_lowered_once_and_both_calls_use_it():
    gen = torch.Generator().manual_seed(1)
    layer = BinaryMorphology2d(torch.rand(2, 3, 3, generator=gen) > 0.5, "erosion")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(self.layer(x)) | self.layer(x)

    model, x = Twice(), torch.rand(2, 2, 8, 8, generator=gen) > 0.3
    cm = lowered(model, x)
    assert_same(model, cm, x)
    assert isinstance(cm.layer, PackedBinaryConv2d)


def test_binarized_bimonn_lowers_exactly():
    """binarize_bise then lower_kernels: the packed network equals the boolean one."""
    torch.manual_seed(3)
    model = nn.Sequential(BiSEL(1, 3, 3, weight_reparam="dual"), BiSEL(3, 2, 3), nn.Flatten(),
                          DenseLUI(2 * 7 * 7, 5))
    x = (torch.rand(40, 1, 7, 7) > 0.5).float()
    binary = tropfx.compile(model, [tp.binarize_bise(method="activable")], example_inputs=(x,))
    both = tropfx.compile(model, [tp.binarize_bise(method="activable"), tp.lower_kernels()],
                          example_inputs=(x,))
    assert any(isinstance(m, PackedBinaryConv2d) for m in both.modules())
    assert torch.equal(both(x), binary(x))


def test_compile_export_and_save_a_lowered_binary_network(tmp_path):
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(BinaryMorphology2d(torch.rand(4, 3, 3, generator=gen) > 0.5, "dilation"),
                          ThresholdedConv2d(torch.randint(0, 2, (4, 4, 3, 3), generator=gen), 5,
                                            padding=1))
    x = torch.rand(2, 4, 12, 70, generator=gen) > 0.5
    cm = lowered(model, x)
    want = model(x)
    assert torch.equal(torch.compile(cm, backend="eager", fullgraph=True)(x), want)
    ep = torch.export.export(cm, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"tropfx.pack_bits.default", "tropfx.bool_conv2d.default",
            "tropfx.unpack_bits.default"} <= ops
    assert torch.equal(ep.module()(x), want)
    tropfx.save(cm, tmp_path / "packed")
    assert torch.equal(tropfx.load(tmp_path / "packed")(x), want)


def test_other_calls_are_declined_or_refused():
    root = nn.Sequential(ThresholdedConv2d(torch.ones(1, 1, 1, 1, dtype=torch.int8), 1))
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("0", (x,), {"extra": 1}))
    result = tp.lower_kernels()(torch.fx.GraphModule(root, graph))
    assert not result.modified and "one positional input" in str(result.stats.skipped)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("0", (graph.call_module("0", (x,)),), {"extra": 1}))
    with pytest.raises(PassError, match="called both"):
        tp.lower_kernels()(torch.fx.GraphModule(root, graph))


def test_summary_counts_the_packed_weight_bits():
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(BinaryLinear(torch.randint(0, 2, (10, 128), generator=gen), 30))
    x = torch.rand(4, 128, generator=gen) > 0.5
    before, after = tropfx.summary(model, (x,)), tropfx.summary(lowered(model, x), (x,))
    assert after.total.binary_params == before.total.binary_params == 10 * 128  # 128 = 2 words
    assert after.total.memory_bytes < before.total.memory_bytes
