"""relu_to_maxplus: ReLU and clipped ReLUs -> max-plus / min-plus nodes (Sparse Hybrid
Linear-Morphological Networks)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from tropfx.errors import InputError
from tropfx.hooks import carry_hooks, hook_reason
from tropfx.nn import SparseMaxPlus, SparseMinPlus
from tropfx.ops import OpMatch, constant_value, match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.rewrite import float_dtype, replace_with_module, tensor_shape, users_after

__all__ = ["ReluToMaxPlus", "clamp_bounds", "identity_maxplus", "identity_minplus", "relu_to_maxplus"]


def _identity(cls: type[SparseMaxPlus], channels: int, dim: int, dtype: torch.dtype,
              bias: float | None) -> SparseMaxPlus:
    # SparseMaxPlus.identity draws nothing: no random init to overwrite, and the caller's global
    # RNG is untouched (a seeded training run must not depend on which passes ran).
    layer = cls.identity(channels, dim=dim, bias=bias is not None, dtype=dtype)
    if bias is not None:
        with torch.no_grad():
            layer.bias.fill_(bias)  # in the layer's dtype: the bound rounds as torch.clamp rounds it
    return layer


def identity_maxplus(channels: int, dim: int, dtype: torch.dtype = torch.float32,
                     bias: float | None = 0.0) -> SparseMaxPlus:
    """The max-plus layer ``y_c = max(x_c + 0, bias)``: ReLU for ``bias=0`` (identity index, weight 0;
    the bias wins the tie at ``x = bias``, so even the gradient is ReLU's)."""
    return _identity(SparseMaxPlus, channels, dim, dtype, bias)


def identity_minplus(channels: int, dim: int, dtype: torch.dtype = torch.float32,
                     bias: float | None = 6.0) -> SparseMinPlus:
    """The min-plus layer ``y_c = min(x_c + 0, bias)``: the upper clip of ReLU6 for ``bias=6``."""
    return _identity(SparseMinPlus, channels, dim, dtype, bias)


def clamp_bounds(op: OpMatch, gm: fx.GraphModule) -> tuple[float | None, float | None] | str:
    """``(lo, hi)`` with ``op(x) = min(max(x, lo), hi)`` exactly (``None``: no bound on that side),
    or the reason ``op`` is not such a clamp. Every clipped-ReLU spelling lands here."""
    if op.op == "relu":
        return 0.0, None
    if op.op == "clamp":
        lo, hi = op["min"], op["max"]
    elif op.op == "threshold":  # y = x if x > t else v: max(x, t) when v == t
        t, v = op["threshold"], op["value"]
        if not (_is_number(t) and _is_number(v) and t == v):
            return (f"threshold(x, {t}, {v}) replaces x <= {t} by {v} != {t}: a step, not a clamp; "
                    "no exact max-plus form")
        lo, hi = t, None
    elif op.op == "leaky_relu":
        if op["negative_slope"] == 0:  # ReLU but for -inf: -inf * 0 is NaN, never a max's value
            return "LeakyReLU(negative_slope=0) maps -inf to NaN (-inf * 0): not a max-plus node"
        return "LeakyReLU has no exact tropical form"
    elif op.op in ("maximum", "minimum"):
        bound = _uniform_constant(op["other"], gm)
        if isinstance(bound, str):
            return f"torch.{op.op}(x, other): {bound}"
        lo, hi = (bound, None) if op.op == "maximum" else (None, bound)
    else:
        return f"{op.op} is not a clamp"
    for name, v in (("min", lo), ("max", hi)):
        if v is not None and not _is_number(v):
            return f"its {name} bound is a tensor computed at run time, not a constant"
        if v is not None and math.isnan(v):
            return f"its {name} bound is NaN"
    if lo is not None and lo == math.inf or hi is not None and hi == -math.inf:
        return "an infinite bound makes the output constant"
    lo = None if lo == -math.inf else lo
    hi = None if hi == math.inf else hi
    if lo is None and hi is None:
        return "no finite bound: the clamp is the identity"
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CONSTANT_FACTORIES = {torch.zeros_like: 0.0, torch.ones_like: 1.0}


def _uniform_constant(value: object, gm: fx.GraphModule) -> float | str:
    """The one value of a constant operand (a stored tensor with all entries equal, ``zeros_like``,
    ``full_like(x, c)``, ``torch.tensor(c)``), or why it is not one."""
    if _is_number(value):
        return float(value)
    if not isinstance(value, fx.Node):
        return f"other is {type(value).__name__}"
    if value.op == "call_function" and value.target in _CONSTANT_FACTORIES:
        return _CONSTANT_FACTORIES[value.target]
    if value.op == "call_function" and value.target is torch.full_like and len(value.args) >= 2 \
            and _is_number(value.args[1]):
        return float(value.args[1])
    if value.op == "call_function" and value.target in (torch.tensor, torch.scalar_tensor) \
            and value.args and _is_number(value.args[0]):
        return float(value.args[0])
    try:
        t = constant_value(value, gm)
    except LookupError:
        return "other is computed at run time, not a constant"
    if not isinstance(t, torch.Tensor) or t.numel() == 0 or not bool((t == t.flatten()[0]).all()):
        return "other is not one constant value"
    return float(t.flatten()[0])


@dataclass(frozen=True)
class ReluToMaxPlus(GraphPass):
    """Rewrite ReLUs and clipped ReLUs (every spelling) into max-plus / min-plus nodes.

    ``mode="exact"``: along the channel dimension (dim 1, or the only dim of a 1-D tensor),

    * ``relu(x) -> SparseMaxPlus(C, C, k=1)`` with identity index, weight 0 and bias 0:
      ``relu(x) = max(x + 0, 0)``;
    * a clip ``min(max(x, lo), hi)`` -> ``SparseMaxPlus`` (bias ``lo``) then ``SparseMinPlus``
      (identity, weight 0, bias ``hi``): ``relu6(x) = min(max(x + 0, 0) + 0, 6)``. Spellings:
      ``nn.ReLU6``, ``nn.Hardtanh(lo, hi)``, ``F.relu6``, ``F.hardtanh``, ``clamp`` / ``clip`` /
      ``clamp_min`` / ``clamp_max`` with constant bounds, ``torch.maximum(x, c)`` /
      ``torch.minimum(x, c)`` with a constant ``c``, ``threshold(x, t, t)``;

    equal to the original on every input (max and min are exact, ``x + 0 == x``), trainable
    afterwards. The bias wins ties, so the gradient at a bound is 0: ReLU's, ReLU6's and
    Hardtanh's (torch's ``clamp`` passes the gradient at a bound, ``torch.maximum`` half of it:
    only there, on a set of measure zero, do the gradients differ). Each call site gets its own
    layers, also where one module is called several times. A ReLU module's hooks are carried over
    to its one replacement; a clip with two bounds carrying hooks is skipped with the reason.

    ``mode="sparse"``: the paper's hybrid topology (Proposal 2). In a head
    ``Linear -> [BatchNorm] -> ReLU -> Linear`` the ReLU becomes ``SparseMaxPlus(n, n, k)`` with the
    paper's initialization (``k`` random inputs per output, values near 0, bias 0), drawn from
    ``torch.Generator().manual_seed(seed)``. Not equivalence preserving (``exact`` is False):
    the report records the change; train afterwards.

    Declines, with a reason: shapes unknown (pass example inputs); an in-place op whose input
    is read again later (an out-of-place layer would change what those reads see); integer
    tensors; bounds that are not constants; in sparse mode, a ReLU not between linear layers as
    above. Nonlinearities with no exact tropical form (GELU, SiLU, Hardswish, Sigmoid, LeakyReLU
    with a slope, ...) are listed as skipped by kind, and counted in ``info["not_tropical"]``.
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
        not_tropical: Counter[str] = Counter()
        for node in list(gm.graph.nodes):
            op = _elementwise(match_op(node, gm))
            if op is None or op.op not in _CANDIDATES:
                continue
            if op.op == "activation":
                not_tropical[op["kind"]] += 1
                stats.skip(node, f"{op['kind']} has no exact tropical form")
                continue
            bounds = clamp_bounds(op, gm)
            if isinstance(bounds, str):
                if op.op == "leaky_relu" or op.op == "threshold":
                    not_tropical[_kind(op)] += 1
                stats.skip(node, bounds)
                continue
            x = op["input"]
            if op.args.get("inplace") and isinstance(x, fx.Node) and users_after(x, node):
                stats.skip(node, f"in-place {_kind(op)} whose input {x.name} is read again later by "
                                 f"{[u.name for u in users_after(x, node)]}")
                continue
            if self.mode == "exact":
                plan = self._exact(node, op, bounds)
            elif op.op == "relu":
                plan = self._sparse(node, x, gm, generator)
            else:
                plan = f"sparse mode rewrites only ReLUs in Linear -> ReLU -> Linear heads, not {_kind(op)}"
            if isinstance(plan, str):
                stats.skip(node, plan)
                continue
            layers = plan
            old = gm.get_submodule(node.target) if node.op == "call_module" else None
            new, current = None, x
            for i, (layer, hint) in enumerate(layers):
                if old is not None:
                    carry_hooks(old, layer)
                if i + 1 < len(layers):
                    current = _insert_before(gm, node, layer, hint, current)
                else:
                    new = replace_with_module(gm, node, layer, hint, (current,))
            stats.rewritten.append(f"{node.name} -> {', '.join(_targets(new, len(layers)))}")
        if not_tropical:
            stats.info["not_tropical"] = dict(not_tropical)
        return PassResult(gm, bool(stats.rewritten), stats)

    def _exact(self, node: fx.Node, op: OpMatch, bounds: tuple[float | None, float | None]
               ) -> list[tuple[nn.Module, str]] | str:
        shape = tensor_shape(node)
        if shape is None:
            return "its shape is unknown; pass example_inputs so channels are known"
        if not shape:
            return "a 0-d tensor has no feature dimension"
        dtype = node.meta["tensor_meta"].dtype
        if not dtype.is_floating_point:
            return f"a {dtype} tensor: max-plus layers compute in floating point"
        x = op["input"]
        if not isinstance(x, fx.Node) or tensor_shape(x) != shape:
            return "the output's shape differs from its input's (a broadcasting bound)"
        lo, hi = bounds
        module = node.graph.owning_module.get_submodule(node.target) if node.op == "call_module" \
            else None
        if module is not None and lo is not None and hi is not None:
            reason = hook_reason(module, node.target, "splitting it into a max-plus and a min-plus node")
            if reason:
                return reason
        dim = 1 if len(shape) >= 2 else 0
        layers = []
        if lo is not None:
            layer = identity_maxplus(shape[dim], dim, dtype, lo)
            # an in-place ReLU's input is read by nothing after it (checked above): the layer may
            # write into it too, and save the output's allocation
            layer.inplace = bool(op.args.get("inplace"))
            layers.append((layer, f"{node.name}_maxplus"))
        if hi is not None:
            layers.append((identity_minplus(shape[dim], dim, dtype, hi), f"{node.name}_minplus"))
        return layers

    def _sparse(self, node: fx.Node, x: fx.Node, gm: fx.GraphModule,
                generator: torch.Generator) -> list[tuple[nn.Module, str]] | str:
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
        return [(layer, f"{node.name}_sparse_maxplus")]


_CANDIDATES = frozenset({"relu", "clamp", "threshold", "leaky_relu", "maximum", "minimum",
                         "activation"})
_KINDS = {"relu": "ReLU", "clamp": "clamp", "threshold": "threshold", "leaky_relu": "LeakyReLU",
          "maximum": "torch.maximum", "minimum": "torch.minimum"}


def _elementwise(op: OpMatch | None) -> OpMatch | None:
    """``torch.max(x, other)`` as ``maximum`` (``torch.min`` as ``minimum``); a reduction is None."""
    if op is None or op.op not in ("max", "min"):
        return op
    if not isinstance(op["dim"], fx.Node):
        return None  # a reduction over dims (maxpool_to_dilation's), or over everything
    return OpMatch("maximum" if op.op == "max" else "minimum", {"input": op["input"], "other": op["dim"]})


def _kind(op: OpMatch) -> str:
    if op.op == "clamp" and op.module is not None:
        return type(op.module).__name__
    return op.args.get("kind", _KINDS.get(op.op, op.op))


def _insert_before(gm: fx.GraphModule, node: fx.Node, layer: nn.Module, hint: str,
                   x: fx.Node) -> fx.Node:
    """A call of ``layer`` on ``x`` just before ``node`` (the first layer of a replacement chain)."""
    placeholder = gm.graph.inserting_before(node)
    with placeholder:
        stub = gm.graph.call_function(torch.Tensor.clone, (x,))  # replaced at once, keeps meta
    stub.meta = dict(node.meta)
    return replace_with_module(gm, stub, layer, hint, (x,))


def _targets(last: fx.Node, count: int) -> list[str]:
    nodes = [last]
    while len(nodes) < count:
        nodes.insert(0, nodes[0].args[0])
    return [str(n.target) for n in nodes]


def relu_to_maxplus(mode: str = "exact", k: int = 2, seed: int = 0) -> ReluToMaxPlus:
    """The ``relu_to_maxplus`` pass (see :class:`ReluToMaxPlus`)."""
    return ReluToMaxPlus(mode, k, seed)
