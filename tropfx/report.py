"""The compile report: one row per stage (the traced model, then each pass)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tropfx.pass_base import Skip
from tropfx.tracing import AutoLeaf

__all__ = ["Report", "StageRow", "group_skips"]

SHOWN_NAMES = 6  # nodes named per group of identical skip reasons in str(report)


def group_skips(skipped: list[Skip]) -> list[tuple[str, list[str]]]:
    """``[(reason, [node, ...])]``: the skips with identical reasons together, in first-seen order
    (a DenseNet has dozens of BatchNorms declined for one reason)."""
    groups: dict[str, list[str]] = {}
    for s in skipped:
        groups.setdefault(s.reason, []).append(s.node)
    return list(groups.items())


def _skip_lines(stage: str, skipped: list[Skip]) -> list[str]:
    lines = []
    for reason, nodes in group_skips(skipped):
        if len(nodes) == 1:
            lines.append(f"  {stage}: {nodes[0]}: {reason}")
            continue
        names = ", ".join(nodes[:SHOWN_NAMES])
        more = f", ... (+{len(nodes) - SHOWN_NAMES} more)" if len(nodes) > SHOWN_NAMES else ""
        lines.append(f"  {stage}: {len(nodes)} × {reason}: {names}{more}")
    return lines


@dataclass
class StageRow:
    """One stage of the pipeline and what it did to the model.

    ``macs`` and ``counts`` (max-plus ops, bit-ops, ...) are measured on the example inputs and are
    ``None`` / empty without them; ``max_abs_err`` / ``max_rel_err`` compare with the previous stage
    and are ``None`` when verification is off.
    """

    stage: str
    exact: bool | None
    modified: bool
    rewritten: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    params: int = 0
    active_params: int = 0  # not pruned: non-zero, or finite for max-plus weights
    macs: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def format_si(n: int | None) -> str:
    """``1.23M``: a count with an SI suffix (k, M, G), ``-`` for None."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _err(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.1e}"


def _metric(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _layer_line(layer: dict[str, Any]) -> str:
    """``fc1: 512 -> 256 (params 401.92k -> 200.96k, MACs ..., bound 0.12)`` for per-layer rows."""
    parts = []
    for key in ("params", "macs"):
        pair = layer.get(key)
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            parts.append(f"{'MACs' if key == 'macs' else key} {format_si(pair[0])} -> {format_si(pair[1])}")
    if layer.get("bound") is not None:
        parts.append(f"bound {layer['bound']:.3g}")
    into = f" into {', '.join(layer['consumers'])}" if layer.get("consumers") else ""
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"{layer['layer']}: {layer['n']} -> {layer['K']}{into}{detail}"


@dataclass
class Report:
    """What :func:`tropfx.compile` did; ``str()`` is an aligned table, ``to_dict()`` is for tools."""

    model: str
    rows: list[StageRow] = field(default_factory=list)
    leaves: list[AutoLeaf] = field(default_factory=list)
    seconds: float = 0.0
    inputs: str = ""  # shapes of the example inputs that MACs and errors were measured on

    def __getitem__(self, stage: int | str) -> StageRow:
        if isinstance(stage, int):
            return self.rows[stage]
        for row in self.rows:
            if row.stage == stage:
                return row
        raise KeyError(f"no stage {stage!r}; stages: {[r.stage for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "seconds": self.seconds,
            "inputs": self.inputs,
            "rows": [asdict(r) for r in self.rows],
            "leaves": [asdict(leaf) for leaf in self.leaves],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str, **kwargs)

    def __str__(self) -> str:
        count_keys = sorted({k for r in self.rows for k in r.counts})
        metric_keys = list(dict.fromkeys(k for r in self.rows for k in r.metrics))
        header = ["#", "stage", "exact", "rewritten", "skipped", "params", "active", "MACs",
                  *count_keys,
                  "max abs err", "max rel err", "time", *metric_keys]
        table = [header]
        for i, r in enumerate(self.rows):
            table.append([
                str(i), r.stage, "-" if r.exact is None else ("yes" if r.exact else "no"),
                str(len(r.rewritten)) if i else "-", str(len(r.skipped)) if i else "-",
                f"{r.params:,}", f"{r.active_params:,}", format_si(r.macs),
                *(format_si(r.counts.get(k)) for k in count_keys),
                _err(r.max_abs_err), _err(r.max_rel_err), f"{r.seconds * 1e3:.0f} ms",
                *(_metric(r.metrics.get(k, "-")) for k in metric_keys),
            ])
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        on = f", measured on {self.inputs}" if self.inputs else ""
        lines = [f"tropfx report: {self.model} ({self.seconds:.2f} s{on})"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                  for row in table]
        lossy = [r.stage for r in self.rows[1:] if r.exact is False]
        if lossy:
            lines.append(f"lossy: {', '.join(lossy)} (declared not exact: the error is recorded, "
                         "not held to a tolerance)")
        notes = [f"  {r.stage}: {r.info['verification']}" for r in self.rows
                 if r.info.get("verification")]  # e.g. "inconclusive: ..." (tropfx.pipeline)
        lines += ["verification:", *notes] if notes else []
        layers = [(r.stage, layer) for r in self.rows for layer in r.info.get("layers", ())
                  if isinstance(layer, dict) and {"layer", "n", "K"} <= layer.keys()]
        if layers:
            lines.append("layers:")
            lines += [f"  {stage}: {_layer_line(layer)}" for stage, layer in layers]
        if any(r.skipped for r in self.rows):
            lines.append("skipped:")
            lines += [line for r in self.rows for line in _skip_lines(r.stage, r.skipped)]
        if self.leaves:
            lines.append("kept as leaves (forward not traceable):")
            lines += [f"  {a.path} ({a.module_type}): {a.reason}" for a in self.leaves]
        return "\n".join(lines)
