"""Max-plus (dilation) layers, dense and sparse, their min-plus duals, and Maxout.

Sparse Hybrid Linear-Morphological Networks (Fotopoulos, Garoufis, Maragos 2025): morphological
layers inserted between linear layers in place of activations. ``MaxPlus`` is the paper's dense
morphological layer (Proposal 1); ``SparseMaxPlus`` its sparsely initialized variant (Proposal 2),
stored as an index tensor and a value tensor per output, never as a dense -inf mask. Semantics,
tie-breaking and gradients: :mod:`tropfx.nn.functional`.

Parameters named in a layer's ``tropical_params`` are "pruned" at -inf (+inf for min-plus), not at
0; :func:`tropfx.measure.count_active_params` and ``prune_l1`` read that attribute.
"""

import inspect
import math

import torch
from torch import Tensor, nn

from tropfx.errors import InputError
from tropfx.measure import register_cost
from tropfx.nn import functional as TF
from tropfx.tracing import register_leaf

__all__ = ["MaxPlus", "Maxout", "MinPlus", "SparseMaxPlus", "SparseMinPlus"]


def check_parameters(weight: Tensor, bias: Tensor | None, sign: float, name: str) -> None:
    """:func:`tropfx.nn.functional.check_tropical` of the layer's max-plus form, once per version
    of the parameters: the result is remembered on ``weight`` with the tensors' version counters
    and storage pointers (an optimizer step, ``copy_`` or ``load_state_dict`` bumps the counter, a
    ``.data =`` swap moves the storage), so a forward pass re-checks only what changed. Inference
    then does not pay several small reductions per layer per call."""
    if torch.compiler.is_compiling():  # check_tropical is skipped there too
        return
    key = _versions(weight, bias, sign)
    if getattr(weight, "_tropfx_checked", None) == key:
        return
    TF.check_tropical(sign * weight.detach(), None if bias is None else sign * bias.detach(),
                      name=name)
    weight._tropfx_checked = key


def _versions(weight: Tensor, bias: Tensor | None, sign: float) -> tuple:
    parts = [sign, weight._version, weight.data_ptr(), tuple(weight.shape)]
    if bias is not None:
        parts += [id(bias), bias._version, bias.data_ptr()]
    return tuple(parts)


# A leaf for torch.fx: the check runs at call time instead of branching during tracing.
torch.fx.wrap("check_parameters")

INIT_SCALE = 0.01  # finite weights start "near 0" (paper §3.2); uniform in [-s, s]


class MaxPlus(nn.Module):
    """Dense max-plus layer ``y_o = max(max_i (x_i + W_oi), b_o)`` over the last dimension.

    Weights start uniform in ``[-0.01, 0.01]`` (near 0, as in the paper, with ties broken), the
    bias at 0. An inactive weight is -inf; a bias-free layer has no ``b_o`` term.
    """

    tropical_params = ("weight", "bias")
    _sign = 1.0  # MinPlus flips it: min-plus is the max-plus of negated operands

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(
            -INIT_SCALE, INIT_SCALE))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        check_parameters(self.weight, self.bias, self._sign, type(self).__name__)
        fn = TF.maxplus if self._sign > 0 else TF.minplus
        return fn(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}"


class MinPlus(MaxPlus):
    """Min-plus (erosion) dual ``y_o = min(min_i (x_i + W_oi), b_o)``; inactive weights are +inf."""

    _sign = -1.0


class SparseMaxPlus(nn.Module):
    """Sparse max-plus layer: output ``o`` reads only ``k`` inputs.

        y_o = max(max_j (x_{index[o, j]} + value[o, j]), b_o)

    ``index`` (out, k) is a buffer, sorted along each row; ``value`` (out, k) and ``bias`` (out,)
    are parameters. Paper initialization (Proposal 2, P = k): each output draws ``k`` distinct
    inputs uniformly at random (torch's global RNG, or ``generator``), values uniform in
    ``[-0.01, 0.01]``, bias 0. ``dim`` is the feature dimension (default last; 1 for the
    channels of ``(N, C, ...)`` activations).
    """

    tropical_params = ("value", "bias")
    _sign = 1.0

    def __init__(self, in_features: int, out_features: int, k: int = 2, bias: bool = True, *,
                 dim: int = -1, generator: torch.Generator | None = None):
        super().__init__()
        if not 1 <= k <= in_features:
            raise InputError(f"{type(self).__name__}: k={k} must be in [1, in_features="
                             f"{in_features}]: each output reads k distinct inputs")
        self.in_features, self.out_features, self.k, self.dim = in_features, out_features, k, dim
        scores = torch.rand(out_features, in_features, generator=generator)
        index = scores.topk(k, dim=1).indices.sort(dim=1).values
        self.register_buffer("index", index)
        self.value = nn.Parameter(torch.empty(out_features, k).uniform_(
            -INIT_SCALE, INIT_SCALE, generator=generator))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    # An exact ReLU rewrite of an in-place ReLU may write into its input (values only, see
    # TF.diagonal_maxplus); relu_to_maxplus sets it on the instance. Max-plus class only.
    inplace = False

    def forward(self, x: Tensor) -> Tensor:
        check_parameters(self.value, self.bias, self._sign, type(self).__name__)
        if self._sign < 0:
            return TF.sparse_minplus(x, self.index, self.value, self.bias, dim=self.dim)
        inplace = {"inplace": True} if self.inplace else {}  # (a traced graph names it only then)
        return TF.sparse_maxplus(x, self.index, self.value, self.bias, dim=self.dim, **inplace)

    @classmethod
    def identity(cls, features: int, *, dim: int = -1, bias: bool = True,
                 dtype: torch.dtype | None = None) -> "SparseMaxPlus":
        """``y_c = max(x_c + 0, b_c)`` with ``b = 0``: output ``c`` reads input ``c`` alone with
        weight 0 (``k = 1``). For the max-plus class and ``bias=True`` this is ReLU, gradient
        included (the bias wins the tie at 0). Draws nothing from torch's global RNG."""
        layer = cls.__new__(cls)  # not __init__: its random draw (features x features) is wasted
        nn.Module.__init__(layer)
        layer.in_features = layer.out_features = features
        layer.k, layer.dim = 1, dim
        layer.register_buffer("index", torch.arange(features)[:, None])
        layer.value = nn.Parameter(torch.zeros(features, 1, dtype=dtype))
        layer.bias = nn.Parameter(torch.zeros(features, dtype=dtype)) if bias else None
        return layer

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None = None, *, dim: int = -1
                   ) -> "SparseMaxPlus":
        """The sparse layer with the same function as dense ``weight`` (out, in), whose inactive
        entries are -inf (+inf for the min-plus class). ``k`` is the largest number of active
        entries in a row; shorter rows are padded with inactive entries."""
        inactive = -cls._sign * math.inf
        active = weight != inactive
        k = max(1, int(active.sum(1).max()))
        # Active entries first (in index order), then inactive ones to pad the row to k.
        order = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :k]
        layer = cls(weight.shape[1], weight.shape[0], k, bias is not None, dim=dim)
        index = order.sort(dim=1).values
        with torch.no_grad():
            layer.index.copy_(index)
            layer.value.copy_(weight.gather(1, index))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def to_dense(self) -> tuple[Tensor, Tensor | None]:
        """``(weight (out, in), bias)`` of the equivalent dense layer, inactive entries ∓inf."""
        dense = torch.full((self.out_features, self.in_features), -self._sign * math.inf,
                           dtype=self.value.dtype, device=self.value.device)
        # Rows hold distinct indices; the reduction only makes user-edited duplicates well defined.
        reduce = "amax" if self._sign > 0 else "amin"
        dense.scatter_reduce_(1, self.index, self.value.detach(), reduce=reduce)
        return dense, None if self.bias is None else self.bias.detach().clone()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
                f"bias={self.bias is not None}, dim={self.dim}")


class SparseMinPlus(SparseMaxPlus):
    """Min-plus dual of :class:`SparseMaxPlus`; inactive values are +inf."""

    _sign = -1.0


class Maxout(nn.Module):
    """Maxout over consecutive groups of ``pool`` features along ``dim`` (the paper's baseline)."""

    def __init__(self, pool: int = 2, dim: int = -1):
        super().__init__()
        if pool < 1:
            raise InputError(f"Maxout: pool={pool} must be >= 1")
        self.pool, self.dim = pool, dim

    def forward(self, x: Tensor) -> Tensor:
        return TF.maxout(x, self.pool, dim=self.dim)

    def extra_repr(self) -> str:
        return f"pool={self.pool}, dim={self.dim}"


register_leaf(MaxPlus, MinPlus, SparseMaxPlus, SparseMinPlus, Maxout)


@register_cost(MaxPlus)
def _maxplus_cost(m: MaxPlus, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    # One (add, max) pair per stored weight per output row; the bias is one more max.
    return {"maxplus": out.numel() * (m.in_features + (m.bias is not None))}


@register_cost(SparseMaxPlus)
def _sparse_cost(m: SparseMaxPlus, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    return {"maxplus": out.numel() * (m.k + (m.bias is not None))}


@register_cost(Maxout)
def _maxout_cost(m: Maxout, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    return {"maxplus": out.numel() * m.pool}


def _product_cost(fn, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    """Functional products (a traced graph's ``maxplus(x, w, b)`` nodes): (add, max) pairs."""
    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    stored = bound["weight"] if "weight" in bound else bound["index"]
    return {"maxplus": out.numel() * (stored.shape[1] + (bound.get("bias") is not None))}


def _diagonal_cost(fn, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    """``diagonal_maxplus(x, value, bias)``: one (add, max) pair per output, one more for the bias."""
    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    return {"maxplus": out.numel() * (1 + (bound.get("bias") is not None))}


for _fn in (TF.maxplus, TF.minplus, TF.sparse_maxplus, TF.sparse_minplus):
    register_cost(_fn)(_product_cost)
for _fn in (TF.diagonal_maxplus, TF.diagonal_minplus):
    register_cost(_fn)(_diagonal_cost)
register_cost(TF.maxout)(lambda fn, args, kwargs, out: {"maxplus": out.numel() * args[1]})
