"""Test helpers for pass authors: the equivalence oracle every pass test uses.

``tropfx.testing.strategies`` (needs ``hypothesis``) builds random small models to feed it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from tropfx.measure import clone_inputs, eval_mode
from tropfx.pipeline import compile
from tropfx.verify import compare, default_ntol, default_tolerance

__all__ = ["assert_pass_preserves", "state_checksum"]


def state_checksum(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()`` plus the training flags, to compare later."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"{name}.<training>": torch.tensor(m.training)
                  for name, m in model.named_modules()})
    return state


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
        for k in a
    )


def assert_pass_preserves(
    pass_: Callable[[fx.GraphModule], Any],
    model: nn.Module,
    inputs: tuple | torch.Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    dtype: torch.dtype | None = None,
) -> fx.GraphModule:
    """Assert that compiling ``model`` with ``[pass_]`` keeps its eval-mode outputs on ``inputs``.

    The oracle is the caller's eager model itself, not the traced graph. With ``dtype`` (e.g.
    ``torch.float64``) model and inputs are converted first, which checks the rewrite's algebra far
    below float32 rounding. Tolerances default to :func:`tropfx.verify.default_tolerance` of the
    output dtype. Also asserts that ``model`` was not modified. Returns the compiled module.
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
        inputs = tuple(x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x
                       for x in inputs)
    before = state_checksum(model)
    compiled = compile(model, [pass_], example_inputs=inputs, verify=False)
    assert _same_state(before, state_checksum(model)), "tropfx.compile modified the caller's model"
    with eval_mode(model):
        expected = model(*clone_inputs(inputs))
    with eval_mode(compiled):
        actual = compiled(*clone_inputs(inputs))
    assert _same_state(before, state_checksum(model)), "running the models modified the model"
    ref_dtype = next((t.dtype for t in tree_leaves(expected)
                      if isinstance(t, torch.Tensor)), torch.float32)
    default_rtol, default_atol = default_tolerance(ref_dtype)
    # the rounding floor of the default tolerance; explicit tolerances are assert_close's own
    ntol = default_ntol(ref_dtype) if rtol is None and atol is None else 0.0
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    result = compare(expected, actual, rtol=rtol, atol=atol, ntol=ntol)
    assert result.within, (
        f"{getattr(pass_, 'name', pass_)} changed {result.worst}: max abs err {result.max_abs:.3g}, "
        f"max rel err {result.max_rel:.3g} (rtol {rtol:g}, atol {atol:g}) {result.detail}\n"
        f"{compiled.report}\n{compiled.code}"
    )
    return compiled
