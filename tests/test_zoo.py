"""The architecture zoo: every exact pass, and their pipeline, on each model of
tropfx.testing.models.ZOO -- exact (bitwise where the pass claims it), and every candidate either
rewritten or listed with a reason. Candidates are counted here with recognizers of their own (module
types and function names), not with tropfx.ops, so that a spelling the passes miss shows up."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.testing import state_checksum
from tropfx.testing.candidates import exact_pass_candidates
from tropfx.testing.models import ZOO

EXACT = [tp.fuse_batchnorm, tp.relu_to_maxplus, tp.maxpool_to_dilation]
BITWISE_PASSES = {"relu_to_maxplus", "maxpool_to_dilation"}

def check_model(model: nn.Module, inputs: tuple) -> tropfx.report.Report:
    before = state_checksum(model)
    traced = tropfx.compile(model, [], example_inputs=inputs)  # shapes: spatial dims of amax
    expected = exact_pass_candidates(traced)
    cm = tropfx.compile(model, [p() for p in EXACT], example_inputs=inputs)
    for row in cm.report.rows[1:]:
        # complete reporting: every candidate rewritten or listed, each listing with a reason
        assert len(row.rewritten) + len(row.skipped) == expected[row.stage], (row.stage, cm.report)
        assert all(s.reason for s in row.skipped)
        assert row.exact and row.max_abs_err is not None
        if row.stage in BITWISE_PASSES:
            assert row.max_abs_err == 0.0, (row.stage, cm.report)
    with torch.no_grad():  # the pipeline against the caller's eager model
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)
    for state in (state_checksum(model),):
        assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    return cm.report


@pytest.mark.parametrize("name", list(ZOO))
def test_every_exact_pass_on_the_zoo(name):
    check_model(*ZOO[name]())


@pytest.mark.parametrize("name", list(ZOO))
@settings(max_examples=5)
@given(width=st.sampled_from([2, 4, 6]), seed=st.integers(0, 2**16))
def test_every_exact_pass_on_random_widths_seeds_and_statistics(name, width, seed):
    check_model(*ZOO[name](width=width, seed=seed))


@pytest.mark.parametrize("name", list(ZOO))
def test_exact_in_float64_far_below_float32_rounding(name):
    model, (x,) = ZOO[name](width=4, seed=1)
    model, x = model.double(), x.double()
    cm = tropfx.compile(model, [p() for p in EXACT], example_inputs=(x,))
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-10, atol=1e-12)


def test_the_zoo_covers_what_broke():
    """The acceptance facts on the zoo's stand-ins for the real models."""
    reports = {name: check_model(*make()) for name, make in ZOO.items()}
    timm = reports["timm_bn_act"]
    assert timm["fuse_batchnorm"].skipped == [] and len(timm["fuse_batchnorm"].rewritten) == 4
    mobile = reports["mobilenet_v2_block"]
    assert mobile["relu_to_maxplus"].skipped == [] and len(mobile["relu_to_maxplus"].rewritten) == 8
    assert timm["relu_to_maxplus"].info["not_tropical"] == {"Hardswish": 1, "SiLU": 2, "Sigmoid": 1}
    assert reports["vit_block"]["relu_to_maxplus"].info["not_tropical"] == {"GELU": 2}
    dense = reports["densenet_block"]["fuse_batchnorm"]
    assert {s.reason for s in dense.skipped} == {
        "its input is a concatenation (torch.cat), not a foldable layer (Linear, ConvNd, "
        "ConvTransposeNd; register others with tropfx.layers.register_layer)"}
    assert len(reports["regnet_names"]["fuse_batchnorm"].rewritten) == 13  # names with '-'


def test_zoo_builders_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    a, (xa,) = ZOO["resnext_grouped"](width=4, seed=7)
    state = torch.get_rng_state()
    b, (xb,) = ZOO["resnext_grouped"](width=4, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(xa, xb) and all(torch.equal(p, q) for p, q in
                                       zip(a.state_dict().values(), b.state_dict().values(), strict=True))
