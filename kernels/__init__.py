"""Hand-written kernels registered as ``torch.ops.tropfx.*`` (C++ on CPU, CUDA on GPU).

Every operator has a pure-torch twin, ``tropfx.kernels.reference.<op>_reference``, that defines its
semantics -- those of :mod:`tropfx.nn.functional` and :mod:`tropfx.nn.morphology`, bit for bit --
and a typed Python wrapper with the signature of the function it replaces:

==============================  =====================================================================
wrapper                         operators
==============================  =====================================================================
``maxplus``, ``minplus``        ``tropfx::maxplus`` (values and int32 argmax), ``maxplus_backward``
``sparse_maxplus`` / ``minplus``  ``tropfx::sparse_maxplus``, ``sparse_maxplus_backward``
``dilation1d/2d``,              ``tropfx::dilation2d``, ``erosion2d`` (per-channel or C_in -> C_out SE),
``erosion1d/2d``                ``dilation2d_backward``, ``erosion2d_backward``
``pack_bits``, ``unpack_bits``  ``tropfx::pack_bits``, ``unpack_bits`` (channels into uint64 words)
``bool_conv2d``                 ``tropfx::bool_conv2d``: ``1[conv2d(x, W) >= t]``; stride 1:
                                bit-sliced carry-save counts, else AND + popcount
``binary_dilation2d/erosion2d`` ``tropfx::binary_dilation2d``, ``binary_erosion2d``: OR / AND of
                                shifted bit planes (padding 0 for dilation, 1 for erosion)
==============================  =====================================================================

Every operator checks its arguments with one contract shared by the CPU and CUDA bindings
(``kernels/csrc/contract.h``), including the values of its index / argmax arguments: an out-of-range
one is an ``IndexError`` naming the operator and the value, never a crash or a write out of bounds.

The library is compiled just in time, on first use, by ``torch.utils.cpp_extension`` (ninja) into
``$TROPFX_CACHE`` (``~/.cache/tropfx``; ``tropfx kernels build`` prebuilds, ``tropfx kernels info``
shows it), with fixed floating-point flags (no fast-math, :class:`KernelFlagsError` for extra flags
that would add it): ``import tropfx`` compiles nothing. Without a compiler the
wrappers run the reference and one :class:`KernelBuildWarning` says why. Float32 and float64 are
supported; float16 / bfloat16 are rejected with an error that says so. On CUDA tensors the
wrappers call the CUDA kernels in ``kernels/cuda`` (float32; built just in time by
:func:`tropfx.kernels.cuda_build.load_cuda` where torch has CUDA), else the reference.
:func:`tropfx.passes.lower_kernels` rewrites a graph's max-plus and morphological nodes into calls
of these wrappers.
"""

from tropfx.kernels._build import (
    KernelBuildWarning,
    KernelFlagsError,
    available,
    build_info,
    cache_dir,
    load,
)
from tropfx.kernels.ops import (
    OPS,
    binary_dilation2d,
    binary_erosion2d,
    bool_conv2d,
    dilation1d,
    dilation2d,
    erosion1d,
    erosion2d,
    maxplus,
    minplus,
    output_cache,
    pack_bits,
    pack_conv_weight,
    sparse_maxplus,
    sparse_minplus,
    unpack_bits,
)

__all__ = [
    "OPS",
    "KernelBuildWarning",
    "KernelFlagsError",
    "available",
    "binary_dilation2d",
    "binary_erosion2d",
    "bool_conv2d",
    "build_info",
    "cache_dir",
    "dilation1d",
    "dilation2d",
    "erosion1d",
    "erosion2d",
    "load",
    "maxplus",
    "minplus",
    "output_cache",
    "pack_bits",
    "pack_conv_weight",
    "sparse_maxplus",
    "sparse_minplus",
    "unpack_bits",
]
