"""``torch.ops.tropfx.*`` from Python: typed wrappers, fake implementations and autograd formulas.

The wrappers have the signatures of the reference functions they replace -- ``maxplus(x, weight,
bias)`` is :func:`tropfx.nn.functional.maxplus`, ``dilation2d(x, weight, stride, ...)`` is
:func:`tropfx.nn.morphology.dilation2d` -- and return the same values bit for bit, and the same
gradients. They call the compiled operator on CPU tensors, and fall back to those reference
functions where the kernels cannot be built (one warning) or the tensors live elsewhere. The
argmax that a backward pass needs is computed only when autograd will need it.

The fake implementations (shapes only) make the operators traceable by ``torch.compile`` and
``torch.export``; the autograd formulas call the ``*_backward`` operators, scatters over the saved
argmax. Both are registered when the compiled library is loaded (:func:`tropfx.kernels.load`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tropfx.errors import InputError
from tropfx.kernels import _build
from tropfx.kernels import reference as R
from tropfx.measure import register_cost
from tropfx.nn import functional as TF
from tropfx.nn import morphology as TM
from tropfx.serialize import register_serializable

__all__ = [
    "binary_dilation2d",
    "binary_erosion2d",
    "bool_conv2d",
    "dilation1d",
    "dilation2d",
    "erosion1d",
    "erosion2d",
    "maxplus",
    "minplus",
    "output_cache",
    "pack_bits",
    "pack_conv_weight",
    "sparse_maxplus",
    "sparse_minplus",
    "unpack_bits",
]

IntOrPair = int | Sequence[int]


def _kernels(*tensors: Tensor | None) -> bool:
    """Whether to call the compiled operators: the CPU library is built and either every tensor
    is on the CPU, or every tensor is on CUDA, float32, and the CUDA library loads
    (:func:`tropfx.kernels.cuda_build.load_cuda`; otherwise the reference runs there)."""
    devices = {t.device.type for t in tensors if t is not None}
    if devices == {"cuda"}:
        from tropfx.kernels import cuda_build

        return (_build.available() and cuda_build.load_cuda()
                and all(not t.is_floating_point() or t.dtype == torch.float32
                        for t in tensors if t is not None))
    if devices - {"cpu"}:
        return False
    return _build.available()


def _grad_needed(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --- dense and sparse max-plus ------------------------------------------------------------------

def _check_dense(name: str, x: Tensor, weight: Tensor) -> None:
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise InputError(f"{name}: x (..., {x.shape[-1] if x.dim() else '?'}) does not fit weight "
                         f"{tuple(weight.shape)} (out, in)")


def maxplus(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
            chunk_elements: int | None = None) -> Tensor:
    """Dense max-plus product ``y_o = max(max_i (x_i + W_oi), b_o)`` over the last dim: the kernel
    twin of :func:`tropfx.nn.functional.maxplus` (float32 / float64). ``chunk_elements`` is accepted
    for the same signature: the kernel never materializes the ``B x out x in`` terms."""
    _check_dense("maxplus", x, weight)
    if not _kernels(x, weight, bias):
        return TF.maxplus(x, weight, bias, **_chunk(chunk_elements))
    return torch.ops.tropfx.maxplus(x, weight, bias, False, _grad_needed(x, weight, bias))[0]


def minplus(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
            chunk_elements: int | None = None) -> Tensor:
    """Min-plus dual ``y_o = min(min_i (x_i + W_oi), b_o)``, twin of
    :func:`tropfx.nn.functional.minplus` (computed as ``-maxplus(-x, -W, -b)``, like it)."""
    _check_dense("minplus", x, weight)
    if not _kernels(x, weight, bias):
        return TF.minplus(x, weight, bias, **_chunk(chunk_elements))
    return torch.ops.tropfx.maxplus(x, weight, bias, True, _grad_needed(x, weight, bias))[0]


def sparse_maxplus(x: Tensor, index: Tensor, value: Tensor, bias: Tensor | None = None, *,
                   dim: int = -1, inplace: bool = False) -> Tensor:
    """Sparse max-plus product along ``dim``, ``y_o = max(max_j (x_{index[o, j]} + value[o, j]), b_o)``:
    twin of :func:`tropfx.nn.functional.sparse_maxplus` (``inplace`` is accepted for the same
    signature; the kernel writes a new output)."""
    if not _kernels(x, index, value, bias):
        return TF.sparse_maxplus(x, index, value, bias, dim=dim, inplace=inplace)
    return torch.ops.tropfx.sparse_maxplus(x, index, value, bias, dim, False,
                                           _grad_needed(x, value, bias))[0]


def sparse_minplus(x: Tensor, index: Tensor, value: Tensor, bias: Tensor | None = None, *,
                   dim: int = -1) -> Tensor:
    """Min-plus dual of :func:`sparse_maxplus`: twin of :func:`tropfx.nn.functional.sparse_minplus`."""
    if not _kernels(x, index, value, bias):
        return TF.sparse_minplus(x, index, value, bias, dim=dim)
    return torch.ops.tropfx.sparse_maxplus(x, index, value, bias, dim, True,
                                           _grad_needed(x, value, bias))[0]


# --- morphology ---------------------------------------------------------------------------------

def _morph2d(name: str, x: Tensor, weight: Tensor, stride: IntOrPair, padding: IntOrPair,
             dilation: IntOrPair, ceil_mode: bool) -> Tensor:
    stride = TM._as_tuple(name, "stride", stride, 2, minimum=1)
    padding = TM._as_tuple(name, "padding", padding, 2, minimum=0)
    dilation = TM._as_tuple(name, "dilation", dilation, 2, minimum=1)
    if x.dim() != 4 or weight.dim() not in (3, 4):
        raise InputError(f"{name}: x must be (N, C, H, W) and weight (C, kh, kw) or (C_out, C_in, "
                         f"kh, kw); got {tuple(x.shape)} and {tuple(weight.shape)}")
    op = getattr(torch.ops.tropfx, name)
    return op(x, weight, stride, padding, dilation, bool(ceil_mode), _grad_needed(x, weight))[0]


def dilation2d(x: Tensor, weight: Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
               dilation: IntOrPair = 1, ceil_mode: bool = False, *,
               chunk_elements: int | None = None) -> Tensor:
    """Max-plus dilation of (N, C, H, W) by a (C, kh, kw) or (C_out, C, kh, kw) SE: twin of
    :func:`tropfx.nn.morphology.dilation2d` (``chunk_elements`` is accepted for the same signature;
    the kernel never materializes windows, its memory is that of the output)."""
    if not _morph_kernels(x, weight, 2):
        return TM.dilation2d(x, weight, stride, padding, dilation, ceil_mode,
                             **_chunk(chunk_elements))
    return _morph2d("dilation2d", x, weight, stride, padding, dilation, ceil_mode)


def erosion2d(x: Tensor, weight: Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
              dilation: IntOrPair = 1, ceil_mode: bool = False, *,
              chunk_elements: int | None = None) -> Tensor:
    """Min-plus erosion (min of ``x - w``): twin of :func:`tropfx.nn.morphology.erosion2d`."""
    if not _morph_kernels(x, weight, 2):
        return TM.erosion2d(x, weight, stride, padding, dilation, ceil_mode, **_chunk(chunk_elements))
    return _morph2d("erosion2d", x, weight, stride, padding, dilation, ceil_mode)


def _morph_kernels(x: Tensor, weight: Tensor, nd: int) -> bool:
    """Whether a morphology calls the compiled operator. Not while torch.compile traces a
    per-channel SE: there the reference's shift-and-max is traced, which inductor fuses into one
    window loop over the producer's output in its layout (as it does its own max pooling), where
    the operator is an opaque call; values and gradients are the same (max is exact). A full SE
    keeps the operator (its shift-and-max unrolls C_in x kernel terms), and so does torch.export."""
    if (torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and isinstance(weight, Tensor) and weight.dim() == nd + 1):
        return False
    return _kernels(x, weight)


def _as_2d(name: str, x: Tensor, weight: Tensor, stride, padding, dilation):
    """A 1-D morphology as the 2-D one with a height-1 kernel: the same windows, in the same order."""
    if x.dim() != 3 or weight.dim() not in (2, 3):
        raise InputError(f"{name}: x must be (N, C, L) and weight (C, k) or (C_out, C_in, k); got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    pairs = [(1, *TM._as_tuple(name, arg, v, 1, minimum=m))
             for arg, v, m in (("stride", stride, 1), ("padding", padding, 0),
                               ("dilation", dilation, 1))]
    pairs[1] = (0, pairs[1][1])
    return x.unsqueeze(2), weight.unsqueeze(-2), *pairs


def dilation1d(x: Tensor, weight: Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
               dilation: IntOrPair = 1, ceil_mode: bool = False, *,
               chunk_elements: int | None = None) -> Tensor:
    """Max-plus dilation of (N, C, L) by a (C, k) or (C_out, C, k) SE: twin of
    :func:`tropfx.nn.morphology.dilation1d`."""
    if not _morph_kernels(x, weight, 1):
        return TM.dilation1d(x, weight, stride, padding, dilation, ceil_mode,
                             **_chunk(chunk_elements))
    x2, w2, s, p, d = _as_2d("dilation1d", x, weight, stride, padding, dilation)
    return _morph2d("dilation2d", x2, w2, s, p, d, ceil_mode).squeeze(2)


def erosion1d(x: Tensor, weight: Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
              dilation: IntOrPair = 1, ceil_mode: bool = False, *,
              chunk_elements: int | None = None) -> Tensor:
    """Min-plus erosion of (N, C, L): twin of :func:`tropfx.nn.morphology.erosion1d`."""
    if not _morph_kernels(x, weight, 1):
        return TM.erosion1d(x, weight, stride, padding, dilation, ceil_mode, **_chunk(chunk_elements))
    x2, w2, s, p, d = _as_2d("erosion1d", x, weight, stride, padding, dilation)
    return _morph2d("erosion2d", x2, w2, s, p, d, ceil_mode).squeeze(2)


def _chunk(chunk_elements: int | None) -> dict:
    return {} if chunk_elements is None else {"chunk_elements": chunk_elements}


# --- bit-packed boolean operators ---------------------------------------------------------------

def pack_bits(x: Tensor) -> Tensor:
    """(N, C, H, W), nonzero = 1 -> (N, H, W, ceil(C / 64)) uint64 words; channel c is bit c % 64
    of word c // 64 and the bits past C are 0."""
    if not _kernels(x):
        return R.pack_bits_reference(x)
    return torch.ops.tropfx.pack_bits(x)


def unpack_bits(packed: Tensor, channels: int, dtype: torch.dtype | None = None) -> Tensor:
    """The inverse of :func:`pack_bits`: (N, channels, H, W) of 0 / 1 in ``dtype`` (float32)."""
    if not _kernels(packed):
        return R.unpack_bits_reference(packed, channels, dtype)
    return torch.ops.tropfx.unpack_bits(packed, channels, dtype)


def pack_conv_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Bit planes ``(weight_pos, weight_neg)``, each (O, kh, kw, planes, ceil(C / 64)) uint64, of an
    integer weight (O, C, kh, kw): ``W = sum_b 2^b pos_b - sum_b 2^b neg_b``. A {0, 1} weight is one
    positive plane and no negative one: 1 bit per weight, 32x smaller than float32."""
    if weight.dim() != 4 or weight.is_floating_point() and not torch.equal(weight, weight.round()):
        raise InputError(f"pack_conv_weight: weight must hold integers (O, C, kh, kw), got "
                         f"{weight.dtype} {tuple(weight.shape)}")
    w = weight.to(torch.int64)

    def planes(part: Tensor) -> Tensor:
        bits = int(part.max()).bit_length() if part.numel() else 0
        o, c, kh, kw = part.shape
        if bits == 0:
            return torch.zeros(o, kh, kw, 0, -(-c // 64), dtype=torch.uint64, device=part.device)
        return torch.stack([pack_bits((part >> b) & 1) for b in range(bits)], dim=3)

    return planes(w.clamp_min(0)), planes((-w).clamp_min(0))


def _window(name: str, stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair) -> tuple:
    """``(stride, padding, dilation)`` as checked pairs (stride, dilation >= 1; padding >= 0)."""
    return tuple(TM._as_tuple(name, arg, value, 2, minimum=minimum)
                 for arg, value, minimum in (("stride", stride, 1), ("padding", padding, 0),
                                             ("dilation", dilation, 1)))


def bool_conv2d(x: Tensor, weight_pos: Tensor, weight_neg: Tensor, threshold: Tensor,
                stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1) -> Tensor:
    """Boolean convolution on packed bits: ``y = 1[conv2d(x, W) >= threshold]`` with zero padding,
    ``x`` from :func:`pack_bits`, ``W`` from :func:`pack_conv_weight`; returns packed bits."""
    args = _window("bool_conv2d", stride, padding, dilation)
    if not _kernels(x):
        return R.bool_conv2d_reference(x, weight_pos, weight_neg, threshold, *args)
    return torch.ops.tropfx.bool_conv2d(x, weight_pos, weight_neg, threshold, *args)


def binary_dilation2d(x: Tensor, se: Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
                      dilation: IntOrPair = 1) -> Tensor:
    """Binary dilation of packed bits by a per-channel bool SE (C, kh, kw): OR of shifted bit
    planes, padding 0."""
    args = _window("binary_dilation2d", stride, padding, dilation)
    if not _kernels(x):
        return R.binary_dilation2d_reference(x, se, *args)
    return torch.ops.tropfx.binary_dilation2d(x, se, *args)


def binary_erosion2d(x: Tensor, se: Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
                     dilation: IntOrPair = 1) -> Tensor:
    """Binary erosion of packed bits by a per-channel bool SE (C, kh, kw): AND of shifted bit
    planes, padding 1."""
    args = _window("binary_erosion2d", stride, padding, dilation)
    if not _kernels(x):
        return R.binary_erosion2d_reference(x, se, *args)
    return torch.ops.tropfx.binary_erosion2d(x, se, *args)


def output_cache(limit_bytes: int | None = None, *, clear: bool = False) -> dict[str, int]:
    """The CPU operators' cache of output buffers (``kernels/csrc/output_cache.h``).

    torch's CPU allocator (glibc) gives large blocks back to the system when their tensors die,
    so a new output of that size starts on fresh pages, which the system zeroes on first touch:
    for a bandwidth-bound operator that costs more than the operator itself, and after other code
    frees large tensors (a float conv2d, say) mid-size outputs pay it too. The operators therefore
    take their outputs of >= 16 KiB from a cache of freed blocks (the smallest that fits, if it is
    at most 1/8 larger than the request), as torch's CUDA caching allocator does on the GPU.

    ``limit_bytes`` sets how many idle bytes the cache may hold (default 512 MiB, or
    ``$TROPFX_OUTPUT_CACHE_MIB``; 0 turns it off); blocks past the limit go back to the system,
    oldest first. ``clear=True`` releases every idle block (as ``torch.cuda.empty_cache``).
    Returns ``limit``, ``cached_bytes``, ``cached_blocks`` and the ``hits`` / ``misses`` of the
    requests of >= 16 KiB so far. Without the compiled kernels there is no cache: all zeros.
    """
    if limit_bytes is not None and limit_bytes < 0:
        raise InputError(f"output_cache: limit_bytes must be >= 0 (0 turns the cache off), got "
                         f"{limit_bytes}")
    if not _build.available():
        return dict.fromkeys(("limit", "cached_bytes", "cached_blocks", "hits", "misses"), 0)
    limit, cached, blocks, hits, misses = torch.ops.tropfx._output_cache(
        -1 if limit_bytes is None else int(limit_bytes), clear)
    return {"limit": limit, "cached_bytes": cached, "cached_blocks": blocks, "hits": hits,
            "misses": misses}


# The wrappers are opaque to torch.fx (one call_function node each, as the functions they replace)
for _name in ("maxplus", "minplus", "sparse_maxplus", "sparse_minplus", "dilation1d", "dilation2d",
              "erosion1d", "erosion2d"):
    torch.fx.wrap(_name)


# --- cost counters: the lowered graph reports the same max-plus counts as the reference's -------

@register_cost(maxplus)
@register_cost(minplus)
def _dense_cost(fn, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return {"maxplus": out.numel() * (weight.shape[1] + (bias is not None))}


@register_cost(sparse_maxplus)
@register_cost(sparse_minplus)
def _sparse_cost(fn, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    index = args[1] if len(args) > 1 else kwargs["index"]
    bias = args[3] if len(args) > 3 else kwargs.get("bias")
    return {"maxplus": out.numel() * (index.shape[1] + (bias is not None))}


def _morph_cost(fn, args: tuple, kwargs: dict, out: Tensor) -> dict[str, int]:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return {"maxplus": out.numel() * weight[0].numel()}


for _fn in (dilation1d, dilation2d, erosion1d, erosion2d):
    register_cost(_fn)(_morph_cost)


# --- fake implementations and autograd, registered once the library is loaded ------------------

def _check_float(op: str, x: Tensor) -> None:
    torch._check(x.dtype in (torch.float32, torch.float64),
                 lambda: f"tropfx::{op}: x is {x.dtype}; the kernels support float32 and float64 "
                         "(convert with .float(), or use the reference in tropfx.nn)")


def _argmax_like(x: Tensor, shape, with_argmax: bool) -> Tensor:
    return x.new_empty(shape if with_argmax else (0,), dtype=torch.int32)


def _maxplus_fake(x, weight, bias, minplus=False, with_argmax=True):
    _check_float("maxplus", x)
    torch._check(weight.dim() == 2 and x.shape[-1] == weight.shape[1],
                 lambda: f"tropfx::maxplus: x {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    shape = (*x.shape[:-1], weight.shape[0])
    return x.new_empty(shape), _argmax_like(x, shape, with_argmax)


def _maxplus_backward_fake(grad, argmax, in_features, has_bias, minplus):
    out = grad.shape[-1]
    return (grad.new_empty((*grad.shape[:-1], in_features)), grad.new_empty((out, in_features)),
            grad.new_empty((out if has_bias else 0,)))


def _sparse_fake(x, index, value, bias, dim=-1, minplus=False, with_argmax=True):
    _check_float("sparse_maxplus", x)
    shape = list(x.shape)
    shape[dim % x.dim()] = index.shape[0]
    return x.new_empty(shape), _argmax_like(x, shape, with_argmax)


def _sparse_backward_fake(grad, argmax, index, in_features, dim, has_bias, minplus):
    shape = list(grad.shape)
    shape[dim % grad.dim()] = in_features
    return (grad.new_empty(shape), grad.new_empty(tuple(index.shape)),
            grad.new_empty((index.shape[0] if has_bias else 0,)))


def _morph_fake(x, weight, stride, padding, dilation, ceil_mode=False, with_argmax=True):
    _check_float("dilation2d", x)
    out = [TM._out_size(x.shape[2 + i], weight.shape[-2 + i], stride[i], padding[i], dilation[i],
                        ceil_mode) for i in range(2)]
    channels = weight.shape[0] if weight.dim() == 4 else x.shape[1]
    shape = (x.shape[0], channels, *out)
    return x.new_empty(shape), _argmax_like(x, shape, with_argmax)


def _morph_backward_fake(grad, argmax, input_size, weight_size, stride, padding, dilation):
    return grad.new_empty(input_size), grad.new_empty(weight_size)


def _conv_out(size, kernel: int, stride: int, padding: int, dilation: int):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pack_bits_fake(x):
    n, c, h, w = x.shape
    return x.new_empty((n, h, w, (c + 63) // 64), dtype=torch.uint64)


def _unpack_bits_fake(packed, channels, dtype=None):
    n, h, w, _ = packed.shape
    return packed.new_empty((n, channels, h, w), dtype=dtype or torch.float32)


def _bool_conv2d_fake(x, weight_pos, weight_neg, threshold, stride, padding, dilation):
    n, h, w, _ = x.shape
    o, kh, kw = weight_pos.shape[:3]
    return x.new_empty((n, _conv_out(h, kh, stride[0], padding[0], dilation[0]),
                        _conv_out(w, kw, stride[1], padding[1], dilation[1]), (o + 63) // 64))


def _bit_morph_fake(x, se, stride, padding, dilation):
    n, h, w, cw = x.shape
    return x.new_empty((n, _conv_out(h, se.shape[1], stride[0], padding[0], dilation[0]),
                        _conv_out(w, se.shape[2], stride[1], padding[1], dilation[1]), cw))


def _no_argmax(op: str) -> RuntimeError:
    return RuntimeError(f"tropfx::{op} ran with with_argmax=False, which keeps no argmax, so it has no "
                        "gradient; call it with with_argmax=True (the Python wrappers decide this "
                        "from requires_grad and torch.is_grad_enabled())")


def _maxplus_setup(ctx, inputs, output):
    x, _, bias, minplus, with_argmax = inputs
    ctx.save_for_backward(output[1])
    ctx.info = (x.shape[-1], bias is not None, minplus, with_argmax)


def _maxplus_backward(ctx, grad, _grad_argmax):
    (argmax,) = ctx.saved_tensors
    in_features, has_bias, minplus, with_argmax = ctx.info
    if not with_argmax:
        raise _no_argmax("maxplus")
    gx, gw, gb = torch.ops.tropfx.maxplus_backward(grad, argmax, in_features, has_bias, minplus)
    return gx, gw, gb if has_bias else None, None, None


def _sparse_setup(ctx, inputs, output):
    x, index, _, bias, dim, minplus, with_argmax = inputs
    ctx.save_for_backward(output[1], index)
    ctx.info = (x.shape[dim % x.dim()], dim, bias is not None, minplus, with_argmax)


def _sparse_backward(ctx, grad, _grad_argmax):
    argmax, index = ctx.saved_tensors
    in_features, dim, has_bias, minplus, with_argmax = ctx.info
    if not with_argmax:
        raise _no_argmax("sparse_maxplus")
    gx, gv, gb = torch.ops.tropfx.sparse_maxplus_backward(grad, argmax, index, in_features, dim,
                                                          has_bias, minplus)
    return gx, None, gv, gb if has_bias else None, None, None, None


def _morph_autograd(name: str):
    def setup(ctx, inputs, output):
        x, weight, stride, padding, dilation, _, with_argmax = inputs
        ctx.save_for_backward(output[1])
        ctx.info = (x.shape, weight.shape, stride, padding, dilation, with_argmax)

    def backward(ctx, grad, _grad_argmax):
        (argmax,) = ctx.saved_tensors
        x_shape, w_shape, stride, padding, dilation, with_argmax = ctx.info
        if not with_argmax:
            raise _no_argmax(name)
        op = getattr(torch.ops.tropfx, f"{name}_backward")
        gx, gw = op(grad, argmax, x_shape, w_shape, stride, padding, dilation)
        return gx, gw, None, None, None, None, None

    return backward, setup


_FAKES = {
    "maxplus": _maxplus_fake,
    "maxplus_backward": _maxplus_backward_fake,
    "sparse_maxplus": _sparse_fake,
    "sparse_maxplus_backward": _sparse_backward_fake,
    "dilation2d": _morph_fake,
    "erosion2d": _morph_fake,
    "dilation2d_backward": _morph_backward_fake,
    "erosion2d_backward": _morph_backward_fake,
    "pack_bits": _pack_bits_fake,
    "unpack_bits": _unpack_bits_fake,
    "bool_conv2d": _bool_conv2d_fake,
    "binary_dilation2d": _bit_morph_fake,
    "binary_erosion2d": _bit_morph_fake,
}
OPS = tuple(_FAKES)  # every operator of the library
_REGISTERED: list[bool] = []


def _register() -> None:
    """Register the fake implementations and autograd formulas (once; the library is loaded)."""
    if _REGISTERED:
        return
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"tropfx::{name}")(fake)
    torch.library.register_autograd("tropfx::maxplus", _maxplus_backward, setup_context=_maxplus_setup)
    torch.library.register_autograd("tropfx::sparse_maxplus", _sparse_backward,
                                    setup_context=_sparse_setup)
    for name in ("dilation2d", "erosion2d"):
        backward, setup = _morph_autograd(name)
        torch.library.register_autograd(f"tropfx::{name}", backward, setup_context=setup)
    # The layers' autocast policy (tropfx.nn.functional.autocast_float32): compute in float32.
    for name in ("maxplus", "sparse_maxplus", "dilation2d", "erosion2d"):
        for device in ("cpu", "cuda"):
            torch.library.register_autocast(f"tropfx::{name}", device, torch.float32)
    _REGISTERED.append(True)


# A lowered graph calls these wrappers: tropfx.save / tropfx.load store them by name.
for _name in __all__:
    if _name != "output_cache":  # process state (the cache's limit), never a graph's call
        register_serializable(globals()[_name])
