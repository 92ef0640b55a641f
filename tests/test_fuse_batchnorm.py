"""fuse_batchnorm: what it rewrites, what it refuses (and says why), and that it is exact."""

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import tropfx
from tropfx import passes as tp
from tropfx.testing import assert_pass_preserves
from tropfx.testing.models import randomize_batchnorm_stats, resnet18


def nasty_bn(bn: nn.Module, seed: int = 0, tiny: bool = True) -> nn.Module:
    """Random statistics, including a variance far below eps, negative and zero scales."""
    gen = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        var = torch.rand(n, generator=gen) * 3 + 0.1
        if tiny:
            var[0] = 1e-9
        bn.running_var.copy_(var)
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=gen))
            bn.weight[-1] = 0.0
            bn.bias.copy_(torch.randn(n, generator=gen))
    return bn.eval()


def kinds(gm: fx.GraphModule) -> list[str]:
    return [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes
            if n.op == "call_module"]


LAYERS = {
    "Conv1d": (lambda: nn.Conv1d(4, 6, 3, groups=2), nn.BatchNorm1d, (2, 4, 7)),
    "Conv2d": (lambda: nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d, (2, 3, 5, 5)),
    "Conv2d-depthwise": (lambda: nn.Conv2d(4, 8, 3, groups=4), nn.BatchNorm2d, (1, 4, 6, 6)),
    "Conv3d": (lambda: nn.Conv3d(2, 4, 2, stride=2), nn.BatchNorm3d, (1, 2, 4, 4, 4)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2),
                        nn.BatchNorm1d, (2, 4, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 4, 2, stride=2, output_padding=1,
                                                   bias=False), nn.BatchNorm2d, (2, 3, 3, 3)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 2, 2), nn.BatchNorm3d, (1, 2, 2, 2, 2)),
    "Linear": (lambda: nn.Linear(5, 6), nn.BatchNorm1d, (3, 5)),
}


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_folds_every_layer_type_exactly(layer, affine):
    make, bn_cls, shape = LAYERS[layer]
    torch.manual_seed(0)
    conv = make()
    model = nn.Sequential(conv, nasty_bn(bn_cls(conv.weight.shape[1] * conv.groups
                                                if "Transpose" in layer else conv.weight.shape[0],
                                                affine=affine)), nn.ReLU()).eval()
    x = torch.randn(*shape)
    cm = assert_pass_preserves(tp.fuse_batchnorm(), model, (x,))  # float32, rel 1e-5
    assert kinds(cm) == [type(conv).__name__, "ReLU"]
    assert cm.report[1].rewritten == ["_1 -> 0"] and cm.report[1].skipped == []
    assert cm.get_submodule("0") is not conv  # a new module: the original may share parameters
    assert_pass_preserves(tp.fuse_batchnorm(), model, (x,), dtype=torch.float64)


@pytest.mark.parametrize("spelling", ["F.batch_norm", "torch.batch_norm"])
def test_folds_functional_batchnorm_and_drops_its_tensors(spelling):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nasty_bn(nn.BatchNorm2d(4))

        def forward(self, x):
            y = self.conv(x)
            if spelling == "F.batch_norm":
                return F.batch_norm(y, self.bn.running_mean, self.bn.running_var,
                                    self.bn.weight, self.bn.bias, False, 0.1, self.bn.eps)
            return torch.batch_norm(y, self.bn.weight, self.bn.bias, self.bn.running_mean,
                                    self.bn.running_var, False, 0.1, self.bn.eps, True)

    cm = assert_pass_preserves(tp.fuse_batchnorm(), Net().eval(), (torch.randn(2, 3, 5, 5),))
    assert [n.op for n in cm.graph.nodes] == ["placeholder", "call_module", "output"]
    assert not hasattr(cm, "bn")


def test_chained_batchnorms_fold_one_after_the_other():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nasty_bn(nn.BatchNorm2d(3)),
                          nasty_bn(nn.BatchNorm2d(3), seed=1)).eval()
    cm = assert_pass_preserves(tp.fuse_batchnorm(), model, (torch.randn(2, 2, 3, 3),))
    assert kinds(cm) == ["Conv2d"] and len(cm.report[1].rewritten) == 2


def test_fused_node_remembers_what_it_absorbed():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nasty_bn(nn.BatchNorm2d(3))).eval()
    cm = tropfx.compile(model, [tp.fuse_batchnorm()], example_inputs=(torch.randn(1, 2, 3, 3),))
    conv = next(n for n in cm.graph.nodes if n.op == "call_module")
    assert conv.meta["tropfx"]["fused_batchnorm"] == ["_1"]


def skipped(model, x=None):
    """Compile with fuse_batchnorm; assert nothing changed; return the skip reasons."""
    cm = tropfx.compile(model, [tp.fuse_batchnorm()],
                        example_inputs=None if x is None else (x,))
    row = cm.report[1]
    assert not row.modified and row.rewritten == []
    assert cm.report[0].params == row.params
    return [s.reason for s in row.skipped]


class ConvBNPlusConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nasty_bn(nn.BatchNorm2d(3))

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_refuses_when_the_layer_output_has_other_users():
    (reason,) = skipped(ConvBNPlusConv().eval(), torch.randn(1, 3, 2, 2))
    assert "output of conv is also used by ['add']" in reason


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nasty_bn(nn.BatchNorm2d(3))

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


def test_refuses_to_fold_into_a_module_called_twice():
    (reason,) = skipped(SharedConv().eval(), torch.randn(1, 3, 2, 2))
    assert "conv is called 2 times in the graph (a shared module)" in reason


def test_refuses_batchnorm_in_training_mode_or_without_running_stats():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    assert "call model.eval()" in skipped(model.train(), torch.randn(2, 3, 2, 2))[0]
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    assert "track_running_stats=False" in skipped(model.eval(), torch.randn(2, 3, 2, 2))[0]


@pytest.mark.parametrize("bad", ["nan_var", "inf_mean", "nan_weight", "negative_var"])
def test_refuses_corrupt_statistics(bad):
    bn = nasty_bn(nn.BatchNorm2d(3))
    with torch.no_grad():
        {"nan_var": bn.running_var, "inf_mean": bn.running_mean, "nan_weight": bn.weight,
         "negative_var": bn.running_var}[bad][1] = {"nan_var": float("nan"),
                                                    "inf_mean": float("inf"),
                                                    "nan_weight": float("nan"),
                                                    "negative_var": -1.0}[bad]
    (reason,) = skipped(nn.Sequential(nn.Conv2d(3, 3, 1), bn).eval())
    assert ("NaN/inf" in reason) if bad != "negative_var" else ("not positive" in reason)


def test_refuses_batchnorm_not_after_a_foldable_layer():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nasty_bn(nn.BatchNorm2d(3))).eval()
    (reason,) = skipped(model, torch.randn(1, 3, 2, 2))
    assert "its input is a ReLU module, not a foldable layer" in reason


def test_linear_needs_shapes_and_refuses_when_batchnorm_normalizes_another_dim():
    model = nn.Sequential(nn.Linear(4, 4), nasty_bn(nn.BatchNorm1d(4))).eval()
    # Without example inputs the rank of the Linear output is unknown: (N, 4) folds, but an
    # (N, 4, 4) input would make BatchNorm1d normalize dim 1, which is not the Linear's output.
    assert "output rank of 0 is unknown" in skipped(model)[0]
    assert "rank 3" in skipped(model, torch.randn(2, 4, 4))[0]
    assert_pass_preserves(tp.fuse_batchnorm(), model, (torch.randn(3, 4),))


def test_refuses_when_parameters_are_read_directly():
    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nasty_bn(nn.BatchNorm2d(3))

        def forward(self, x):
            return self.bn(self.conv(x)) * self.conv.weight.sum()

    (reason,) = skipped(ReadsWeight().eval(), torch.randn(1, 3, 2, 2))
    assert "parameters of conv are also read directly" in reason


def test_tied_weights_elsewhere_keep_their_values():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)
            self.b = nn.Conv2d(3, 3, 1)
            self.b.weight = self.a.weight
            self.bn = nasty_bn(nn.BatchNorm2d(3))

        def forward(self, x):
            return self.bn(self.a(x)) + self.b(x)

    cm = assert_pass_preserves(tp.fuse_batchnorm(), Tied().eval(), (torch.randn(1, 3, 2, 2),))
    assert cm.report[1].rewritten == ["bn -> a"]


def test_a_declined_match_leaves_the_graph_untouched():
    model = SharedConv().eval()
    traced = tropfx.compile(model, [])
    cm = tropfx.compile(model, [tp.fuse_batchnorm()])
    assert cm.code == traced.code


def test_resnet18_every_batchnorm_folds_exactly():
    model = randomize_batchnorm_stats(resnet18(num_classes=10, width=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    cm = assert_pass_preserves(tp.fuse_batchnorm(), model, (x,))
    assert len(cm.report[1].rewritten) == 20 and cm.report[1].skipped == []
    assert "BatchNorm2d" not in kinds(cm)
    # Still an ordinary trainable module.
    cm.train()
    cm(x).sum().backward()
    assert all(p.grad is not None for p in cm.parameters())


def test_one_batchnorm_module_after_two_convs_folds_into_both():
    class SharedBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nasty_bn(nn.BatchNorm2d(3))

        def forward(self, x):
            return self.bn(self.a(x)) * self.bn(self.b(x))

    cm = assert_pass_preserves(tp.fuse_batchnorm(), SharedBN().eval(), (torch.randn(1, 3, 4, 4),))
    assert cm.report[1].rewritten == ["bn -> a", "bn_1 -> b"] and kinds(cm) == ["Conv2d", "Conv2d"]
