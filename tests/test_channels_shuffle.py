"""A channel shuffle followed as a permutation of the channel dim (tropfx.channels)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.channels import ChannelGraph
from tropfx.testing import assert_pass_preserves
from tropfx.testing.coupled import CoupledNet, _randomize, duplicate_channels

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


def test_a_shuffle_over_a_concat_freezes_with_the_reason():
    _, found = groups_of(V2Unit().eval(), torch.randn(1, 2, 3, 3))
    assert "shuffle" in found["stem"].frozen and "ShuffleNet v2" in found["stem"].frozen
    assert found["branch"].frozen is not None


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
