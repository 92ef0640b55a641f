"""Binarized BiMoNN layers: boolean morphology and thresholded integer sums on {0, 1} tensors.

What :func:`tropfx.passes.binarize_bise` puts in place of BiSE layers (:mod:`tropfx.nn.bise`). Each
layer is a bank of independent binary neurons; a neuron is either a pure operation by a structuring
element ``S`` or a threshold on an integer weighted sum, and is complemented when its BiSE scale
``p`` is negative (BiSE Theorem 2.3):

* :class:`BinaryMorphology2d`: channel ``c`` is the dilation ``OR_{s in S_c} x_c[. + s]`` or the
  erosion ``AND_{s in S_c} x_c[. + s]`` of input channel ``c`` (the binarized :class:`~tropfx.nn.BiSE`);
* :class:`ThresholdedConv2d`: ``y_o = 1[conv2d(x, W)_o >= t_o]`` with integer ``W`` and ``t`` (the
  binarized :class:`~tropfx.nn.LUI`; any BiSE neuron fits this form: a dilation by ``S`` is
  ``W = 1_S, t = 1``, an erosion ``W = 1_S, t = |S|``);
* :class:`BinaryLinear`: the same on (N, in_features) vectors (the binarized
  :class:`~tropfx.nn.DenseLUI`).

The representations are the ones the packed kernels take (``torch.ops.tropfx.binary_dilation2d`` /
``binary_erosion2d``: a bool SE per channel; ``bool_conv2d``: integer weights and a threshold per
output channel); the implementations here are pure torch and define the semantics.

Conventions (those of :mod:`tropfx.nn.bise`, so that a binarized layer equals its float layer
thresholded at 1/2):

* Layout: cross-correlation as ``nn.Conv2d`` computes it; the SE is read as stored.
* Padding: zeros -- outside the image is background, for erosion too (an erosion whose window
  leaves the image gives 0 there, as the float layer's zero-padded sum does). The packed
  ``binary_erosion2d`` pads with 1 (erosion's neutral element): lowering to it zero-pads first.
* Inputs: ``torch.bool``, or any real tensor holding only 0 and 1. **Other values are thresholded
  at 1/2** (``x > 0.5``, the rule that turns a BiSE output into a bit) with a one-time
  :class:`NonBinaryInputWarning` per layer; NaN is an :class:`~tropfx.errors.InputError`.
  Thresholding is what Theorem 2.3 licenses for almost-binary inputs: an activated BiSE on an
  input within ``delta`` of {0, 1} computes the operation of that input thresholded at 1/2.
* Outputs: ``torch.bool``.

Weights and structuring elements are parameters without gradient, listed in ``binary_params`` when
they hold only 0 and 1 (:func:`tropfx.summary` counts them at one bit); thresholds and flags are
buffers. Each layer registers a ``bitops`` cost with :func:`tropfx.register_cost` (one bit-op per SE
element, or per nonzero weight bit, per output) and zero MACs.
"""

# No ``from __future__ import annotations``: torch.fx copies the root forward's annotations into the
# code it generates, and string annotations make the traced module unpicklable.
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tropfx.errors import InputError, ParameterError
from tropfx.measure import register_cost
from tropfx.serialize import register_serializable
from tropfx.tracing import register_leaf

__all__ = [
    "BINARY_LAYERS",
    "OPERATIONS",
    "BinaryLinear",
    "BinaryMorphology2d",
    "NonBinaryInputWarning",
    "ThresholdedConv2d",
    "as_bits",
]

OPERATIONS = ("dilation", "erosion")
_EXACT_FLOAT32 = 1 << 24  # integer sums below this are exact in float32, below 2**53 in float64
_EXACT_FLOAT64 = 1 << 53


class NonBinaryInputWarning(UserWarning):
    """A binarized layer received values other than 0 and 1 and thresholded them at 1/2."""


def as_bits(layer: nn.Module, x: Tensor, shape: str, channels: int, dims: int) -> Tensor:
    """``x`` as a bool tensor (N, channels, *dims spatial*), after checking it (module docstring).

    ``layer`` names the module in messages and remembers whether it already warned.
    """
    name = type(layer).__name__
    if not isinstance(x, Tensor) or x.dim() != dims + 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name}: the input must be a tensor {shape}, got {got}")
    if x.shape[1] != channels:
        raise InputError(f"{name}: expected {channels} input channels (dim 1) but the input "
                         f"{tuple(x.shape)} has {x.shape[1]}")
    if x.dtype == torch.bool:
        return x
    if x.is_complex():
        raise InputError(f"{name}: the input must be bool or real 0 / 1 values, got {x.dtype}")
    if not bool(((x == 0) | (x == 1)).all()):
        if x.is_floating_point() and bool(torch.isnan(x).any()):
            raise InputError(f"{name}: the input holds NaN; a binarized layer reads bits, so feed it "
                             "0 / 1 values (e.g. images thresholded, or LevelSetEncoder's output)")
        if not layer._warned_non_binary:
            layer._warned_non_binary = True
            lo, hi = float(x.min()), float(x.max())
            warnings.warn(f"{name}: the input holds values other than 0 and 1 (range [{lo:.3g}, "
                          f"{hi:.3g}]); they are thresholded at 1/2 (x > 0.5). Binarize inputs "
                          "yourself to silence this (warned once per layer)",
                          NonBinaryInputWarning, stacklevel=3)
    return x > 0.5


def _flags(name: str, arg: str, value: Tensor | Sequence[bool] | bool, n: int) -> Tensor:
    t = torch.as_tensor(value)
    if t.dim() == 0:
        t = t.expand(n)
    if tuple(t.shape) != (n,) or t.is_floating_point() or t.is_complex():
        raise InputError(f"{name}: {arg} must be a bool or {n} bools (one per neuron), got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    if not bool(((t == 0) | (t == 1)).all()):
        raise InputError(f"{name}: {arg} must hold booleans")
    return t.to(torch.bool).clone()


def _operations(name: str, operation: str | Sequence[str], n: int) -> Tensor:
    """``operation`` (one name or one per neuron) as an ``erosion`` flag per neuron."""
    ops = [operation] * n if isinstance(operation, str) else list(operation)
    if len(ops) != n or any(op not in OPERATIONS for op in ops):
        raise InputError(f"{name}: operation must be 'dilation', 'erosion' or a sequence of {n} of "
                         f"them (one per neuron), got {operation!r}")
    return torch.tensor([op == "erosion" for op in ops], dtype=torch.bool)


def _same_padding(kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    # nn.Conv2d's "same": total k - 1, the smaller half first (left / top).
    (kh, kw) = kernel
    return ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)


def _padding(name: str, padding: str | int | Sequence[int],
             kernel: tuple[int, int]) -> tuple[str | tuple[int, int], tuple[int, int, int, int]]:
    """The padding as given ("same" or a pair) and as F.pad's (left, right, top, bottom)."""
    if padding == "same":
        return "same", _same_padding(kernel)
    pair = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
        raise InputError(f"{name}: padding must be 'same', an int >= 0 or a pair, got {padding!r}")
    return pair, (pair[1], pair[1], pair[0], pair[0])


class BinaryMorphology2d(nn.Module):
    """Per-channel binary dilation or erosion by a bool SE, each channel optionally complemented.

    ``y[:, c] = NOT^{complement_c} OR_{s in S_c} x[:, c, . + s - pad]`` for a dilation (``AND`` for
    an erosion), zero padding (module docstring). Input and output (N, C, H, W); with ``padding=
    "same"`` (default) the size is kept.

    Args:
        se: (C, kh, kw) bool (or 0 / 1) structuring elements, one per channel, none empty.
        operation: ``"dilation"``, ``"erosion"``, or one of them per channel.
        complement: per channel (or one bool): output the complement of the operation.
        padding: ``"same"``, an int or a pair ``(ph, pw)``, as in ``nn.Conv2d``.
    """

    binary_params = ("se",)

    def __init__(self, se: Tensor, operation: str | Sequence[str] = "dilation",
                 complement: Tensor | Sequence[bool] | bool = False,
                 padding: str | int | tuple[int, int] = "same"):
        super().__init__()
        name = type(self).__name__
        se = torch.as_tensor(se)
        if se.dim() != 3 or se.is_complex() or not bool(((se == 0) | (se == 1)).all()):
            raise InputError(f"{name}: se must be a (C, kh, kw) bool or 0 / 1 tensor, got "
                             f"{se.dtype} of shape {tuple(se.shape)}")
        se = se != 0
        empty = (~se.flatten(1).any(1)).nonzero().flatten().tolist()
        if empty:
            raise ParameterError(f"{name}: the structuring element of channel(s) {empty[:10]} is "
                                 "empty; an operation by no pixel is a constant, not a dilation or "
                                 "erosion: give each channel at least one True entry")
        self.channels = se.shape[0]
        self.kernel_size = tuple(se.shape[1:])
        self.padding, self._pads = _padding(name, padding, self.kernel_size)
        self.se = nn.Parameter(se.clone(), requires_grad=False)
        self.register_buffer("erosion", _operations(name, operation, self.channels))
        self.register_buffer("complement", _flags(name, "complement", complement, self.channels))
        self._warned_non_binary = False

    @property
    def operations(self) -> tuple[str, ...]:
        """The operation of each channel, ``"dilation"`` or ``"erosion"``."""
        return tuple(OPERATIONS[int(e)] for e in self.erosion)

    def forward(self, x: Tensor) -> Tensor:
        bits = as_bits(self, x, f"(N, {self.channels}, H, W)", self.channels, 2)
        padded = F.pad(bits, self._pads)  # False: outside is background
        kh, kw = self.kernel_size
        h, w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
        if h < 1 or w < 1:
            raise InputError(f"{type(self).__name__}: the input {tuple(x.shape)} is smaller than the "
                             f"{kh}x{kw} window after padding {self.padding!r}")
        union = torch.zeros(bits.shape[0], self.channels, h, w, dtype=torch.bool, device=bits.device)
        intersection = torch.ones_like(union)
        for i, j in self.se.flatten(1).any(0).view(kh, kw).nonzero().tolist():
            plane = padded[:, :, i:i + h, j:j + w]
            inside = self.se[:, i, j].view(1, -1, 1, 1)
            union |= plane & inside
            intersection &= plane | ~inside
        out = torch.where(self.erosion.view(1, -1, 1, 1), intersection, union)
        return out ^ self.complement.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        ops = sorted(set(self.operations))
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, padding={self.padding!r}, "
                f"operations={ops}, complemented={int(self.complement.sum())}")


class _Thresholded(nn.Module):
    """Integer weights, an integer threshold and a complement flag per output neuron."""

    def _set_weights(self, weight: Tensor, threshold: Tensor | Sequence[int] | int,
                     complement: Tensor | Sequence[bool] | bool, dims: int) -> None:
        name = type(self).__name__
        w = torch.as_tensor(weight)
        if w.dim() != dims or w.is_complex():
            raise InputError(f"{name}: weight must be a real tensor with {dims} dimensions, got "
                             f"shape {tuple(w.shape)}")
        if w.is_floating_point():
            if not bool(torch.isfinite(w).all()):
                raise ParameterError(f"{name}: the weights hold NaN or inf; a thresholded layer "
                                     "needs finite integer weights (binarize a trained BiSE "
                                     "layer with tropfx.passes.binarize_bise)")
            if not torch.equal(w, w.round()):
                raise InputError(f"{name}: weight must hold integers, got non-integer floats; round "
                                 "them (scaling the threshold too) or binarize the float layer "
                                 "with tropfx.passes.binarize_bise")
        w = w.to(torch.int64)
        n = w.shape[0]
        t = torch.as_tensor(threshold)
        t = t.expand(n) if t.dim() == 0 else t
        if tuple(t.shape) != (n,) or t.is_complex() or t.is_floating_point() and (
                not bool(torch.isfinite(t).all()) or not torch.equal(t, t.round())):
            raise InputError(f"{name}: threshold must be an integer or {n} integers (one per output), "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
        # The largest |partial sum| decides the float type the sums are exact in.
        # (an empty layer, no outputs or no inputs, has nothing to bound: amax of nothing is 0)
        bound = int(w.abs().flatten(1).sum(1).amax()) if w.numel() else 0
        t_max = int(t.abs().max()) if t.numel() else 0
        if bound >= _EXACT_FLOAT64 or t_max >= 1 << 31 or (w.numel() and int(w.abs().max()) >= 1 << 31):
            raise ParameterError(f"{name}: weights or thresholds too large (sum of |W| up to {bound}); "
                                 "integer sums must stay below 2**53 and entries within int32")
        small = int(w.abs().max()) < 128 if w.numel() else True
        self.weight = nn.Parameter(w.to(torch.int8 if small else torch.int32), requires_grad=False)
        self.register_buffer("threshold", t.to(torch.int32).clone())
        self.register_buffer("complement", _flags(name, "complement", complement, n))
        self.sum_dtype = torch.float32 if bound < _EXACT_FLOAT32 else torch.float64
        self._warned_non_binary = False

    @property
    def binary_params(self) -> tuple[str, ...]:
        """``("weight",)`` when every weight is 0 or 1 (one bit each), else ``()``."""
        w = self.weight
        return ("weight",) if bool(((w == 0) | (w == 1)).all()) else ()

    @property
    def bit_planes(self) -> int:
        """Bits per weight magnitude: the bit planes a packed kernel iterates over."""
        return max(int(self.weight.abs().max()).bit_length(), 1) if self.weight.numel() else 1

    def _finish(self, sums: Tensor, dims: int) -> Tensor:
        shape = (1, -1) + (1,) * dims
        out = sums >= self.threshold.to(sums.dtype).view(shape)
        return out ^ self.complement.view(shape)


class ThresholdedConv2d(_Thresholded):
    """``y_o = 1[conv2d(x, W)_o >= t_o]``, complemented where ``complement_o``: integer weights and
    thresholds on bits.

    ``conv2d`` is ``nn.Conv2d``'s (cross-correlation, ``groups``, zero padding). The sums are
    computed in float32 when they are exact there (``sum |W| < 2**24``), else in float64.

    Args:
        weight: (out_channels, in_channels / groups, kh, kw) integers (int8 / int32 storage).
        threshold: (out_channels,) integers, or one for all.
        complement: per output channel (or one bool): output ``1[sum < t]`` instead.
        groups, padding: as in ``nn.Conv2d`` (``padding`` also ``"same"``).
    """

    def __init__(self, weight: Tensor, threshold: Tensor | Sequence[int] | int,
                 complement: Tensor | Sequence[bool] | bool = False, *, groups: int = 1,
                 padding: str | int | tuple[int, int] = 0):
        super().__init__()
        name = type(self).__name__
        self._set_weights(weight, threshold, complement, 4)
        self.out_channels = self.weight.shape[0]
        if not isinstance(groups, int) or groups < 1 or self.out_channels % groups:
            raise InputError(f"{name}: groups={groups!r} must be a positive int dividing "
                             f"out_channels={self.out_channels}")
        self.groups = groups
        self.in_channels = self.weight.shape[1] * groups
        self.kernel_size = tuple(self.weight.shape[2:])
        self.padding, self._pads = _padding(name, padding, self.kernel_size)

    @classmethod
    def from_morphology(cls, se: Tensor, operation: str | Sequence[str],
                        complement: Tensor | Sequence[bool] | bool = False, *, groups: int = 1,
                        padding: str | int | tuple[int, int] = 0) -> "ThresholdedConv2d":
        """Dilations (``W = 1_S``, ``t = 1``) or erosions (``t = |S|``) by ``se`` (O, I / groups, kh, kw)."""
        se = torch.as_tensor(se) != 0
        return cls(se.to(torch.int8), _morphology_threshold(cls.__name__, se, operation), complement,
                   groups=groups, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        bits = as_bits(self, x, f"(N, {self.in_channels}, H, W)", self.in_channels, 2)
        xs = F.pad(bits.to(self.sum_dtype), self._pads)
        kh, kw = self.kernel_size
        if xs.shape[2] < kh or xs.shape[3] < kw:
            raise InputError(f"{type(self).__name__}: the input {tuple(x.shape)} is smaller than the "
                             f"{kh}x{kw} window after padding {self.padding!r}")
        if self.out_channels == 0:  # F.conv2d refuses a weight with no output channels
            sums = xs.new_zeros(xs.shape[0], 0, xs.shape[2] - kh + 1, xs.shape[3] - kw + 1)
        else:
            sums = F.conv2d(xs, self.weight.to(self.sum_dtype), groups=self.groups)
        return self._finish(sums, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"groups={self.groups}, padding={self.padding!r}, weight={self.weight.dtype}")


class BinaryLinear(_Thresholded):
    """``y_o = 1[x . W_o >= t_o]`` on (N, in_features) bits, complemented where ``complement_o``.

    Args:
        weight: (out_features, in_features) integers.
        threshold: (out_features,) integers, or one for all.
        complement: per output (or one bool): output ``1[x . W_o < t_o]`` instead.
    """

    def __init__(self, weight: Tensor, threshold: Tensor | Sequence[int] | int,
                 complement: Tensor | Sequence[bool] | bool = False):
        super().__init__()
        self._set_weights(weight, threshold, complement, 2)
        self.out_features, self.in_features = self.weight.shape

    @classmethod
    def from_morphology(cls, se: Tensor, operation: str | Sequence[str],
                        complement: Tensor | Sequence[bool] | bool = False) -> "BinaryLinear":
        """Dilations (``W = 1_S``, ``t = 1``: OR of the inputs in ``S``) or erosions (``t = |S|``:
        their AND) by ``se`` (out_features, in_features)."""
        se = torch.as_tensor(se) != 0
        return cls(se.to(torch.int8), _morphology_threshold(cls.__name__, se, operation), complement)

    def forward(self, x: Tensor) -> Tensor:
        bits = as_bits(self, x, f"(N, {self.in_features})", self.in_features, 0)
        return self._finish(bits.to(self.sum_dtype) @ self.weight.to(self.sum_dtype).t(), 0)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, weight={self.weight.dtype}"


def _morphology_threshold(name: str, se: Tensor, operation: str | Sequence[str]) -> Tensor:
    sizes = se.flatten(1).sum(1)
    empty = (sizes == 0).nonzero().flatten().tolist()
    if empty:
        raise ParameterError(f"{name}: the structuring element of output(s) {empty[:10]} is empty; "
                             "an operation by no input is a constant: give each at least one entry")
    erosion = _operations(name, operation, se.shape[0])
    return torch.where(erosion, sizes, torch.ones_like(sizes))


BINARY_LAYERS: tuple[type[nn.Module], ...] = (BinaryMorphology2d, ThresholdedConv2d, BinaryLinear)
register_leaf(*BINARY_LAYERS)


# --- saving: tropfx.load builds each layer from its config and then replaces every tensor and
# attribute with the saved ones. The constructors above check values (``.item()``, ``.all()``),
# which the meta device cannot do, so the builds below make a skeleton instead: the structure
# (parameter / buffer names, the attributes that depend only on shapes) with meta tensors of the
# shapes the config names. Nothing is allocated and no value is read, whatever the config says: a
# file with a tampered ``shape`` cannot make ``load`` allocate it (docs/serialization.md).


def _dims(name: str, shape: object, n: int) -> tuple[int, ...]:
    if not (isinstance(shape, (tuple, list)) and len(shape) == n
            and all(type(d) is int and d >= 0 for d in shape)):
        raise InputError(f"{name}: shape must be {n} non-negative ints, got {shape!r:.80}")
    return tuple(shape)


def skeleton(cls: type[nn.Module], params: dict[str, tuple], buffers: dict[str, tuple],
             **attrs: object) -> nn.Module:
    """An instance of ``cls`` without running its constructor: meta parameters / buffers named
    ``{name: (shape, dtype)}`` and plain ``attrs``; for ``tropfx.load``, which fills in the rest."""
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for key, (shape, dtype) in params.items():
        m.register_parameter(key, nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"),
                                               requires_grad=False))
    for key, (shape, dtype) in buffers.items():
        m.register_buffer(key, torch.empty(shape, dtype=dtype, device="meta"))
    m.__dict__.update(attrs)
    return m


def _morphology_skeleton(channels: int, kernel_size: tuple[int, int],
                         padding: str | int | tuple[int, int]) -> BinaryMorphology2d:
    name = BinaryMorphology2d.__name__
    (c,) = _dims(name, (channels,), 1)
    kernel = _dims(name, kernel_size, 2)
    padding, pads = _padding(name, padding, kernel)
    return skeleton(BinaryMorphology2d, {"se": ((c, *kernel), torch.bool)},
                    {"erosion": ((c,), torch.bool), "complement": ((c,), torch.bool)},
                    channels=c, kernel_size=kernel, padding=padding, _pads=pads,
                    _warned_non_binary=False)


def _thresholded_skeleton(cls: type[_Thresholded], shape: tuple[int, ...]) -> _Thresholded:
    shape = _dims(cls.__name__, shape, 4 if cls is ThresholdedConv2d else 2)
    return skeleton(cls, {"weight": (shape, torch.int8)},
                    {"threshold": ((shape[0],), torch.int32), "complement": ((shape[0],), torch.bool)},
                    sum_dtype=torch.float32, _warned_non_binary=False)


def _conv_skeleton(shape: tuple[int, int, int, int], groups: int,
                   padding: str | int | tuple[int, int]) -> ThresholdedConv2d:
    m = _thresholded_skeleton(ThresholdedConv2d, shape)
    o, i, kh, kw = m.weight.shape
    if not isinstance(groups, int) or groups < 1 or o % groups:
        raise InputError(f"ThresholdedConv2d: groups={groups!r} must be a positive int dividing "
                         f"out_channels={o}")
    m.out_channels, m.groups, m.in_channels, m.kernel_size = o, groups, i * groups, (kh, kw)
    m.padding, m._pads = _padding(ThresholdedConv2d.__name__, padding, (kh, kw))
    return m


def _linear_skeleton(shape: tuple[int, int]) -> BinaryLinear:
    m = _thresholded_skeleton(BinaryLinear, shape)
    m.out_features, m.in_features = m.weight.shape
    return m


register_serializable(
    BinaryMorphology2d,
    config=lambda m: {"channels": m.channels, "kernel_size": m.kernel_size, "padding": m.padding},
    build=_morphology_skeleton)
register_serializable(
    ThresholdedConv2d,
    config=lambda m: {"shape": tuple(m.weight.shape), "groups": m.groups, "padding": m.padding},
    build=_conv_skeleton)
register_serializable(
    BinaryLinear,
    config=lambda m: {"shape": tuple(m.weight.shape)},
    build=_linear_skeleton)


# --- costs ----------------------------------------------------------------------------------------

@register_cost(BinaryMorphology2d)
def _morphology_cost(layer: BinaryMorphology2d, args: tuple, kwargs: dict,
                     out: Tensor) -> dict[str, int]:
    # One AND / OR per SE element per output pixel.
    per_pixel = int(layer.se.sum())
    return {"bitops": out.shape[0] * out.shape[2] * out.shape[3] * per_pixel, "macs": 0}


@register_cost(ThresholdedConv2d)
def _conv_cost(layer: ThresholdedConv2d, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    # One AND + popcount lane per nonzero weight bit per output pixel (bool_conv2d's bit planes).
    per_pixel = int((layer.weight != 0).sum()) * layer.bit_planes
    return {"bitops": out.shape[0] * out.shape[2] * out.shape[3] * per_pixel, "macs": 0}


@register_cost(BinaryLinear)
def _linear_cost(layer: BinaryLinear, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    return {"bitops": out.shape[0] * int((layer.weight != 0).sum()) * layer.bit_planes, "macs": 0}
