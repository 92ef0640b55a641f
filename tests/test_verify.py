"""compare(): normwise errors, NaN / inf handling, structure mismatches."""

import math

import torch

from tropfx.verify import compare, default_tolerance


def test_errors_are_normwise_per_output():
    ref = torch.tensor([100.0, 1e-6])
    new = torch.tensor([100.0, 2e-6])  # elementwise the 2nd entry is 100 % off; normwise 1e-8
    c = compare(ref, new, rtol=1e-5, atol=0.0)
    assert c.within and math.isclose(c.max_abs, 1e-6, rel_tol=1e-3)
    assert math.isclose(c.max_rel, 1e-8, rel_tol=1e-3)
    assert not compare(ref, torch.tensor([100.01, 1e-6]), rtol=1e-5, atol=0.0).within


def test_nan_and_inf_in_the_same_places_are_equal_and_elsewhere_are_infinite():
    ref = torch.tensor([float("nan"), float("inf"), 1.0])
    assert compare(ref, ref.clone(), rtol=0, atol=0).within
    for new in ([0.0, float("inf"), 1.0], [float("nan"), 1.0, 1.0], [float("nan"), float("inf"),
                                                                      float("-inf")]):
        c = compare(ref, torch.tensor(new), rtol=1e-3, atol=1e-3)
        assert not c.within and c.max_abs == math.inf


def test_nested_outputs_report_the_worst_one():
    ref = {"a": torch.ones(3), "b": (torch.zeros(2), 7)}
    new = {"a": torch.ones(3), "b": (torch.full((2,), 0.5), 7)}
    c = compare(ref, new, rtol=1e-5, atol=1e-7)
    assert not c.within and c.worst == "output[1]" and c.max_abs == 0.5


def test_mismatched_structure_shape_dtype_or_constants_are_never_within():
    one = torch.ones(2)
    for new in ((one, one), torch.ones(3), one.double(), one.bool()):
        assert not compare(one, new, rtol=1, atol=1).within
    assert not compare((one, 1), (one, 2), rtol=1, atol=1).within
    assert compare(torch.arange(3), torch.arange(3), *default_tolerance(torch.int64)).within


def test_tolerances_follow_the_dtype():
    assert default_tolerance(torch.float64)[0] < default_tolerance(torch.float32)[0] \
        < default_tolerance(torch.bfloat16)[0]
