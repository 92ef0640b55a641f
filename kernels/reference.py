"""Pure-torch twins of the ``torch.ops.tropfx`` operators: ``<op>_reference`` takes the op's
arguments and returns what the op returns, and so *defines* it (STYLE.md, point 6).

They are written with the very tensor operations of :mod:`tropfx.nn.functional` and
:mod:`tropfx.nn.morphology` (``x + w`` then ``torch.max`` / ``torch.min`` along a dim: the first
extreme wins, a NaN wins; the same chunking-free broadcasting), so the values are those modules'
bit for bit, and the tests check it. Gradients are the same scatters that autograd performs there,
from a saved argmax. Memory is not a concern here: these run on test-sized inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tropfx.nn.morphology import _out_size

__all__ = [
    "binary_dilation2d_reference",
    "binary_erosion2d_reference",
    "bool_conv2d_reference",
    "dilation2d_backward_reference",
    "dilation2d_reference",
    "erosion2d_backward_reference",
    "erosion2d_reference",
    "maxplus_backward_reference",
    "maxplus_reference",
    "pack_bits_reference",
    "sparse_maxplus_backward_reference",
    "sparse_maxplus_reference",
    "unpack_bits_reference",
]

_NO_ARGMAX = (0,)


def _neg(t: Tensor | None) -> Tensor | None:
    return None if t is None else -t


# --- dense max-plus -----------------------------------------------------------------------------

def maxplus_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, minplus: bool = False,
                      with_argmax: bool = True) -> tuple[Tensor, Tensor]:
    """``tropfx::maxplus``: ``y = max(max_k x[..., k] + weight[o, k], bias[o])`` as
    :func:`tropfx.nn.functional.maxplus` computes it; argmax int32, -1 where the bias wins.
    ``minplus`` computes ``-maxplus(-x, -weight, -bias)``, as :func:`~tropfx.nn.functional.minplus`."""
    if minplus:
        y, arg = maxplus_reference(-x, -weight, _neg(bias), False, with_argmax)
        return -y, arg
    flat = x.reshape(-1, x.shape[-1])
    best, idx = (flat[:, None, :] + weight[None]).max(dim=-1)
    if bias is not None:
        take = bias >= best  # the bias wins ties; a NaN max stays NaN (comparison is False)
        best = torch.where(take, bias.to(best.dtype), best)
        idx = idx.masked_fill(take, -1)
    shape = (*x.shape[:-1], weight.shape[0])
    arg = idx.to(torch.int32).reshape(shape) if with_argmax else idx.new_empty(_NO_ARGMAX, dtype=torch.int32)
    return best.reshape(shape), arg


def maxplus_backward_reference(grad: Tensor, argmax: Tensor, in_features: int, has_bias: bool,
                               minplus: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``tropfx::maxplus_backward``: the scatter of ``grad`` over the argmax, as the backward of
    :func:`tropfx.nn.functional.maxplus` (``scatter_add_`` / ``index_add_``, so the same order)."""
    if minplus:  # autograd through -maxplus(-x, -w, -b)
        gx, gw, gb = maxplus_backward_reference(-grad, argmax, in_features, has_bias, False)
        return -gx, -gw, -gb
    out = grad.shape[-1]
    g2, a2 = grad.reshape(-1, out), argmax.reshape(-1, out).long()
    from_input = a2 >= 0
    idx = a2.clamp_min(0)
    g = torch.where(from_input, g2, 0.0)
    gx = g2.new_zeros(g2.shape[0], in_features).scatter_add_(1, idx, g)
    flat = idx + torch.arange(out, device=idx.device) * in_features
    gw = g2.new_zeros(out * in_features).index_add_(0, flat.flatten(), g.flatten())
    gb = torch.where(from_input, 0.0, g2).sum(0) if has_bias else g2.new_zeros(0)
    return gx.reshape(*grad.shape[:-1], in_features), gw.view(out, in_features), gb


# --- sparse max-plus ----------------------------------------------------------------------------

def sparse_maxplus_reference(x: Tensor, index: Tensor, value: Tensor, bias: Tensor | None = None,
                             dim: int = -1, minplus: bool = False,
                             with_argmax: bool = True) -> tuple[Tensor, Tensor]:
    """``tropfx::sparse_maxplus``: :func:`tropfx.nn.functional.sparse_maxplus`'s computation
    (gather, add, the bias first, ``max``); argmax: the position j in the row, -1 for the bias."""
    if minplus:
        y, arg = sparse_maxplus_reference(-x, index, -value, _neg(bias), dim, False, with_argmax)
        return -y, arg
    moved = x.movedim(dim, -1)
    out, k = index.shape
    gathered = moved.index_select(-1, index.reshape(-1)).unflatten(-1, (out, k)) + value
    if bias is not None:
        first = bias.to(gathered.dtype)[:, None].expand(gathered.shape[:-1] + (1,))
        gathered = torch.cat([first, gathered], dim=-1)
    best, idx = gathered.max(dim=-1)
    if bias is not None:
        idx = idx - 1
    y = best.movedim(-1, dim).contiguous()
    arg = idx.to(torch.int32).movedim(-1, dim).contiguous() if with_argmax \
        else idx.new_empty(_NO_ARGMAX, dtype=torch.int32)
    return y, arg


def sparse_maxplus_backward_reference(grad: Tensor, argmax: Tensor, index: Tensor, in_features: int,
                                      dim: int, has_bias: bool,
                                      minplus: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``tropfx::sparse_maxplus_backward``: what autograd does through
    :func:`tropfx.nn.functional.sparse_maxplus` (grad_x by ``index_add_``, in the same order)."""
    if minplus:
        gx, gv, gb = sparse_maxplus_backward_reference(-grad, argmax, index, in_features, dim,
                                                       has_bias, False)
        return -gx, -gv, -gb
    out, k = index.shape
    g, a = grad.movedim(dim, -1), argmax.movedim(dim, -1).long()
    from_input = a >= 0
    terms = torch.zeros(*g.shape, k, dtype=g.dtype, device=g.device)
    terms.scatter_(-1, a.clamp_min(0)[..., None], torch.where(from_input, g, 0.0)[..., None])
    gv = terms.reshape(-1, out, k).sum(0)
    gb = torch.where(from_input, 0.0, g).reshape(-1, out).sum(0) if has_bias else g.new_zeros(0)
    gx = g.new_zeros(*g.shape[:-1], in_features).index_add_(-1, index.reshape(-1), terms.flatten(-2))
    return gx.movedim(-1, dim), gv, gb


# --- morphology ---------------------------------------------------------------------------------

def _out(x: Tensor, weight: Tensor, stride, padding, dilation, ceil_mode: bool) -> list[int]:
    return [_out_size(x.shape[2 + i], weight.shape[-2 + i], stride[i], padding[i], dilation[i],
                      ceil_mode) for i in range(2)]


def _terms(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
           dilation: Sequence[int], out: Sequence[int], erode: bool) -> Tensor:
    """(N, O, Ho, Wo, window) terms ``x + w`` (``x - w``), windows padded with -inf (+inf) and
    flattened channel-major then kernel row-major, as tropfx.nn.morphology's."""
    full = weight.dim() == 4
    kernel = tuple(weight.shape[-2:])
    sizes = tuple(x.shape[2:])
    spans = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    pads = []
    for i in (1, 0):
        needed = (out[i] - 1) * stride[i] + spans[i]
        pads += [padding[i], max(needed - sizes[i] - padding[i], 0)]
    xp = F.pad(x, pads, value=math.inf if erode else -math.inf)
    for i in range(2):
        xp = xp.unfold(2 + i, spans[i], stride[i])[..., ::dilation[i]].narrow(2 + i, 0, out[i])
    if full:  # (N, C, Ho, Wo, kh, kw) -> (N, 1, Ho, Wo, C * K)
        windows = xp.movedim(1, 3).flatten(3).unsqueeze(1)
    else:
        windows = xp.flatten(4)
    se = weight.reshape(weight.shape[0], 1, 1, -1)
    return windows - se if erode else windows + se


def _morph(x, weight, stride, padding, dilation, ceil_mode, with_argmax, erode):
    out = _out(x, weight, stride, padding, dilation, ceil_mode)
    terms = _terms(x, weight, stride, padding, dilation, out, erode)
    best, idx = (torch.min if erode else torch.max)(terms, dim=-1)
    arg = idx.to(torch.int32) if with_argmax else idx.new_empty(_NO_ARGMAX, dtype=torch.int32)
    return best, arg


def _morph_backward(grad, argmax, input_size, weight_size, stride, padding, dilation, erode):
    # The gradient does not depend on the values: autograd through the terms of zero tensors,
    # selecting the argmax term, is the reference's own backward (padding drops its share).
    with torch.enable_grad():
        x = grad.new_zeros(input_size, requires_grad=True)
        w = grad.new_zeros(weight_size, requires_grad=True)
        terms = _terms(x, w, stride, padding, dilation, grad.shape[2:], erode)
        chosen = terms.gather(-1, argmax.long()[..., None]).squeeze(-1)
        gx, gw = torch.autograd.grad(chosen, (x, w), grad)
    return gx, gw


def dilation2d_reference(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], ceil_mode: bool = False,
                         with_argmax: bool = True) -> tuple[Tensor, Tensor]:
    """``tropfx::dilation2d``: :func:`tropfx.nn.morphology.dilation2d` (unchunked); argmax: the
    window position ``(c * kh + ki) * kw + kj`` of the first maximum (c = 0 per channel)."""
    return _morph(x, weight, stride, padding, dilation, ceil_mode, with_argmax, False)


def erosion2d_reference(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int], ceil_mode: bool = False,
                        with_argmax: bool = True) -> tuple[Tensor, Tensor]:
    """``tropfx::erosion2d``: :func:`tropfx.nn.morphology.erosion2d` (min of ``x - w``)."""
    return _morph(x, weight, stride, padding, dilation, ceil_mode, with_argmax, True)


def dilation2d_backward_reference(grad: Tensor, argmax: Tensor, input_size: Sequence[int],
                                  weight_size: Sequence[int], stride: Sequence[int],
                                  padding: Sequence[int], dilation: Sequence[int]
                                  ) -> tuple[Tensor, Tensor]:
    """``tropfx::dilation2d_backward``: grad to the argmax input element (not padding) and SE entry."""
    return _morph_backward(grad, argmax, input_size, weight_size, stride, padding, dilation, False)


def erosion2d_backward_reference(grad: Tensor, argmax: Tensor, input_size: Sequence[int],
                                 weight_size: Sequence[int], stride: Sequence[int],
                                 padding: Sequence[int], dilation: Sequence[int]
                                 ) -> tuple[Tensor, Tensor]:
    """``tropfx::erosion2d_backward``: as dilation's; the SE entry gets ``-grad`` (``x - w``)."""
    return _morph_backward(grad, argmax, input_size, weight_size, stride, padding, dilation, True)


# --- bit-packed boolean operators ---------------------------------------------------------------

_SHIFTS = torch.arange(64, dtype=torch.int64)


def pack_bits_reference(x: Tensor) -> Tensor:
    """``tropfx::pack_bits``: (N, C, H, W), nonzero = 1 -> (N, H, W, ceil(C / 64)) uint64; channel c
    is bit c % 64 of word c // 64, bits past C are 0."""
    n, c, h, w = x.shape
    words = -(-c // 64)
    bits = (x != 0).permute(0, 2, 3, 1).to(torch.int64)
    bits = F.pad(bits, (0, words * 64 - c)).reshape(n, h, w, words, 64)
    # Disjoint bits: the int64 sum is their OR, bit 63 included (two's complement).
    return (bits << _SHIFTS.to(x.device)).sum(-1).view(torch.uint64)


def unpack_bits_reference(packed: Tensor, channels: int, dtype: torch.dtype | None = None) -> Tensor:
    """``tropfx::unpack_bits``: the inverse of :func:`pack_bits_reference`, 0 / 1 in ``dtype``
    (default float32)."""
    words = packed.view(torch.int64)
    bits = (words[..., None] >> _SHIFTS.to(packed.device)) & 1
    bits = bits.flatten(-2)[..., :channels].permute(0, 3, 1, 2)
    return bits.to(dtype or torch.float32).contiguous()


def _planes(planes: Tensor) -> Tensor:
    """Bit planes (O, kh, kw, P, Cw) -> the integer weight sum_p 2^p plane_p, (O, Cw * 64, kh, kw)."""
    o, kh, kw, p, cw = planes.shape
    total = torch.zeros(o, cw * 64, kh, kw, dtype=torch.float64, device=planes.device)
    for b in range(p):
        total += 2.0 ** b * unpack_bits_reference(planes[:, :, :, b].contiguous(), cw * 64,
                                                  torch.float64)
    return total


def bool_conv2d_reference(x: Tensor, weight_pos: Tensor, weight_neg: Tensor, threshold: Tensor,
                          stride: Sequence[int], padding: Sequence[int],
                          dilation: Sequence[int]) -> Tensor:
    """``tropfx::bool_conv2d``: ``1[conv2d(x, W) >= threshold]`` in float64 (exact for these
    integer sums), W from its bit planes, zero padding; packed in, packed out."""
    xf = unpack_bits_reference(x, x.shape[-1] * 64, torch.float64)
    weight = _planes(weight_pos) - _planes(weight_neg)
    s = F.conv2d(xf, weight, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))
    return pack_bits_reference(s >= threshold.to(torch.float64)[:, None, None])


def _bit_windows(x: Tensor, se: Tensor, stride, padding, dilation, fill: int) -> Tensor:
    xb = unpack_bits_reference(x, se.shape[0], torch.uint8)
    xb = F.pad(xb, (padding[1], padding[1], padding[0], padding[0]), value=fill).bool()
    for i in range(2):
        span = dilation[i] * (se.shape[1 + i] - 1) + 1
        xb = xb.unfold(2 + i, span, stride[i])[..., ::dilation[i]]
    return xb  # (N, C, Ho, Wo, kh, kw)


def binary_dilation2d_reference(x: Tensor, se: Tensor, stride: Sequence[int], padding: Sequence[int],
                                dilation: Sequence[int]) -> Tensor:
    """``tropfx::binary_dilation2d``: ``y[c] = OR over s in se[c] of x[c] shifted by s``, padding 0."""
    windows = _bit_windows(x, se, stride, padding, dilation, 0)
    return pack_bits_reference((windows & se[None, :, None, None]).flatten(-2).any(-1))


def binary_erosion2d_reference(x: Tensor, se: Tensor, stride: Sequence[int], padding: Sequence[int],
                               dilation: Sequence[int]) -> Tensor:
    """``tropfx::binary_erosion2d``: ``y[c] = AND over s in se[c] of x[c] shifted by s``, padding 1."""
    windows = _bit_windows(x, se, stride, padding, dilation, 1)
    return pack_bits_reference((windows | ~se[None, :, None, None]).flatten(-2).all(-1))
