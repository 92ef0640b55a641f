"""BiSE / BiMoNN binarization math: activation checks and projections (pure tensor functions).

Aouad & Talbot, "A foundation for exact binarized morphological neural networks" (*BiSE* below).
Nothing here is an ``nn.Module``: the layers (:mod:`tropfx.nn.bise`) and the binarization pass call
these functions on their effective parameters ``W = W(omega)``, ``b = B(beta)`` and scale ``p``.

Public API (``weight`` is ``(|Omega|,)`` for one neuron or ``(n_neurons, |Omega|)`` for a batch,
``bias`` ``()`` or ``(n_neurons,)``; results have the same leading shape)::

    bise_bounds(weight, bias, se, *, delta=0.0, p=1.0) -> Bounds              # Eqs. 4-8, Thm 2.3
    find_se(weight, bias, *, delta=0.0, p=1.0) -> SECandidates                # Prop. 3.1
    is_activated(weight, bias, *, delta=0.0, p=1.0) -> ActivationResult       # Thm 2.3 + Prop. 3.1
    propagate_delta(weight, bias, *, p=1.0, delta=0.0, activation=None) -> Tensor   # Lemma A.8, §3.3
    project_activable(weight, bias, *, solver="fast", p=1.0) -> Projection    # Eqs. 19-26, §3.2.1
    project_constant(weight, bias, *, p=1.0) -> Projection                    # Eqs. 27-28, §3.2.2
    activable_qp_duals(weight, bias, se, operation, *, solver="osqp") -> QPDuals   # Eq. 20, Eqs. 30-39
    morphological_params(se, operation) -> (weight, bias)                    # integer 0/1 BiSE of psi_S

Conventions (the paper's, stated once):

* **Neuron.** ``chi(x) = xi(p * (x (*) W - b))`` (Def. 2.1, Eq. 1). For one output pixel ``i`` the
  neuron sees the patch ``x_k = I(i - k)``, ``k`` in ``Omega`` (``(*)`` is a true convolution), so
  ``x (*) W = sum_k W_k x_k`` over the flattened kernel. Dilation and erosion by ``S`` read the same
  patch: ``dilation_S(x) = max_{k in S} x_k`` and ``erosion_S(x) = min_{k in S} x_k`` on binary
  ``x`` (``X (+) S = {x + s}``, ``X (-) S = {i : i - s in X for all s}``, Prop. A.4). A pass that
  runs the real and the binarized layer with the same flattened kernel layout (e.g. both with
  ``F.conv2d``, which cross-correlates) therefore needs no reflection of ``S``; comparing with a
  morphology library that uses ``X (+) S`` in image coordinates needs ``S`` reflected.
* **Thresholds.** The thresholded output is ``chi > 1/2``, i.e. ``x (*) W > b`` when ``p > 0``
  (Theorem 2.3, strict) and ``x (*) W < b`` when ``p < 0``: the complement of ``x (*) W >= b``,
  whose activation interval is ``L < b <= U`` (Prop. A.3). ``p = 0`` gives a constant neuron (never
  activated).
* **delta.** ``delta`` is the largest distance of an almost-binary input to ``{0, 1}``: inputs lie in
  ``[0, delta] U [1 - delta, 1]``; ``delta = 0`` means binary inputs. The paper's ``delta`` (Def. 2.2)
  is the half-width of the forbidden band around ``1/2``, so ``delta_paper = 1/2 - delta``:
  ``(1/2 - delta_paper)`` in Eqs. 4-5 is ``delta`` here and ``(1/2 + delta_paper)`` is
  ``1 - delta``. ``delta < 1/2`` (the paper's ``delta_paper > 0``).
* **Projections** use binary inputs (Eqs. 21-26 are Eq. 20 at ``delta_paper = 1/2``), the closed
  sets ``L <= b <= U`` of Eq. 20, and Eq. 20's domain ``W >= 0``: for a neuron with negative weights
  the returned distance is that to ``A_{psi,S}`` within ``W >= 0`` (an upper bound on Eq. 19, reached
  by a point that is activable). A neuron that is already activated is left as it is (distance 0,
  §3.1). ``distance`` is the Euclidean distance ``||(W, b) - (W*, b*)||`` (Eq. 28 is its square).

Every function computes in float64 on the CPU; tensors come back in the weight's floating dtype (float64
for integer weights) on the weight's device.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from tropfx.errors import InputError, ParameterError

__all__ = [
    "FAST_CHUNK_ELEMENTS",
    "OPERATIONS",
    "OSQP_SETTINGS",
    "SOLVERS",
    "ActivationResult",
    "Bounds",
    "Projection",
    "QPDuals",
    "SECandidates",
    "activable_qp_duals",
    "bise_bounds",
    "find_se",
    "is_activated",
    "morphological_params",
    "normalized_tanh",
    "project_activable",
    "project_constant",
    "propagate_delta",
]

OPERATIONS = ("dilation", "erosion")
SOLVERS = ("fast", "osqp")
OSQP_SETTINGS = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iter": 200_000, "polishing": True,
                 "verbose": False}
"""Settings of the reference solver: tight tolerances and polishing, so that its projections agree
with the exact fast solver to about 1e-8."""
FAST_CHUNK_ELEMENTS = 1 << 16
"""(neuron, |S|) pairs solved together by the fast projection: small enough for the working set to
stay in cache (~10 MiB of temporaries), large enough to amortize numpy's per-call overhead."""
_TIE_TOL = 1e-12
"""Candidates (S, psi) whose squared distances differ by less than this times the neuron's scale
``||W||^2 + b^2`` count as equally close: the first one wins (dilation before erosion, smaller S
first), so that results do not depend on rounding."""

Operation = str | None | tuple
"""An operation name, ``None`` (not activated), or a tuple of them for a batch."""


# --------------------------------------------------------------------------------------- results


class Bounds(NamedTuple):
    """Eqs. 4-8 for a given ``S`` and Theorem 2.3's verdicts ``L <= b < U`` (``L < b <= U`` if p < 0)."""

    lower_dilation: Tensor
    upper_dilation: Tensor
    lower_erosion: Tensor
    upper_erosion: Tensor
    dilation: Tensor
    erosion: Tensor


class SECandidates(NamedTuple):
    """Prop. 3.1's thresholded sets ``S_psi = (W > tau_psi)`` (``>=`` where the tie needs it): the
    only structuring element for which the neuron can be activated for ``psi``."""

    dilation: Tensor
    erosion: Tensor


class _Selectable:
    """``result.neuron(i)``: the single-neuron result of neuron ``i`` of a batched result."""

    def neuron(self, i: int):
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v[i] if isinstance(v, (Tensor, tuple)) else v
        return type(self)(**values)


@dataclass(frozen=True)
class ActivationResult(_Selectable):
    """Theorem 2.3 verdict per neuron.

    ``exact``: the thresholded neuron equals ``operation`` by ``se`` on every almost-binary input
    (complemented when ``complemented``, i.e. ``p < 0``). ``operation`` is ``"dilation"``,
    ``"erosion"`` or ``None`` (a tuple of them for a batch); ``|S| = 1`` is both, reported as
    dilation. ``se`` is all-False where not exact. ``lower``/``upper`` are ``L_psi(W, S)`` and
    ``U_psi(W, S)`` (NaN where not exact).
    """

    exact: Tensor
    operation: Operation
    se: Tensor
    complemented: Tensor
    lower: Tensor
    upper: Tensor


@dataclass(frozen=True)
class Projection(_Selectable):
    """The morphological operation chosen for each neuron and the projected parameters.

    ``operation`` by ``se`` is the binarized neuron (complement it when ``complemented``);
    ``(weight, bias)`` is the closest activable point found (activated for ``operation`` by ``se``,
    possibly on the boundary ``b = U``), ``distance`` its Euclidean distance to the input. ``exact``
    marks neurons that were already activated (returned unchanged, distance 0).
    """

    operation: Operation
    se: Tensor
    weight: Tensor
    bias: Tensor
    distance: Tensor
    exact: Tensor
    complemented: Tensor


@dataclass(frozen=True)
class QPDuals(_Selectable):
    """The solution of Eq. 20 for one fixed ``(S, psi)`` and its Lagrange multipliers.

    ``sum_dual``: multiplier of Eq. 21 (dilation, ``sum_{Omega \\ S} W <= b``) or Eq. 24 (erosion,
    ``b <= sum_S W``); ``se_duals`` (zero outside ``S``): Eq. 22 (``b <= W_s``) or Eq. 25
    (``sum W - W_s <= b``); ``nonneg_duals``: ``W_k >= 0`` (Eqs. 23, 26). Eqs. 31-33's sets are
    ``T = se_duals > 0`` and ``K = nonneg_duals > 0`` (up to degenerate ties).
    """

    weight: Tensor
    bias: Tensor
    distance: Tensor
    sum_dual: Tensor
    se_duals: Tensor
    nonneg_duals: Tensor


# ------------------------------------------------------------------------------------ validation


def _as_tensor(x: object, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    if x.is_complex():
        raise InputError(f"{what} must be real, got {x.dtype}")
    return x


def _neurons(weight: object, bias: object, fn: str) -> tuple[Tensor, Tensor, bool, torch.dtype,
                                                            torch.device]:
    """float64 CPU copies ``(W (N, n), b (N,))``, whether one neuron was given, and the output
    dtype / device."""
    w = _as_tensor(weight, f"{fn}: weight")
    if w.dim() not in (1, 2):
        raise InputError(f"{fn}: weight must have shape (|Omega|,) for one neuron or (n_neurons, |Omega|) "
                         f"for a batch, got {tuple(w.shape)}; flatten kernels with "
                         "weight.reshape(n_neurons, -1)")
    single = w.dim() == 1
    w2 = w[None] if single else w
    n_neurons, size = w2.shape
    if size == 0:
        raise InputError(f"{fn}: weight has no entries (|Omega| = 0); a BiSE needs a non-empty kernel")
    if n_neurons == 0:
        raise InputError(f"{fn}: weight holds no neuron (shape {tuple(w.shape)})")
    if isinstance(bias, (int, float)):
        bias = torch.tensor(float(bias), dtype=torch.float64)
    b = _as_tensor(bias, f"{fn}: bias")
    expected = ((), (1,)) if single else ((n_neurons,),)
    if tuple(b.shape) not in expected:
        raise InputError(f"{fn}: bias must have shape {' or '.join(map(str, expected))} for weight of "
                         f"shape {tuple(w.shape)}, got {tuple(b.shape)}")
    a64 = w2.detach().to("cpu", torch.float64)
    b64 = b.detach().to("cpu", torch.float64).reshape(n_neurons)
    bad = ~(torch.isfinite(a64).all(1) & torch.isfinite(b64))
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ParameterError(f"{fn}: neuron(s) {rows[:10]}{'...' if len(rows) > 10 else ''} have NaN or "
                             "infinite weights or bias; training diverged or the checkpoint is corrupt. "
                             "Binarize only finite parameters")
    out = w.dtype if w.is_floating_point() else torch.float64
    return a64, b64, single, out, w.device


def _deviation(delta: object, fn: str) -> float:
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise InputError(f"{fn}: delta must be a number, got {type(delta).__name__}") from None
    if not 0.0 <= value < 0.5:
        raise ParameterError(f"{fn}: delta = {value} is outside [0, 1/2); delta is how far inputs may be "
                             "from {0, 1} (0 for binary inputs; the paper's delta is 1/2 - delta)")
    return value


def _scale(p: object, n_neurons: int, fn: str) -> Tensor:
    if isinstance(p, (int, float)):
        p = torch.tensor(float(p), dtype=torch.float64)
    p = _as_tensor(p, f"{fn}: p").detach().to("cpu", torch.float64)
    if p.numel() == 1:
        p = p.reshape(1).expand(n_neurons)
    elif tuple(p.shape) != (n_neurons,):
        raise InputError(f"{fn}: p must be a number or have shape ({n_neurons},), got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ParameterError(f"{fn}: the scale p holds NaN or inf; use finite scales")
    return p


def _structuring_elements(se: object, shape: tuple[int, int], single: bool, fn: str) -> Tensor:
    s = _as_tensor(se, f"{fn}: se")
    s2 = s[None] if single and s.dim() == 1 else s
    if tuple(s2.shape) != shape:
        want = shape[1:] if single else shape
        raise InputError(f"{fn}: se must be a boolean mask shaped like weight {want}, got {tuple(s.shape)}")
    if s2.dtype != torch.bool:
        if s2.is_floating_point() or not bool(((s2 == 0) | (s2 == 1)).all()):
            raise InputError(f"{fn}: se must be a boolean (or 0/1 integer) mask, got {s2.dtype}")
        s2 = s2 != 0
    s2 = s2.detach().cpu()
    empty = ~s2.any(1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ParameterError(f"{fn}: the structuring element of neuron(s) {rows[:10]} is empty; Theorem 2.3 "
                             "needs S non-empty (a neuron with S = {} is constant, not morphological)")
    return s2


def _operation_codes(operation: object, n_neurons: int, fn: str) -> Tensor:
    """0 for dilation, 1 for erosion, one per neuron."""
    ops = [operation] * n_neurons if isinstance(operation, str) else list(operation)  # type: ignore
    if len(ops) != n_neurons:
        raise InputError(f"{fn}: operation must be one string or one per neuron ({n_neurons}), "
                         f"got {len(ops)}")
    unknown = sorted({repr(o) for o in ops if o not in OPERATIONS})
    if unknown:
        raise ParameterError(f"{fn}: unknown operation(s) {', '.join(unknown)}; use 'dilation' or 'erosion'")
    return torch.tensor([OPERATIONS.index(o) for o in ops], dtype=torch.long)


def _solver(solver: object, fn: str) -> str:
    if solver not in SOLVERS:
        raise ParameterError(f"{fn}: unknown solver {solver!r}; use 'fast' (exact, sorting) or 'osqp' "
                             "(the paper's reference QP solver)")
    return solver  # type: ignore[return-value]


def _names(codes: Tensor, valid: Tensor) -> tuple:
    return tuple(OPERATIONS[int(c)] if bool(v) else None for c, v in zip(codes, valid, strict=True))


def _finish(cls, single: bool, dtype: torch.dtype, device: torch.device, **values):
    """Build a result: floating tensors in ``dtype`` on ``device``, single neurons unbatched."""
    out = {}
    for name, v in values.items():
        if isinstance(v, Tensor):
            v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            v = v[0] if single else v
        elif isinstance(v, tuple) and single:
            v = v[0]
        out[name] = v
    return cls(**out)


# ----------------------------------------------------------------------- activation (Theorem 2.3)


def _bounds(a: Tensor, se: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eqs. 4-8 for weights ``a`` (N, n) and masks ``se`` (N, n), deviation ``eps = 1/2 - delta``."""
    pos = a.clamp(min=0)
    low_d = (pos * ~se).sum(1) + eps * (pos * se).sum(1)                           # Eq. 4
    min_s = torch.where(se, a, torch.full_like(a, math.inf)).amin(1)
    up_d = (1 - eps) * min_s + a.clamp(max=0).sum(1)                               # Eq. 5
    total = a.sum(1)
    return low_d, up_d, total - up_d, total - low_d                                # Eqs. 8, 6


def _inside(low: Tensor, b: Tensor, up: Tensor, p: Tensor) -> Tensor:
    """Theorem 2.3's ``L <= b < U`` for ``p > 0``; ``L < b <= U`` for ``p < 0`` (Prop. A.3)."""
    return torch.where(p > 0, (low <= b) & (b < up), (p < 0) & (low < b) & (b <= up))


def bise_bounds(weight: Tensor, bias: Tensor, se: Tensor, *, delta: float = 0.0,
                p: float | Tensor = 1.0) -> Bounds:
    """``L_+(W, S)``, ``U_+(W, S)``, ``L_-(W, S)``, ``U_-(W, S)`` (BiSE Eqs. 4-8) and Theorem 2.3's
    verdicts: is the thresholded neuron exactly the dilation (erosion) by ``se`` on every input
    whose pixels lie within ``delta`` of ``{0, 1}``?

    ``L_+ = sum_{Omega \\ S} [W]_+ + delta sum_S [W]_+``, ``U_+ = (1 - delta) min_S W + sum [W]_-``,
    ``U_- = sum W - L_+``, ``L_- = sum W - U_+`` (``delta`` here is ``1/2 - delta_paper``). The
    verdict is ``L <= b < U`` for ``p > 0`` and ``L < b <= U`` for ``p < 0`` (then the neuron is the
    complement of the operation).
    """
    fn = "bise_bounds"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    s = _structuring_elements(se, tuple(a.shape), single, fn)
    eps = _deviation(delta, fn)
    pv = _scale(p, a.shape[0], fn)
    low_d, up_d, low_e, up_e = _bounds(a, s, eps)
    return _finish(Bounds, single, dtype, device, lower_dilation=low_d, upper_dilation=up_d,
                   lower_erosion=low_e, upper_erosion=up_e, dilation=_inside(low_d, b, up_d, pv),
                   erosion=_inside(low_e, b, up_e, pv))


def _candidates(a: Tensor, b: Tensor, eps: float, p: Tensor) -> tuple[Tensor, Tensor]:
    tau_d = (b - a.clamp(max=0).sum(1)) / (1 - eps)                                # Eq. 16
    tau_e = (a.clamp(min=0).sum(1) - b) / (1 - eps)                                # Eq. 17
    neg = (p < 0)[:, None]
    # At the closed end of the activation interval the smallest weight of S equals tau: b = L_-
    # for an erosion with p > 0 (e.g. W = 1_S, b = |S| - 1) and b = U_+ for a dilation with p < 0.
    # Prop. 3.1's strict (W > tau) misses it there; (W >= tau) is then the set (Prop. A.3 / A.4).
    dil = torch.where(neg, a >= tau_d[:, None], a > tau_d[:, None])
    ero = torch.where(neg, a > tau_e[:, None], a >= tau_e[:, None])
    return dil, ero


def find_se(weight: Tensor, bias: Tensor, *, delta: float = 0.0, p: float | Tensor = 1.0) -> SECandidates:
    """The linear check of BiSE Prop. 3.1: the only ``S`` for which the neuron can be activated.

    ``S_+ = (W > tau_+)``, ``tau_+ = (b - sum [W]_-) / (1 - delta)`` (Eq. 16) and
    ``S_- = (W >= tau_-)``, ``tau_- = (sum [W]_+ - b) / (1 - delta)`` (Eq. 17); the comparisons swap
    strictness for ``p < 0``. The paper states ``S_- = (W > tau_-)``, which misses ``S`` when
    ``b = L_-`` exactly (Prop. A.10 uses Prop. A.3's non-strict interval). O(|Omega|) per neuron; the
    sets may be empty. Confirm with :func:`is_activated` (or :func:`bise_bounds`).
    """
    fn = "find_se"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    dil, ero = _candidates(a, b, _deviation(delta, fn), _scale(p, a.shape[0], fn))
    return _finish(SECandidates, single, dtype, device, dilation=dil, erosion=ero)


def _activation(a: Tensor, b: Tensor, eps: float, p: Tensor) -> dict[str, Tensor]:
    s_d, s_e = _candidates(a, b, eps, p)
    low_d, up_d, _, _ = _bounds(a, s_d, eps)
    _, _, low_e, up_e = _bounds(a, s_e, eps)
    dil = s_d.any(1) & _inside(low_d, b, up_d, p)
    ero = ~dil & s_e.any(1) & _inside(low_e, b, up_e, p)
    exact = dil | ero
    nan = torch.full_like(b, math.nan)
    return {"exact": exact, "code": ero.long(),
            "se": torch.where(dil[:, None], s_d, s_e & ero[:, None]),
            "lower": torch.where(dil, low_d, torch.where(ero, low_e, nan)),
            "upper": torch.where(dil, up_d, torch.where(ero, up_e, nan))}


def is_activated(weight: Tensor, bias: Tensor, *, delta: float = 0.0,
                 p: float | Tensor = 1.0) -> ActivationResult:
    """Is each neuron exactly a dilation or an erosion (BiSE Theorem 2.3)?

    Finds the only candidate ``S`` per operation by Prop. 3.1 (:func:`find_se`) and checks the
    bounds of Eqs. 4-8 on it: O(|Omega|) per neuron, vectorized over the batch. ``exact`` then means
    ``1[chi(x) > 1/2] = psi_S(1[x > 1/2])`` for every input ``x`` within ``delta`` of binary (Eq. 10),
    complemented when ``p < 0``. Both operations hold only when ``|S| = 1`` (the same function);
    it is reported as a dilation. The bounds are float64 sums: a bias on the closed end of an
    interval (``b = L``, common with integer weights) is decided exactly when the sums are exact
    (integer or dyadic values); otherwise it is decided up to rounding, as the convolution itself is.
    """
    fn = "is_activated"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    pv = _scale(p, a.shape[0], fn)
    r = _activation(a, b, _deviation(delta, fn), pv)
    return _finish(ActivationResult, single, dtype, device, exact=r["exact"],
                   operation=_names(r["code"], r["exact"]), se=r["se"], complemented=pv < 0,
                   lower=r["lower"], upper=r["upper"])


def normalized_tanh(u: Tensor) -> Tensor:
    """``xi(u) = tanh(u) / 2 + 1/2``, the smooth threshold of Def. 2.1."""
    return 0.5 * torch.tanh(u) + 0.5


def propagate_delta(weight: Tensor, bias: Tensor, *, p: float | Tensor = 1.0, delta: float = 0.0,
                    activation: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The deviation of an activated neuron's outputs from ``{0, 1}`` (BiSE Lemma A.8, §3.3).

    For inputs within ``delta`` of binary, an activated neuron's convolution is ``<= L`` where the
    operation gives 0 and ``>= U`` where it gives 1 (both bounds reached), so its outputs lie within
    ``max(d(p (L - b)), d(p (U - b)))`` of ``{0, 1}`` with ``d(u) = min(xi(u), 1 - xi(u))``: Eqs.
    96-98 (``delta_out = 1/2 -`` that, in the paper's parametrization). NaN for neurons that are not
    activated (their outputs carry no guarantee). The next layer's ``delta`` is the maximum over the
    neurons feeding it; 1/2 (``b`` on the closed end ``L``) means no margin is left.
    ``activation`` is ``xi`` (default :func:`normalized_tanh`), increasing with ``xi(0) = 1/2``.
    """
    fn = "propagate_delta"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    pv = _scale(p, a.shape[0], fn)
    r = _activation(a, b, _deviation(delta, fn), pv)
    xi = normalized_tanh if activation is None else activation

    def dev(u: Tensor) -> Tensor:
        v = xi(u)
        return torch.minimum(v, 1 - v)

    out = torch.maximum(dev(pv * (r["lower"] - b)), dev(pv * (r["upper"] - b)))
    out = torch.where(r["exact"], out, torch.full_like(out, math.nan)).to(device, dtype)
    return out[0] if single else out


def morphological_params(se: Tensor, operation: str | Sequence[str]) -> tuple[Tensor, Tensor]:
    """Integer BiSE parameters of ``psi_S``: ``(1_S, 0)`` for a dilation, ``(1_S, |S| - 1)`` for an
    erosion, in this module's convention ``x (*) W > b``. They are activated (``L <= b < U``) for
    binary inputs, so :func:`is_activated` recovers ``(psi, S)`` from them."""
    fn = "morphological_params"
    s = _as_tensor(se, f"{fn}: se")
    if s.dim() not in (1, 2):
        raise InputError(f"{fn}: se must have shape (|Omega|,) or (n_neurons, |Omega|), got {tuple(s.shape)}")
    single = s.dim() == 1
    s2 = _structuring_elements(s, tuple((s[None] if single else s).shape), single, fn)
    codes = _operation_codes(operation, s2.shape[0], fn)
    w = s2.long()
    b = torch.where(codes == 1, w.sum(1) - 1, torch.zeros_like(codes))
    return (w[0], b[0]) if single else (w, b)


# --------------------------------------------------------- fast exact projection (Eq. 20, part 4)
#
# For a fixed S and psi, Eq. 20 is the projection onto a polyhedral cone (every constraint is
# homogeneous). Its KKT conditions reduce to two scalars (X, Y) on two monotone piecewise-linear
# curves whose kinks are weights of S and of Omega \ S:
#
#   dilation  X = b, Y = lambda (multiplier of Eq. 21):
#       Y = (X - b^) + sum_S [X - W_s]_+           (stationarity in b; W_s = max(W^_s, b), Eq. 38)
#       X = Lambda(Y) = sum_{Omega \ S} [W^_k - Y]_+   (Eq. 21 tight; W_k = [W^_k - Y]_+, Eqs. 36-37)
#   erosion, Eq. 24 slack  X = rho, Y = M (sum of the multipliers of Eq. 25): W_s = max(W^_s, rho) - M,
#       W_k = [W^_k - M]_+, b = b^ + M; Y = sum_S [X - W^_s]_+ and X = Lambda(Y) + (1 - |S|) Y + sum_S W^ - b^
#   erosion, Eq. 24 tight  X = u = rho - M / (|S|+1), Y = M, theta = (b^ - sum_S W^ - M) / (|S|+1):
#       W_s = theta + max(W^_s, rho), b = b^ - theta; Y = F(u) with F increasing, X = Lambda(Y) + const.
#
# Curve 1 (Y = P(X)) increases, curve 2 (X = Q(Y)) does not; they cross once. Both are linear
# between consecutive sorted weights, so the crossing is found by halving the two index ranges at
# once: at a grid corner (x, y) the signs of P(x) - y and Q(y) - x tell on which side of x or y the
# crossing lies. A final 2 x 2 linear solve in the located cell gives (X, Y) exactly; Eqs. 35-39 are
# that solve for the dilation. With all weights sorted once per neuron (Prop. 3.2 lets S run over
# the |Omega| prefixes of the sorted order), prefix sums make every step O(1): O(log |Omega|) per
# (neuron, |S|, psi), O(|Omega| log |Omega|) per neuron and psi.

_DIL, _ERO_FREE, _ERO_TIGHT = 0, 1, 2
_INT = np.int32   # cell indices: half the memory traffic of int64


class _Tables(NamedTuple):
    """Per-neuron tables: ``a[row * width + i]`` is the i-th (1-based) weight in the solver's order
    (S first, each part descending), ``c``/``c2`` prefix sums of weights / squares and
    ``d[i] = c[i] - i a[i]``; padded so that indices 0 .. n + 1 are valid. With ``d``, both curves
    at a grid point are ``d + slope * a + offset`` with per-(neuron, |S|) constants. ``ad`` packs
    ``a + i d`` in one complex array: one gather fetches both (half the cost of two)."""

    a: np.ndarray
    c: np.ndarray
    c2: np.ndarray
    ad: np.ndarray
    bias: np.ndarray
    n: int
    width: int


def _tables(ordered: np.ndarray, bias: np.ndarray) -> _Tables:
    rows, n = ordered.shape
    a = np.zeros((rows, n + 2))
    a[:, 1:-1] = ordered
    c = np.zeros((rows, n + 2))
    np.cumsum(ordered, axis=1, out=c[:, 1:-1])
    c[:, -1] = c[:, -2]
    c2 = np.zeros((rows, n + 2))
    np.cumsum(ordered * ordered, axis=1, out=c2[:, 1:-1])
    c2[:, -1] = c2[:, -2]
    ad = np.empty((rows, n + 2), dtype=np.complex128)
    ad.real, ad.imag = a, c - np.arange(n + 2) * a
    return _Tables(a.ravel(), c.ravel(), c2.ravel(), ad.ravel(), bias, n, n + 2)


class _Elems:
    """The (neuron, |S|) pairs of one solve, with their per-pair constants."""

    names = ("base", "k", "top", "kf", "ck", "bh")

    def __init__(self, tab: _Tables, row: np.ndarray, k: np.ndarray, top: np.ndarray):
        self.base = row.astype(np.int64) * tab.width   # int64: rows * width may pass 2**31
        self.k, self.top = k, top                 # top: last index of a positive weight of Omega \ S
        self.kf = k.astype(np.float64)
        self.ck = tab.c[self.base + k]
        self.bh = tab.bias[row]

    def take(self, idx: np.ndarray) -> _Elems:
        new = object.__new__(_Elems)
        for name in self.names:
            setattr(new, name, getattr(self, name)[idx])
        return new


def _p_line(op: int, e: _Elems, r: np.ndarray, cr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Curve 1 on X-cell r: ``Y = alpha X - beta``."""
    t = (e.k - r).astype(np.float64)
    if op == _DIL:
        return 1.0 + t, e.bh + e.ck - cr
    if op == _ERO_FREE:
        return t, e.ck - cr
    s = (e.kf + 1.0) / (e.kf + 1.0 - t)
    return s * t, s * (e.ck - cr)


def _q_line(op: int, e: _Elems, q: np.ndarray, cq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Curve 2 on Y-cell q: ``X = gamma - m Y``."""
    m = (q - e.k).astype(np.float64)
    if op == _DIL:
        return cq - e.ck, m
    if op == _ERO_FREE:
        return cq - e.bh, m + e.kf - 1.0
    return cq - e.ck + (e.ck - e.bh) / (e.kf + 1.0), m


def _grid(op: int, e: _Elems) -> tuple[np.ndarray, ...]:
    r"""``(pa, p0, qa, q0)``: at X-knot r (weight r of S) ``P = d_r + pa a_r + p0``; at Y-knot q
    (weight q of Omega \ S) ``Q = d_q + qa a_q + q0``."""
    if op == _DIL:
        return e.kf + 1.0, -(e.bh + e.ck), e.kf, -e.ck
    if op == _ERO_FREE:
        return e.kf, -e.ck, np.ones_like(e.kf), -e.bh
    return e.kf, -e.ck, e.kf, (e.ck - e.bh) / (e.kf + 1.0) - e.ck


def _knot(op: int, e: _Elems, a_r: np.ndarray, p_r: np.ndarray) -> np.ndarray:
    """X at X-knot r from its weight and P there (the u-variable shifts by P / (|S| + 1))."""
    return a_r - p_r / (e.kf + 1.0) if op == _ERO_TIGHT else a_r


def _halve(tab: _Tables, e: _Elems, op: int, r_lo, r_hi, q_lo, q_hi) -> None:
    r"""Shrink the X-cell range [r_lo, r_hi] and Y-cell range [q_lo, q_hi] (in place) to the cell
    of the crossing. X-cell r spans [x_{r+1}, x_r] (x_0 = +inf), Y-cell q spans [y_{q+1}, y_q]
    (y_k = +inf, y_{top+1} = 0, y_q = weight q of Omega \ S).

    Elements whose ranges close stop moving (masked updates); the arrays are compacted once half
    of them are done."""
    A, AD, C = tab.a, tab.ad, tab.c
    inf = np.inf

    def run(mask: np.ndarray, setup, step, state: tuple[np.ndarray, ...], open_) -> None:
        idx = np.flatnonzero(mask)
        if not idx.size:
            return
        s = e.take(idx)
        cur = [v[idx] for v in state]
        consts = setup(s, cur)
        live = open_(cur)
        while True:
            step(s, consts, cur, live)
            live = open_(cur)
            n_live = int(np.count_nonzero(live))
            if n_live * 2 < len(live):
                for full, part in zip(state, cur, strict=True):
                    full[idx] = part
                if not n_live:
                    return
                idx, s = idx[live], s.take(live)
                cur = [v[live] for v in cur]
                consts = [v[live] for v in consts]
                live = np.ones(n_live, dtype=bool)

    # Phase 1, both ranges open: the corner rule at (x_rm, y_qm).
    def setup1(s, cur):
        return list(_grid(op, s))

    def step1(s, consts, cur, live):
        pa, p0, qa, q0 = consts
        rl, rh, ql, qh = cur
        rm, qm = (rl + rh + 1) >> 1, (ql + qh + 1) >> 1
        zr, zq = AD[s.base + rm], AD[s.base + qm]
        a_r, y = zr.real, zq.real
        px = zr.imag + pa * a_r + p0
        above = px >= y                                     # P(x) >= y
        right = zq.imag + qa * y + q0 >= _knot(op, s, a_r, px)   # Q(y) >= x
        same = above == right
        q_move = same & live                                # A: Y* >= y, B: Y* <= y
        r_move = live & ~same                               # C: X* <= x, D: X* >= x
        down_q = q_move & above
        np.copyto(qh, qm - 1, where=down_q)
        np.copyto(ql, qm, where=q_move ^ down_q)
        up_r = r_move & above
        np.copyto(rl, rm, where=up_r)
        np.copyto(rh, rm - 1, where=r_move ^ up_r)

    run((r_lo < r_hi) & (q_lo < q_hi), setup1, step1, (r_lo, r_hi, q_lo, q_hi),
        lambda c: (c[0] < c[1]) & (c[2] < c[3]))

    # Phase 2a, X-cell known: P is linear there; decide Y against y from x = Q(y).
    def setup2a(s, cur):
        r = cur[0]
        pa, p0, qa, q0 = _grid(op, s)
        al, be = _p_line(op, s, r, C[s.base + r])
        z, z1 = AD[s.base + r], AD[s.base + r + 1]
        x_hi = np.where(r == 0, inf, _knot(op, s, z.real, z.imag + pa * z.real + p0))
        x_lo = _knot(op, s, z1.real, z1.imag + pa * z1.real + p0)
        if op == _DIL:
            x_lo = np.where(r == s.k, -inf, x_lo)
        return [al, be, x_hi, x_lo, qa, q0]

    def step2a(s, consts, cur, live):
        al, be, x_hi, x_lo, qa, q0 = consts
        _, ql, qh = cur
        qm = (ql + qh + 1) >> 1
        z = AD[s.base + qm]
        y = z.real
        xq = z.imag + qa * y + q0
        up = (xq > x_hi) | ((xq >= x_lo) & (al * xq - be >= y))
        np.copyto(qh, qm - 1, where=up & live)
        np.copyto(ql, qm, where=live & ~up)

    run((r_lo == r_hi) & (q_lo < q_hi), setup2a, step2a, (r_lo, q_lo, q_hi), lambda c: c[1] < c[2])

    # Phase 2b, Y-cell known: Q is linear there; decide X against x from y = P(x).
    def setup2b(s, cur):
        q = cur[0]
        pa, p0, _, _ = _grid(op, s)
        ga, m = _q_line(op, s, q, C[s.base + q])
        y_hi = np.where(q == s.k, inf, A[s.base + q])
        y_lo = np.where(q == s.top, 0.0, A[s.base + q + 1])
        return [ga, m, y_hi, y_lo, pa, p0]

    def step2b(s, consts, cur, live):
        ga, m, y_hi, y_lo, pa, p0 = consts
        _, rl, rh = cur
        rm = (rl + rh + 1) >> 1
        z = AD[s.base + rm]
        a_r = z.real
        px = z.imag + pa * a_r + p0
        down = (px > y_hi) | ((px >= y_lo) & (ga - m * px <= _knot(op, s, a_r, px)))
        np.copyto(rl, rm, where=down & live)
        np.copyto(rh, rm - 1, where=live & ~down)

    run((q_lo == q_hi) & (r_lo < r_hi), setup2b, step2b, (q_lo, r_lo, r_hi), lambda c: c[1] < c[2])


def _cone_qp(tab: _Tables, e: _Elems, op: int) -> dict[str, np.ndarray]:
    """Solve one of the three KKT systems for every element: (X, Y), cells (r, q), half the
    squared distance ``cost``."""
    A, C, C2 = tab.a, tab.c, tab.c2
    k, top = e.k, e.top
    r_lo = np.zeros_like(k)
    r_hi = k.copy() if op == _DIL else k - 1
    q_lo, q_hi = k.copy(), top.copy()
    zero = None
    if op != _DIL:
        # Q(0) <= W^_k (the smallest weight of S): Eq. 25 is slack, M* = 0 and nothing is floored.
        g0, _ = _q_line(op, e, top, C[e.base + top])
        zero = g0 <= A[e.base + k]
        r_hi[zero] = 0
        q_lo[zero] = top[zero]
    _halve(tab, e, op, r_lo, r_hi, q_lo, q_hi)
    r, q = r_lo, q_lo
    al, be = _p_line(op, e, r, C[e.base + r])
    ga, m = _q_line(op, e, q, C[e.base + q])
    y = (al * ga - be) / (1.0 + al * m)
    x = ga - m * y
    neg = y < 0                       # the crossing is on Y = 0: Eq. 21 slack (lambda* = 0)
    y = np.where(neg, 0.0, y)
    x = np.where(neg, be / np.where(al == 0, 1.0, al), x)
    if zero is not None:
        x = np.where(zero, A[e.base + k], x)
        y = np.where(zero, 0.0, y)
        r = np.where(zero, k, r)
        q = np.where(zero, top, q)
    # Half the squared distance from prefix sums: S entries 1..r are not floored, r+1..k are;
    # entries k+1..q of Omega \ S are lowered by Y, the rest set to 0.
    t = (k - r).astype(np.float64)
    ds = e.ck - C[e.base + r]
    qs = C2[e.base + k] - C2[e.base + r]
    rest = (q - k) * y * y + C2[e.base + tab.n] - C2[e.base + q]
    if op == _DIL:
        s_cost = t * x * x - 2 * x * ds + qs
        b_cost = (x - e.bh) ** 2
    elif op == _ERO_FREE:
        z = x - y
        s_cost = r * y * y + t * z * z - 2 * z * ds + qs
        b_cost = y * y
    else:
        th = (e.bh - e.ck - y) / (e.kf + 1.0)
        z = th + x + y / (e.kf + 1.0)
        s_cost = r * th * th + t * z * z - 2 * z * ds + qs
        b_cost = th * th
    return {"x": x, "y": y, "cost": 0.5 * (s_cost + rest + b_cost)}


def _erosion(tab: _Tables, e: _Elems) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Erosion: Eq. 24 slack (free) where that solution satisfies it, else Eq. 24 tight; returns
    the merged solution and which elements are tight."""
    # The slack solution has b = b^ + M >= b^: impossible if b^ > sum_S W^ already.
    tight = e.bh > e.ck
    free_idx = np.flatnonzero(~tight)
    out = {name: np.empty(len(e.k)) for name in ("x", "y", "cost")}
    if free_idx.size:
        sub = e.take(free_idx)
        sol = _cone_qp(tab, sub, _ERO_FREE)
        ok = sub.bh <= sub.ck - sub.kf * sol["y"]          # Eq. 24 at the slack solution
        for name in out:
            out[name][free_idx] = sol[name]
        tight[free_idx[~ok]] = True
    tight_idx = np.flatnonzero(tight)
    if tight_idx.size:
        sol = _cone_qp(tab, e.take(tight_idx), _ERO_TIGHT)
        for name in out:
            out[name][tight_idx] = sol[name]
    return out, tight


def _assemble(ordered: np.ndarray, bias: np.ndarray, k: np.ndarray, kind: np.ndarray, x: np.ndarray,
              y: np.ndarray) -> dict[str, np.ndarray]:
    """Projected weights (in the solver's order), bias and multipliers of one solution per row;
    ``kind`` is _DIL / _ERO_FREE / _ERO_TIGHT per row."""
    n = ordered.shape[1]
    in_s = np.arange(1, n + 1)[None] <= k[:, None]
    kf = k.astype(np.float64)
    ck = np.where(in_s, ordered, 0.0).sum(1)
    x2, y2 = x[:, None], y[:, None]
    lowered = np.maximum(ordered - y2, 0.0)
    theta = (bias - ck - y) / (kf + 1.0)
    rho = np.where(kind == _ERO_TIGHT, x + y / (kf + 1.0), x)
    w_dil = np.maximum(ordered, x2)
    w_free = np.maximum(ordered, x2) - y2
    w_tight = theta[:, None] + np.maximum(ordered, rho[:, None])
    kind2 = kind[:, None]
    w_s = np.where(kind2 == _DIL, w_dil, np.where(kind2 == _ERO_FREE, w_free, w_tight))
    w = np.where(in_s, w_s, lowered)
    b = np.where(kind == _DIL, x, np.where(kind == _ERO_FREE, bias + y, bias - theta))
    floor = np.where(kind == _DIL, x, rho)[:, None]
    return {"w": w, "b": b,
            "sum_dual": np.where(kind == _DIL, y, np.where(kind == _ERO_FREE, 0.0, theta + y)),
            "se_duals": np.where(in_s, np.maximum(floor - ordered, 0.0), 0.0),
            "nonneg_duals": np.where(in_s, 0.0, np.maximum(y2 - ordered, 0.0))}


def _descending(a: np.ndarray) -> np.ndarray:
    """Stable descending order: among equal weights the lower index comes first."""
    return np.argsort(-a, axis=1, kind="stable")


def _best(costs: np.ndarray, scale: np.ndarray, tol: float = _TIE_TOL) -> np.ndarray:
    """Index of the first entry of each row within ``tol * scale`` of the row's minimum."""
    low = costs.min(1, keepdims=True)
    return np.argmax(costs <= low + tol * scale[:, None], axis=1)


def _best_of_chunk(ordered: np.ndarray, bias: np.ndarray, positive: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Best |S| (prefix length) and solution kind of each row over all prefixes and both operations."""
    rows, n = ordered.shape
    tab = _tables(ordered, bias)
    row = np.repeat(np.arange(rows, dtype=_INT), n)
    k = np.tile(np.arange(1, n + 1, dtype=_INT), rows)
    e = _Elems(tab, row, k, np.maximum(positive[row], k))
    dil = _cone_qp(tab, e, _DIL)["cost"].reshape(rows, n)
    ero_sol, tight = _erosion(tab, e)
    scale = (ordered * ordered).sum(1) + bias * bias
    pick = _best(np.concatenate([dil, ero_sol["cost"].reshape(rows, n)], 1), scale)
    is_ero = pick >= n
    tight_pick = tight.reshape(rows, n)[np.arange(rows), pick % n]
    kind = np.where(is_ero, np.where(tight_pick, _ERO_TIGHT, _ERO_FREE), _DIL)
    return np.where(is_ero, pick - n, pick) + 1, kind


def _workers() -> int:
    """Threads for the fast projection: numpy releases the GIL in its kernels, so chunks run in
    parallel; follows torch's intra-op setting (``torch.set_num_threads``)."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _fast_project(a: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """Eq. 19 over all prefixes of the sorted weights (Prop. 3.2) and both operations."""
    n_rows, n = a.shape
    order = _descending(a)
    ordered = np.take_along_axis(a, order, 1)
    positive = (ordered > 0).sum(1).astype(_INT)
    per_chunk = max(1, FAST_CHUNK_ELEMENTS // n)
    chunks = [slice(i, min(n_rows, i + per_chunk)) for i in range(0, n_rows, per_chunk)]

    def solve(c: slice) -> tuple[np.ndarray, np.ndarray]:
        return _best_of_chunk(ordered[c], bias[c], positive[c])

    workers = min(_workers(), len(chunks))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(solve, chunks))
    else:
        parts = [solve(c) for c in chunks]
    best_k = np.concatenate([p[0] for p in parts]).astype(np.int64)
    best_kind = np.concatenate([p[1] for p in parts])
    sol = _solve_fixed(ordered, bias, best_k, best_kind)
    w = np.empty_like(a)
    np.put_along_axis(w, order, sol["w"], 1)
    se = np.zeros(a.shape, dtype=bool)
    np.put_along_axis(se, order, np.arange(n)[None] < best_k[:, None], 1)
    return {"w": w, "b": sol["b"], "se": se, "erosion": best_kind != _DIL}


def _solve_fixed(ordered: np.ndarray, bias: np.ndarray, k: np.ndarray, kind: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """One QP per row, S = the first k[row] entries of ``ordered`` (S then Omega \\ S, each
    descending); ``kind`` _DIL, or any erosion kind (the slack / tight branch is decided here)."""
    n_rows, n = ordered.shape
    tab = _tables(ordered, bias)
    pos_rest = ((ordered > 0) & (np.arange(n)[None] >= k[:, None])).sum(1)
    k = k.astype(_INT)
    e = _Elems(tab, np.arange(n_rows, dtype=_INT), k, k + pos_rest.astype(_INT))
    x = np.empty(n_rows)
    y = np.empty(n_rows)
    final = kind.copy()
    dil = np.flatnonzero(kind == _DIL)
    if dil.size:
        sol = _cone_qp(tab, e.take(dil), _DIL)
        x[dil], y[dil] = sol["x"], sol["y"]
    ero = np.flatnonzero(kind != _DIL)
    if ero.size:
        sol, tight = _erosion(tab, e.take(ero))
        x[ero], y[ero] = sol["x"], sol["y"]
        final[ero] = np.where(tight, _ERO_TIGHT, _ERO_FREE)
    return _assemble(ordered, bias, k, final, x, y)


# -------------------------------------------------------------------- reference solver (OSQP)


def _osqp_qp(a: np.ndarray, bias: float, se: np.ndarray, erosion: bool) -> dict[str, np.ndarray]:
    """Eq. 20 for one (S, psi) with OSQP. Constraints as in Eqs. 21-26, all weights >= 0 (Eq. 20's
    domain). Eq. 25's rows ``sum W - W_s <= b`` go through ``t = sum W - b`` so that they stay
    sparse: the same multipliers, |S| + |Omega| nonzeros instead of |S| |Omega|."""
    import osqp
    from scipy import sparse

    n = len(a)
    s_idx, k_idx = np.flatnonzero(se), np.flatnonzero(~se)
    m = len(s_idx)
    b_col, t_col = n, n + 1
    ones_s, ones_k = np.ones(m), np.ones(len(k_idx))
    s_rows = 1 + np.arange(m)
    nonneg = 1 + m + np.arange(n)                               # W >= 0 (Eqs. 23, 26)
    if not erosion:
        size = n + 1
        parts = [(np.zeros(len(k_idx)), k_idx, ones_k), ([0], [b_col], [-1.0]),  # Eq. 21
                 (s_rows, np.full(m, b_col), ones_s), (s_rows, s_idx, -ones_s)]    # Eq. 22
        low = np.r_[np.full(1 + m, -np.inf), np.zeros(n)]
        up = np.r_[np.zeros(1 + m), np.full(n, np.inf)]
    else:
        size, eq = n + 2, 1 + m + n
        parts = [(np.zeros(m), s_idx, -ones_s), ([0], [b_col], [1.0]),              # Eq. 24
                 (s_rows, np.full(m, t_col), ones_s), (s_rows, s_idx, -ones_s),      # Eq. 25
                 (np.full(n, eq), np.arange(n), np.ones(n)), ([eq, eq], [b_col, t_col], [-1.0, -1.0])]
        low = np.r_[np.full(1 + m, -np.inf), np.zeros(n), 0.0]
        up = np.r_[np.zeros(1 + m), np.full(n, np.inf), 0.0]
    parts.append((nonneg, np.arange(n), np.ones(n)))
    rows, cols, vals = (np.concatenate([np.asarray(part[i], dtype=float) for part in parts])
                        for i in range(3))
    A = sparse.csc_matrix((vals, (rows.astype(int), cols.astype(int))), shape=(len(low), size))
    diag = np.ones(size)
    diag[n + 1:] = 0.0                                          # t is not in the objective
    q = np.zeros(size)
    q[:n], q[b_col] = -a, -bias
    prob = osqp.OSQP()
    prob.setup(sparse.diags(diag, format="csc"), q, A, low, up, **OSQP_SETTINGS)
    res = prob.solve(raise_error=False)   # a non-solved status warns below
    if res.info.status != "solved":
        warnings.warn(f"OSQP returned status {res.info.status!r} for an Eq. 20 QP (|Omega| = {n}, "
                      f"|S| = {m}); its projection may be inaccurate", RuntimeWarning, stacklevel=3)
    z, yv = res.x, res.y
    se_duals = np.zeros(n)
    se_duals[s_idx] = np.maximum(yv[1:1 + m], 0.0)
    return {"w": z[:n], "b": z[b_col], "sum_dual": max(yv[0], 0.0), "se_duals": se_duals,
            "nonneg_duals": np.maximum(-yv[nonneg], 0.0)}


def _osqp_project(a: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """Eq. 19 by one OSQP solve per prefix of the sorted weights and operation (the paper's way)."""
    n_rows, n = a.shape
    order = _descending(a)
    out = {"w": np.empty_like(a), "b": np.empty(n_rows), "se": np.zeros(a.shape, dtype=bool),
           "erosion": np.zeros(n_rows, dtype=bool)}
    for i in range(n_rows):
        sols, costs = [], []
        for erosion in (False, True):
            for k in range(1, n + 1):
                se = np.zeros(n, dtype=bool)
                se[order[i, :k]] = True
                sol = _osqp_qp(a[i], float(bias[i]), se, erosion)
                sols.append((se, erosion, sol))
                costs.append(0.5 * (np.sum((sol["w"] - a[i]) ** 2) + (sol["b"] - bias[i]) ** 2))
        # Ties within OSQP's accuracy go to the first candidate, as in the fast solver.
        scale = np.array([np.sum(a[i] ** 2) + bias[i] ** 2])
        j = int(_best(np.array(costs)[None], scale, tol=1e-9)[0])
        se, erosion, sol = sols[j]
        out["w"][i], out["b"][i], out["se"][i], out["erosion"][i] = sol["w"], sol["b"], se, erosion
    return out


# ------------------------------------------------------------------------ projections (§3.2)


def project_activable(weight: Tensor, bias: Tensor, *, solver: str = "fast",
                      p: float | Tensor = 1.0) -> Projection:
    """Projection onto activable parameters (BiSE §3.2.1, Eqs. 19-26): the closest ``(W*, b*)``
    activated for some dilation or erosion, and that ``(psi, S)``.

    ``S`` runs over the |Omega| prefixes of the weights sorted in decreasing order (Prop. 3.2; with
    tied weights a prefix may split a tie, which can be strictly better than the paper's thresholded
    sets ``(W >= W_k)``), ``psi`` over both operations; each ``(S, psi)`` is the QP of Eq. 20 with the
    linear constraints of Eqs. 21-23 (dilation) or 24-26 (erosion).

    ``solver="fast"`` (default) solves every QP exactly from its KKT structure (Eqs. 35-39 in
    closed form once the active sets are known, found by a sorted search): O(|Omega| log |Omega|)
    per neuron, vectorized. ``solver="osqp"`` solves the 2 |Omega| QPs of each neuron with OSQP, as
    the paper does: for small layers and cross-checks. Already activated neurons (Theorem 2.3 with
    this ``p``) are returned unchanged with distance 0. ``complemented`` is ``p < 0``.
    """
    fn = "project_activable"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    pv = _scale(p, a.shape[0], fn)
    solver = _solver(solver, fn)
    act = _activation(a, b, 0.0, pv)
    exact = act["exact"]
    w_out, b_out = a.clone(), b.clone()
    se = act["se"].clone()
    codes = act["code"].clone()
    todo = (~exact).nonzero().flatten()
    if todo.numel():
        a_np, b_np = a[todo].numpy(), b[todo].numpy()
        res = _fast_project(a_np, b_np) if solver == "fast" else _osqp_project(a_np, b_np)
        w_out[todo] = torch.from_numpy(res["w"])
        b_out[todo] = torch.from_numpy(np.asarray(res["b"], dtype=np.float64))
        se[todo] = torch.from_numpy(res["se"])
        codes[todo] = torch.from_numpy(res["erosion"].astype(np.int64))
    dist = torch.sqrt(((w_out - a) ** 2).sum(1) + (b_out - b) ** 2)
    return _finish(Projection, single, dtype, device, operation=_names(codes, torch.ones_like(exact)),
                   se=se, weight=w_out, bias=b_out, distance=dist, exact=exact, complemented=pv < 0)


def project_constant(weight: Tensor, bias: Tensor, *, p: float | Tensor = 1.0) -> Projection:
    """Projection onto constant weights (BiSE §3.2.2, Eqs. 27-28): ``S*`` minimizes
    ``d(W, {theta 1_S : theta > 0})^2 = sum W^2 - (sum_S W)^2 / |S|`` (Eq. 28) over the prefixes of the
    sorted weights (O(|Omega| log |Omega|), vectorized); ``psi`` is an erosion iff
    ``b > sum W / 2``, else a dilation.

    ``weight`` is ``theta* 1_S`` (``theta*`` the mean of ``W`` on ``S``; 0 when no ``S`` has a positive
    sum, where Eq. 28's infimum ``sum W^2`` is not reached) and ``bias`` the middle of its activation
    interval (``theta/2`` for a dilation, ``(|S| - 1/2) theta`` for an erosion: the paper leaves the
    bias free); ``distance`` is the square root of Eq. 28 (weights only). Already activated neurons
    are returned unchanged with distance 0 and their exact ``(psi, S)``.
    """
    fn = "project_constant"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    pv = _scale(p, a.shape[0], fn)
    act = _activation(a, b, 0.0, pv)
    n = a.shape[1]
    ordered, order = torch.sort(a, dim=1, descending=True, stable=True)
    sums = ordered.cumsum(1)
    sizes = torch.arange(1, n + 1, dtype=torch.float64)
    score = torch.where(sums > 0, sums * sums / sizes, torch.zeros_like(sums))   # Eq. 28's subtrahend
    k = torch.from_numpy(_best(-score.numpy(), (a * a).sum(1).numpy())) + 1
    theta = (sums.gather(1, (k - 1)[:, None])[:, 0] / k).clamp(min=0)
    se = torch.zeros_like(a, dtype=torch.bool).scatter(
        1, order, torch.arange(n)[None] < k[:, None])
    erosion = b > a.sum(1) / 2
    w_out = theta[:, None] * se
    b_out = torch.where(erosion, (k - 0.5) * theta, theta / 2)
    dist = torch.sqrt(((a * a).sum(1) - k * theta * theta).clamp(min=0))          # Eq. 28
    exact = act["exact"]
    return _finish(Projection, single, dtype, device,
                   operation=_names(torch.where(exact, act["code"], erosion.long()), torch.ones_like(exact)),
                   se=torch.where(exact[:, None], act["se"], se),
                   weight=torch.where(exact[:, None], a, w_out), bias=torch.where(exact, b, b_out),
                   distance=torch.where(exact, torch.zeros_like(dist), dist), exact=exact,
                   complemented=pv < 0)


def activable_qp_duals(weight: Tensor, bias: Tensor, se: Tensor, operation: str | Sequence[str], *,
                       solver: str = "osqp") -> QPDuals:
    """Solve Eq. 20 for the given ``se`` and ``operation`` and return ``(W*, b*)`` with the
    Lagrange multipliers of its constraints (what L_acti, Eqs. 30-40, is built from).

    ``se`` (bool, shaped like ``weight``) may be any non-empty set. ``solver="osqp"`` (default) is
    the paper's solver; ``"fast"`` computes the same solution and multipliers exactly (for the
    dilation: ``lambda* = sum_dual``, ``W*`` and ``b*`` of Eqs. 35-39) and is batched. Note that the
    gradient of ``d^2 = ||(W, b) - (W*, b*)||^2`` is ``2 ((W, b) - (W*, b*))`` (projection onto a
    convex set), so L_acti can treat ``(W*, b*)`` as a constant.
    """
    fn = "activable_qp_duals"
    a, b, single, dtype, device = _neurons(weight, bias, fn)
    s = _structuring_elements(se, tuple(a.shape), single, fn)
    codes = _operation_codes(operation, a.shape[0], fn)
    solver = _solver(solver, fn)
    a_np, b_np, s_np = a.numpy(), b.numpy(), s.numpy()
    if solver == "osqp":
        sols = [_osqp_qp(a_np[i], float(b_np[i]), s_np[i], bool(codes[i])) for i in range(len(b_np))]
        out = {key: np.stack([np.asarray(sol[key], dtype=np.float64) for sol in sols])
               for key in sols[0]}
    else:
        desc = _descending(a_np)
        s_sorted = np.take_along_axis(s_np, desc, 1)
        order = np.take_along_axis(desc, np.argsort(~s_sorted, axis=1, kind="stable"), 1)
        ordered = np.take_along_axis(a_np, order, 1)
        k = s_np.sum(1)
        sol = _solve_fixed(ordered, b_np, k, np.where(codes.numpy() == 1, _ERO_FREE, _DIL))
        out = {"b": sol["b"], "sum_dual": sol["sum_dual"]}
        for key in ("w", "se_duals", "nonneg_duals"):
            back = np.empty_like(a_np)
            np.put_along_axis(back, order, sol[key], 1)
            out[key] = back
    w_star = torch.from_numpy(out["w"])
    b_star = torch.from_numpy(np.asarray(out["b"], dtype=np.float64))
    dist = torch.sqrt(((w_star - a) ** 2).sum(1) + (b_star - b) ** 2)
    return _finish(QPDuals, single, dtype, device, weight=w_star, bias=b_star, distance=dist,
                   sum_dual=torch.from_numpy(np.asarray(out["sum_dual"], dtype=np.float64)),
                   se_duals=torch.from_numpy(out["se_duals"]),
                   nonneg_duals=torch.from_numpy(out["nonneg_duals"]))
