"""Tracing: leaf modules, automatic leaves for untraceable submodules, root errors, shapes."""

import pytest
import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.errors import TracingError


class Gate(nn.Module):
    """Data-dependent control flow: not traceable by torch.fx."""

    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.other = Block()
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(self.other(self.block(x)))


def _call_modules(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_module"]


def test_untraceable_submodules_become_the_smallest_leaves():
    gm, leaves = tropfx.trace(Net())
    assert [a.path for a in leaves] == ["block.gate", "other.gate"]
    assert leaves[0].module_type == "Gate"
    assert "control flow" in leaves[0].reason and "test_tracing.py" in leaves[0].reason
    # Everything around the leaves is still traced, so it can still be rewritten.
    assert _call_modules(gm) == ["block.conv", "block.bn", "block.gate", "other.conv",
                                 "other.bn", "other.gate", "head"]


class UntraceableBlock(Block):
    def forward(self, x):
        y = self.gate(self.bn(self.conv(x)))
        return y if y.shape[0] == 2 and y.max() > 0 else -y


def test_a_leaf_inside_a_larger_leaf_is_not_listed_twice():
    net = Net()
    net.block = UntraceableBlock()
    gm, leaves = tropfx.trace(net)
    assert [a.path for a in leaves] == ["block", "other.gate"]
    assert _call_modules(gm)[0] == "block"


def test_compile_rewrites_around_automatic_leaves_and_reports_them():
    model = Net().eval()
    x = torch.randn(2, 3, 5, 5)
    cm = tropfx.compile(model, [tp.fuse_batchnorm()], example_inputs=(x,))
    assert [a.path for a in cm.report.leaves] == ["block.gate", "other.gate"]
    assert "block.bn" not in _call_modules(cm) and "block.gate" in _call_modules(cm)
    assert "kept as leaves" in str(cm.report) and "block.gate (Gate)" in str(cm.report)
    torch.testing.assert_close(cm(x), model(x))


def test_leaf_modules_by_name_and_by_type():
    gm, leaves = tropfx.trace(Net(), leaf_modules=["block", Gate])
    assert leaves == []
    assert _call_modules(gm) == ["block", "other.conv", "other.bn", "other.gate", "head"]


def test_unknown_leaf_name_is_an_error_that_says_where_names_come_from():
    with pytest.raises(TracingError, match=r"\['blok'\].*named_modules"):
        tropfx.trace(Net(), leaf_modules=["blok"])


class UntraceableRoot(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        while y.abs().max() > 1:
            y = y / 2
        return y


def test_untraceable_root_raises_with_module_reason_and_fix():
    with pytest.raises(TracingError) as info:
        tropfx.compile(UntraceableRoot(), [tp.fuse_batchnorm()])
    message = str(info.value)
    assert "UntraceableRoot" in message
    assert "control flow" in message and "test_tracing.py" in message
    assert "submodule" in message and "torch.fx.wrap" in message


def test_shape_metadata_on_every_node_with_example_inputs():
    x = torch.randn(2, 3, 5, 5)
    cm = tropfx.compile(Net().eval(), [], example_inputs=(x,))
    for node in cm.graph.nodes:
        if node.op != "output":
            assert node.meta["tensor_meta"].shape == (2, 3, 5, 5) or node.target == "head"
    head = next(n for n in cm.graph.nodes if n.target == "head")
    assert head.meta["tensor_meta"].shape == (2, 2, 5, 5)


def test_a_compiled_model_with_automatic_leaves_saves_and_loads(tmp_path):
    model = Net().eval()
    x = torch.randn(2, 3, 5, 5)
    cm = tropfx.compile(model, [tp.fuse_batchnorm()], example_inputs=(x,))
    torch.save(cm, tmp_path / "cm.pt")
    loaded = torch.load(tmp_path / "cm.pt", weights_only=False)
    assert torch.equal(loaded(x), cm(x)) and [a.path for a in loaded.report.leaves] == [
        "block.gate", "other.gate"]
