"""Binarized layers lowered to the packed boolean kernel: what :func:`tropfx.passes.lower_kernels`
puts in place of :class:`~tropfx.nn.ThresholdedConv2d`, :class:`~tropfx.nn.BinaryMorphology2d` and
:class:`~tropfx.nn.BinaryLinear`.

Every one of those layers is a bank of neurons ``y_o = 1[sum W_o x >= t_o]``, complemented where
``complement_o`` (BiSE Theorem 2.3; :mod:`tropfx.nn.binary`), so one module, :class:`PackedBinaryConv2d`,
runs them all through ``tropfx::bool_conv2d`` on bit-packed tensors:

* complement folded into the weights: ``NOT 1[s >= t] = 1[-s >= 1 - t]`` for integer ``s``;
* a dilation / erosion of channel ``c`` by ``S_c`` (``BinaryMorphology2d``) is the neuron with
  weights ``1_{S_c}`` on channel ``c`` only and threshold 1 / ``|S_c|`` (the bit-sliced kernel's cost
  is the number of set weight bits, so the other channels cost nothing);
* ``groups`` expanded into a block-diagonal weight;
* zero padding as the layers have it; an asymmetric "same" padding (even kernel) runs with the
  larger side on both and crops the extra output row / column.

Packed layouts (:func:`tropfx.kernels.pack_bits`): a feature map (N, C, H, W) is (N, H, W,
ceil(C / 64)) uint64; a batch of feature vectors (N, F) is packed as the 1 x N image (1, F, 1, N),
i.e. (1, 1, N, ceil(F / 64)), so that the kernel runs along the batch. Consecutive lowered layers
pass packed tensors to each other; :func:`pack_feature_map` / :func:`unpack_feature_map` (and the
``features`` pair) sit at the boundaries with the rest of the graph. Inputs are read as the layers
read them, ``x > 1/2`` (a bool input as is); the layers' input checks (the warning on values other
than 0 / 1, the error on NaN) are not repeated: they are a device sync and a data-dependent branch
that ``torch.export`` cannot trace.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from tropfx.errors import InputError
from tropfx.kernels import ops as K
from tropfx.measure import register_cost
from tropfx.nn.binary import BinaryLinear, BinaryMorphology2d, ThresholdedConv2d, _dims, skeleton
from tropfx.serialize import register_serializable
from tropfx.tracing import register_leaf

__all__ = ["PackedBinaryConv2d", "pack_feature_map", "pack_features", "unpack_feature_map",
           "unpack_features"]


def _bits(x: Tensor) -> Tensor:
    return x if x.dtype == torch.bool else x > 0.5


def pack_feature_map(x: Tensor) -> Tensor:
    """(N, C, H, W) bits (bool, or values read as ``x > 1/2``) -> packed (N, H, W, ceil(C / 64))."""
    return K.pack_bits(_bits(x))


def unpack_feature_map(packed: Tensor, channels: int) -> Tensor:
    """Packed (N, H, W, ceil(C / 64)) -> (N, channels, H, W) bool."""
    return K.unpack_bits(packed, channels, torch.bool)


def pack_features(x: Tensor) -> Tensor:
    """(N, F) bits -> the packed 1 x N image (1, 1, N, ceil(F / 64)) (module docstring)."""
    n, f = x.shape
    return K.pack_bits(_bits(x).t().reshape(1, f, 1, n))


def unpack_features(packed: Tensor, features: int) -> Tensor:
    """The packed 1 x N image (1, 1, N, ceil(F / 64)) -> (N, features) bool."""
    n = packed.shape[2]
    return K.unpack_bits(packed, features, torch.bool).reshape(features, n).t()


class PackedBinaryConv2d(nn.Module):
    """``y_o = 1[conv2d(x, W)_o >= t_o]`` on packed bits, through ``tropfx::bool_conv2d``.

    Args:
        weight: (O, C, kh, kw) integers (complements already folded in).
        threshold: (O,) integers.
        pads: zero padding (left, right, top, bottom), as ``F.pad`` takes it.
        kind: ``"feature_map"`` (packed (N, H, W, Cw) in and out) or ``"features"`` (the packed
            1 x N image of a (N, F) batch; 1 x 1 weights, no padding).

    Buffers: ``weight_pos`` / ``weight_neg`` (the bit planes of :func:`tropfx.kernels.pack_conv_weight`)
    and ``threshold`` (int64). Not trainable: binarized layers have no gradient.
    :func:`tropfx.summary` counts the planes' bits as binary parameters (word padding included).
    """

    packed_binary_buffers = ("weight_pos", "weight_neg")

    def __init__(self, weight: Tensor, threshold: Tensor, pads: tuple[int, int, int, int] = (0, 0, 0, 0),
                 kind: str = "feature_map"):
        super().__init__()
        if kind not in ("feature_map", "features"):
            raise InputError(f"PackedBinaryConv2d: kind must be 'feature_map' or 'features', got {kind!r}")
        weight = torch.as_tensor(weight)
        if weight.dim() != 4 or weight.is_floating_point() or weight.is_complex():
            raise InputError(f"PackedBinaryConv2d: weight must be (O, C, kh, kw) integers, got "
                             f"{weight.dtype} {tuple(weight.shape)}")
        if kind == "features" and (weight.shape[2:] != (1, 1) or any(pads)):
            raise InputError("PackedBinaryConv2d: kind='features' takes 1 x 1 weights and no padding")
        pos, neg = K.pack_conv_weight(weight)
        self.register_buffer("weight_pos", pos)
        self.register_buffer("weight_neg", neg)
        self.register_buffer("threshold", torch.as_tensor(threshold).to(torch.int64).reshape(-1).clone())
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel_size = (kh, kw)
        self.pads = tuple(int(p) for p in pads)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        left, right, top, bottom = self.pads
        ph, pw = max(top, bottom), max(left, right)
        y = K.bool_conv2d(x, self.weight_pos, self.weight_neg, self.threshold, 1, (ph, pw), 1)
        if (top, left) == (bottom, right):
            return y
        kh, kw = self.kernel_size
        rows = x.shape[1] + top + bottom - kh + 1
        cols = x.shape[2] + left + right - kw + 1
        return y[:, ph - top:ph - top + rows, pw - left:pw - left + cols]

    @classmethod
    def from_layer(cls, layer: nn.Module) -> PackedBinaryConv2d:
        """The packed twin of a ``ThresholdedConv2d``, ``BinaryMorphology2d`` or ``BinaryLinear``."""
        if isinstance(layer, BinaryMorphology2d):
            se = layer.se.detach().to(torch.int64)
            c = se.shape[0]
            weight = torch.zeros(c, c, *se.shape[1:], dtype=torch.int64)
            weight[torch.arange(c), torch.arange(c)] = se
            threshold = torch.where(layer.erosion, se.flatten(1).sum(1), torch.ones(c, dtype=torch.int64))
            pads, kind = layer._pads, "feature_map"
        elif isinstance(layer, ThresholdedConv2d):
            w = layer.weight.detach().to(torch.int64)
            o, g = w.shape[0], layer.groups
            weight = torch.zeros(o, layer.in_channels, *w.shape[2:], dtype=torch.int64)
            per_in, per_out = layer.in_channels // g, o // g
            for group in range(g):  # block diagonal
                rows = slice(group * per_out, (group + 1) * per_out)
                weight[rows, group * per_in:(group + 1) * per_in] = w[rows]
            threshold, pads, kind = layer.threshold.to(torch.int64), layer._pads, "feature_map"
        elif isinstance(layer, BinaryLinear):
            weight = layer.weight.detach().to(torch.int64)[:, :, None, None]
            threshold, pads, kind = layer.threshold.to(torch.int64), (0, 0, 0, 0), "features"
        else:
            raise InputError(f"PackedBinaryConv2d.from_layer: {type(layer).__name__} is not a "
                             "binarized layer (ThresholdedConv2d, BinaryMorphology2d, BinaryLinear)")
        flip = layer.complement.view(-1, 1, 1, 1)
        weight = torch.where(flip, -weight, weight)
        threshold = torch.where(layer.complement, 1 - threshold, threshold)
        return cls(weight, threshold, pads, kind)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"pads={self.pads}, kind={self.kind!r}")


register_leaf(PackedBinaryConv2d)


@register_cost(PackedBinaryConv2d)
def _packed_cost(layer: PackedBinaryConv2d, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    # One AND + count lane per set weight bit per output pixel, as the unlowered layers count.
    bits = sum(int(np.unpackbits(p.detach().cpu().contiguous().view(torch.uint8).numpy()).sum())
               for p in (layer.weight_pos, layer.weight_neg))
    return {"bitops": out.shape[0] * out.shape[1] * out.shape[2] * bits, "macs": 0}


def _packed_skeleton(shape: tuple[int, int, int, int], pads: tuple[int, int, int, int],
                     kind: str, planes: tuple[int, int] | None = None) -> PackedBinaryConv2d:
    """The layer's structure from its config, on the meta device and without reading a value
    (:func:`tropfx.nn.binary.skeleton`); ``tropfx.load`` replaces the tensors with the saved ones.
    ``planes``: the bit-plane counts of ``weight_pos`` / ``weight_neg`` (they depend on the
    weights' values); files written before it was saved leave those two unchecked."""
    o, c, kh, kw = _dims("PackedBinaryConv2d", shape, 4)
    pads = _dims("PackedBinaryConv2d", pads, 4)
    if kind not in ("feature_map", "features"):
        raise InputError(f"PackedBinaryConv2d: kind must be 'feature_map' or 'features', got {kind!r}")
    buffers = {"threshold": ((o,), torch.int64)}
    if planes is not None:
        pos, neg = _dims("PackedBinaryConv2d", planes, 2)
        buffers["weight_pos"] = ((o, kh, kw, pos, -(-c // 64)), torch.uint64)
        buffers["weight_neg"] = ((o, kh, kw, neg, -(-c // 64)), torch.uint64)
    m = skeleton(PackedBinaryConv2d, {}, buffers, out_channels=o, in_channels=c,
                 kernel_size=(kh, kw), pads=pads, kind=kind)
    if planes is None:
        m.register_buffer("weight_pos", None)
        m.register_buffer("weight_neg", None)
    return m


register_serializable(
    PackedBinaryConv2d,
    config=lambda m: {"shape": (m.out_channels, m.in_channels, *m.kernel_size), "pads": m.pads,
                      "kind": m.kind, "planes": (m.weight_pos.shape[3], m.weight_neg.shape[3])},
    build=_packed_skeleton)
for _fn in (pack_feature_map, unpack_feature_map, pack_features, unpack_features):
    register_serializable(_fn)
