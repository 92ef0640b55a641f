"""Max-plus and min-plus products: the reference semantics of tropfx's morphological layers.

Sparse Hybrid Linear-Morphological Networks (Fotopoulos, Garoufis, Maragos 2025), §2: a max-plus
("dilation") layer computes ``y_o = max(max_i (x_i + W_oi), b_o)``; its min-plus ("erosion") dual
is ``y_o = min(min_i (x_i + W_oi), b_o)``. Entries of ``W`` (and ``b``) equal to -inf (+inf for
min-plus) are inactive: they never win the max.

Gradients are the subgradients of max: for each output only the winning term receives the gradient
(``x_i`` and ``W_oi`` of the argmax, or ``b_o``). **Ties are broken deterministically**: the bias
wins a tie with an input term (so ``max(x + 0, 0)`` has exactly ReLU's gradient, 0 at ``x = 0``);
among inputs the lowest index wins (for the sparse form: the earliest stored position, and stored
rows are sorted by input index). NaN propagates, as in ``torch.relu`` and ``torch.max``.

These functions are what the C++ / CUDA kernels must match bit for bit. The dense product never
materializes the whole ``B x out x in`` tensor: it works in chunks of at most ``chunk_elements``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tropfx.errors import InputError, ParameterError

__all__ = [
    "CHUNK_ELEMENTS",
    "autocast_float32",
    "check_tropical",
    "diagonal_maxplus",
    "diagonal_minplus",
    "maxout",
    "maxplus",
    "minplus",
    "sparse_maxplus",
    "sparse_minplus",
]

CHUNK_ELEMENTS = 1 << 22  # at most 16 MiB of float32 temporaries per chunk


def check_tropical(weight: Tensor, bias: Tensor | None, *, name: str = "max-plus layer") -> None:
    """Reject parameters a max-plus layer cannot use: NaN or +inf entries, and rows that can
    never be finite (every weight -inf and no finite bias), which would silently yield -inf and
    then NaN downstream. Skipped while torch.compile / torch.export trace the model: the checks
    branch on tensor values, and the eager model has been checked already."""
    if torch.compiler.is_compiling():
        return
    if torch.isnan(weight).any() or (bias is not None and torch.isnan(bias).any()):
        raise ParameterError(f"{name} has NaN weights; training diverged or the checkpoint is "
                             "corrupt")
    if (weight == torch.inf).any() or (bias is not None and (bias == torch.inf).any()):
        raise ParameterError(f"{name} has +inf weights; only -inf (inactive) is allowed")
    dead = torch.isneginf(weight).flatten(1).all(1)
    if bias is not None:
        dead &= torch.isneginf(bias)
    if dead.any():
        rows = dead.nonzero().flatten().tolist()
        raise ParameterError(
            f"{name}: output(s) {rows[:10]}{'...' if len(rows) > 10 else ''} have every weight "
            "-inf and no finite bias, so they are -inf for every input; give them a finite "
            "weight or bias (prune_l1 keeps one per row for this reason)"
        )


_HALF = (torch.float16, torch.bfloat16)


def autocast_float32(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The layers' autocast policy: under ``torch.autocast`` (of the tensors' device), max-plus and
    morphological products compute in float32, as autocast's own float32 ops (softmax, norms) do:
    a bf16 / fp16 operand is cast up; a max of float32 terms is exact, and the next conv or linear
    layer casts back down. Without autocast, or in float32 / float64, the tensors are returned
    as they are (mixing dtypes then is the caller's error, as in torch)."""
    first = next((t for t in tensors if t is not None), None)
    if first is None or not torch.is_autocast_enabled(first.device.type) or not any(
            t is not None and t.dtype in _HALF for t in tensors):
        return tensors
    return tuple(None if t is None or not t.is_floating_point() else t.float() for t in tensors)


def _chunk_rows(batch: int, out: int, inner: int, budget: int) -> tuple[int, int]:
    """(batch rows, output rows) per chunk so that rows_b * rows_o * inner <= budget."""
    per_output = max(1, budget // max(1, inner))
    rows_o = max(1, min(out, per_output))  # >= 1: an empty batch or layer is zero chunks, not a
    rows_b = max(1, min(batch, per_output // rows_o))  # zero step
    return rows_b, rows_o


class _MaxPlus(torch.autograd.Function):
    """y = max(max_i x_i + W_oi, b_o) on 2-D x, chunked; saves the argmax (-1 = the bias)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, budget: int) -> Tensor:
        batch, inner = x.shape
        out = weight.shape[0]
        y = x.new_empty(batch, out)
        arg = torch.empty(batch, out, dtype=torch.long, device=x.device)
        rows_b, rows_o = _chunk_rows(batch, out, inner, budget)
        if inner == 0:  # no input terms: the max over nothing is -inf, so the bias (if any) wins
            y.fill_(-torch.inf)
            arg.fill_(-1)
        for o in range(0, out if inner else 0, rows_o):
            w = weight[o:o + rows_o]
            for b in range(0, batch, rows_b):
                best, idx = (x[b:b + rows_b, None, :] + w[None]).max(dim=-1)
                y[b:b + rows_b, o:o + rows_o] = best
                arg[b:b + rows_b, o:o + rows_o] = idx
        if bias is not None:
            take = bias >= y  # the bias wins ties; a NaN max stays NaN (comparison is False)
            y = torch.where(take, bias.to(y.dtype), y)
            arg.masked_fill_(take, -1)
        ctx.save_for_backward(arg)
        ctx.shapes = (inner, weight.shape, bias is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        (arg,) = ctx.saved_tensors
        inner, w_shape, has_bias = ctx.shapes
        from_input = arg >= 0
        idx = arg.clamp_min(0)
        g = torch.where(from_input, grad_y, 0.0)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y.new_zeros(grad_y.shape[0], inner)
            if inner:  # (no inputs: every output came from the bias)
                grad_x.scatter_add_(1, idx, g)
        if ctx.needs_input_grad[1] and not inner:
            grad_w = grad_y.new_zeros(w_shape)
        elif ctx.needs_input_grad[1]:
            flat = idx + torch.arange(w_shape[0], device=idx.device) * inner  # row-major W index
            grad_w = grad_y.new_zeros(w_shape).view(-1).index_add_(0, flat.flatten(),
                                                                   g.flatten()).view(w_shape)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = torch.where(from_input, 0.0, grad_y).sum(0)
        return grad_x, grad_w, grad_b, None


def maxplus(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
            chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Dense max-plus product over the last dim: ``x (..., in)``, ``weight (out, in)`` ->
    ``(..., out)``, ``y_o = max(max_i (x_i + W_oi), b_o)``. See the module docstring."""
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise InputError(f"maxplus: x (..., {x.shape[-1]}) does not fit weight "
                         f"{tuple(weight.shape)} (out, in)")
    x, weight, bias = autocast_float32(x, weight, bias)
    lead = x.shape[:-1]
    y = _MaxPlus.apply(x.reshape(math.prod(lead), x.shape[-1]), weight, bias, chunk_elements)
    return y.reshape(*lead, weight.shape[0])


def minplus(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
            chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Min-plus dual: ``y_o = min(min_i (x_i + W_oi), b_o)`` (= -maxplus(-x, -W, -b), exactly)."""
    neg_b = None if bias is None else -bias
    return -maxplus(-x, -weight, neg_b, chunk_elements=chunk_elements)


def sparse_maxplus(x: Tensor, index: Tensor, value: Tensor, bias: Tensor | None = None, *,
                   dim: int = -1, inplace: bool = False) -> Tensor:
    """Sparse max-plus product along ``dim``: output ``o`` reads the ``k`` inputs
    ``index[o, :]`` with weights ``value[o, :]``:

        y_o = max(max_j (x_{index[o, j]} + value[o, j]), b_o)

    Works on ``(..., in, ...)`` with ``in`` at ``dim``; memory ``O(numel(y) * (k + 1))``. With
    ``k = 1`` there is nothing to reduce: one gather (none for the identity index of an exact ReLU
    rewrite) and :func:`diagonal_maxplus`'s element-wise max, with the same values and gradients.
    ``inplace`` is :func:`diagonal_maxplus`'s, for the identity index.
    """
    x, value, bias = autocast_float32(x, value, bias)
    out, k = index.shape
    if k == 1:
        if not _is_identity(index, x.shape[dim] if x.dim() else -1):
            x, inplace = x.index_select(dim, index[:, 0]), False
        return diagonal_maxplus(x, value, bias, dim=dim, inplace=inplace)
    moved = x.movedim(dim, -1)
    gathered = moved.index_select(-1, index.reshape(-1)).unflatten(-1, (out, k)) + value
    if bias is not None:
        # The bias goes first: torch.max returns the first maximal position, so it wins ties.
        first = bias.to(gathered.dtype)[:, None].expand(gathered.shape[:-1] + (1,))
        gathered = torch.cat([first, gathered], dim=-1)
    if gathered.numel() == 0:  # an empty batch or no outputs: nothing to reduce
        return x.new_zeros(gathered.shape[:-1]).movedim(-1, dim) + gathered.sum() * 0
    y = gathered.max(dim=-1).values.movedim(-1, dim)
    # Keep the input's row-major strides: a strided view (even one torch calls contiguous, with
    # size-1 dims) makes the next conv pick another algorithm, which rounds differently.
    if x.stride() == _row_major(x.shape) and y.stride() != _row_major(y.shape):
        y = y.clone(memory_format=torch.contiguous_format)
    return y


def _is_identity(index: Tensor, size: int) -> bool:
    """Whether ``index`` (out, 1) reads input ``o`` for output ``o``; remembered on ``index`` per
    version and storage. While torch.compile / torch.export trace: :func:`_traced_identity`."""
    if index.shape[0] != size:
        return False
    if torch.compiler.is_compiling():
        return _traced_identity(index, size)
    key = (index._version, index.data_ptr(), size)  # remembered per version, as the layers'
    known = getattr(index, "_tropfx_identity", None)  # parameter checks are
    if known is not None and known[0] == key:
        return known[1]
    result = bool(torch.equal(index[:, 0], torch.arange(size, device=index.device)))
    if not isinstance(index, torch.fx.Proxy):
        index._tropfx_identity = (key, result)
    return result


def _traced_identity(index: Tensor, size: int) -> bool:
    """:func:`_is_identity` under tracing, where reading the index would be a data-dependent
    branch (a graph break) and a gather stays a gather: inductor loads it element by element.
    The answer of the last eager call, remembered on ``index``, is read as a constant, and dynamo
    guards on it (an eager call that finds another answer makes it retrace). An index changed in
    place since that call is caught by a check in the graph, which raises instead of returning
    the outputs of the wrong inputs. Without an eager call first, the gather stays."""
    known = getattr(index, "_tropfx_identity", None)
    if known is None or not known[1]:
        return False
    same = (index[:, 0] == torch.arange(size, device=index.device)).all()
    torch._assert_async(same, "tropfx: a SparseMaxPlus index changed in place after torch.compile "
                              "traced it as the identity; run the layer once without "
                              "torch.compile (or call torch._dynamo.reset()) to retrace")
    return True


def diagonal_maxplus(x: Tensor, value: Tensor, bias: Tensor | None = None, *,
                     dim: int = -1, inplace: bool = False) -> Tensor:
    """The max-plus product with one input per output, ``y_c = max(x_c + value_c, b_c)`` along
    ``dim`` (``value`` of shape (C,) or (C, 1)): ``sparse_maxplus`` with ``k = 1`` and the identity
    index, as element-wise torch ops (which torch.compile fuses into the producing conv, as it
    does a ReLU). ``relu(x) = diagonal_maxplus(x, 0, 0)`` bit for bit, gradient included.

    The same rules as the general product: the bias wins a tie (and a NaN bias wins), a NaN
    term wins over a number; the gradient goes to the winner only.

    ``inplace=True`` lets the values-only path of an exact ReLU rewrite (value +0, no autograd)
    write the result into ``x``, as ``nn.ReLU(inplace=True)`` does (``relu_to_maxplus`` sets it
    where the ReLU it replaces was in place): no output to allocate. Elsewhere it is ignored.
    """
    x, value, bias = autocast_float32(x, value, bias)
    shape = [1] * x.dim()
    if x.dim():
        shape[dim] = -1
    if bias is None:
        return x + value.reshape(shape)
    dtype = torch.promote_types(x.dtype, value.dtype)  # (that of x + value)
    b = bias.to(dtype).reshape(shape)
    zero = None if _needs_grad(x, value, b) else _zero_signs(bias, dtype)
    if zero is not None and x.dtype == dtype and _plus_zeros(value):
        # An exact ReLU rewrite (value +0): x + 0 is x except that -0 becomes +0, so the result
        # is max(x, b) + 0 -- one pass less. A tie is of equal numbers, or of zeros, which the
        # + 0 makes +0: the bias's own zero (it holds no -0, checked), as the general product.
        return torch.maximum(x, b, out=x if inplace else None).add_(0.0)
    term = x + value.reshape(shape)
    if zero is not None:
        # Values only: torch.maximum (several times faster than torch.where on the CPU) is the
        # same max except for which of two tied zeros it returns; the bias holds no -0 (checked),
        # so adding +0 where the bias is 0 makes such a tie +0, the bias's own zero, and adding -0
        # elsewhere changes nothing (x + -0 == x for every x, zeros included).
        return torch.maximum(term, b, out=term).add_(zero.reshape(shape))
    take = (b >= term) | (b != b)  # the bias sits first in the general product's window (b != b:
    # isnan, which inductor vectorizes)
    return torch.where(take, b, term)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _zero_signs(bias: Tensor, dtype: torch.dtype) -> Tensor | None:
    """+0 where the bias is 0, -0 elsewhere; None if the bias holds NaN or -0 (then the exact
    where). Remembered on ``bias`` per version (a small tensor, but one check per call per layer
    shows at batch 1). Not while torch.compile traces: a data-dependent branch (and inductor fuses
    the where anyway)."""
    if torch.compiler.is_compiling() or isinstance(bias, torch.fx.Proxy):
        return None
    key = (bias._version, bias.data_ptr(), dtype)
    known = getattr(bias, "_tropfx_zero_signs", None)
    if known is not None and known[0] == key:
        return known[1]
    b = bias.detach()
    plain = not bool((b.isnan() | ((b == 0) & b.signbit())).any())
    zero = torch.where(b == 0, 0.0, -0.0).to(dtype) if plain else None
    bias._tropfx_zero_signs = (key, zero)
    return zero


def _plus_zeros(value: Tensor) -> bool:
    """Whether every entry of ``value`` is +0, remembered on it per version and storage (as
    :func:`_zero_signs`). Not while torch.compile traces (a data-dependent branch)."""
    if torch.compiler.is_compiling() or isinstance(value, torch.fx.Proxy):
        return False
    key = (value._version, value.data_ptr())
    known = getattr(value, "_tropfx_plus_zeros", None)
    if known is not None and known[0] == key:
        return known[1]
    v = value.detach()
    result = bool(((v == 0) & ~v.signbit()).all())
    value._tropfx_plus_zeros = (key, result)
    return result


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def sparse_minplus(x: Tensor, index: Tensor, value: Tensor, bias: Tensor | None = None, *,
                   dim: int = -1) -> Tensor:
    """Min-plus dual of :func:`sparse_maxplus` (= -sparse_maxplus(-x, index, -value, -b))."""
    neg_b = None if bias is None else -bias
    return -sparse_maxplus(-x, index, -value, neg_b, dim=dim)


def diagonal_minplus(x: Tensor, value: Tensor, bias: Tensor | None = None, *,
                     dim: int = -1) -> Tensor:
    """Min-plus dual of :func:`diagonal_maxplus`, ``y_c = min(x_c + value_c, b_c)``, computed as
    ``-diagonal_maxplus(-x, -value, -b)`` so that signed zeros are those of the general product."""
    neg_b = None if bias is None else -bias
    return -diagonal_maxplus(-x, -value, neg_b, dim=dim)


def maxout(x: Tensor, pool: int, *, dim: int = -1) -> Tensor:
    """Maxout (Goodfellow et al. 2013): the max over consecutive groups of ``pool`` features,
    ``(..., F * pool, ...) -> (..., F, ...)``. The paper's comparison baseline: a linear layer
    followed by maxout is a linear layer followed by a max-plus layer with block-diagonal
    zero / -inf weights."""
    size = x.shape[dim]
    if size % pool:
        raise InputError(f"maxout: {size} features are not a multiple of pool={pool}")
    return x.unflatten(dim, (size // pool, pool)).max(dim=dim % x.dim() + 1).values


# Opaque to torch.fx: a traced graph records one call per product (their argument checks would
# otherwise be traced as control flow), even when a layer is itself the traced root.
for _name in ("maxplus", "minplus", "sparse_maxplus", "sparse_minplus", "diagonal_maxplus",
              "diagonal_minplus", "maxout"):
    torch.fx.wrap(_name)
