"""The exact max-plus passes, and their lowering, on random models fed boundary values: ties,
+-0 and +-inf (tropfx.testing.strategies, specials=True). Bitwise: max is exact, so is max pooling
as a flat dilation, and x + 0 only turns -0 into +0, which ReLU's max with the bias 0 does too."""

import pytest
from hypothesis import given, settings

from tropfx import kernels as K
from tropfx import passes as tp
from tropfx.testing import assert_pass_preserves
from tropfx.testing.strategies import models

BITWISE = {"rtol": 0.0, "atol": 0.0}


@settings(max_examples=150)
@given(models(specials=True))
def test_relu_to_maxplus_is_bitwise_on_boundary_values(case):
    assert_pass_preserves(tp.relu_to_maxplus(), case.model, case.inputs, **BITWISE)


@settings(max_examples=150)
@given(models(specials=True))
def test_maxpool_to_dilation_is_bitwise_on_boundary_values(case):
    assert_pass_preserves(tp.maxpool_to_dilation(), case.model, case.inputs, **BITWISE)


@settings(max_examples=60)
@given(models(specials=True))
def test_lowering_the_exact_rewrite_is_bitwise_on_boundary_values(case):
    if not K.load():
        pytest.skip("C++ kernels unavailable")
    exact = tropfx_compile(case)
    assert_pass_preserves(tp.lower_kernels(), exact, case.inputs, **BITWISE)


def tropfx_compile(case):
    import tropfx

    return tropfx.compile(case.model, [tp.relu_to_maxplus(), tp.maxpool_to_dilation()],
                          example_inputs=case.inputs, verify=False)
