"""maxpool_to_dilation: max pooling -> dilation by a flat structuring element."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import fx

from tropfx.nn.morphology import Dilation1d, Dilation2d
from tropfx.ops import match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.rewrite import float_dtype, replace_with_module, tensor_shape

__all__ = ["MaxPoolToDilation", "maxpool_to_dilation"]

_DILATION = {1: Dilation1d, 2: Dilation2d}


@dataclass(frozen=True)
class MaxPoolToDilation(GraphPass):
    """``MaxPool1d/2d``, ``F.max_pool1d/2d`` and ``torch.max_pool1d/2d`` -> ``Dilation1d/2d`` with a
    flat (all-zero) per-channel structuring element and the same kernel, stride, padding,
    dilation and ceil_mode. Exact: a max pool *is* the dilation by a flat SE (Sparse Hybrid
    Linear-Morphological Networks, §2), padding is -inf in both, and the argmax (so the gradient)
    is the same first maximal element of each window.

    Declines, with a reason: ``return_indices=True``, 3-D pooling, unbatched inputs, and unknown
    shapes (pass example inputs: the SE needs the channel count).
    """

    name: ClassVar[str] = "maxpool_to_dilation"
    exact: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        for node in list(gm.graph.nodes):
            pool = match_op(node, gm)
            if pool is None or pool.op != "max_pool":
                continue
            reason = self._decline(pool, node)
            if reason:
                stats.skip(node, reason)
                continue
            nd = pool["ndim"]
            stride = pool["stride"]
            if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
                stride = pool["kernel_size"]  # torch's spellings of "stride = kernel"
            layer = _DILATION[nd].flat(
                tensor_shape(pool["input"])[1], kernel_size=pool["kernel_size"], stride=stride,
                padding=pool["padding"], dilation=pool["dilation"], ceil_mode=pool["ceil_mode"],
            ).to(float_dtype(node))
            new = replace_with_module(gm, node, layer, f"{node.name}_dilation", (pool["input"],))
            stats.rewritten.append(f"{node.name} -> {new.target}")
        return PassResult(gm, bool(stats.rewritten), stats)

    @staticmethod
    def _decline(pool, node: fx.Node) -> str:
        if pool["return_indices"]:
            return "return_indices=True: a dilation has no pooling indices"
        if pool["ndim"] not in _DILATION:
            return f"{pool['ndim']}-D pooling: only 1-D and 2-D dilations exist"
        x = pool["input"]
        shape = tensor_shape(x) if isinstance(x, fx.Node) else None
        if shape is None:
            return "input shape unknown; pass example_inputs so channels are known"
        if len(shape) != pool["ndim"] + 2:
            return f"unbatched input of shape {shape}; dilation layers take (N, C, ...)"
        return ""


def maxpool_to_dilation() -> MaxPoolToDilation:
    """The ``maxpool_to_dilation`` pass (see :class:`MaxPoolToDilation`)."""
    return MaxPoolToDilation()
