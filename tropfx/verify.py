"""Numerical comparison of two stages' outputs.

Errors are measured per output tensor and reported as the worst over all outputs:

* ``max_abs`` = max |new - ref|;
* ``max_rel`` = max_abs / max |ref| (normwise, so near-zero entries of ``ref`` do not blow it up).

A stage is within tolerance when, for every output tensor, ``max_abs <= atol + rtol * max |ref|``.
NaN in the same place in both counts as equal; NaN or inf appearing in one only is an infinite error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["Comparison", "compare", "default_tolerance"]

# (rtol, atol) per dtype: exact rewrites are judged at the precision of the model's own dtype.
_TOLERANCE = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-7),
    torch.float16: (5e-3, 1e-4),
    torch.bfloat16: (3e-2, 1e-3),
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` used to judge an exact pass on outputs of ``dtype``."""
    return _TOLERANCE.get(dtype, (0.0, 0.0))  # integer / bool outputs must match exactly


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    max_rel: float
    within: bool  # every output within (atol + rtol * max|ref|)
    worst: str  # which output, e.g. "output[1]"
    detail: str = ""  # why, when outputs are not even comparable


def _leaf_error(ref: torch.Tensor, new: torch.Tensor) -> tuple[float, float]:
    if ref.is_floating_point() or ref.is_complex():
        ref64, new64 = ref.detach().double(), new.detach().double()
        nan_ref, nan_new = torch.isnan(ref64), torch.isnan(new64)
        if not torch.equal(nan_ref, nan_new):
            return math.inf, 0.0
        same = ref64 == new64  # also equal infinities, which subtract to nan
        diff = torch.where(same | nan_ref, 0.0, (new64 - ref64).abs())
        diff = diff.nan_to_num(nan=math.inf, posinf=math.inf)
        finite = ref64[torch.isfinite(ref64)]
        scale = finite.abs().max().item() if finite.numel() else 0.0
        return (diff.max().item() if diff.numel() else 0.0), scale
    return (0.0 if torch.equal(ref, new) else math.inf), 0.0


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


def compare(ref: Any, new: Any, rtol: float, atol: float) -> Comparison:
    """Compare two (nested) outputs leaf by leaf."""
    ref_leaves, ref_spec = tree_flatten(_plain(ref))
    new_leaves, new_spec = tree_flatten(_plain(new))
    if ref_spec != new_spec:
        return Comparison(math.inf, math.inf, False, "output", f"structure {new_spec} != {ref_spec}")
    rows = []  # (not within, abs, rel, name)
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
        abs_err, scale = _leaf_error(a, b)
        rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)
        rows.append((abs_err > atol + rtol * scale, abs_err, rel_err, name))
    if not rows:
        return Comparison(0.0, 0.0, True, "output")
    failed, _, _, worst = max(rows)  # a failing output first, then the largest error
    return Comparison(max(r[1] for r in rows), max(r[2] for r in rows), not failed, worst)
