"""match_op / is_op recognize every spelling of an operation, with canonical arguments."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from tropfx.ops import constant_value, is_op, match_op, register_function


def _nodes(fn, *modules: nn.Module):
    """Trace ``fn(self, x)`` on a module holding ``modules`` as m0, m1, ...; return compute nodes."""

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            for i, m in enumerate(modules):
                self.add_module(f"m{i}", m)
            self.register_buffer("mean", torch.zeros(4))
            self.register_buffer("var", torch.ones(4))

        forward = fn

    gm = fx.symbolic_trace(Holder())
    return gm, [n for n in gm.graph.nodes if n.op in ("call_module", "call_function",
                                                      "call_method")]


RELU_SPELLINGS = {
    "nn.ReLU": (lambda s, x: s.m0(x), [nn.ReLU()], False),
    "nn.ReLU(inplace)": (lambda s, x: s.m0(x), [nn.ReLU(inplace=True)], True),
    "F.relu": (lambda s, x: F.relu(x), [], False),
    "F.relu(inplace)": (lambda s, x: F.relu(x, inplace=True), [], True),
    "F.relu_": (lambda s, x: F.relu_(x), [], True),
    "torch.relu": (lambda s, x: torch.relu(x), [], False),
    "torch.relu_": (lambda s, x: torch.relu_(x), [], True),
    "x.relu()": (lambda s, x: x.relu(), [], False),
    "x.relu_()": (lambda s, x: x.relu_(), [], True),
}


@pytest.mark.parametrize("spelling", list(RELU_SPELLINGS))
def test_relu_in_every_spelling(spelling):
    fn, modules, inplace = RELU_SPELLINGS[spelling]
    gm, (node,) = _nodes(fn, *modules)
    found = match_op(node, gm)
    assert found is not None and found.op == "relu"
    assert found["input"].op == "placeholder"
    assert found["inplace"] is inplace
    assert is_op(node, "relu") and is_op(node, ("conv", "relu")) and not is_op(node, "linear")


@pytest.mark.parametrize("spelling", ["module", "F", "torch"])
def test_max_pool_spellings_agree_on_arguments(spelling):
    fn, modules = {
        "module": (lambda s, x: s.m0(x), [nn.MaxPool2d(3, 2, 1, ceil_mode=True)]),
        "F": (lambda s, x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), []),
        "torch": (lambda s, x: torch.max_pool2d(x, 3, 2, 1, 1, True), []),
    }[spelling]
    gm, (node,) = _nodes(fn, *modules)
    found = match_op(node, gm)
    assert found.op == "max_pool" and found["ndim"] == 2
    args = {k: found[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    assert args == {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1,
                    "ceil_mode": True}


def test_max_pool_default_stride_is_the_kernel():
    gm, (node,) = _nodes(lambda s, x: s.m0(x), nn.MaxPool1d(2))
    assert match_op(node, gm)["stride"] == 2


@pytest.mark.parametrize("spelling", ["module", "F", "torch"])
def test_batch_norm_spellings_resolve_to_the_same_statistics(spelling):
    fn, modules = {
        "module": (lambda s, x: s.m0(x), [nn.BatchNorm1d(4, affine=False).eval()]),
        "F": (lambda s, x: F.batch_norm(x, s.mean, s.var, eps=1e-5), []),
        "torch": (lambda s, x: torch.batch_norm(x, None, None, s.mean, s.var, False, 0.1,
                                                1e-5, True), []),
    }[spelling]
    gm, nodes = _nodes(fn, *modules)
    found = match_op(nodes[-1], gm)
    assert found.op == "batch_norm" and found["training"] is False and found["eps"] == 1e-5
    assert torch.equal(constant_value(found["running_var"], gm), torch.ones(4))
    assert constant_value(found["weight"], gm) is None


def test_batch_norm_module_in_training_mode_or_without_running_stats_uses_batch_stats():
    for bn in (nn.BatchNorm2d(3).train(), nn.BatchNorm2d(3, track_running_stats=False).eval()):
        gm, (node,) = _nodes(lambda s, x: s.m0(x), bn)
        assert match_op(node, gm)["training"] is True


def test_conv_linear_add_cat_flatten():
    gm, nodes = _nodes(
        lambda s, x: torch.cat([s.m0(x) + x, torch.add(x, x, alpha=2)], 1).flatten(1),
        nn.Conv2d(4, 4, 1, groups=2))
    ops = [match_op(n, gm) for n in nodes]
    assert [o.op for o in ops] == ["conv", "add", "add", "cat", "flatten"]
    assert ops[0]["groups"] == 2 and ops[0]["ndim"] == 2 and ops[2]["alpha"] == 2
    assert ops[3]["dim"] == 1 and ops[4]["start_dim"] == 1


def test_unknown_nodes_and_unknown_keywords_are_not_matched():
    gm, nodes = _nodes(lambda s, x: torch.exp(x).relu().sum())
    assert match_op(nodes[0], gm) is None and match_op(nodes[2], gm) is None
    # A keyword the spelling does not know means we do not understand the call: decline.
    gm, (node,) = _nodes(lambda s, x: operator.add(x, x))
    node.kwargs = {"surprise": 1}
    assert match_op(node, gm) is None


def test_constant_value_refuses_computed_tensors():
    gm, nodes = _nodes(lambda s, x: F.batch_norm(x, x.mean(0), s.var))
    with pytest.raises(LookupError, match="computed at run time"):
        constant_value(match_op(nodes[-1], gm)["running_mean"], gm)


@torch.fx.wrap
def my_relu(x):
    return x.clamp_min(0)


def test_users_register_their_own_spellings():
    register_function(my_relu, "relu", ("input",), fixed={"inplace": False})
    gm, (node,) = _nodes(lambda s, x: my_relu(x))
    assert is_op(node, "relu")
