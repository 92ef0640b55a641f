"""Morphological convolutions: dilation (max-plus) and erosion (min-plus), the reference implementation.

"Sparse Hybrid Linear-Morphological Networks" (arXiv 2504.09289) defines the dilation of an input
``x`` by a structuring element (SE) ``w`` as ``delta_w(x) = max_i (x_i + w_i)``; erosion is its
min-plus dual, ``epsilon_w(x) = min_i (x_i - w_i)``. Here the index ``i`` runs over a sliding window,
as in a convolution: these layers replace max pooling, which is exactly a dilation by a flat (all-zero)
SE.

The SE has one of two forms:

* per channel, ``(C, *kernel)``, like pooling: ``y[n, c, p] = max_k x[n, c, p*s + k*d - pad] + w[c, k]``;
* full, ``(C_out, C_in, *kernel)``, like a convolution:
  ``y[n, o, p] = max_{c, k} x[n, c, p*s + k*d - pad] + w[o, c, k]``.

Padding and output sizes follow ``torch.nn.functional.max_pool1d/2d`` (``ceil_mode`` included);
dilation pads with ``-inf`` and erosion with ``+inf``, so padding never wins a window. With a flat SE,
:func:`dilation2d` is bitwise equal to ``F.max_pool2d`` (NaN propagates, as there) and so is its input
gradient: the functions here define the semantics that compiled kernels must match bit for bit.

Gradients are the subgradient of max (min): each output sends its gradient to the *first* maximal
(minimal) element of its window, in window order -- input channel first (full form), then kernel
offsets row-major -- and to the matching SE entry. This is max pooling's rule. One difference: a
window whose maximum is ``-inf`` and whose first element is padding sends its gradient to the padding
(i.e. drops it), where max pooling picks its first input element; a window lying wholly in the
padding is ``-inf`` and has no gradient at all.

Memory and speed: a shift-and-max over the SE entries, in window order (as kornia computes
morphology): each entry reads a strided view of the padded input, adds its weight and updates a
running extreme -- and, when autograd needs it, a running argmax of one byte per output (two for
windows over 256 entries) -- so the intermediates are of the size of the output, never ``window x
output``. Without autograd, a per-channel SE with one value per channel (what
``maxpool_to_dilation`` produces) is ``F.max_pool`` plus that value, bitwise (rounding is
monotone). ``chunk_elements`` is accepted for compatibility and bounds nothing any more: no
intermediate exceeds the padded input or the output. Under torch.compile the shift-and-max is
traced as written (a flat SE cannot be detected without a data-dependent branch) and inductor fuses
it, padding included, into one loop over the windows; NaN is tested as ``t != t`` there, which
inductor vectorizes (its ``isnan`` runs element by element on the CPU).
"""

# No ``from __future__ import annotations``: torch.fx copies the root forward's annotations into the
# code it generates, and string annotations make the traced module unpicklable.
import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from tropfx.errors import InputError, ParameterError
from tropfx.measure import register_cost
from tropfx.nn.functional import autocast_float32
from tropfx.tracing import register_leaf

__all__ = [
    "CHUNK_ELEMENTS",
    "INIT_NOISE",
    "Dilation1d",
    "Dilation2d",
    "Erosion1d",
    "Erosion2d",
    "dilation1d",
    "dilation2d",
    "erosion1d",
    "erosion2d",
]

CHUNK_ELEMENTS = 2**24  # kept for compatibility: shift-and-max needs no chunks (see module docs)
INIT_NOISE = 0.01  # a fresh SE is U(-INIT_NOISE, INIT_NOISE): flat, with ties broken

IntOrTuple = int | Sequence[int]


# ---------------------------------------------------------------------------------------------------
# Functional API. fx.wrap keeps each call one opaque call_function node when torch.fx traces a model
# (the argument checks below need concrete tensors), and gives cost counters a target to match.


@fx.wrap
def dilation1d(x: Tensor, weight: Tensor, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
               dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Max-plus dilation of ``x`` (N, C, L) by ``weight`` (C, k) or (C_out, C, k).

    ``y[n, o, p] = max over the window of x + w``; ``stride``, ``padding`` (filled with ``-inf``),
    ``dilation`` and ``ceil_mode`` as in ``F.max_pool1d``. With ``weight = zeros(C, k)`` the result is
    bitwise ``F.max_pool1d(x, k, stride, padding, dilation, ceil_mode)``. The gradient goes to the first
    maximal window element (see the module docstring). Errors: as for :func:`dilation2d`.
    """
    return _morphology(x, weight, 1, False, stride, padding, dilation, ceil_mode, chunk_elements)


@fx.wrap
def dilation2d(x: Tensor, weight: Tensor, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
               dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Max-plus dilation of ``x`` (N, C, H, W) by ``weight`` (C, kh, kw) or (C_out, C, kh, kw).

    ``y[n, o, i, j] = max over the window of x + w``; ``stride``, ``padding`` (filled with ``-inf``),
    ``dilation`` and ``ceil_mode`` as in ``F.max_pool2d``. With ``weight = zeros(C, kh, kw)`` the
    result is bitwise ``F.max_pool2d(x, (kh, kw), stride, padding, dilation, ceil_mode)``. The gradient
    goes to the first maximal window element, channel-major then kernel row-major (see the module
    docstring). Raises :class:`~tropfx.errors.InputError` on bad shapes or arguments and
    :class:`~tropfx.errors.ParameterError` on an SE holding NaN or ``+inf`` (which would meet the
    ``-inf`` padding and make NaN); ``-inf`` entries are allowed and switch an entry off.
    """
    return _morphology(x, weight, 2, False, stride, padding, dilation, ceil_mode, chunk_elements)


@fx.wrap
def erosion1d(x: Tensor, weight: Tensor, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
              dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
              chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Min-plus erosion of ``x`` (N, C, L) by ``weight`` (C, k) or (C_out, C, k).

    ``y[n, o, p] = min over the window of x - w``, padding filled with ``+inf``; equal to
    ``-dilation1d(-x, weight, ...)``. The gradient goes to the first minimal window element. Errors: as
    for :func:`dilation2d` (the same SE values are rejected: ``+inf - +inf`` is NaN too).
    """
    return _morphology(x, weight, 1, True, stride, padding, dilation, ceil_mode, chunk_elements)


@fx.wrap
def erosion2d(x: Tensor, weight: Tensor, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
              dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
              chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Min-plus erosion of ``x`` (N, C, H, W) by ``weight`` (C, kh, kw) or (C_out, C, kh, kw).

    ``y[n, o, i, j] = min over the window of x - w``, padding filled with ``+inf``; equal to
    ``-dilation2d(-x, weight, ...)``. The gradient goes to the first minimal window element,
    channel-major then kernel row-major. Errors: as for :func:`dilation2d` (the same SE values are
    rejected: ``+inf - +inf`` is NaN too; ``x - (-inf) = +inf`` never wins a min).
    """
    return _morphology(x, weight, 2, True, stride, padding, dilation, ceil_mode, chunk_elements)


# ---------------------------------------------------------------------------------------------------
# The one implementation behind the four functions.


def _morphology(x: Tensor, weight: Tensor, nd: int, erode: bool, stride: IntOrTuple,
                padding: IntOrTuple, dilation: IntOrTuple, ceil_mode: bool,
                chunk_elements: int) -> Tensor:
    name = f"{'erosion' if erode else 'dilation'}{nd}d"
    if isinstance(x, Tensor) and isinstance(weight, Tensor):
        x, weight = autocast_float32(x, weight)  # the layers' policy under torch.autocast
    full = _check_tensors(name, x, weight, nd)
    stride = _as_tuple(name, "stride", stride, nd, minimum=1)
    padding = _as_tuple(name, "padding", padding, nd, minimum=0)
    dilation = _as_tuple(name, "dilation", dilation, nd, minimum=1)
    if not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise InputError(f"{name}: chunk_elements must be a positive int, got {chunk_elements!r}")
    kernel = tuple(weight.shape[-nd:])
    sizes = tuple(x.shape[2:])
    out = tuple(_out_size(sizes[i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
                for i in range(nd))
    for i in range(nd):
        if out[i] < 1:  # ceil_mode admits a kernel up to stride - 1 past the padded input, like pooling
            raise InputError(
                f"{name}: the kernel (size {kernel[i]}, dilation {dilation[i]}, spanning "
                f"{_span(kernel[i], dilation[i])}) is larger than the padded input ({sizes[i]} + 2 * "
                f"{padding[i]}) along spatial dim {i}; use a larger input, more padding or a smaller "
                "kernel"
            )
    grid = _Grid(kernel, stride, dilation, out)
    if x.numel() == 0 or weight.shape[0] == 0:  # an empty batch or no channels: an empty output
        # (empty sums: the output stays connected to x and weight, whose gradients are zeros)
        tie = x.flatten()[:0].sum() + weight.flatten()[:0].sum()
        return x.new_zeros(x.shape[0], weight.shape[0], *out) + tie
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if not needs_grad and not full and _is_flat(weight):
        return _flat(x, weight, grid, padding, ceil_mode, erode)
    fill = math.inf if erode else -math.inf  # padding must never win the window
    xp = _pad(x, grid, padding, fill)
    if not needs_grad:
        return _shift_reduce(xp, weight, grid, full, erode, with_argmax=False)[0]
    return _ShiftReduce.apply(xp, weight, grid, full, erode)


def _check_tensors(name: str, x: Tensor, weight: Tensor, nd: int) -> bool:
    """Validate ``x`` and ``weight``; return whether ``weight`` is the full (C_out, C_in, ...) form."""
    spatial = "L" if nd == 1 else "H, W"
    if not isinstance(x, Tensor) or x.dim() != nd + 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name}: x must be a tensor (N, C, {spatial}), got {got}; "
                         "add a batch dimension with x.unsqueeze(0)")
    if not x.is_floating_point():
        raise InputError(f"{name}: x must be floating point (padding is infinite), got {x.dtype}")
    if not isinstance(weight, Tensor) or weight.dim() not in (nd + 1, nd + 2):
        got = f"shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise InputError(f"{name}: weight must be (C, *kernel) per channel or (C_out, C_in, *kernel) "
                         f"with {nd} kernel dim(s), got {got}")
    if weight.dtype != x.dtype:
        raise InputError(f"{name}: weight is {weight.dtype} but x is {x.dtype}; convert one of them")
    full = weight.dim() == nd + 2
    channels = weight.shape[1] if full else weight.shape[0]
    if channels != x.shape[1]:
        form = "(C_out, C_in, *kernel) has C_in" if full else "(C, *kernel) has C"
        raise InputError(f"{name}: x has {x.shape[1]} channels but weight {tuple(weight.shape)} "
                         f"{form} = {channels}")
    if 0 in weight.shape[-nd:]:
        raise InputError(f"{name}: weight {tuple(weight.shape)} has an empty kernel")
    # +inf in the SE meets the infinite padding (or an -inf input) and makes NaN. A value check:
    # skipped while torch.compile / torch.export trace (it would be a data-dependent branch).
    if not torch.compiler.is_compiling() and not _weight_fact(weight, "finite", _finite_or_off):
        raise ParameterError(f"{name}: the structuring element holds NaN or +inf; its entries must "
                             "be finite, or -inf to switch an entry off")
    return full


def _as_tuple(name: str, arg: str, value: IntOrTuple, nd: int, minimum: int) -> tuple[int, ...]:
    values = (value,) * nd if isinstance(value, int) else tuple(value)
    if len(values) != nd or not all(isinstance(v, int) and v >= minimum for v in values):
        raise InputError(f"{name}: {arg} must be an int >= {minimum} or {nd} of them, got {value!r}")
    return values


def _span(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length by torch's pooling rule (``pooling_output_shape`` in ATen)."""
    out = (size + 2 * padding - _span(kernel, dilation) + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or the left padding
    return out


class _Grid(NamedTuple):
    """Where the windows are: kernel size, stride and dilation per spatial dim, and the output size."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    out: tuple[int, ...]

    def span(self, i: int) -> int:
        return _span(self.kernel[i], self.dilation[i])


def _pad(x: Tensor, grid: _Grid, padding: tuple[int, ...], fill: float) -> Tensor:
    """``x`` padded with ``fill``: ``padding`` on the left, on the right as far as the windows reach."""
    pads: list[int] = []
    for i in reversed(range(len(padding))):  # F.pad lists the last dim first
        needed = (grid.out[i] - 1) * grid.stride[i] + grid.span(i)
        # ceil_mode's last window may reach past the right padding
        pads += [padding[i], max(needed - x.shape[2 + i] - padding[i], 0)]
    return F.pad(x, pads, value=fill) if any(pads) else x


def _is_flat(weight: Tensor) -> bool:
    """Whether each channel's SE is one value (a max pooling plus a constant). Not while
    torch.compile / torch.export trace: that would be a data-dependent branch."""
    if torch.compiler.is_compiling():
        return False
    return _weight_fact(weight, "flat", _flat_rows)


def _flat_rows(weight: Tensor) -> bool:
    """Every row one value, zero signs included: ``x + 0`` and ``x + -0`` differ for ``x = -0``,
    so an SE of 0 and -0 is not flat."""
    rows = weight.flatten(1)
    return bool(((rows == rows[:, :1]) & (rows.signbit() == rows[:, :1].signbit())).all())


def _finite_or_off(weight: Tensor) -> bool:
    return not bool(torch.isnan(weight).any() | torch.isposinf(weight).any())


def _weight_fact(weight: Tensor, name: str, fact: Callable[[Tensor], bool]) -> bool:
    """``fact(weight)``, remembered on the SE tensor per version and storage (an optimizer step
    or ``copy_`` bumps the version, a ``.data =`` swap moves the storage): a forward pass does
    not pay a device sync per check per layer once the SE is known."""
    key = (weight._version, weight.data_ptr())
    memo = weight.__dict__.setdefault("_tropfx_facts", {})
    if memo.get(name, (None,))[0] != key:
        memo[name] = (key, fact(weight.detach()))
    return memo[name][1]


_POOL = {1: F.max_pool1d, 2: F.max_pool2d}


def _flat(x: Tensor, weight: Tensor, grid: _Grid, padding: tuple[int, ...], ceil_mode: bool,
          erode: bool) -> Tensor:
    """A per-channel SE with one value ``w_c`` per channel: ``max_k (x_k + w_c) = (max_k x_k) + w_c``
    bitwise, because rounding is monotone (``a <= b`` implies ``fl(a + w) <= fl(b + w)``), so the
    largest term is the rounded sum of the largest input; NaN, ``-inf`` padding and signed zeros
    (the first of tied zeros wins in both) agree too. Erosion: ``min_k (x_k - w_c) =
    -max_k(-x_k) - w_c``. ``F.max_pool`` computes the max."""
    nd = len(grid.kernel)
    w = weight.flatten(1)[:, 0].view(-1, *(1,) * nd)
    src = -x if erode else x
    if all(2 * p <= k for p, k in zip(padding, grid.kernel, strict=True)):  # max_pool's padding rule
        pooled = _POOL[nd](src, grid.kernel, grid.stride, padding, grid.dilation, ceil_mode)
    else:  # pad with -inf first; the windows are the same, the extra right padding is cut off
        pooled = _POOL[nd](_pad(src, grid, padding, -math.inf), grid.kernel, grid.stride, 0,
                           grid.dilation)
        for i in range(nd):
            pooled = pooled.narrow(2 + i, 0, grid.out[i])
    return pooled.neg_().sub_(w) if erode else pooled.add_(w)  # in place: pooled is ours


def _offsets(weight: Tensor, grid: _Grid, full: bool) -> list[tuple[int | None, tuple[int, ...]]]:
    """The window order: (input channel or None, kernel offset), channel-major, offsets row-major."""
    channels = range(weight.shape[1]) if full else (None,)
    return list(itertools.product(channels, itertools.product(*map(range, grid.kernel))))


def _shifted(xp: Tensor, grid: _Grid, channel: int | None, offset: tuple[int, ...]) -> Tensor:
    """The (N, C or 1, *out) view of ``xp`` read by SE entry ``offset`` of every window."""
    index: list = [slice(None), slice(None) if channel is None else slice(channel, channel + 1)]
    for i, k in enumerate(offset):
        start = k * grid.dilation[i]
        index.append(slice(start, start + (grid.out[i] - 1) * grid.stride[i] + 1, grid.stride[i]))
    return xp[tuple(index)]


def _channels_last(weight: Tensor) -> Tensor:
    """The SE with its output channels last, ``(*rest, C)``, stored so: each entry is then one
    contiguous vector over the channels. Under torch.compile a stack of the entries, which inductor
    computes as a buffer of its own; ``movedim(0, -1).contiguous()`` would be inlined into the
    window loop as a strided gather per vector of channels (inductor vectorizes over the channels
    of a channels-last activation)."""
    if not torch.compiler.is_compiling():
        return weight.movedim(0, -1).contiguous()
    entries = weight.flatten(1).unbind(1)
    return torch.stack(entries).view(*weight.shape[1:], weight.shape[0])


def _se_entry(se_last: Tensor, channel: int | None, offset: tuple[int, ...], nd: int) -> Tensor:
    """SE entry ``offset`` (of input channel ``channel``, full form) of every output channel,
    shaped to broadcast over (N, C, *out); ``se_last`` is :func:`_channels_last`'s layout."""
    entry = se_last[offset] if channel is None else se_last[(channel, *offset)]
    return entry.view(1, -1, *(1,) * nd)


def _shift_reduce(xp: Tensor, weight: Tensor, grid: _Grid, full: bool, erode: bool,
                  with_argmax: bool) -> tuple[Tensor, Tensor | None]:
    """Shift-and-max: ``max (x + w)`` (``min (x - w)``) over the windows, one SE entry at a time in
    window order, in O(output) memory. A later term replaces the running extreme only when it is
    strictly better, or NaN where the running one is not: the first extreme (the first NaN) wins,
    as ``torch.max`` along a dim. ``argmax``: the window position of the winner (uint8 / int16 /
    int32, the smallest that holds the window)."""
    nd = len(grid.kernel)
    better = torch.lt if erode else torch.gt
    best = arg = best_nan = None
    se_last = _channels_last(weight)
    for j, (channel, offset) in enumerate(_offsets(weight, grid, full)):
        view, entry = _shifted(xp, grid, channel, offset), _se_entry(se_last, channel, offset, nd)
        term = view - entry if erode else view + entry
        if best is None:
            best = term.expand(xp.shape[0], weight.shape[0], *grid.out).contiguous()
            if with_argmax:
                arg = torch.zeros(best.shape, dtype=_index_dtype(weight[0].numel()),
                                  device=best.device)
                best_nan = best != best  # isnan, as below
            continue
        if with_argmax:
            term_nan = term != term
            take = better(term, best) | (term_nan & ~best_nan)
            arg.masked_fill_(take, j)
            best_nan |= term_nan
        else:  # a NaN best stays: nothing compares better than it, and NaN terms replace it by NaN
            take = better(term, best) | (term != term)  # (!= : isnan, which inductor vectorizes)
        best = torch.where(take, term, best)
    return best, arg


def _index_dtype(window: int) -> torch.dtype:
    return torch.uint8 if window <= 256 else torch.int16 if window <= 2**15 else torch.int32


class _ShiftReduce(torch.autograd.Function):
    """:func:`_shift_reduce` with its gradient: each output sends its gradient to its argmax input
    element (padding included, where it is dropped) and SE entry, and nowhere else."""

    @staticmethod
    def forward(ctx, xp: Tensor, weight: Tensor, grid: _Grid, full: bool, erode: bool) -> Tensor:
        best, arg = _shift_reduce(xp, weight, grid, full, erode, with_argmax=True)
        ctx.save_for_backward(arg)
        ctx.info = (xp.shape, weight, grid, full, erode)
        return best

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (arg,) = ctx.saved_tensors
        xp_shape, weight, grid, full, erode = ctx.info
        nd = len(grid.kernel)
        grad_xp = grad.new_zeros(xp_shape) if ctx.needs_input_grad[0] else None
        grad_w = grad.new_zeros(weight.shape) if ctx.needs_input_grad[1] else None
        batch_and_out = (0, *range(2, 2 + nd))
        for j, (channel, offset) in enumerate(_offsets(weight, grid, full)):
            part = torch.where(arg == j, grad, 0.0)  # (N, C_out, *out)
            if grad_xp is not None:
                _shifted(grad_xp, grid, channel, offset).add_(part.sum(1, keepdim=True) if full
                                                               else part)
            if grad_w is not None:
                index = (slice(None), *offset) if channel is None else (slice(None), channel,
                                                                        *offset)
                grad_w[index] = part.sum(batch_and_out)
        if grad_w is not None and erode:
            grad_w = -grad_w
        return grad_xp, grad_w, None, None, None


# ---------------------------------------------------------------------------------------------------
# Modules.


class _Morphology(nn.Module):
    """Shared body of the four modules; subclasses set ``_nd`` and define ``forward``."""

    _nd: int
    tropical_params = ("weight",)  # an SE entry is pruned at -inf (switched off), not at 0

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: IntOrTuple = 3,
                 stride: IntOrTuple = 1, padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                 ceil_mode: bool = False, *, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InputError(f"{name}: {arg} must be an int >= 0, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _as_tuple(name, "kernel_size", kernel_size, self._nd, minimum=1)
        self.stride = _as_tuple(name, "stride", stride, self._nd, minimum=1)
        self.padding = _as_tuple(name, "padding", padding, self._nd, minimum=0)
        self.dilation = _as_tuple(name, "dilation", dilation, self._nd, minimum=1)
        self.ceil_mode = bool(ceil_mode)
        channels = (in_channels,) if out_channels is None else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.empty(*channels, *self.kernel_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A flat SE plus U(-INIT_NOISE, INIT_NOISE) noise from torch's global RNG, to break ties."""
        nn.init.uniform_(self.weight, -INIT_NOISE, INIT_NOISE)

    @classmethod
    def flat(cls, *args, **kwargs) -> "_Morphology":
        """The same module with an all-zero SE: with ``out_channels=None``, a max (min) pooling.
        Draws nothing from torch's global RNG (the noise would be overwritten anyway)."""
        kwargs.setdefault("device", "cpu")
        module = nn.utils.skip_init(cls, *args, **kwargs)  # built on "meta": no random init
        nn.init.zeros_(module.weight)
        return module

    def _args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.ceil_mode

    def extra_repr(self) -> str:
        channels = f"{self.in_channels}" + ("" if self.out_channels is None else f", {self.out_channels}")
        text = f"{channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            text += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        if self.ceil_mode:
            text += ", ceil_mode=True"
        return text


class Dilation1d(_Morphology):
    """Learnable max-plus dilation of (N, C, L) inputs, :func:`dilation1d` with SE ``weight``.

    ``out_channels=None`` gives a per-channel SE (in_channels, k), like pooling; otherwise a full SE
    (out_channels, in_channels, k), like a convolution. ``stride`` defaults to 1, not to the kernel size
    as in pooling: this is a convolution-like layer. The SE starts flat (zeros) plus U(-0.01, 0.01)
    noise from torch's global RNG (``torch.manual_seed`` controls it, as for ``nn.Conv1d``); use
    :meth:`flat` for exact zeros.
    """

    _nd = 1

    def forward(self, x: Tensor) -> Tensor:
        return dilation1d(x, self.weight, *self._args())


class Dilation2d(_Morphology):
    """Learnable max-plus dilation of (N, C, H, W) inputs, :func:`dilation2d` with SE ``weight``.

    ``out_channels=None`` gives a per-channel SE (in_channels, kh, kw), like pooling; otherwise a full
    SE (out_channels, in_channels, kh, kw), like a convolution. ``stride`` defaults to 1, not to the
    kernel size as in pooling: this is a convolution-like layer. The SE starts flat (zeros) plus
    U(-0.01, 0.01) noise from torch's global RNG (``torch.manual_seed`` controls it, as for
    ``nn.Conv2d``); ``Dilation2d.flat(c, kernel_size=k, stride=k)`` is exactly ``nn.MaxPool2d(k)``.
    """

    _nd = 2

    def forward(self, x: Tensor) -> Tensor:
        return dilation2d(x, self.weight, *self._args())


class Erosion1d(_Morphology):
    """Learnable min-plus erosion of (N, C, L) inputs, :func:`erosion1d` with SE ``weight``.

    Arguments and initialization as for :class:`Dilation1d`.
    """

    _nd = 1

    def forward(self, x: Tensor) -> Tensor:
        return erosion1d(x, self.weight, *self._args())


class Erosion2d(_Morphology):
    """Learnable min-plus erosion of (N, C, H, W) inputs, :func:`erosion2d` with SE ``weight``.

    Arguments and initialization as for :class:`Dilation2d`.
    """

    _nd = 2

    def forward(self, x: Tensor) -> Tensor:
        return erosion2d(x, self.weight, *self._args())


# tropfx.trace keeps them as call_module nodes, for passes to rewrite and lower as units; plain
# torch.fx tracing goes through forward and records one wrapped call_function instead.
register_leaf(Dilation1d, Dilation2d, Erosion1d, Erosion2d)


# ---------------------------------------------------------------------------------------------------
# Cost: one (add, max) pair per x + w term -- erosion's (sub, min) pairs count the same. Registered for
# the modules (leaf call_module nodes) and the functions (what tracing through a module records).


def _maxplus_cost(key, args: tuple, kwargs: dict, output: Tensor) -> dict[str, int]:
    weight = key.weight if isinstance(key, nn.Module) else (args[1] if len(args) > 1 else kwargs["weight"])
    return {"maxplus": output.numel() * weight[0].numel()}  # weight[0]: K, or C_in * K when full


for _key in (Dilation1d, Dilation2d, Erosion1d, Erosion2d, dilation1d, dilation2d, erosion1d, erosion2d):
    register_cost(_key)(_maxplus_cost)
