"""fuse_batchnorm: fold eval-mode BatchNorm into the preceding conv / linear layer."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from tropfx.folding import batchnorm_affine, fold_affine
from tropfx.hooks import hook_reason
from tropfx.layers import layer_spec
from tropfx.ops import OpMatch, constant_value, match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.rewrite import tensor_shape

__all__ = ["METADATA_ATTRS", "METADATA_METHODS", "Foldable", "FuseBatchNorm", "fuse_batchnorm",
           "reads_metadata_only"]


@dataclass(frozen=True)
class Foldable:
    """How a layer type takes a per-output-channel affine map into its weights.

    ``rank`` is the output rank at which BatchNorm's channel dimension (dim 1) is the layer's
    output-channel dimension; ``transposed`` marks the ``(in, out / groups, *k)`` weight layout.
    """

    rank: int
    transposed: bool = False


_BN_RANK = {nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}  # module BNs that reject any other rank

# Users that read only a tensor's metadata, never its values: folding leaves shape, dtype and device
# of the layer's output as they were, so these uses are unchanged (timm's BatchNormAct2d does
# ``torch._assert(x.ndim == 4, ...)`` on the conv output before its batch_norm).
METADATA_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_sparse",
                            "is_quantized", "is_meta"})
METADATA_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "element_size",
                              "get_device", "is_floating_point", "is_complex"})


def reads_metadata_only(user: fx.Node, value: fx.Node) -> bool:
    """True when ``user`` reads only the metadata of ``value`` (``x.shape``, ``x.size(1)``,
    ``x.ndim``, ``len(x)``, ...), not its values."""
    if user.op == "call_function" and user.target is getattr:
        return user.args[0] is value and user.args[1:2] != () and user.args[1] in METADATA_ATTRS
    if user.op == "call_function" and user.target is len:
        return True
    if user.op == "call_method" and user.target in METADATA_METHODS:
        return user.args[0] is value and all(a is not value for a in (*user.args[1:],
                                                                      *user.kwargs.values()))
    return False


def _foldable(module: nn.Module) -> Foldable | None:
    """How ``module`` takes BatchNorm's affine map, read from its :mod:`tropfx.layers` registration
    (one fact in one place): a linear mixing layer (``LayerSpec(kind="mixing", linear=True)``) with
    ``.weight`` and ``.bias``. Users register their own conv-like layers with
    :func:`tropfx.layers.register_layer`."""
    spec = layer_spec(module)
    weight = getattr(module, "weight", None)
    if spec is None or spec.kind != "mixing" or not spec.linear or not isinstance(weight, torch.Tensor):
        return None
    # BN normalizes dim 1: a Linear's output features (its last dim) are dim 1 only at rank 2; a
    # convolution's output has the rank of its weight, (out, in / groups, *kernel).
    rank = 2 if spec.axis == -1 else weight.dim()
    return Foldable(rank=rank, transposed=spec.transposed)


@dataclass(frozen=True)
class _Fold:
    bn: fx.Node
    producer: fx.Node
    module: nn.Module  # the new, fused layer


@dataclass(frozen=True)
class FuseBatchNorm(GraphPass):
    """Fold eval-mode BatchNorm into the conv / linear layer that feeds it. Exact.

    Pattern → replacement::

        layer(x) -> batch_norm(·)   ⟶   layer'(x),  W' = s·W, b' = s·b + t  (tropfx.folding)

    ``layer`` is any linear mixing layer registered in :mod:`tropfx.layers` (Linear, Conv1d/2d/3d,
    ConvTranspose1d/2d/3d, any groups, with or without bias); the BatchNorm is
    ``nn.BatchNorm1d/2d/3d`` (affine or not), ``F.batch_norm`` or ``torch.batch_norm`` reading stored
    tensors.

    Preconditions; a match that fails one is left alone and reported as skipped:

    * the BatchNorm uses running statistics (eval mode, ``track_running_stats``) that are finite
      with ``running_var + eps > 0``;
    * the layer's output has no other user that reads its values (metadata reads -- ``.shape``,
      ``.size()``, ``.ndim``, ``.dim()``, ``.dtype``, ``.device`` and the asserts over them -- are
      fine: folding keeps them), and the layer module is called once in the graph and its
      parameters are not read elsewhere (folding would change the other uses);
    * neither the BatchNorm module nor the layer carries hooks (:mod:`tropfx.hooks`: folding would
      drop the BatchNorm's and change what the layer's see);
    * BatchNorm's channel dimension is the layer's output channel: the output rank must be known
      from example inputs for Linear and Conv1d (an unbatched input would put other features at
      dim 1), or be enforced by a BatchNorm2d/3d module.

    The folded layer is a new module (the old one may share parameters with other modules).
    """

    name: ClassVar[str] = "fuse_batchnorm"
    exact: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        read = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
        for node in list(gm.graph.nodes):
            bn = match_op(node, gm)
            if bn is None or bn.op != "batch_norm":
                continue
            planned = _plan(node, bn, gm, calls, read)
            if isinstance(planned, str):
                stats.skip(node, planned)
                continue
            _apply(gm, planned)
            stats.rewritten.append(f"{node.name} -> {planned.producer.target}")
        return PassResult(gm, bool(stats.rewritten), stats)


def fuse_batchnorm() -> FuseBatchNorm:
    """The ``fuse_batchnorm`` pass (see :class:`FuseBatchNorm`)."""
    return FuseBatchNorm()


def _plan(node: fx.Node, bn: OpMatch, gm: fx.GraphModule, calls: Counter,
          read: list[str]) -> _Fold | str:
    """The fold for one BatchNorm node, or the reason it cannot be folded exactly."""
    producer = bn["input"]
    layer = gm.get_submodule(producer.target) if (
        isinstance(producer, fx.Node) and producer.op == "call_module") else None
    spec = _foldable(layer) if layer is not None else None
    if spec is None:
        return (f"its input is {_describe(producer, gm)}, not a foldable layer (Linear, ConvNd, "
                "ConvTransposeNd; register others with tropfx.layers.register_layer)")
    name = producer.target
    if bn["training"]:
        return ("uses batch statistics (training mode or track_running_stats=False); "
                "call model.eval() before tropfx.compile")
    try:
        mean, var, gamma, beta = (constant_value(bn[k], gm) for k in
                                  ("running_mean", "running_var", "weight", "bias"))
    except LookupError as exc:
        return f"its statistics are not stored tensors: {exc}"
    tensors = {"running_mean": mean, "running_var": var, "weight": gamma, "bias": beta}
    for key, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            return f"{key} has NaN/inf entries (a corrupt checkpoint or diverged training)"
    if not bool((var.double() + bn["eps"] > 0).all()):
        return "running_var + eps is not positive everywhere"
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        return f"{name} is a lazy module that was never run; run the model once first"
    others = sorted(u.name for u in producer.users
                    if u is not node and not reads_metadata_only(u, producer))
    if others:
        return f"the output of {name} is also used by {others}; folding would change those uses"
    for module, path, action in ((bn.module, node.target, "folding it away"),
                                 (layer, name, "folding a BatchNorm into it")):
        reason = hook_reason(module, str(path), action) if module is not None else None
        if reason:
            return reason
    if calls[name] > 1:
        return (f"{name} is called {calls[name]} times in the graph (a shared module); "
                "folding into it would change the other calls")
    readers = [t for t in read if t.startswith(f"{name}.")]
    if readers:
        return f"parameters of {name} are also read directly ({readers})"
    out_channels = layer.weight.shape[1] * layer.groups if spec.transposed else layer.weight.shape[0]
    if mean.numel() != out_channels:
        return f"BatchNorm has {mean.numel()} channels but {name} outputs {out_channels}"
    shape = tensor_shape(producer)
    rank = len(shape) if shape is not None else _BN_RANK.get(type(bn.module))
    if rank is None:
        return (f"the output rank of {name} is unknown; pass example_inputs so that shapes are "
                "known (BatchNorm's channel must be the layer's output feature)")
    if rank != spec.rank:
        return f"{name} output has rank {rank}; BatchNorm normalizes another dimension"
    scale, shift = batchnorm_affine(mean, var, gamma, beta, bn["eps"])
    weight, bias = fold_affine(layer.weight, layer.bias, scale, shift,
                               transposed=spec.transposed, groups=getattr(layer, "groups", 1))
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
    fused.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
    return _Fold(node, producer, fused)


def _describe(value: object, gm: fx.GraphModule) -> str:
    """What kind of value feeds a BatchNorm, without the node's name: identical reasons group in the
    report (DenseNet has dozens of BatchNorms after a concatenation)."""
    if not isinstance(value, fx.Node):
        return repr(value)
    if value.op == "call_module":
        return f"a {type(gm.get_submodule(value.target)).__name__} module"
    if value.op == "call_function" and match_op(value, gm) is not None \
            and match_op(value, gm).op == "cat":
        return "a concatenation (torch.cat)"
    if value.op == "call_function":
        return f"a call of {getattr(value.target, '__name__', value.target)}"
    if value.op == "call_method":
        return f"a .{value.target}() call"
    return {"placeholder": "a model input", "get_attr": "a stored tensor"}.get(value.op, value.op)


def _apply(gm: fx.GraphModule, fold: _Fold) -> None:
    parent, _, leaf = fold.producer.target.rpartition(".")
    setattr(gm.get_submodule(parent), leaf, fold.module)
    meta = fold.producer.meta.setdefault("tropfx", {})
    meta.setdefault("fused_batchnorm", []).append(fold.bn.name)
    stat_nodes = [a for a in (*fold.bn.args, *fold.bn.kwargs.values()) if isinstance(a, fx.Node)]
    fold.bn.replace_all_uses_with(fold.producer)
    fold.producer.meta["tensor_meta"] = fold.bn.meta.get("tensor_meta",
                                                         fold.producer.meta.get("tensor_meta"))
    fold.bn.graph.erase_node(fold.bn)
    for n in stat_nodes:  # the get_attr nodes of a functional BatchNorm, now unused
        if n.op == "get_attr" and not n.users:
            n.graph.erase_node(n)
