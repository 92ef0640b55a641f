"""What a layer *is*: one :class:`LayerSpec` registration per ``nn`` type, read by every pass.

Which weight dims hold the output and input channels, which activation dim holds the channels,
whether the layer acts on every channel separately, which tensors have one entry per channel,
and how magnitude pruning switches a weight off. The channel-dependency graph
(:mod:`tropfx.channels`), ``tropnnc`` and ``prune_l1`` read these facts here, so a new layer type
is one :func:`register_layer` call:

>>> from tropfx.layers import LayerSpec, register_layer
>>> register_layer(MyNorm, LayerSpec("channelwise", axis=1, per_channel=("weight", "bias")))

Kinds:

* ``"mixing"``: mixes channels (Linear, ConvNd, ConvTransposeNd): it *produces* its output channels
  (weight dim ``out_dim``) and *consumes* its input channels (``in_dim``). ``linear=False`` (max-plus
  layers) means merging channels by averaging rows / summing columns is not defined for it.
* ``"channelwise"``: channel ``c`` of the output depends on channel ``c`` of the input only
  (BatchNorm, pooling); ``per_channel`` names its tensors with one entry per channel.
* ``"elementwise"``: acts on every entry separately (activations, dropout, identity); any dim
  may hold the channels.
* ``"flatten"`` (``nn.Flatten``), ``"opaque"`` (known, but its channels cannot be resized).

Functions and methods (``F.relu``, ``x.view``, ``torch.cat``) are classified by
:data:`FUNCTIONS` and :data:`METHODS`, dicts users extend the same way.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FUNCTIONS", "LAYERS", "METHODS", "LayerSpec", "Prunable", "layer_spec",
           "register_layer", "sync_sizes"]


@dataclass(frozen=True)
class Prunable:
    """Which parameter of a layer type magnitude pruning prunes, and to what value.

    Linear weights are pruned to 0 (no contribution to a sum); max-plus weights to -inf and
    min-plus weights to +inf (no contribution to a max / min) -- Sparse Hybrid
    Linear-Morphological Networks, §4 (pruning protocol).
    """

    param: str
    pruned: float = 0.0

    @property
    def tropical(self) -> bool:
        return math.isinf(self.pruned)


@dataclass(frozen=True)
class LayerSpec:
    """The channel facts of one layer type (see the module docstring for ``kind``).

    ``axis`` is the activation dim holding the channels (1 for ``(N, C, ...)``, -1 for a Linear's
    last dim, ``None`` for elementwise layers); ``out_dim`` / ``in_dim`` the weight dims of the
    output / input channels of a mixing layer; ``sizes`` the attributes holding the output / input
    channel counts (``("out_channels", "in_channels")``); ``grouped``: the layer has a ``groups``
    attribute; ``transposed``: a ConvTranspose (its weight is ``(in, out / groups, *k)``).
    """

    kind: str
    axis: int | None = None
    out_dim: int | None = None
    in_dim: int | None = None
    sizes: tuple[str, ...] = ()
    per_channel: tuple[str, ...] = ()
    grouped: bool = False
    transposed: bool = False
    linear: bool = True
    relu: bool = False  # a ReLU: the paper's conditions (TropNNC §3.2) hold across it
    passthrough: bool = False  # the identity in eval mode (dropout, nn.Identity)
    prune: Prunable | None = None


LAYERS: dict[type[nn.Module], LayerSpec | Callable[[nn.Module], LayerSpec]] = {}
"""Registered layer types; a value may be a function of the module (e.g. per-channel dilation)."""


def register_layer(module_type: type[nn.Module],
                   spec: LayerSpec | Callable[[nn.Module], LayerSpec]) -> None:
    """Register (or replace) what ``module_type`` and its subclasses are."""
    LAYERS[module_type] = spec


def layer_spec(module: nn.Module) -> LayerSpec | None:
    """The spec of ``module``'s type, its nearest registered base class, or ``None``."""
    for cls in type(module).__mro__:
        if cls in LAYERS:
            spec = LAYERS[cls]
            return spec(module) if callable(spec) else spec
    return None


def sync_sizes(module: nn.Module) -> None:
    """Set a mixing or channel-wise layer's size attributes from its (resized) tensors."""
    spec = layer_spec(module)
    if spec is None:
        return
    if spec.kind == "mixing":
        w = module.weight
        groups = getattr(module, "groups", 1) if spec.grouped else 1
        out_size = w.shape[spec.out_dim] * (groups if spec.transposed else 1)
        in_size = w.shape[spec.in_dim] * (1 if spec.transposed else groups)
        setattr(module, spec.sizes[0], out_size)
        setattr(module, spec.sizes[1], in_size)
    elif spec.sizes:
        tensor = next(getattr(module, name) for name in spec.per_channel
                      if getattr(module, name, None) is not None)
        setattr(module, spec.sizes[0], tensor.shape[0])


# --- the built-in registrations ----------------------------------------------------------------

_WEIGHT = Prunable("weight")
register_layer(nn.Linear, LayerSpec("mixing", axis=-1, out_dim=0, in_dim=1,
                                    sizes=("out_features", "in_features"), prune=_WEIGHT))
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer(_conv, LayerSpec("mixing", axis=1, out_dim=0, in_dim=1, grouped=True,
                                    sizes=("out_channels", "in_channels"), prune=_WEIGHT))
for _conv in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer(_conv, LayerSpec("mixing", axis=1, out_dim=1, in_dim=0, grouped=True,
                                    transposed=True, sizes=("out_channels", "in_channels"),
                                    prune=_WEIGHT))
register_layer(nn.modules.batchnorm._BatchNorm, LayerSpec(
    "channelwise", axis=1, per_channel=("weight", "bias", "running_mean", "running_var"),
    sizes=("num_features",)))
for _pool in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
              nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
              nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample):
    register_layer(_pool, LayerSpec("channelwise", axis=1))
register_layer(nn.ReLU, LayerSpec("elementwise", relu=True))
register_layer(nn.Flatten, LayerSpec("flatten"))
for _act in (nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
             nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus):
    register_layer(_act, LayerSpec("elementwise"))
for _same in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
    register_layer(_same, LayerSpec("elementwise", passthrough=True))


def _register_tropical() -> None:
    # tropfx's own layers; imported here, not at the top, so that tropfx.nn may import this module
    from tropfx.nn import MaxPlus, MinPlus, SparseMaxPlus, SparseMinPlus
    from tropfx.nn.morphology import Dilation1d, Dilation2d, Erosion1d, Erosion2d

    register_layer(MaxPlus, LayerSpec("mixing", axis=-1, out_dim=0, in_dim=1, linear=False,
                                      sizes=("out_features", "in_features"),
                                      prune=Prunable("weight", -math.inf)))
    register_layer(MinPlus, LayerSpec("mixing", axis=-1, out_dim=0, in_dim=1, linear=False,
                                      sizes=("out_features", "in_features"),
                                      prune=Prunable("weight", math.inf)))
    # sparse layers keep k indices per row: the graph does not resize them (no sizes)
    register_layer(SparseMaxPlus, LayerSpec("opaque", prune=Prunable("value", -math.inf)))
    register_layer(SparseMinPlus, LayerSpec("opaque", prune=Prunable("value", math.inf)))

    def morphology(module: nn.Module) -> LayerSpec:
        # Erosion subtracts its structuring element (min(x - w)): its inactive value is -inf too
        prune = Prunable("weight", -math.inf)
        if module.out_channels is None:  # one SE per channel, like pooling
            return LayerSpec("channelwise", axis=1, per_channel=("weight",), linear=False,
                             prune=prune)
        return LayerSpec("mixing", axis=1, out_dim=0, in_dim=1, linear=False,
                         sizes=("out_channels", "in_channels"), prune=prune)

    for cls in (Dilation1d, Dilation2d, Erosion1d, Erosion2d):
        register_layer(cls, morphology)


_register_tropical()

# --- functions and methods -----------------------------------------------------------------------
# kinds: "relu", "elementwise", "passthrough" (the identity in eval mode), "pool" (channel-wise,
# spatial dims only), "join" (elementwise between tensors: their channels couple), "cat",
# "split", "flatten", "view", "transpose", "reduce" (mean / sum / amax over dims), "meta" (reads
# the shape only)

FUNCTIONS: dict[Callable, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu",
    **dict.fromkeys((F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.elu, F.gelu,
                     F.silu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid,
                     torch.tanh, F.tanh, F.softplus, torch.clamp, torch.clip, torch.abs,
                     operator.neg, torch.neg), "elementwise"),
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout),
                    "passthrough"),
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d,
                     torch.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                     F.interpolate), "pool"),
    **dict.fromkeys((operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                     operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
                     torch.mul, torch.div, torch.maximum, torch.minimum), "join"),
    torch.cat: "cat", torch.concat: "cat",
    torch.chunk: "split", torch.split: "split",
    torch.flatten: "flatten",
    torch.reshape: "view",
    torch.transpose: "transpose", torch.permute: "transpose",
    torch.mean: "reduce", torch.sum: "reduce", torch.amax: "reduce",
    getattr: "meta",
}
METHODS: dict[str, str] = {
    "relu": "relu", "relu_": "relu",
    **dict.fromkeys(("sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "abs",
                     "neg"), "elementwise"),
    **dict.fromkeys(("contiguous", "clone", "float", "double", "half", "to"), "passthrough"),
    **dict.fromkeys(("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"), "join"),
    "chunk": "split", "split": "split",
    "flatten": "flatten",
    "view": "view", "reshape": "view",
    "transpose": "transpose", "permute": "transpose",
    "mean": "reduce", "sum": "reduce", "amax": "reduce",
    "size": "meta", "dim": "meta",
}
