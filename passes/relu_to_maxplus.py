"""relu_to_maxplus: ReLU -> max-plus nodes (Sparse Hybrid Linear-Morphological Networks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from tropfx.errors import InputError
from tropfx.nn import SparseMaxPlus
from tropfx.ops import match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.rewrite import float_dtype, replace_with_module, tensor_shape, users_after

__all__ = ["ReluToMaxPlus", "identity_maxplus", "relu_to_maxplus"]


def identity_maxplus(channels: int, dim: int, dtype: torch.dtype = torch.float32) -> SparseMaxPlus:
    """The max-plus layer equal to ReLU: ``relu(x)_c = max(x_c + 0, 0)`` (identity index, weight 0,
    bias 0; the bias wins the tie at ``x = 0``, so even the gradient is ReLU's)."""
    layer = SparseMaxPlus(channels, channels, k=1, dim=dim).to(dtype)
    with torch.no_grad():
        layer.index.copy_(torch.arange(channels)[:, None])
        layer.value.zero_()
        layer.bias.zero_()
    return layer


@dataclass(frozen=True)
class ReluToMaxPlus(GraphPass):
    """Rewrite ReLUs (every spelling) into max-plus nodes.

    ``mode="exact"``: ``relu(x) -> SparseMaxPlus(C, C, k=1)`` along the channel dimension (dim 1,
    or the only dim of a 1-D tensor) with identity index, weight 0 and bias 0: equal to ReLU on
    every input (max is exact and ``x + 0 == x``), trainable afterwards. Each call site gets its
    own layer, also where one ``nn.ReLU`` module is called several times.

    ``mode="sparse"``: the paper's hybrid topology (Proposal 2). In a head
    ``Linear -> [BatchNorm] -> ReLU -> Linear`` the ReLU becomes ``SparseMaxPlus(n, n, k)`` with the
    paper's initialization (``k`` random inputs per output, values near 0, bias 0), drawn from
    ``torch.Generator().manual_seed(seed)``. Not equivalence preserving (``exact`` is False):
    the report records the change; train afterwards.

    Declines, with a reason: shapes unknown (pass example inputs); an in-place ReLU whose input
    is read again later (an out-of-place layer would change what those reads see); in sparse
    mode, a ReLU not between linear layers as above.
    """

    mode: str = "exact"
    k: int = 2
    seed: int = 0
    name: ClassVar[str] = "relu_to_maxplus"

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "sparse"):
            raise InputError(f"relu_to_maxplus: mode={self.mode!r}; use 'exact' or 'sparse'")
        if self.k < 1:
            raise InputError(f"relu_to_maxplus: k={self.k} must be >= 1")

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.mode == "exact"

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        generator = torch.Generator().manual_seed(self.seed)
        for node in list(gm.graph.nodes):
            relu = match_op(node, gm)
            if relu is None or relu.op != "relu":
                continue
            x = relu["input"]
            if relu["inplace"] and isinstance(x, fx.Node) and users_after(x, node):
                stats.skip(node, f"in-place ReLU whose input {x.name} is read again later by "
                                 f"{[u.name for u in users_after(x, node)]}")
                continue
            plan = (self._exact if self.mode == "exact" else self._sparse)(node, x, gm, generator)
            if isinstance(plan, str):
                stats.skip(node, plan)
                continue
            layer, hint = plan
            new = replace_with_module(gm, node, layer, hint, (x,))
            stats.rewritten.append(f"{node.name} -> {new.target}")
        return PassResult(gm, bool(stats.rewritten), stats)

    def _exact(self, node: fx.Node, x: fx.Node, gm: fx.GraphModule,
               generator: torch.Generator) -> tuple[nn.Module, str] | str:
        shape = tensor_shape(node)
        if shape is None:
            return "its shape is unknown; pass example_inputs so channels are known"
        if not shape:
            return "a 0-d tensor has no feature dimension"
        dim = 1 if len(shape) >= 2 else 0
        return identity_maxplus(shape[dim], dim, float_dtype(node)), f"{node.name}_maxplus"

    def _sparse(self, node: fx.Node, x: fx.Node, gm: fx.GraphModule,
                generator: torch.Generator) -> tuple[nn.Module, str] | str:
        before = match_op(x, gm) if isinstance(x, fx.Node) else None
        if before is not None and before.op == "batch_norm":
            before = match_op(before["input"], gm) if isinstance(before["input"], fx.Node) \
                else None
        after = [match_op(u, gm) for u in node.users]
        if before is None or before.op != "linear" or len(after) != 1 or after[0] is None \
                or after[0].op != "linear":
            return "not in a Linear -> [BatchNorm] -> ReLU -> Linear head"
        n = before["weight"].shape[0] if isinstance(before["weight"], torch.Tensor) else None
        if n is None:
            shape = tensor_shape(node)
            if shape is None:
                return "feature count unknown; pass example_inputs"
            n = shape[-1]
        layer = SparseMaxPlus(n, n, self.k, generator=generator).to(float_dtype(node))
        return layer, f"{node.name}_sparse_maxplus"


def relu_to_maxplus(mode: str = "exact", k: int = 2, seed: int = 0) -> ReluToMaxPlus:
    """The ``relu_to_maxplus`` pass (see :class:`ReluToMaxPlus`)."""
    return ReluToMaxPlus(mode, k, seed)
