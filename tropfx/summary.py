"""``tropfx.summary(model, example_inputs)``: parameters, memory and operations per layer.

In the spirit of Larq's ``summary``: one row per layer of the traced graph and a total, with

* parameters split by kind: **float**, **max-plus** (the entries a layer lists in its
  ``tropical_params``: max-plus / min-plus weights and biases, structuring elements) and
  **binary** (``torch.bool`` tensors, those a layer lists in ``binary_params``, and the bits of
  the uint64 buffers it lists in ``packed_binary_buffers``);
* **memory**: the bytes of the layer's parameters and buffers as stored (buffers included: a
  sparse max-plus layer's index is part of the model), and **packed**: the same with binary
  tensors at one bit per entry;
* operations on the example inputs, from :func:`tropfx.measure.measure`: **MACs** (multiply-
  accumulates, from ``torch.utils.flop_counter``), **max-plus ops** (add-max pairs) and **bit
  ops**, as the cost counters registered with :func:`tropfx.register_cost` report them.

Rows follow the graph: each called submodule, each function call with a cost or with tensors of
its own (a functional ``F.linear(x, w)``), and an ``(other)`` row for tensors no node uses. A
shared tensor is counted once, in the first row that uses it. The model is not modified.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn

from tropfx.errors import TracingError
from tropfx.measure import describe_inputs, measure
from tropfx.report import format_si
from tropfx.tracing import trace

__all__ = ["LayerSummary", "Summary", "summary"]


@dataclass
class LayerSummary:
    """One layer (or the total): parameter counts by kind, memory and operation counts.

    Operation counts are ``None`` without example inputs; ``ops`` holds counts of other kinds
    (e.g. from a user's :func:`tropfx.register_cost` counter).
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None = None
    float_params: int = 0
    maxplus_params: int = 0
    binary_params: int = 0
    memory_bytes: int = 0
    packed_bytes: int = 0
    macs: int | None = None
    maxplus_ops: int | None = None
    bitops: int | None = None
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return self.float_params + self.maxplus_params + self.binary_params

    def add_tensor(self, kind: str | None, t: torch.Tensor) -> None:
        """Count one parameter (``kind`` float / maxplus / binary), buffer (``kind`` None) or
        already bit-packed buffer (``kind`` "packed": 64 binary entries per uint64 word)."""
        binary = kind == "binary" or (kind is None and t.dtype == torch.bool)
        self.memory_bytes += t.numel() * t.element_size()
        self.packed_bytes += (t.numel() + 7) // 8 if binary else t.numel() * t.element_size()
        if kind == "packed":
            self.binary_params += t.numel() * t.element_size() * 8
        elif kind == "float":
            self.float_params += t.numel()
        elif kind == "maxplus":
            self.maxplus_params += t.numel()
        elif kind == "binary":
            self.binary_params += t.numel()

    def add_cost(self, cost: dict[str, int]) -> None:
        for key, value in cost.items():
            if key == "macs":
                self.macs = (self.macs or 0) + value
            elif key == "maxplus":
                self.maxplus_ops = (self.maxplus_ops or 0) + value
            elif key == "bitops":
                self.bitops = (self.bitops or 0) + value
            else:
                self.ops[key] = self.ops.get(key, 0) + value


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class Summary:
    """What :func:`summary` found; ``str()`` is a table, ``to_dict()`` / ``to_json()`` for tools."""

    model: str
    layers: list[LayerSummary]
    total: LayerSummary
    inputs: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        def row(layer: LayerSummary) -> dict[str, Any]:
            return {**asdict(layer), "params": layer.params}

        return {"model": self.model, "inputs": self.inputs, "note": self.note,
                "layers": [row(r) for r in self.layers], "total": row(self.total)}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kwargs)

    def __str__(self) -> str:
        extra = sorted({k for r in self.layers for k in r.ops})
        header = ["layer", "type", "output shape", "float", "max-plus", "binary", "memory",
                  "packed", "MACs", "max-plus ops", "bit ops", *extra]

        def cells(r: LayerSummary) -> list[str]:
            shape = "-" if r.output_shape is None else str(tuple(r.output_shape))
            return [r.name, r.type, shape, f"{r.float_params:,}", f"{r.maxplus_params:,}",
                    f"{r.binary_params:,}", _bytes(r.memory_bytes), _bytes(r.packed_bytes),
                    format_si(r.macs), format_si(r.maxplus_ops), format_si(r.bitops),
                    *(format_si(r.ops.get(k)) for k in extra)]

        table = [header, *(cells(r) for r in self.layers), cells(self.total)]
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        right = set(range(3, len(header)))

        def line(row: list[str]) -> str:
            return "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                             for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        rule = "-" * len(line(header))
        on = f" (measured on {self.inputs})" if self.inputs else " (no example inputs: no op counts)"
        t = self.total
        ratio = t.memory_bytes / t.packed_bytes if t.packed_bytes else 1.0
        lines = [f"tropfx summary: {self.model}{on}", line(header), rule,
                 *(line(cells(r)) for r in self.layers), rule, line(table[-1]),
                 f"params: {t.params:,} (float {t.float_params:,}, max-plus {t.maxplus_params:,}, "
                 f"binary {t.binary_params:,}); memory {_bytes(t.memory_bytes)}, packed "
                 f"{_bytes(t.packed_bytes)} ({ratio:.2f}x smaller)"]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _kinds(module: nn.Module) -> dict[int, str]:
    """id(parameter) -> its kind, for the parameters ``module`` owns directly."""
    tropical = set(getattr(module, "tropical_params", ()))
    binary = set(getattr(module, "binary_params", ()))
    kinds = {}
    for name, p in module.named_parameters(recurse=False):
        if name in binary or p.dtype == torch.bool:
            kinds[id(p)] = "binary"
        elif name in tropical:
            kinds[id(p)] = "maxplus"
        else:
            kinds[id(p)] = "float"
    for name in getattr(module, "packed_binary_buffers", ()):  # e.g. lowered binarized layers
        kinds[id(getattr(module, name))] = "packed"
    return kinds


class _Counter:
    """Assigns each tensor of the model to the first row that uses it."""

    def __init__(self, model: nn.Module) -> None:
        self.kind: dict[int, str | None] = {}
        for m in model.modules():
            self.kind.update(_kinds(m))
        for b in model.buffers():
            self.kind.setdefault(id(b), None)
        self.seen: set[int] = set()

    def add(self, row: LayerSummary, tensors: Iterable[torch.Tensor]) -> bool:
        added = False
        for t in tensors:
            if id(t) in self.seen or id(t) not in self.kind:
                continue
            self.seen.add(id(t))
            row.add_tensor(self.kind[id(t)], t)
            added = True
        return added


def _module_tensors(m: nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(), *(b for b in m.buffers() if b is not None)]


def _output_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _function_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return f".{target}()" if node.op == "call_method" else target
    return getattr(target, "__name__", str(target))


def summary(model: nn.Module, example_inputs: Any = None, *,
            leaf_modules: Iterable[str | type[nn.Module]] = ()) -> Summary:
    """Per-layer and total parameters (float / max-plus / binary), memory (stored and packed)
    and operation counts (MACs, max-plus ops, bit ops) of ``model`` on ``example_inputs``.

    ``model`` may be a compiled module or any ``nn.Module`` (traced here, with the same leaf
    rules as :func:`tropfx.compile`; a model whose root cannot be traced is summarized per
    module, without operation counts). ``example_inputs`` is a tensor or a tuple; without it
    there are no operation counts or shapes. ``model`` is not modified.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else (
        None if example_inputs is None else tuple(example_inputs))
    report = getattr(model, "report", None)  # a compiled module: the name of the model compiled
    name = getattr(report, "model", None) or type(model).__name__
    note = ""
    try:
        if isinstance(model, fx.GraphModule):
            # A new graph over the same submodules: measuring annotates nodes, not the caller's.
            graph = copy.deepcopy(model.graph)
            for node in graph.nodes:  # node meta is copied shallowly
                if "tropfx" in node.meta:
                    node.meta["tropfx"] = copy.deepcopy(node.meta["tropfx"])
            gm = fx.GraphModule(model, graph, class_name=name)
        else:
            gm, _ = trace(model, leaf_modules=leaf_modules)
    except TracingError as exc:
        gm = None
        note = f"not traceable, summarized per module without op counts: {exc}"
    if gm is None:
        layers, total = _per_module(model)
        return Summary(name, layers, total, "", note)

    total = LayerSummary("total", "")
    if inputs is not None:
        result = measure(gm, inputs)
        total.add_cost({"macs": result.macs, **result.counts})
    counter = _Counter(gm)
    rows: dict[str, LayerSummary] = {}
    for node in gm.graph.nodes:
        cost = node.meta.get("tropfx", {}).get("cost", {}) if inputs is not None else {}
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            row = rows.get(node.target)
            if row is None:
                row = rows[node.target] = LayerSummary(node.target, type(module).__name__)
                counter.add(row, _module_tensors(module))
        elif node.op in ("call_function", "call_method"):
            row = LayerSummary(node.name, _function_name(node))
            attrs = [a for a in (*node.args, *node.kwargs.values())
                     if isinstance(a, fx.Node) and a.op == "get_attr"]
            tensors = [_attr(gm, a.target) for a in attrs]
            owns = counter.add(row, [t for t in tensors if isinstance(t, torch.Tensor)])
            if not (owns or any(cost.values())):
                continue
            rows[node.name] = row
        else:
            continue
        row.add_cost(cost)
        row.output_shape = _output_shape(node)
    other = LayerSummary("(other)", "-")
    if counter.add(other, _module_tensors(gm)):
        rows[other.name] = other
    layers = list(rows.values())
    for layer in layers:
        for key in ("float_params", "maxplus_params", "binary_params", "memory_bytes",
                    "packed_bytes"):
            setattr(total, key, getattr(total, key) + getattr(layer, key))
    if inputs is not None:
        for layer in layers:  # a layer that ran has counts, 0 where it has none of a kind
            layer.macs = layer.macs or 0
            layer.maxplus_ops = layer.maxplus_ops or 0
            layer.bitops = layer.bitops or 0
        total.macs, total.maxplus_ops, total.bitops = (total.macs or 0, total.maxplus_ops or 0,
                                                       total.bitops or 0)
    return Summary(name, layers, total, describe_inputs(inputs) if inputs is not None else "", note)


def _attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _per_module(model: nn.Module) -> tuple[list[LayerSummary], LayerSummary]:
    counter = _Counter(model)
    layers, total = [], LayerSummary("total", "")
    for path, m in model.named_modules():
        row = LayerSummary(path or "(root)", type(m).__name__)
        own = [*m.parameters(recurse=False), *(b for b in m.buffers(recurse=False) if b is not None)]
        if counter.add(row, own):
            layers.append(row)
    for layer in layers:
        for key in ("float_params", "maxplus_params", "binary_params", "memory_bytes",
                    "packed_bytes"):
            setattr(total, key, getattr(total, key) + getattr(layer, key))
    return layers, total
