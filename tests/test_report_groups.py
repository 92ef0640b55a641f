"""The report groups identical skip reasons (a DenseNet declines dozens of BatchNorms for one)."""

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.pass_base import Skip
from tropfx.report import SHOWN_NAMES, group_skips


def test_group_skips_keeps_first_seen_order_and_every_node():
    skips = [Skip("a", "r1"), Skip("b", "r2"), Skip("c", "r1"), Skip("d", "r1")]
    assert group_skips(skips) == [("r1", ["a", "c", "d"]), ("r2", ["b"])]


class Concats(nn.Module):
    """BatchNorm after each concatenation, as in DenseNet."""

    def __init__(self, n):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(2 * (i + 1)) for i in range(n))

    def forward(self, x):
        feats = [x]
        for bn in self.bns:
            feats.append(bn(torch.cat(feats, 1))[:, :2])
        return torch.cat(feats, 1)


def test_a_dense_stage_prints_one_line_per_reason():
    n = SHOWN_NAMES + 3
    cm = tropfx.compile(Concats(n).eval(), [tp.fuse_batchnorm()],
                        example_inputs=(torch.randn(1, 2, 3, 3),))
    assert len(cm.report[1].skipped) == n
    text = str(cm.report)
    lines = [line for line in text.splitlines() if "concatenation" in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"  fuse_batchnorm: {n} × its input is a concatenation (torch.cat)")
    assert lines[0].endswith(f"... (+{n - SHOWN_NAMES} more)")
    assert len(cm.report.to_dict()["rows"][1]["skipped"]) == n  # tools still see every node
