"""The channel-dependency graph (tropfx.channels): groups, members, frozen reasons, resizing."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.channels import ChannelGraph, read_rows, resize_channels
from tropfx.layers import LayerSpec, layer_spec, register_layer
from tropfx.testing import assert_pass_preserves
from tropfx.testing.coupled import CoupledNet, _randomize, coupled_models, duplicate_channels


def graph(model, *shape):
    gm = tropfx.compile(model.eval(), [], example_inputs=(torch.randn(*shape),), verify=False)
    return gm, {g.name: g for g in ChannelGraph(gm).groups}


def roles(group):
    return sorted((p.member.role, p.member.target if p.member.node.op == "call_module"
                   else p.member.node.name, p.offset, p.size) for p in group.parts)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.c = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = F.relu(self.bn(self.a(x)))
        return self.c(F.relu(self.b(h) + h))


def test_a_residual_add_joins_producers_into_one_group():
    _, groups = graph(Residual(), 1, 2, 5, 5)
    g = groups["a"]
    assert g.frozen is None and g.size == 4 and g.producers == ["a", "b"]
    assert roles(g) == [("batchnorm", "bn", 0, 4), ("consumer", "b", 0, 4),
                        ("consumer", "c", 0, 4), ("producer", "a", 0, 4), ("producer", "b", 0, 4)]
    assert g.role("producer")[0].member.fold.target == "bn"  # BN right after a: folds
    assert "joined by add" in g.theory
    assert groups["c"].frozen == "its channels reach the model output"


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 5, 1)
        self.bn, self.c = nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.bn(torch.cat([F.relu(self.a(x)), self.b(x)], 1))))


def test_concat_gives_each_producer_its_offset_in_the_readers():
    _, groups = graph(Concat(), 1, 2, 3, 3)
    assert roles(groups["a"]) == [("batchnorm", "bn", 0, 3), ("consumer", "c", 0, 3),
                                  ("producer", "a", 0, 3)]
    assert roles(groups["b"]) == [("batchnorm", "bn", 3, 5), ("consumer", "c", 3, 5),
                                  ("producer", "b", 0, 5)]
    assert "BatchNorm bn is not right after" in groups["a"].theory


class Paths(nn.Module):
    """depthwise, grouped, squeeze-excitation, flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.expand, self.dw = nn.Conv2d(2, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.grouped = nn.Conv2d(6, 4, 3, padding=1, groups=2)
        self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
        self.head = nn.Linear(4 * 9, 3)

    def forward(self, x):
        h = self.grouped(F.relu(self.dw(F.relu(self.expand(x)))))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.head((h * s).view(x.size(0), -1))


def test_depthwise_grouped_squeeze_excitation_and_flatten_paths():
    _, groups = graph(Paths(), 1, 2, 3, 3)
    expand = groups["expand"]
    assert ("depthwise", "dw", 0, 6) in roles(expand) and expand.cells.tolist() == [0] * 3 + [1] * 3
    assert "depthwise convolution" in expand.theory
    grouped = groups["grouped"]  # fc2's outputs multiply the grouped conv's: one group
    assert grouped.producers == ["grouped", "fc2"] and grouped.cells.tolist() == [0, 0, 1, 1]
    head = next(p for p in grouped.parts if p.member.target == "head")
    assert head.member.spatial == 9  # each channel spans H*W features of the Linear
    assert any(p.member.role == "view" for p in grouped.parts)  # view(N, -1): replaced on resize


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(2, 2, 1)
        self.d, self.e = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = torch.softmax(self.a(x), 1)  # not channel-wise
        z1, z2 = self.b(x).chunk(2, 1)  # a chunk cuts the group
        w = self.c(x) + x  # joined with the model input
        return self.d(y) + self.d(F.relu(self.b(x))), self.e(z1 + z2), w


def test_what_the_graph_cannot_follow_freezes_the_group_with_the_reason():
    _, groups = graph(Frozen(), 1, 2, 3, 3)
    assert "softmax" in groups["a"].frozen and "register it" in groups["a"].frozen
    assert "reads only channels" in groups["b"].frozen or "shared" in groups["b"].frozen
    assert "not produced by a layer" in groups["c"].frozen


def test_shuffle_is_followed_and_an_unknown_module_can_be_registered():
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.s, self.b = nn.Conv2d(2, 4, 1), Scale(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.s(F.relu(self.a(x))))

    gm = tropfx.compile(Net().eval(), [], example_inputs=(torch.randn(1, 2, 3, 3),), verify=False,
                        leaf_modules=[Scale])
    assert "tropfx does not know" in ChannelGraph(gm).groups[0].frozen
    assert layer_spec(Scale()) is None
    register_layer(Scale, LayerSpec("elementwise"))
    try:
        assert ChannelGraph(gm).groups[0].frozen is None
    finally:
        from tropfx.layers import LAYERS
        del LAYERS[Scale]
    _, groups = graph(CoupledNet([("conv", 4, False), ("shuffle", 2)]), 1, 2, 3, 3)
    assert groups["blocks.0.conv"].frozen is None  # followed as a permutation


def test_resize_with_the_same_rows_is_the_identity():
    model, x = Residual().eval(), torch.randn(2, 2, 5, 5)
    gm, _ = graph(model, 2, 2, 5, 5)
    for group in ChannelGraph(gm).groups:
        if group.frozen is None:
            rows = [None if p.member.role == "view" else read_rows(gm, p) for p in group.parts]
            resize_channels(gm, group, rows, merge=torch.eye(group.size, dtype=torch.float64))
    gm.recompile()
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=1e-6)


@settings(max_examples=25)
@given(case=coupled_models(), method=st.sampled_from(["multi", "iterative"]),
       batchnorm=st.sampled_from(["prefusion", "fuse"]))
def test_merging_exactly_duplicated_channels_of_coupled_graphs_is_exact(case, method, batchnorm):
    """Add, concat, depthwise, grouped, shuffle and squeeze-excitation: every resizable group's
    channels doubled (the same function), then TropNNC at ratio 0.5 merges the copies back."""
    model, x = case
    gm = tropfx.compile(model, [], example_inputs=(x,), verify=False)
    dup, doubled = duplicate_channels(gm)
    torch.testing.assert_close(dup(x), model(x), rtol=1e-5, atol=1e-5)
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5, method=method, batchnorm=batchnorm), dup, (x,),
                               rtol=1e-4, atol=1e-4)
    rows = cm.report[-1].info.get("layers", [])
    assert len(rows) == sum(g.frozen is None for g in ChannelGraph(dup).groups) <= doubled
    assert all(r["K"] == r["n"] // 2 for r in rows)


@settings(max_examples=20)
@given(case=coupled_models(), ratio=st.sampled_from([0.3, 0.5, 0.8]))
def test_coupled_graphs_stay_valid_at_any_ratio_and_ratio_one_is_exact(case, ratio):
    model, x = case
    cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio)], example_inputs=(x,))
    assert cm(x).shape == model(x).shape and cm.report[-1].params <= cm.report[0].params
    for row in cm.report[-1].info.get("layers", []):
        assert 1 <= row["K"] <= row["n"]
    same = assert_pass_preserves(tp.tropnnc(ratio=1.0), model, (x,), rtol=0.0, atol=0.0)
    assert not same.report[-1].modified


def test_grouped_convolutions_keep_equal_blocks():
    g = torch.Generator().manual_seed(1)
    model = _randomize(CoupledNet([("grouped", 3, 4)]), g)
    x = torch.randn(2, 2, 5, 5, generator=g)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    grouped = cm.get_submodule("blocks.0.grouped")
    assert (grouped.in_channels, grouped.out_channels, grouped.groups) == (6, 6, 3)
    assert cm(x).shape == (2, 3)


def test_min_channels_floor_and_glob_ratios_per_group():
    model, x = Residual().eval(), torch.randn(1, 2, 5, 5)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.25, min_channels=3)], example_inputs=(x,))
    assert cm.a.out_channels == 3
    cm = tropfx.compile(model, [tp.tropnnc(ratio={"b": 0.5})], example_inputs=(x,))
    assert cm.a.out_channels == 2  # a group is selected by any of its producers
