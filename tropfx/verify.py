"""Numerical comparison of two stages' outputs.

A stage is within tolerance when **every element** of every output tensor is, as in
``torch.testing.assert_close``::

    |new - ref| <= atol + rtol * |ref| + ntol * max|ref|

so a small entry cannot hide a large relative error behind the tensor's largest one. The last term
(``ntol``, 10x below ``rtol`` for float32) is rounding's own floor: an entry near 0 that results from
cancelling large terms carries their rounding error, about eps times the output's magnitude, which
no exact float rewrite can avoid (folding a BatchNorm into a conv whose outputs reach 750 moves such
entries by 1e-4). ``ntol=0`` is ``assert_close``'s criterion. NaN in the same
place in both counts as equal, and so do equal infinities; a NaN or an infinity in one only (or
infinities of opposite signs) is an infinite error. Integer and bool outputs must be equal.

The report still shows two summary figures per stage, the worst over all outputs:

* ``max_abs`` = max |new - ref|;
* ``max_rel`` = max_abs / max |ref| (normwise: a figure of merit, not the criterion).

:class:`Comparison` names the element that is furthest beyond its tolerance (or, when everything is
within, the one with the largest error): its output, index and both values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["Comparison", "VerificationWarning", "compare", "default_ntol", "default_tolerance"]


class VerificationWarning(UserWarning):
    """Verification ran but proves little: the example outputs do not depend on the inputs."""

# (rtol, atol, ntol) per dtype: exact rewrites are judged at the precision of the model's own dtype.
_TOLERANCE = {
    torch.float64: (1e-10, 1e-12, 1e-12),
    torch.float32: (1e-5, 1e-7, 1e-6),
    torch.float16: (5e-3, 1e-4, 1e-3),
    torch.bfloat16: (3e-2, 1e-3, 1e-2),
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` used to judge an exact pass on outputs of ``dtype``."""
    return _TOLERANCE.get(dtype, (0.0, 0.0, 0.0))[:2]  # integer / bool outputs must match exactly


def default_ntol(dtype: torch.dtype) -> float:
    """The rounding floor ``ntol`` (a fraction of ``max |ref|``) for outputs of ``dtype``."""
    return _TOLERANCE.get(dtype, (0.0, 0.0, 0.0))[2]


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    max_rel: float
    within: bool  # every element within atol + rtol * |ref| + ntol * max|ref|
    worst: str  # which output, e.g. "output[1]"
    detail: str = ""  # why, when outputs are not even comparable
    index: tuple[int, ...] | None = None  # the worst element of ``worst``
    ref_value: float | None = None
    new_value: float | None = None

    def element(self) -> str:
        """``output[1][0, 3]: 0.52 (reference 0.5)``: the worst element, for messages."""
        if self.index is None:
            return self.worst
        return (f"{self.worst}[{', '.join(map(str, self.index))}]: {self.new_value!r} "
                f"(reference {self.ref_value!r})")


@dataclass(frozen=True)
class _Leaf:
    max_abs: float
    scale: float  # max |ref| over finite entries
    excess: float  # max of |new - ref| - (atol + rtol |ref|): > 0 means out of tolerance
    index: tuple[int, ...] | None
    ref_value: float | None
    new_value: float | None


def _leaf(ref: torch.Tensor, new: torch.Tensor, rtol: float, atol: float, ntol: float) -> _Leaf:
    if ref.numel() == 0:
        return _Leaf(0.0, 0.0, -math.inf, None, None, None)
    if not (ref.is_floating_point() or ref.is_complex()):
        wrong = (ref != new).flatten()
        if not wrong.any():
            return _Leaf(0.0, 0.0, -math.inf, None, None, None)
        flat = int(wrong.nonzero()[0])
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ref.shape))
        return _Leaf(math.inf, 0.0, math.inf, index, ref.flatten()[flat].item(),
                     new.flatten()[flat].item())
    ref64, new64 = ref.detach().to(torch.complex128 if ref.is_complex() else torch.float64), \
        new.detach().to(torch.complex128 if new.is_complex() else torch.float64)
    nan_ref, nan_new = torch.isnan(ref64), torch.isnan(new64)
    same = (ref64 == new64) | (nan_ref & nan_new)  # also equal infinities, which subtract to nan
    diff = torch.where(same, 0.0, (new64 - ref64).abs()).nan_to_num(nan=math.inf, posinf=math.inf)
    finite_ref = torch.isfinite(ref64)
    finite = ref64[finite_ref]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    # a non-finite reference is matched exactly or not at all (inf <= inf would admit anything)
    allowed = torch.where(finite_ref, atol + ntol * scale + rtol * ref64.abs(), 0.0)
    excess = torch.where(same, -allowed, diff - allowed)
    flat = int(excess.flatten().argmax()) if bool((excess > 0).any()) else int(diff.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ref.shape))
    return _Leaf(diff.max().item(), scale, excess.max().item(), index,
                 ref.flatten()[flat].item(), new.flatten()[flat].item())


def _plain(x: Any) -> Any:
    """Rebuild containers as plain dict / list / tuple: FX graphs return immutable_dict and
    immutable_list (subclasses) where eager code returns dict and list. Named tuples are kept."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_plain(v) for v in x)
    return x


def compare(ref: Any, new: Any, rtol: float, atol: float, ntol: float = 0.0) -> Comparison:
    """Compare two (nested) outputs leaf by leaf, element by element (see the module docstring;
    ``ntol`` scales ``max |ref|`` of each output tensor)."""
    ref_leaves, ref_spec = tree_flatten(_plain(ref))
    new_leaves, new_spec = tree_flatten(_plain(new))
    if ref_spec != new_spec:
        return Comparison(math.inf, math.inf, False, "output", f"structure {new_spec} != {ref_spec}")
    rows = []  # (excess, abs, rel, name, leaf)
    for i, (a, b) in enumerate(zip(ref_leaves, new_leaves, strict=True)):
        name = f"output[{i}]" if len(ref_leaves) > 1 else "output"
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return Comparison(math.inf, math.inf, False, name, "tensor vs non-tensor")
        if not isinstance(a, torch.Tensor):
            if a != b:
                return Comparison(math.inf, math.inf, False, name, f"{b!r} != {a!r}")
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return Comparison(math.inf, math.inf, False, name,
                              f"{b.dtype}{tuple(b.shape)} != {a.dtype}{tuple(a.shape)}")
        leaf = _leaf(a, b, rtol, atol, ntol)
        rel = leaf.max_abs / leaf.scale if leaf.scale > 0 else (0.0 if leaf.max_abs == 0 else math.inf)
        rows.append((leaf.excess, leaf.max_abs, rel, name, leaf))
    if not rows:
        return Comparison(0.0, 0.0, True, "output")
    excess, _, _, worst, leaf = max(rows, key=lambda r: r[:2])  # furthest out, then largest error
    return Comparison(max(r[1] for r in rows), max(r[2] for r in rows), excess <= 0, worst,
                      index=leaf.index, ref_value=leaf.ref_value, new_value=leaf.new_value)
