"""maxpool_to_dilation: max pooling -> dilation by a flat structuring element."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from tropfx.hooks import carry_hooks
from tropfx.nn.morphology import Dilation1d, Dilation2d
from tropfx.ops import OpMatch, match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.rewrite import float_dtype, replace_with_module, tensor_shape

__all__ = ["MaxPoolToDilation", "adaptive_window", "maxpool_to_dilation"]

_DILATION = {1: Dilation1d, 2: Dilation2d}


def adaptive_window(size: int, out: int) -> int | None:
    """The kernel (= stride) of ``adaptive_max_pool`` from ``size`` to ``out``, when its windows
    ``[floor(i * size / out), ceil((i + 1) * size / out))`` are one sliding window (``out``
    divides ``size``), else None."""
    return size // out if out >= 1 and size % out == 0 else None


@dataclass(frozen=True)
class MaxPoolToDilation(GraphPass):
    """Max pooling -> ``Dilation1d/2d`` with a flat (all-zero) per-channel structuring element.

    Pattern -> replacement:

    * ``MaxPool1d/2d``, ``F.max_pool1d/2d``, ``torch.max_pool1d/2d`` -> the dilation with the same
      kernel, stride, padding, dilation and ceil_mode;
    * ``AdaptiveMaxPool1d/2d``, ``F.adaptive_max_pool1d/2d`` -> the dilation with kernel = stride =
      ``input size / output size``, when the output size divides the input size (the shape is
      known from example inputs);
    * global max ``x.amax(dim=spatial dims)`` / ``torch.amax``, and ``x.max(2)`` of an (N, C, L)
      signal used for its values (``x.flatten(2).max(2)[0]``) -> the dilation whose kernel is the
      whole image, then ``flatten(1)`` unless ``keepdim``.

    Exact: a max pool *is* the dilation by a flat SE (Sparse Hybrid Linear-Morphological Networks,
    §2), padding is -inf in both, and the argmax (so the gradient) is the same first maximal
    element of each window (``amax`` splits the gradient among tied maxima; the dilation gives it
    to the first: values are equal, gradients differ only at ties). A pooling module's hooks are
    carried over to its dilation.

    Declines, with a reason: ``return_indices=True``, 3-D pooling, unbatched inputs, adaptive
    windows of unequal sizes, an ``amax`` over other than exactly the spatial dims, and unknown
    shapes (pass example inputs: the SE needs the channel count).
    """

    name: ClassVar[str] = "maxpool_to_dilation"
    exact: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        for node in list(gm.graph.nodes):
            pool = match_op(node, gm)
            if pool is None or pool.op not in _PLANS:
                continue
            # The layers' random init is overwritten by the flat SE: it must not draw from the
            # caller's global RNG (a seeded run would depend on which passes ran).
            with torch.random.fork_rng(devices=[]):
                plan = _PLANS[pool.op](pool, node)
            if plan is None:
                continue  # not a pooling (an amax over the channels, say)
            if isinstance(plan, str):
                stats.skip(node, plan)
                continue
            layer, flatten = plan
            layer = layer.to(float_dtype(node))
            if node.op == "call_module":
                carry_hooks(gm.get_submodule(node.target), layer)
            new = replace_with_module(gm, node, layer, f"{node.name}_dilation", (pool["input"],))
            text = f"{node.name} -> {new.target}"
            if pool.op == "max":  # (values, indices)[0] -> the values themselves
                for user in list(new.users):
                    user.replace_all_uses_with(new)
                    gm.graph.erase_node(user)
            if flatten:  # amax without keepdim: (N, C, 1, 1) -> (N, C)
                users = list(new.users)
                with gm.graph.inserting_after(new):
                    flat = gm.graph.call_method("flatten", (new, 1))
                for user in users:
                    user.replace_input_with(new, flat)
                flat.meta = dict(new.meta)
                new.meta.pop("tensor_meta", None)  # its own shape is (N, C, 1, ...), not recorded
                text += ", .flatten(1)"
            stats.rewritten.append(text)
        return PassResult(gm, bool(stats.rewritten), stats)


Plan = tuple  # (dilation layer, whether a flatten(1) follows)


def _input_shape(pool: OpMatch, nd: int) -> tuple[int, ...] | str:
    x = pool["input"]
    shape = tensor_shape(x) if isinstance(x, fx.Node) else None
    if shape is None:
        return "input shape unknown; pass example_inputs so channels are known"
    if len(shape) != nd + 2:
        return f"unbatched input of shape {shape}; dilation layers take (N, C, ...)"
    return shape


def _pooled_shape(pool: OpMatch, what: str) -> tuple[int, ...] | str:
    """The input shape of a max pooling a dilation can replace, or the reason it cannot."""
    if pool["return_indices"]:
        return "return_indices=True: a dilation has no pooling indices"
    nd = pool["ndim"]
    if nd not in _DILATION:
        return f"{nd}-D {what}: only 1-D and 2-D dilations exist"
    return _input_shape(pool, nd)


def _max_pool(pool: OpMatch, node: fx.Node) -> Plan | str:
    shape = _pooled_shape(pool, "pooling")
    if isinstance(shape, str):
        return shape
    nd = pool["ndim"]
    stride = pool["stride"]
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = pool["kernel_size"]  # torch's spellings of "stride = kernel"
    return _DILATION[nd].flat(
        shape[1], kernel_size=pool["kernel_size"], stride=stride, padding=pool["padding"],
        dilation=pool["dilation"], ceil_mode=pool["ceil_mode"]), False


def _adaptive_max_pool(pool: OpMatch, node: fx.Node) -> Plan | str:
    shape = _pooled_shape(pool, "adaptive pooling")
    if isinstance(shape, str):
        return shape
    nd = pool["ndim"]
    out = pool["output_size"]
    out = (out,) * nd if isinstance(out, int) else tuple(out)
    sizes = shape[2:]
    out = tuple(s if o is None else o for o, s in zip(out, sizes, strict=True))
    kernel = tuple(adaptive_window(s, o) for s, o in zip(sizes, out, strict=True))
    if None in kernel:
        return (f"adaptive max pooling from {tuple(sizes)} to {out}: windows of unequal sizes, "
                "not one dilation (the output size must divide the input size)")
    return _DILATION[nd].flat(shape[1], kernel_size=kernel, stride=kernel), False


def _amax(pool: OpMatch, node: fx.Node) -> Plan | str | None:
    x = pool["input"]
    shape = tensor_shape(x) if isinstance(x, fx.Node) else None
    dims = pool["dim"]
    dims = (dims,) if isinstance(dims, int) else tuple(dims) if dims is not None else ()
    if shape is None:
        return None if not dims else "input shape unknown; pass example_inputs so channels are known"
    rank = len(shape)
    if rank not in (3, 4):
        return None
    if not dims or not all(isinstance(d, int) for d in dims):
        return None  # over everything (not a pooling), or dims computed at run time
    dims = {d % rank for d in dims}
    spatial = set(range(2, rank))
    if not dims & spatial:
        return None  # over the batch or the channels: not a pooling
    if dims != spatial:
        return (f"amax over dims {sorted(dims)} of a {rank}-D tensor: only the global max over "
                f"all spatial dims {sorted(spatial)} is a dilation")
    meta = x.meta.get("tensor_meta")
    if meta is None or not meta.dtype.is_floating_point:
        return "not a floating-point tensor"
    return _DILATION[rank - 2].flat(shape[1], kernel_size=shape[2:], stride=1), not pool["keepdim"]


def _max(pool: OpMatch, node: fx.Node) -> Plan | str | None:
    """``torch.max(x, dim)`` of an (N, C, L) signal over L, used only for its values."""
    if not isinstance(pool["dim"], int) or isinstance(pool["dim"], bool):
        return None  # element-wise (relu_to_maxplus's) or over everything: not a pooling
    x = pool["input"]
    shape = tensor_shape(x) if isinstance(x, fx.Node) else None
    if shape is None or len(shape) not in (3, 4) or pool["dim"] % len(shape) < 2:
        return None if shape is not None else \
            "input shape unknown; pass example_inputs so channels are known"
    if len(shape) == 4:
        return ("max over one of two spatial dims is not a global max; use amax(dim=(2, 3)) or "
                "flatten(2).max(2)")
    if not all(_reads_values(u) for u in node.users):
        return "its indices are used: a dilation has no indices"
    plan = _amax(type(pool)("amax", {"input": x, "dim": (2,), "keepdim": pool["keepdim"]}), node)
    return plan


def _reads_values(user: fx.Node) -> bool:
    return (user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0) \
        or (user.op == "call_function" and user.target is getattr and user.args[1] == "values")


_PLANS = {"max_pool": _max_pool, "adaptive_max_pool": _adaptive_max_pool, "amax": _amax, "max": _max}


def maxpool_to_dilation() -> MaxPoolToDilation:
    """The ``maxpool_to_dilation`` pass (see :class:`MaxPoolToDilation`)."""
    return MaxPoolToDilation()
