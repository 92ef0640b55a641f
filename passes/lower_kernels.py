"""lower_kernels: max-plus, morphological and binarized nodes -> calls of ``torch.ops.tropfx`` kernels."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import fx, nn

from tropfx import kernels as K
from tropfx.errors import PassError
from tropfx.kernels import binary as KB
from tropfx.nn import MaxPlus, SparseMaxPlus
from tropfx.nn import functional as TF
from tropfx.nn import morphology as TM
from tropfx.nn.binary import BINARY_LAYERS
from tropfx.pass_base import GraphPass, PassResult, PassStats

__all__ = ["FUNCTIONS", "MODULES", "Lowering", "LowerKernels", "lower_kernels", "register_lowering"]

_SUPPORTED = (torch.float32, torch.float64)


class Lowering(NamedTuple):
    """How to call a kernel instead of a module: ``fn(input, *tensors, *args, **kwargs)``, where
    ``tensors`` names the module's parameters and buffers (``None`` for an absent one), read by
    ``get_attr`` nodes so that they stay the module's own (trainable, in its state_dict)."""

    fn: Callable
    tensors: tuple[str | None, ...]
    args: tuple = ()
    kwargs: dict[str, Any] | None = None


# Module types -> lowering, by MRO (a subclass takes its base's unless it registers its own).
MODULES: dict[type[nn.Module], Callable[[nn.Module], Lowering]] = {}
# Reference functions (call_function targets) -> their kernel twins, of the same signature.
FUNCTIONS: dict[Callable, Callable] = {
    TF.maxplus: K.maxplus,
    TF.minplus: K.minplus,
    TF.sparse_maxplus: K.sparse_maxplus,
    TF.sparse_minplus: K.sparse_minplus,
    TM.dilation1d: K.dilation1d,
    TM.dilation2d: K.dilation2d,
    TM.erosion1d: K.erosion1d,
    TM.erosion2d: K.erosion2d,
}


def register_lowering(module_type: type[nn.Module]):
    """Register ``fn(module) -> Lowering`` for ``module_type`` (e.g. a BiSE layer's boolean kernel)."""

    def decorate(fn: Callable[[nn.Module], Lowering]) -> Callable[[nn.Module], Lowering]:
        MODULES[module_type] = fn
        return fn

    return decorate


def _bias(m: nn.Module) -> str | None:
    return "bias" if m.bias is not None else None


@register_lowering(MaxPlus)
def _dense(m: MaxPlus) -> Lowering:  # MinPlus too: min-plus is the max-plus with _sign -1
    return Lowering(K.maxplus if m._sign > 0 else K.minplus, ("weight", _bias(m)))


@register_lowering(SparseMaxPlus)
def _sparse(m: SparseMaxPlus) -> Lowering:
    if _is_identity(m):  # max(x + v, b) per channel: element-wise torch ops, which torch.compile
        # fuses into the producing conv as it does a ReLU (an opaque kernel call would block that)
        if m._sign < 0:
            return Lowering(TF.diagonal_minplus, ("value", _bias(m)), kwargs={"dim": m.dim})
        inplace = {"inplace": True} if m.inplace else {}  # an in-place ReLU's rewrite stays so
        return Lowering(TF.diagonal_maxplus, ("value", _bias(m)), kwargs={"dim": m.dim, **inplace})
    fn = K.sparse_maxplus if m._sign > 0 else K.sparse_minplus
    return Lowering(fn, ("index", "value", _bias(m)), kwargs={"dim": m.dim})


def _is_identity(m: SparseMaxPlus) -> bool:
    """Whether output ``o`` reads input ``o`` alone (an exact ReLU rewrite's layer)."""
    return m.k == 1 and m.in_features == m.out_features and torch.equal(
        m.index[:, 0].cpu(), torch.arange(m.out_features))


def _morphology(fn: Callable) -> Callable[[nn.Module], Lowering]:
    return lambda m: Lowering(fn, ("weight",), (m.stride, m.padding, m.dilation, m.ceil_mode))


for _type, _fn in ((TM.Dilation1d, K.dilation1d), (TM.Dilation2d, K.dilation2d),
                   (TM.Erosion1d, K.erosion1d), (TM.Erosion2d, K.erosion2d)):
    register_lowering(_type)(_morphology(_fn))


def _lowering_for(module: nn.Module) -> Callable[[nn.Module], Lowering] | None:
    return next((MODULES[c] for c in type(module).__mro__ if c in MODULES), None)


@dataclass(frozen=True)
class LowerKernels(GraphPass):
    """Rewrite max-plus and morphological nodes into calls of the compiled kernels.

    ``call_module`` ``MaxPlus`` / ``MinPlus`` / ``SparseMaxPlus`` / ``SparseMinPlus`` /
    ``Dilation1d/2d`` / ``Erosion1d/2d`` (and registered types, :func:`register_lowering`) ->
    ``get_attr`` of the layer's tensors + ``call_function`` of its kernel wrapper
    (``tropfx.kernels.maxplus``, ``dilation2d``, ...). The layer stays a submodule that owns its
    parameters: the result trains, and its ``state_dict`` keys are unchanged. ``call_function``
    nodes of the reference functions (``tropfx.nn.functional.maxplus``, ...) get the wrapper as
    target, their arguments unchanged. Exact: the kernels return the reference's values and
    gradients bit for bit (the kernel issue's tests check it), through ``torch.ops.tropfx.*``, which
    ``torch.compile`` and ``torch.export`` keep as operators.

    The compiled library is built (or loaded from the cache) when the pass runs; where it cannot be,
    the wrappers run the reference and the report's ``info["kernels"]`` says why. The layers'
    parameter checks (``ParameterError`` on NaN or +inf weights) are not repeated in the lowered
    graph: they are a device sync per call and a data-dependent branch that ``torch.export`` cannot
    trace; NaN weights give NaN outputs, as the max-plus formula does.

    Binarized layers (:class:`~tropfx.nn.ThresholdedConv2d`, :class:`~tropfx.nn.BinaryMorphology2d`,
    :class:`~tropfx.nn.BinaryLinear`, what :func:`~tropfx.passes.binarize_bise` produces) become
    :class:`tropfx.kernels.binary.PackedBinaryConv2d` at the same module path: ``tropfx::bool_conv2d``
    on bit-packed tensors, the bits packed once before a chain of such layers and unpacked where they
    leave it (``pack_feature_map`` / ``unpack_feature_map``, ``pack_features`` / ``unpack_features``).
    Their state_dict holds the packed weight planes instead of the integer weights. Inputs are read as
    ``x > 1/2`` as the layers read them, without the layers' NaN check and non-binary warning.

    An identity ``SparseMaxPlus`` / ``SparseMinPlus`` with ``k = 1`` (what ``relu_to_maxplus``
    makes of a ReLU) becomes :func:`tropfx.nn.functional.diagonal_maxplus` / ``diagonal_minplus``
    instead, ``max(x + value, bias)`` as element-wise torch ops: bitwise the kernel's values, and
    ``torch.compile`` fuses it into the producing convolution as it fuses a ReLU. Its index is read
    when the pass runs.

    Declines, with a reason: parameters or input not float32 / float64 (the kernels support no
    other dtype); a layer called with other than one positional input; a zero-width layer; a
    layer with forward,
    pre-forward or backward hooks (a kernel call has no module to run them).
    """

    name: ClassVar[str] = "lower_kernels"
    exact: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        stats.info["kernels"] = "compiled" if K.available() else \
            f"reference ({K.build_info()['error']})"
        for node in list(gm.graph.nodes):
            if node.op == "call_module":
                module = gm.get_submodule(node.target)
                lower = _lowering_for(module)
                if lower is None:
                    continue
                reason = _decline_hooks(module) or _decline_dtype(
                    node, list(module.parameters(recurse=False)))
                if not reason and any(p.numel() == 0 for p in module.parameters(recurse=False)):
                    reason = "a zero-width layer (no inputs or channels): the kernels need one"
                if not reason and (len(node.args) != 1 or node.kwargs):
                    reason = "called with other than one positional input"
                if reason:
                    stats.skip(node, reason)
                    continue
                new = _call_kernel(gm, node, lower(module))
            elif node.op == "call_function" and node.target in FUNCTIONS:
                reason = _decline_dtype(node, [])
                if reason:
                    stats.skip(node, reason)
                    continue
                node.target = FUNCTIONS[node.target]
                new = node
            else:
                continue
            stats.rewritten.append(f"{node.name} -> {getattr(new.target, '__name__', new.target)}")
        _lower_binary(gm, stats)
        return PassResult(gm, bool(stats.rewritten), stats)


class _Packed(NamedTuple):
    node: fx.Node  # the packed output of a lowered binary layer
    kind: str      # PackedBinaryConv2d.kind: the layout


def _lower_binary(gm: fx.GraphModule, stats: PassStats) -> None:
    """Binarized layers -> :class:`tropfx.kernels.binary.PackedBinaryConv2d` at the same module path,
    on packed bits: a pack before the first layer of a chain, an unpack where the bits leave it."""
    packed_out: dict[fx.Node, _Packed] = {}  # unpack node of a lowered layer -> its packed output
    made: dict[str, KB.PackedBinaryConv2d] = {}  # module path -> its packed twin (shared layers)
    unpacks = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        layer = gm.get_submodule(node.target)
        if not isinstance(layer, BINARY_LAYERS) and node.target not in made:
            continue
        if node.target not in made and _decline_hooks(layer):
            stats.skip(node, _decline_hooks(layer))
            continue
        if len(node.args) != 1 or node.kwargs:
            if node.target in made:  # another call of a layer already lowered: keep its semantics
                raise PassError(f"lower_kernels: module {node.target} is called both with one input "
                                "and otherwise; call it with one positional input everywhere")
            stats.skip(node, "called with other than one positional input")
            continue
        if node.target not in made:
            device = next(iter((*layer.parameters(), *layer.buffers())), torch.empty(0)).device
            made[node.target] = KB.PackedBinaryConv2d.from_layer(layer).to(device)
            gm.set_submodule(node.target, made[node.target])
        packed = made[node.target]
        features = packed.kind == "features"
        src = node.args[0]
        graph = gm.graph
        with graph.inserting_before(node):
            if src in packed_out and packed_out[src].kind == packed.kind:
                x = packed_out[src].node
            else:
                x = graph.call_function(KB.pack_features if features else KB.pack_feature_map, (src,))
            y = graph.call_module(node.target, (x,))
            out = graph.call_function(KB.unpack_features if features else KB.unpack_feature_map,
                                      (y, packed.out_channels))
        out.meta = copy.copy(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        packed_out[out] = _Packed(y, packed.kind)
        unpacks.append(out)
        stats.rewritten.append(f"{node.name} -> {type(packed).__name__}")
    for out in unpacks:  # between two lowered layers the bits stay packed
        if not out.users:
            gm.graph.erase_node(out)


def _decline_hooks(module: nn.Module) -> str:
    """A module with hooks stays a module: a kernel call would drop them silently."""
    kinds = [kind for kind, hooks in (("forward", module._forward_hooks),
                                      ("forward pre", module._forward_pre_hooks),
                                      ("backward", module._backward_hooks),
                                      ("backward pre", module._backward_pre_hooks)) if hooks]
    if kinds:
        return (f"it has {' and '.join(kinds)} hooks, which a kernel call would drop; remove "
                "them before compiling, or keep the layer unlowered")
    return ""


def _decline_dtype(node: fx.Node, tensors: list[torch.Tensor]) -> str:
    dtypes = {t.dtype for t in tensors}
    for n in (node, *node.all_input_nodes):
        meta = n.meta.get("tensor_meta")
        if getattr(meta, "dtype", None) is not None and meta.dtype.is_floating_point:
            dtypes.add(meta.dtype)
    bad = sorted(str(d) for d in dtypes - set(_SUPPORTED))
    if bad:
        return f"{', '.join(bad)}: the kernels support float32 and float64; convert the model"
    return ""


def _call_kernel(gm: fx.GraphModule, node: fx.Node, lowering: Lowering) -> fx.Node:
    """Replace ``node`` (a call_module) by get_attr nodes of the module's tensors and a call of the
    kernel wrapper; the call inherits ``node.meta``."""
    graph = gm.graph
    with graph.inserting_before(node):
        tensors = tuple(None if name is None else graph.get_attr(f"{node.target}.{name}")
                        for name in lowering.tensors)
        new = graph.call_function(lowering.fn, (*node.args, *tensors, *lowering.args),
                                  dict(lowering.kwargs or {}))
    new.meta = copy.copy(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


def lower_kernels() -> LowerKernels:
    """The ``lower_kernels`` pass (see :class:`LowerKernels`)."""
    return LowerKernels()
