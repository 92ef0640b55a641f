"""Pictures of compressed and morphological models, saved as PNG (needs ``pip install tropfx[plot]``).

* :func:`compression_curve`: accuracy against the percentage of weights remaining, one line per
  method, with error bars over seeds;
* :func:`structuring_elements`: a grid of the kernels of a dilation / erosion layer (or any
  weight), binary ones in black and white, inactive (-inf) entries marked;
* :func:`weight_histograms`: per-layer histograms of the finite weights, with the count of
  pruned ones.

Each returns a ``matplotlib.figure.Figure`` and writes it when given ``path``. Figures are made
without ``pyplot`` (no GUI backend, no global state), so they work in scripts, tests and servers.
matplotlib is imported on first use; without it these functions raise :class:`MissingDependency`.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tropfx.errors import TropfxError

__all__ = ["MissingDependency", "compression_curve", "save", "structuring_elements",
           "weight_histograms"]


class MissingDependency(TropfxError, ImportError):
    """An optional dependency (matplotlib, for plots) is not installed."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency(
            "tropfx.plot needs matplotlib, which is not installed: pip install 'tropfx[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Any:
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise); return ``fig``."""
    fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def _mean_err(values: Any) -> tuple[float, float]:
    """Mean and standard deviation of a number or a list of numbers (one per seed)."""
    if isinstance(values, (int, float)):
        return float(values), 0.0
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compression_curve(results: Mapping[str, Mapping[float, Any]], *,
                      path: str | os.PathLike | None = None, title: str | None = None,
                      xlabel: str = "weights remaining (%)", ylabel: str = "test accuracy",
                      log_x: bool = False, reference: float | None = None) -> Any:
    """Accuracy against the share of weights remaining, one line per method.

    ``results`` maps a method name to ``{percent_remaining: accuracy}``, where an accuracy is a
    number or a list of numbers (one per seed: the line is their mean, the error bar their
    standard deviation), e.g. ``{"relu": {100: [0.99, 0.98], 30: [0.91, 0.93]}, ...}``.
    ``reference`` draws a dashed line (e.g. the uncompressed accuracy). The x axis runs from
    100 % (no compression) down, as compression grows to the right.
    """
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for label, points in results.items():
        xs = sorted(points, reverse=True)
        stats = [_mean_err(points[x]) for x in xs]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[e for _, e in stats], marker="o",
                    capsize=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1, label="uncompressed")
    if log_x:
        ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if results or reference is not None:
        ax.legend()
    return save(fig, path) if path is not None else fig


def _kernels(weight: torch.Tensor, nd: int) -> torch.Tensor:
    """(n, kh, kw) images of a weight's kernels; 1-D kernels (``nd=1``) become one-row images.

    2-D kernels: (C, kh, kw) per channel or (Cout, Cin, kh, kw) full; 1-D: (C, k) or (Cout, Cin, k).
    """
    w = weight.detach().float().cpu()
    if nd == 1 and w.dim() in (2, 3):
        return w.reshape(-1, 1, w.shape[-1])
    if nd == 2 and w.dim() in (3, 4):
        return w.reshape(-1, *w.shape[-2:])
    raise TropfxError(f"structuring_elements: expected {nd}-D kernels, (C, *kernel) or "
                      f"(Cout, Cin, *kernel), got a weight of shape {tuple(weight.shape)}")


def structuring_elements(weight: torch.Tensor | nn.Module, *,
                         path: str | os.PathLike | None = None, max_kernels: int = 64,
                         columns: int | None = None, title: str | None = None,
                         binary: bool | None = None, nd: int | None = None) -> Any:
    """A grid of a layer's kernels (structuring elements), at most ``max_kernels`` of them.

    ``weight`` is a tensor or a module with ``.weight`` (``Dilation2d``, ``Erosion1d``,
    ``Conv2d``, ...); a tensor holds 2-D kernels, or 1-D ones with ``nd=1``. Binary kernels
    (values in {0, 1}, or ``binary=True``) are drawn black on white, float kernels on a shared
    diverging color scale. Inactive entries (±inf) show the gray background and do not stretch
    the scale.
    """
    if isinstance(weight, nn.Module):
        if not isinstance(getattr(weight, "weight", None), torch.Tensor):
            raise TropfxError(f"structuring_elements: {type(weight).__name__} has no .weight")
        title = title or type(weight).__name__
        nd = nd or getattr(weight, "_nd", None) or (1 if isinstance(weight, nn.Conv1d) else 2)
        weight = weight.weight
    kernels = _kernels(weight, nd or 2)[:max_kernels]
    finite = kernels[torch.isfinite(kernels)]
    if binary is None:
        binary = bool(finite.numel()) and bool(((finite == 0) | (finite == 1)).all())
    n = kernels.shape[0]
    cols = columns or min(n, 8)
    rows = math.ceil(n / cols)
    fig = _figure(1.2 * cols + 1.0, 1.2 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    import numpy as np

    if binary:
        vmin, vmax, cmap = 0.0, 1.0, "gray_r"
    else:
        bound = float(finite.abs().max()) if finite.numel() else 1.0
        vmin, vmax, cmap = -bound or -1.0, bound or 1.0, "RdBu_r"
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        k = kernels[i].numpy()
        masked = np.ma.masked_invalid(np.where(np.isinf(k), np.nan, k))
        ax.set_facecolor("#bbbbbb")  # inactive entries show the background
        image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
    if image is not None and not binary:
        fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(title or "structuring elements")
    return save(fig, path) if path is not None else fig


def _named_weights(source: nn.Module | Mapping[str, torch.Tensor],
                   layers: Iterable[str] | None) -> list[tuple[str, torch.Tensor]]:
    if isinstance(source, nn.Module):
        items = [(name, p) for name, p in source.named_parameters()
                 if name.endswith(("weight", "value")) and p.dim() >= 1]
    else:
        items = list(source.items())
    if layers is not None:
        wanted = list(layers)
        items = [(n, t) for n, t in items if any(n == w or n.startswith(f"{w}.") for w in wanted)]
    return items


def weight_histograms(source: nn.Module | Mapping[str, torch.Tensor], *,
                      path: str | os.PathLike | None = None, bins: int = 50,
                      layers: Sequence[str] | None = None, columns: int = 3,
                      log: bool = False) -> Any:
    """One histogram per weight tensor: the finite values, and in the title how many entries
    are pruned (0 for linear weights, ±inf for max-plus ones) out of how many.

    ``source`` is a model (its ``*weight`` and ``*value`` parameters) or ``{name: tensor}``;
    ``layers`` keeps the names equal to or under the given prefixes.
    """
    items = _named_weights(source, layers)
    if not items:
        raise TropfxError("weight_histograms: no weights to plot (check layers=...)")
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    fig = _figure(3.2 * cols, 2.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, t) in zip(axes.flat, items, strict=False):
        values = t.detach().float().cpu().flatten()
        finite = values[torch.isfinite(values)]
        tropical = bool(torch.isinf(values).any())
        pruned = int(torch.isinf(values).sum()) if tropical else int((values == 0).sum())
        ax.hist(finite.numpy(), bins=bins, color="tab:blue", log=log)
        ax.set_title(f"{name}\n{pruned:,}/{values.numel():,} pruned", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=5)
    for ax in list(axes.flat)[len(items):]:
        ax.set_axis_off()
    return save(fig, path) if path is not None else fig
