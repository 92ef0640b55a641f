"""compare(): normwise errors, NaN / inf handling, structure mismatches."""

import math

import torch

from tropfx.verify import compare, default_tolerance


def test_the_criterion_is_element_wise_and_names_the_worst_element():
    ref = torch.tensor([100.0, 1e-6])
    new = torch.tensor([100.0, 2e-6])  # the 2nd entry is 100 % off; normwise only 1e-8
    c = compare(ref, new, rtol=1e-5, atol=0.0)
    assert not c.within and c.index == (1,)
    assert c.ref_value == ref[1].item() and c.new_value == new[1].item()
    assert "output[1]: " in c.element() and "reference" in c.element()
    assert math.isclose(c.max_abs, 1e-6, rel_tol=1e-3)  # the summary figures stay
    assert math.isclose(c.max_rel, 1e-8, rel_tol=1e-3)
    assert compare(ref, torch.tensor([100.0009, 1e-6]), rtol=1e-5, atol=0.0).within


def test_the_tolerance_boundary_is_atol_plus_rtol_times_the_reference():
    """Exactly representable numbers: at the boundary is within, the next float past it is not."""
    rtol, atol = 2.0**-10, 2.0**-20
    ref = torch.tensor([[0.0, 1024.0], [-1024.0, 3.0]], dtype=torch.float64)
    edge = ref + torch.tensor([[atol, 1.0 + atol], [-(1.0 + atol), 0.0]], dtype=torch.float64)
    assert compare(ref, edge, rtol=rtol, atol=atol).within
    for i, j in ((0, 0), (0, 1), (1, 0)):
        past = edge.clone()
        past[i, j] = torch.nextafter(edge[i, j], edge[i, j] * 2 if edge[i, j] else torch.tensor(1.0,
                                                                                   dtype=torch.float64))
        c = compare(ref, past, rtol=rtol, atol=atol)
        assert not c.within and c.index == (i, j), (i, j)
    # the reference's magnitude counts, not the new value's (assert_close's asymmetry)
    assert not compare(torch.tensor([1.0]), torch.tensor([3.0]), rtol=0.9, atol=0.0).within
    assert compare(torch.tensor([3.0]), torch.tensor([1.0]), rtol=0.9, atol=0.0).within


def test_integer_outputs_name_the_first_difference():
    c = compare(torch.arange(6).view(2, 3), torch.tensor([[0, 1, 2], [3, 9, 5]]), rtol=1, atol=1)
    assert not c.within and c.index == (1, 1) and (c.ref_value, c.new_value) == (4, 9)


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
