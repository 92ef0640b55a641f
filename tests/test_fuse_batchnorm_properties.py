"""fuse_batchnorm over random models (Hypothesis): exact on every model, every BN accounted for."""

import torch
from hypothesis import given, settings

import tropfx
from tropfx import passes as tp
from tropfx.ops import match_op
from tropfx.testing import assert_pass_preserves
from tropfx.testing.strategies import build_case, models


def batchnorm_count(gm) -> int:
    return sum(1 for n in gm.graph.nodes if (m := match_op(n, gm)) and m.op == "batch_norm")


@settings(max_examples=200)
@given(models())
def test_exact_in_float32_on_random_models(case):
    cm = assert_pass_preserves(tp.fuse_batchnorm(), case.model, case.inputs)  # rel 1e-5
    row = cm.report[1]
    # Every BatchNorm of the traced model was folded, or declined with a reason; none is lost.
    before = batchnorm_count(tropfx.compile(case.model, []))
    assert before == len(row.rewritten) + len(row.skipped)
    assert batchnorm_count(cm) == len(row.skipped) and all(s.reason for s in row.skipped)


@settings(max_examples=100)
@given(models())
def test_exact_in_float64_far_below_float32_rounding(case):
    assert_pass_preserves(tp.fuse_batchnorm(), case.model, case.inputs, dtype=torch.float64,
                          rtol=1e-10, atol=1e-12)


def test_random_models_do_exercise_folding():
    """The properties would be vacuous if random models never had a foldable BatchNorm."""
    case = build_case([
        ("seed", 3), ("input", (2, 3, 6, 6)),
        ("conv", 2, 3, 4, 3, 1, 1, 1, True, "zeros"), ("bn", "module", 2, 4, True, 1e-5),
        ("conv", 2, 4, 4, 1, 1, 0, 2, False, "reflect"),
        ("bn", "torch.batch_norm", 2, 4, False, 1e-3), ("relu", "method_"),
    ])
    cm = assert_pass_preserves(tp.fuse_batchnorm(), case.model, case.inputs)
    assert len(cm.report[1].rewritten) == 2
