"""relu_to_maxplus, maxpool_to_dilation and prune_l1: structure, exactness, refusals, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.errors import InputError, PassError
from tropfx.measure import count_active_params
from tropfx.nn import MaxPlus, MinPlus, SparseMaxPlus
from tropfx.nn.morphology import Dilation1d, Dilation2d
from tropfx.testing import assert_pass_preserves
from tropfx.testing.strategies import RELU_SPELLINGS, build_case, models

BITWISE = {"rtol": 0.0, "atol": 0.0}


def module_types(gm):
    return [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes
            if n.op == "call_module"]


# --- relu_to_maxplus ------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", RELU_SPELLINGS)
def test_every_relu_spelling_becomes_an_exact_maxplus_node(spelling):
    case = build_case([("seed", 1), ("input", (2, 3, 5, 5)),
                       ("conv", 2, 3, 4, 3, 1, 1, 1, True, "zeros"), ("relu", spelling),
                       ("flatten", "method"), ("linear", 100, 6, True), ("relu", spelling)])
    cm = assert_pass_preserves(tp.relu_to_maxplus(), case.model, case.inputs, **BITWISE)
    assert module_types(cm) == ["Conv2d", "SparseMaxPlus", "Linear", "SparseMaxPlus"]
    assert len(cm.report[1].rewritten) == 2 and cm.report[1].exact


def test_after_the_exact_rewrite_training_follows_relu_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, target = torch.randn(16, 6), torch.randint(0, 3, (16,))
    x[0, :] = 0.0  # includes exact zeros into ReLU (bias of the first layer made 0 below)
    with torch.no_grad():
        model[0].bias[:4] = 0.0
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(x,))
    for m in (model, cm):
        m.train()
        F.cross_entropy(m(x), target).backward()
    for name in ("0.weight", "0.bias", "2.weight"):
        assert torch.equal(dict(cm.named_parameters())[name].grad,
                           dict(model.named_parameters())[name].grad)
    maxplus = next(m for m in cm.modules() if isinstance(m, SparseMaxPlus))
    assert maxplus.value.grad is not None and maxplus.bias.grad is not None


def test_in_place_relu_whose_input_is_read_later_is_declined():
    class Reads(nn.Module):
        def forward(self, x):
            y = x * 2
            z = y.relu_()
            return z + y  # y was updated in place: an out-of-place rewrite would change this

    cm = tropfx.compile(Reads(), [tp.relu_to_maxplus()], example_inputs=(torch.randn(3, 4),))
    (skip,) = cm.report[1].skipped
    assert "read again later by ['add']" in skip.reason


def test_relu_to_maxplus_needs_shapes():
    cm = tropfx.compile(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), [tp.relu_to_maxplus()])
    assert "pass example_inputs" in cm.report[1].skipped[0].reason


def head_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, 5), nn.ReLU()).eval()


def test_sparse_mode_builds_the_papers_head_and_is_reported_lossy():
    x = torch.randn(4, 3, 4)
    cm = tropfx.compile(head_model(), [tp.relu_to_maxplus(mode="sparse", k=2, seed=3)],
                        example_inputs=(x,))
    row = cm.report[1]
    assert row.exact is False and len(row.rewritten) == 1 and row.max_abs_err is not None
    assert "not in a Linear -> [BatchNorm] -> ReLU -> Linear head" in row.skipped[0].reason
    layer = next(m for m in cm.modules() if isinstance(m, SparseMaxPlus))
    assert (layer.in_features, layer.out_features, layer.k) == (16, 16, 2)
    again = tropfx.compile(head_model(), [tp.relu_to_maxplus(mode="sparse", k=2, seed=3)],
                           example_inputs=(x,))
    twin = next(m for m in again.modules() if isinstance(m, SparseMaxPlus))
    assert torch.equal(layer.index, twin.index) and torch.equal(layer.value, twin.value)
    assert str(cm.report).count(" no ") >= 1


def test_bad_relu_to_maxplus_configuration():
    with pytest.raises(InputError, match="mode='dense'"):
        tp.relu_to_maxplus(mode="dense")
    with pytest.raises(InputError, match="k=0"):
        tp.relu_to_maxplus(mode="sparse", k=0)
    with pytest.raises(PassError, match=r"k=40 must be in \[1, in_features=16\]"):
        tropfx.compile(head_model(), [tp.relu_to_maxplus(mode="sparse", k=40)],
                       example_inputs=(torch.randn(2, 3, 4),))


# --- maxpool_to_dilation --------------------------------------------------------------------

POOLS = {
    "MaxPool2d": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 7, 7), Dilation2d),
    "MaxPool2d-dilated": (lambda: nn.MaxPool2d(2, 1, 0, dilation=2), (1, 2, 6, 5), Dilation2d),
    "MaxPool1d": (lambda: nn.MaxPool1d(2), (2, 3, 9), Dilation1d),
    "F.max_pool2d": (lambda: lambda x: F.max_pool2d(x, (2, 3), padding=(1, 1)), (1, 2, 5, 6),
                     Dilation2d),
    "torch.max_pool1d": (lambda: lambda x: torch.max_pool1d(x, 3, 2, 1, 1, True), (2, 2, 8),
                         Dilation1d),
}


class Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn if isinstance(fn, nn.Module) else None
        self._call = None if isinstance(fn, nn.Module) else fn

    def forward(self, x):
        return self.fn(x) if self.fn is not None else self._call(x)


@pytest.mark.parametrize("pool", list(POOLS))
def test_max_pooling_becomes_an_exact_flat_dilation(pool):
    make, shape, cls = POOLS[pool]
    x = torch.randn(*shape)
    x[0, 0, 0] = -math.inf  # infinities and NaN pass through exactly as in max_pool
    x.view(-1)[5] = math.inf
    x.view(-1)[-1] = math.nan
    cm = assert_pass_preserves(tp.maxpool_to_dilation(), Wrap(make()), (x,), **BITWISE)
    (layer,) = [m for m in cm.modules() if isinstance(m, cls)]
    assert torch.equal(layer.weight, torch.zeros_like(layer.weight))


def test_maxpool_declines_indices_3d_and_unknown_shapes():
    m = Wrap(nn.MaxPool2d(2, return_indices=True))
    cm = tropfx.compile(m, [tp.maxpool_to_dilation()], example_inputs=(torch.randn(1, 1, 4, 4),))
    assert "return_indices" in cm.report[1].skipped[0].reason
    cm = tropfx.compile(Wrap(nn.MaxPool3d(2)), [tp.maxpool_to_dilation()],
                        example_inputs=(torch.randn(1, 1, 4, 4, 4),))
    assert "3-D pooling" in cm.report[1].skipped[0].reason
    cm = tropfx.compile(Wrap(nn.MaxPool2d(2)), [tp.maxpool_to_dilation()])
    assert "pass example_inputs" in cm.report[1].skipped[0].reason


# --- prune_l1 -------------------------------------------------------------------------------

def hybrid(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 8, bias=False), nn.BatchNorm1d(8), SparseMaxPlus(8, 8, 2),
                         MaxPlus(8, 6, bias=False), MinPlus(6, 6), nn.Linear(6, 3)).eval()


def test_layer_scope_prunes_exactly_the_smallest_fraction_of_each_layer():
    model = hybrid()
    cm = tropfx.compile(model, [tp.prune_l1(0.5, scope="layer")],
                        example_inputs=(torch.randn(4, 10),))
    w0 = cm.get_submodule("0").weight
    assert int((w0 == 0).sum()) == 40
    kept = model[0].weight.abs().flatten().sort().values[40:]
    assert torch.equal(w0[w0 != 0].abs().sort().values, kept)
    assert int(torch.isneginf(cm.get_submodule("2").value).sum()) == 8
    assert int(torch.isposinf(cm.get_submodule("4").weight).sum()) == 18
    assert cm.report[1].active_params == count_active_params(cm) < cm.report[0].active_params


def test_global_scope_ranks_all_matched_weights_together():
    model = hybrid()
    cm = tropfx.compile(model, [tp.prune_l1(0.6, include=["0", "5"])],
                        example_inputs=(torch.randn(4, 10),))
    w = torch.cat([model[0].weight.flatten(), model[5].weight.flatten()]).abs()
    threshold = w.sort().values[math.floor(0.6 * w.numel()) - 1]
    for name, original in (("0", model[0]), ("5", model[5])):
        pruned = cm.get_submodule(name).weight == 0
        assert torch.equal(pruned, original.weight.abs() <= threshold)
    assert torch.equal(cm.get_submodule("3").weight, model[3].weight)  # not included


def test_a_bias_free_maxplus_row_keeps_its_largest_weight():
    model = hybrid()
    cm = tropfx.compile(model, [tp.prune_l1(0.99, scope="layer", include=["3"])],
                        example_inputs=(torch.randn(4, 10),))
    w = cm.get_submodule("3").weight
    assert (torch.isfinite(w).sum(1) == 1).all()
    assert torch.equal(w[torch.isfinite(w)], model[3].weight.gather(
        1, model[3].weight.abs().argmax(1, keepdim=True)).flatten())
    assert cm.report[1].info["per_layer"]["3"] < 0.99


def test_ratio_zero_is_an_exact_identity_and_bad_arguments_are_errors():
    x = torch.randn(4, 10)
    cm = assert_pass_preserves(tp.prune_l1(0.0), hybrid(), (x,), **BITWISE)
    assert cm.report[1].exact and not cm.report[1].modified
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match=r"must be in \[0, 1\)"):
            tp.prune_l1(bad)
    with pytest.raises(InputError, match="scope='channel'"):
        tp.prune_l1(0.5, scope="channel")
    cm = tropfx.compile(hybrid(), [tp.prune_l1(0.5, include=["nope.*"])])
    assert "no prunable layer matches" in cm.report[1].skipped[0].reason


def test_pruning_twice_counts_what_is_already_pruned():
    model = hybrid()
    x = torch.randn(4, 10)
    once = tropfx.compile(model, [tp.prune_l1(0.5, scope="layer", include=["0"])],
                          example_inputs=(x,))
    twice = tropfx.compile(model, [tp.prune_l1(0.5, scope="layer", include=["0"]),
                                   tp.prune_l1(0.5, scope="layer", include=["0"])],
                           example_inputs=(x,))
    assert torch.equal(once.get_submodule("0").weight, twice.get_submodule("0").weight)
    assert twice.report[2].modified is False


# --- properties over random models ----------------------------------------------------------

@settings(max_examples=200)
@given(models())
def test_relu_to_maxplus_is_bitwise_exact_on_random_models(case):
    cm = assert_pass_preserves(tp.relu_to_maxplus(), case.model, case.inputs, **BITWISE)
    relus = sum(1 for token in case.spec if token[0] == "relu")
    assert len(cm.report[1].rewritten) + len(cm.report[1].skipped) >= relus


@settings(max_examples=200)
@given(models())
def test_maxpool_to_dilation_is_bitwise_exact_on_random_models(case):
    assert_pass_preserves(tp.maxpool_to_dilation(), case.model, case.inputs, **BITWISE)


def test_erosion_structuring_elements_are_pruned_to_minus_infinity():
    """Erosion is min(x - w): an inactive entry is w = -inf (x + inf never wins the min)."""
    from tropfx.nn.morphology import Erosion2d

    torch.manual_seed(0)
    model = nn.Sequential(Erosion2d(2, 3, kernel_size=3, padding=1)).eval()
    x = torch.randn(1, 2, 5, 5)
    cm = tropfx.compile(model, [tp.prune_l1(0.5, scope="layer")], example_inputs=(x,))
    w = cm.get_submodule("0").weight
    assert int(torch.isneginf(w).sum()) == math.floor(0.5 * w.numel())
    y = cm(x)
    assert torch.isfinite(y).all() and (y >= model(x)).all()  # fewer terms in the min
