"""Folding an affine per-channel map into the preceding linear layer (pure tensor math).

Eval-mode BatchNorm is the per-channel affine map ``y = s * x + t`` with

    s = gamma / sqrt(running_var + eps),    t = beta - running_mean * s

(gamma = 1, beta = 0 when not affine). Applied to the output of a conv or linear layer
``x = W * u + b`` it folds into the layer: ``W' = s[o] * W[o]``, ``b' = s * b + t``, because every
output channel ``o`` of those layers is a linear function of the input with its own weights. All
arithmetic is done in float64 and the results cast back to the layer's dtype.
"""

from __future__ import annotations

import torch

__all__ = ["batchnorm_affine", "fold_affine"]


def batchnorm_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(s, t)`` in float64 such that eval-mode BatchNorm is ``s * x + t``."""
    mean, var = running_mean.double(), running_var.double()
    gamma = weight.double() if weight is not None else torch.ones_like(mean)
    beta = bias.double() if bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + eps)
    return scale, beta - mean * scale


def fold_affine(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    transposed: bool = False,
    groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``scale * layer(u) + shift`` for a conv / linear layer.

    ``weight`` is laid out as in torch: ``(out, in, *k)`` for Linear and ConvNd, and
    ``(in, out / groups, *k)`` for ConvTransposeNd (``transposed=True``), whose output channel
    ``g * (out / groups) + j`` reads ``weight[g * (in / groups):(g + 1) * (in / groups), j]``.
    """
    w = weight.detach().double()
    out_channels = scale.numel()
    if transposed:
        per_group = w.shape[1]
        grouped = w.reshape(groups, w.shape[0] // groups, per_group, *w.shape[2:])
        view = scale.reshape(groups, 1, per_group, *([1] * (w.dim() - 2)))
        new_w = (grouped * view).reshape(w.shape)
    else:
        new_w = w * scale.reshape(out_channels, *([1] * (w.dim() - 1)))
    b = bias.detach().double() if bias is not None else torch.zeros_like(shift)
    new_b = b * scale + shift
    dtype = weight.dtype
    return new_w.to(dtype), new_b.to(bias.dtype if bias is not None else dtype)
