"""tp.tropnnc(batchnorm="keep"): BatchNorm stays (merged per cluster, not folded)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.testing import assert_pass_preserves
from tropfx.testing.coupled import coupled_models, duplicate_channels


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def _trained_looking(model):
    g = torch.Generator().manual_seed(0)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.data = torch.randn(t.shape, generator=g)
            bn.running_var.data = torch.rand(bn.running_var.shape, generator=g) + 0.5
    return model.eval()


def test_keep_leaves_the_batchnorm_resized_and_reports_it_outside_the_paper():
    model, x = _trained_looking(ConvBN()), torch.randn(2, 2, 5, 5)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, batchnorm="keep")], example_inputs=(x,))
    assert cm.bn.num_features == cm.a.out_channels == 3 and cm.b.in_channels == 3
    assert cm.a.bias is None  # nothing folded into the conv
    (row,) = cm.report[-1].info["layers"]
    assert not row["paper"] and "batchnorm='keep'" in row["outside"]
    folded = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    assert not hasattr(folded, "bn") and folded.report[-1].info["layers"][0]["paper"]
    # Alg. 3's rescaling assumes the paper's ReLU(A x + b): with BN kept it falls back to Alg. 2's
    it = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method="iterative", batchnorm="keep")],
                        example_inputs=(x,))
    assert it.report[-1].info["layers"][0]["rule"] == "mean_sum"


@settings(max_examples=15)
@given(case=coupled_models(), method=st.sampled_from(["multi", "iterative"]))
def test_keep_merges_exactly_duplicated_channels_exactly(case, method):
    """Every resizable group's channels doubled (convs' rows and BatchNorms' parameters alike),
    then TropNNC at ratio 0.5 with BatchNorm kept merges the copies back: the same function."""
    model, x = case
    gm = tropfx.compile(model, [], example_inputs=(x,), verify=False)
    dup, _ = duplicate_channels(gm)
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5, method=method, batchnorm="keep"), dup, (x,),
                               rtol=1e-4, atol=1e-4)
    assert all(r["K"] == r["n"] // 2 for r in cm.report[-1].info.get("layers", []))
    kept = sum(isinstance(m, nn.BatchNorm2d) for m in cm.modules())
    assert kept == sum(isinstance(m, nn.BatchNorm2d) for m in dup.modules())
