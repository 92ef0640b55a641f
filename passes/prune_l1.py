"""prune_l1: unstructured magnitude pruning of linear and morphological weights."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, fx, nn

from tropfx.errors import InputError
from tropfx.layers import Prunable, layer_spec
from tropfx.pass_base import GraphPass, PassResult, PassStats

__all__ = ["Prunable", "PruneL1", "prune_l1"]


def _spec(module: nn.Module) -> Prunable | None:
    """What magnitude pruning prunes in ``module``: its :class:`tropfx.layers.LayerSpec`'s
    ``prune`` (register new layer types with :func:`tropfx.layers.register_layer`)."""
    spec = layer_spec(module)
    return None if spec is None else spec.prune


def prune_scores(weight: Tensor, spec: Prunable) -> Tensor:
    """|w| for live entries, -1 for entries already pruned (so they count first)."""
    w = weight.detach()
    dead = torch.isinf(w) if spec.tropical else w == 0
    return torch.where(dead, -1.0, w.abs().to(torch.float32))


def keep_one_per_row(prune: Tensor, scores: Tensor, has_bias: Tensor) -> Tensor:
    """Unprune the largest entry of every row that would lose all its entries while having no
    finite bias: such an output would be -inf for every input (and NaN downstream)."""
    rows = prune.flatten(1)
    dead = rows.all(1) & ~has_bias
    if dead.any():
        best = scores.flatten(1).argmax(1)
        rows = rows.clone()
        rows[dead, best[dead]] = False
    return rows.view_as(prune)


@dataclass(frozen=True)
class PruneL1(GraphPass):
    """Unstructured L1 (magnitude) pruning, the paper's protocol.

    Sets the fraction ``ratio`` of the weights of every matched layer with the smallest
    magnitude to their pruned value: 0 for Linear / Conv, -inf for max-plus, dilation and erosion,
    +inf for min-plus (each layer type's ``LayerSpec.prune``, :mod:`tropfx.layers`).
    ``scope="layer"`` prunes each layer's weights separately; ``"global"`` ranks all matched
    weights together. Entries already pruned count toward the ratio. Ties are broken by position
    (stable), so the result is deterministic. ``include`` / ``exclude`` are glob patterns on
    module names (``"head.*"``).

    A max-plus row left without any finite weight and without a finite bias keeps its largest
    weight (it would be -inf for every input); the report's ``info`` gives the achieved ratio.
    Lossy, except ``ratio=0``, which is the identity. Parameter counts in the report come from the
    model: the ``active`` column counts non-zero / finite stored entries.
    """

    ratio: float
    scope: str = "global"
    include: Sequence[str] | None = None
    exclude: Sequence[str] = field(default_factory=tuple)
    name: ClassVar[str] = "prune_l1"

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0 <= self.ratio < 1):
            raise InputError(f"prune_l1: ratio={self.ratio!r} must be in [0, 1)")
        if self.scope not in ("global", "layer"):
            raise InputError(f"prune_l1: scope={self.scope!r}; use 'global' or 'layer'")

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.ratio == 0

    def _targets(self, gm: fx.GraphModule) -> list[tuple[str, nn.Module, Prunable]]:
        found = []
        for name, module in gm.named_modules():
            spec = _spec(module)
            if spec is None or not name:
                continue
            if self.include is not None and not any(fnmatch.fnmatchcase(name, p)
                                                    for p in self.include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
                continue
            found.append((name, module, spec))
        return found

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        targets = self._targets(gm)
        if not targets:
            stats.skip("<model>", f"no prunable layer matches include={self.include} "
                                  f"exclude={list(self.exclude)}")
            return PassResult(gm, False, stats)
        scores = [prune_scores(getattr(m, s.param), s) for _, m, s in targets]
        masks = self._masks(scores)
        changed, total, pruned_total = False, 0, 0
        per_layer = {}
        for (name, module, spec), score, mask in zip(targets, scores, masks, strict=True):
            weight = getattr(module, spec.param)
            if spec.tropical:
                bias = getattr(module, "bias", None)
                has_bias = torch.isfinite(bias.detach()) if bias is not None else \
                    torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
                mask = keep_one_per_row(mask, score, has_bias)
            newly = mask & (score >= 0)
            if newly.any():
                with torch.no_grad():
                    weight.masked_fill_(newly, spec.pruned)
                changed = True
            total += mask.numel()
            pruned_total += int(mask.sum())
            per_layer[name] = round(float(mask.float().mean()), 4)
            stats.rewritten.append(f"{name}.{spec.param}: {int(mask.sum())}/{mask.numel()} pruned")
        stats.info.update(ratio=round(pruned_total / total, 4), per_layer=per_layer)
        return PassResult(gm, changed, stats)

    def _masks(self, scores: list[Tensor]) -> list[Tensor]:
        if self.scope == "layer":
            return [_smallest(s, self.ratio) for s in scores]
        flat = _smallest(torch.cat([s.flatten() for s in scores]), self.ratio)
        return [m.view_as(s) for m, s in zip(flat.split([s.numel() for s in scores]), scores,
                                             strict=True)]


def _smallest(scores: Tensor, ratio: float) -> Tensor:
    """Mask of the floor(ratio * n) smallest scores (stable: earlier positions first on ties)."""
    flat = scores.flatten()
    count = math.floor(ratio * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.sort(flat, stable=True).indices[:count]] = True
    return mask.view_as(scores)


def prune_l1(ratio: float, scope: str = "global", include: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> PruneL1:
    """The ``prune_l1`` pass (see :class:`PruneL1`)."""
    return PruneL1(ratio, scope, tuple(include) if include is not None else None, tuple(exclude))
