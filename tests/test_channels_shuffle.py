"""A channel shuffle followed as a permutation of the channel dim (tropfx.channels)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.channels import ChannelGraph, read_rows, resize_channels
from tropfx.testing import assert_pass_preserves
from tropfx.testing.coupled import CoupledNet, _randomize, duplicate_channels
from tropfx.testing.models import ZOO

SPELLINGS = ["view", "module", "function"]


def shuffled(groups, spelling, seed=0):
    g = torch.Generator().manual_seed(seed)
    spec = [("conv", 8, False), ("shuffle", groups, spelling), ("conv", 3, True)]
    model = _randomize(CoupledNet(spec), g)
    return model, torch.randn(2, 2, 5, 5, generator=g)


def groups_of(model, x):
    gm = tropfx.compile(model, [], example_inputs=(x,), verify=False)
    return gm, {grp.name: grp for grp in ChannelGraph(gm).groups}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("groups", [2, 4])
def test_the_group_follows_the_shuffle_with_equal_blocks(spelling, groups):
    _, found = groups_of(*shuffled(groups, spelling))
    grp = found["blocks.0.conv"]
    assert grp.frozen is None
    assert [(p.member.role, p.shuffle) for p in grp.parts] == [("producer", None),
                                                                ("consumer", groups)]
    assert grp.cells.tolist() == torch.arange(8).div(8 // groups, rounding_mode="floor").tolist()


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_merging_duplicated_channels_through_a_shuffle_is_exact(spelling):
    model, x = shuffled(2, spelling)
    gm, _ = groups_of(model, x)
    dup, doubled = duplicate_channels(gm)
    assert doubled == 3  # stem, the shuffled conv, the last conv
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5), dup, (x,), rtol=1e-4, atol=1e-4)
    row = next(r for r in cm.report[-1].info["layers"] if r["layer"] == "blocks.0.conv")
    assert (row["n"], row["K"]) == (16, 8)
    assert cm.get_submodule("blocks.2.conv").in_channels == 8


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), groups=st.sampled_from([2, 4]),
       spelling=st.sampled_from(SPELLINGS), ratio=st.sampled_from([0.3, 0.5, 0.8]))
def test_a_compressed_shuffle_stays_a_valid_shuffle_and_ratio_one_is_bitwise(seed, groups,
                                                                             spelling, ratio):
    model, x = shuffled(groups, spelling, seed)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio)], example_inputs=(x,))
    k = cm.get_submodule("blocks.0.conv").out_channels
    assert k % groups == 0 and k <= 8 and cm(x).shape == (2, 3)
    same = assert_pass_preserves(tp.tropnnc(ratio=1.0), model, (x,), rtol=0.0, atol=0.0)
    assert not same.report[-1].modified


class V2Unit(nn.Module):
    """ShuffleNet v2's unit: chunk, a branch, concat, shuffle -- the shuffle interleaves two
    groups and the next chunk cuts them."""

    def __init__(self):
        super().__init__()
        self.stem, self.branch, self.head = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        a, b = F.relu(self.stem(x)).chunk(2, 1)
        y = torch.channel_shuffle(torch.cat([a, F.relu(self.branch(b))], 1), 2)
        return self.head(y)


def test_a_shuffle_over_a_concat_makes_one_joint_group():
    gm, found = groups_of(V2Unit().eval(), torch.randn(1, 2, 3, 3))
    grp = found["stem"]
    assert grp.frozen is None and grp.layout is not None and "branch" not in found
    assert grp.producers == ["stem", "branch"] and grp.layout.sizes == [4, 2]
    assert "channel shuffle" in grp.theory
    # the head reads stem 0, branch 0, stem 1, branch 1; the branch reads stem 2, 3
    parts = {p.member.node.name: p.index.tolist() for p in grp.parts if p.member.role == "consumer"}
    assert parts == {"branch": [2, 3], "head": [0, 4, 1, 5]}


def channel_shuffle(x, groups, spelling):
    if spelling == "function":
        return torch.channel_shuffle(x, groups)
    n, c, h, w = x.size()  # torchvision's spelling: sizes read from the tensor
    return torch.transpose(x.view(n, groups, c // groups, h, w), 1, 2).contiguous().view(n, -1, h, w)


class Branch(nn.Sequential):
    def __init__(self, cin, c, bn):
        super().__init__(nn.Conv2d(cin, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=c),
                         nn.BatchNorm2d(c) if bn else nn.Identity(), nn.Conv2d(c, c, 1), nn.ReLU())


class Stage(nn.Module):
    """A ShuffleNet v2 stage: a stem conv, a downsampling unit (two branches concatenated and
    shuffled; or the stem's output as it is), then ``units`` units that chunk, transform one
    half, concatenate and shuffle; a Linear head."""

    def __init__(self, half, units, spelling, down, bn):
        super().__init__()
        self.spelling, self.down = spelling, down
        self.stem = nn.Conv2d(2, 2 * half, 3, padding=1)
        if down:
            self.branch1 = nn.Sequential(nn.Conv2d(2 * half, 2 * half, 3, 1, 1, groups=2 * half),
                                         nn.Conv2d(2 * half, half, 1), nn.ReLU())
            self.branch2 = Branch(2 * half, half, bn)
        self.units = nn.ModuleList(Branch(half, half, bn) for _ in range(units))
        self.shuffle = nn.ChannelShuffle(2)
        self.head = nn.Linear(2 * half, 3)

    def _shuffle(self, x):
        if self.spelling == "none":  # no shuffle: the chunks alone cut the channels
            return x
        return self.shuffle(x) if self.spelling == "module" else channel_shuffle(x, 2, self.spelling)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.down:
            x = self._shuffle(torch.cat([self.branch1(x), self.branch2(x)], 1))
        for branch in self.units:
            x1, x2 = x.chunk(2, dim=1)
            x = self._shuffle(torch.cat([x1, branch(x2)], 1))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@st.composite
def stages(draw):
    units = draw(st.integers(1, 3))
    # the halving must scale for the copies of a channel to take its path (see duplicate_joint)
    half = 2 ** units * draw(st.integers(1, 2))
    spelling = draw(st.sampled_from([*SPELLINGS, "none"]))
    # without a shuffle, a downsampling unit's chunks would take its branches whole: no cut
    down = draw(st.booleans()) and spelling != "none"
    model = Stage(half, units, spelling, down, draw(st.booleans()))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return _randomize(model, g), torch.randn(2, 2, 6, 6, generator=g)


def duplicate_joint(gm):
    """``duplicate_channels`` for joint groups too: every channel followed by a copy that takes
    the same path through the shuffles (where each path doubles). Returns the groups doubled."""
    doubled = []
    for group in ChannelGraph(gm).groups:
        if group.frozen is not None:
            continue
        n = group.size
        src = torch.arange(n).repeat_interleave(2)  # new channel -> the old one it copies
        if group.layout is not None:
            cells = group.layout.plan([2 * s for s in group.layout.sizes], grow=True)
            assert cells is not None and all(len(new) == 2 * len(old) for old, new in cells), \
                group.layout.why
            for old, new in cells:
                src[new] = old.repeat_interleave(2)
        rows = []
        for part in group.parts:
            r = None if part.member.role == "view" else read_rows(gm, part)[src]
            rows.append(r / 2 if part.member.role == "consumer" else r)
        copies = torch.zeros(2 * n, n, dtype=torch.float64)
        copies[torch.arange(2 * n), src] = 1.0
        resize_channels(gm, group, rows, merge=copies)
        doubled.append(group.name)
    gm.recompile()
    return gm, doubled


@settings(max_examples=12, deadline=None)
@given(case=stages())
def test_merging_duplicated_channels_through_cat_shuffle_chunk_is_exact(case):
    model, x = case
    gm, found = groups_of(model, x)
    joint = [g for g in found.values() if g.layout is not None]
    assert len(joint) == 1 and joint[0].frozen is None
    dup, doubled = duplicate_joint(gm)
    assert joint[0].name in doubled
    assert torch.allclose(dup(x), model(x), rtol=1e-4, atol=1e-5)
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5), dup, (x,), rtol=1e-4, atol=1e-4)
    row = next(r for r in cm.report[-1].info["layers"] if r["layer"] == joint[0].name)
    assert row["K"] == row["n"] // 2 == joint[0].size and not row["paper"]


@settings(max_examples=12, deadline=None)
@given(case=stages(), ratio=st.sampled_from([0.3, 0.5, 0.8]),
       method=st.sampled_from(["multi", "l1"]))
def test_a_compressed_stage_runs_and_ratio_one_is_bitwise(case, ratio, method):
    model, x = case
    cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio, method=method)], example_inputs=(x,))
    assert cm(x).shape == (2, 3) and not cm.report[-1].skipped
    row = cm.report[-1].info["layers"][0]
    assert row["K"] < row["n"]
    same = assert_pass_preserves(tp.tropnnc(ratio=1.0), model, (x,), rtol=0.0, atol=0.0)
    assert not same.report[-1].modified


def test_the_zoo_shuffle_blocks_merge_their_duplicates_exactly():
    model, (x,) = ZOO["shufflenet_shuffle"](width=8)
    gm, found = groups_of(model, x)
    joint = {name: grp.size for name, grp in found.items() if grp.layout is not None}
    assert len(joint) == 2 and all(found[name].frozen is None for name in joint)
    dup, doubled = duplicate_joint(gm)
    assert set(joint) <= set(doubled)
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5), dup, (x,), rtol=1e-4, atol=1e-4)
    rows = {r["layer"]: (r["n"], r["K"]) for r in cm.report[-1].info["layers"]}
    assert all(rows[name] == (2 * n, n) for name, n in joint.items())


@settings(max_examples=12, deadline=None)
@given(half=st.integers(2, 9), new_half=st.integers(2, 9), units=st.integers(1, 4),
       spelling=st.sampled_from([*SPELLINGS, "none"]), down=st.booleans())
def test_the_replay_at_new_sizes_is_the_graph_of_the_model_built_at_them(half, new_half, units,
                                                                          spelling, down):
    """Layout.replay against an independent oracle: the channel graph of the same stage built
    with the new width."""
    down = down and spelling != "none"
    x = torch.randn(1, 2, 4, 4)
    _, found = groups_of(Stage(half, units, spelling, down, True).eval(), x)
    (old,) = [g for g in found.values() if g.layout is not None]
    _, found = groups_of(Stage(new_half, units, spelling, down, True).eval(), x)
    (new,) = [g for g in found.values() if g.layout is not None]
    replayed = old.layout.replay([s * new_half // half for s in old.layout.sizes])
    assert [p.member.node.name for p in old.parts] == [p.member.node.name for p in new.parts]
    assert all(torch.equal(a, p.index) for a, p in zip(replayed, new.parts, strict=True))


@pytest.mark.parametrize("half,units", [(3, 3), (5, 4), (2, 3)])
def test_paths_that_do_not_scale_are_merged_into_the_nearest_and_reported(half, units):
    model = _randomize(Stage(half, units, "function", False, True), torch.Generator().manual_seed(0))
    x = torch.randn(2, 2, 6, 6)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    row = cm.report[-1].info["layers"][0]
    want = [max(1, math.floor(0.5 * s + 0.5)) for s in [2 * half] + [half] * units]
    assert row["K"] == sum(want) and "lossy even for duplicates" in row["outside"]
    assert any("lossy even for duplicates" in t for t in cm.report[-1].rewritten)
    assert cm(x).shape == (2, 3)


class GroupedAfter(V2Unit):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(4, 4, 1, groups=2)


class HardSplit(V2Unit):
    def forward(self, x):
        a, b = F.relu(self.stem(x)).split([2, 2], 1)  # literal sizes: no other count fits
        return self.head(torch.channel_shuffle(torch.cat([a, F.relu(self.branch(b))], 1), 2))


def test_a_joint_group_that_cannot_be_followed_freezes_or_declines_with_the_reason():
    _, found = groups_of(GroupedAfter().eval(), torch.randn(1, 2, 3, 3))
    assert "grouped convolution head" in found["stem"].frozen
    cm = tropfx.compile(GroupedAfter().eval(), [tp.tropnnc(ratio=0.5)],
                        example_inputs=(torch.randn(1, 2, 3, 3),))
    assert any("grouped convolution head" in s.reason for s in cm.report[-1].skipped)
    x = torch.randn(1, 2, 3, 3)
    _, found = groups_of(HardSplit().eval(), x)
    assert found["stem"].frozen is None  # it replays at its own sizes, but at no smaller ones
    cm = tropfx.compile(HardSplit().eval(), [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    why = [s.reason for s in cm.report[-1].skipped if s.node == "stem"]
    assert why and "cannot shrink through the channel shuffle" in why[0] and "split" in why[0]


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        n = x.size(0)
        return self.b(F.relu(self.a(x)).view(n, 2, 2, 3, 3).transpose(1, 2).reshape(n, -1, 3, 3))


def test_a_hard_coded_shuffle_view_freezes():
    _, found = groups_of(HardCoded().eval(), torch.randn(1, 2, 3, 3))
    assert "hard-codes the channels per shuffle group" in found["a"].frozen


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_shuffle_in_groups_of_one_freezes(spelling):
    """With as many groups as channels the shuffle is the identity, but not once resized."""
    g = torch.Generator().manual_seed(0)
    model = _randomize(CoupledNet([("conv", 4, False), ("shuffle", 4, spelling)]), g)
    _, found = groups_of(model, torch.randn(1, 2, 3, 3, generator=g))
    why = found["blocks.0.conv"].frozen
    # the view spelling's literal g is then the channel count: frozen one step earlier
    assert "groups of one" in why or spelling == "view" and "hard-codes the channel count" in why
