"""Recognize an operation in any of its torch spellings.

``nn.ReLU(inplace=True)``, ``F.relu``, ``torch.relu``, ``x.relu()`` and ``x.relu_()`` are five FX
nodes of three kinds (``call_module``, ``call_function``, ``call_method``) that mean one thing. Passes
ask :func:`match_op` once and get the operation's name and its arguments under canonical names,
whatever the spelling. The tables are registries: users add their own spellings with
:func:`register_function`, :func:`register_method` and :func:`register_module`.

Canonical operations and their arguments (``input`` is always the main tensor operand):

==============  =================================================================================
``relu``        input, inplace
``max_pool``    input, ndim, kernel_size, stride, padding, dilation, ceil_mode, return_indices
``avg_pool``    input, ndim, kernel_size, stride, padding, ceil_mode, count_include_pad
``batch_norm``  input, running_mean, running_var, weight, bias, training, momentum, eps
``conv``        input, ndim, weight, bias, stride, padding, dilation, groups
``linear``      input, weight, bias
``add``         input, other, alpha
``cat``         tensors, dim
``flatten``     input, start_dim, end_dim
==============  =================================================================================

For module spellings, tensor arguments (weights, running statistics) are the module's tensors; for
function spellings they are whatever the graph passes, usually ``get_attr`` nodes, which
:func:`constant_value` resolves.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "OpMatch",
    "constant_value",
    "is_op",
    "match_op",
    "register_function",
    "register_method",
    "register_module",
]

@dataclass(frozen=True)
class _Signature:
    """How the positional / keyword arguments of one call spelling map to canonical names."""

    op: str
    params: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # implied by the spelling itself, e.g. relu_ -> inplace=True
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def bind(self, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        if len(args) > len(self.params):
            return None
        bound = dict(self.defaults)
        bound.update(zip(self.params, args, strict=False))
        for key, value in kwargs.items():
            if key not in self.params:
                return None  # a spelling we do not know: decline rather than guess
            bound[key] = value
        if any(p not in bound for p in self.params):
            return None
        bound.update(self.fixed)
        return bound


@dataclass(frozen=True)
class _ModuleSpelling:
    op: str
    attrs: Callable[[nn.Module], dict[str, Any]]


@dataclass(frozen=True)
class OpMatch:
    """A node recognized as a canonical operation."""

    op: str
    args: dict[str, Any]
    module: nn.Module | None = field(default=None, repr=False)  # set for call_module spellings

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


_FUNCTIONS: dict[Callable, _Signature] = {}
_METHODS: dict[str, _Signature] = {}
_MODULES: dict[type[nn.Module], _ModuleSpelling] = {}


def register_function(
    fn: Callable,
    op: str,
    params: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> None:
    """Teach :func:`match_op` that ``call_function`` nodes of ``fn`` are ``op``.

    ``params`` names the positional parameters of ``fn`` in order, in canonical names;
    ``defaults`` gives values of omitted ones and ``fixed`` values implied by ``fn`` itself.
    """
    _FUNCTIONS[fn] = _Signature(op, tuple(params), dict(defaults or {}), dict(fixed or {}))


def register_method(
    name: str,
    op: str,
    params: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> None:
    """Teach :func:`match_op` that ``call_method`` nodes named ``name`` are ``op``.

    ``params`` starts with the receiver (``"input"``).
    """
    _METHODS[name] = _Signature(op, tuple(params), dict(defaults or {}), dict(fixed or {}))


def register_module(
    module_type: type[nn.Module], op: str, attrs: Callable[[nn.Module], dict[str, Any]]
) -> None:
    """Teach :func:`match_op` that calls of ``module_type`` (and subclasses) are ``op``.

    ``attrs(module)`` returns the canonical arguments other than ``input``.
    """
    _MODULES[module_type] = _ModuleSpelling(op, attrs)


def _module_spelling(module: nn.Module) -> _ModuleSpelling | None:
    for cls in type(module).__mro__:
        if cls in _MODULES:
            return _MODULES[cls]
    return None


def match_op(node: fx.Node, gm: fx.GraphModule | None = None) -> OpMatch | None:
    """Return the canonical operation ``node`` performs, or ``None`` if it is none we know.

    ``gm`` (default: the graph's owning module) resolves ``call_module`` targets.
    """
    if node.op == "call_function" and node.target in _FUNCTIONS:
        sig = _FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in _METHODS:
        sig = _METHODS[node.target]
    elif node.op == "call_module":
        owner = gm if gm is not None else node.graph.owning_module
        if owner is None:
            return None
        try:
            module = owner.get_submodule(node.target)
        except AttributeError:
            return None
        spelling = _module_spelling(module)
        if spelling is None or len(node.args) != 1 or node.kwargs:
            return None
        return OpMatch(spelling.op, {"input": node.args[0], **spelling.attrs(module)}, module)
    else:
        return None
    bound = sig.bind(node.args, node.kwargs)
    return None if bound is None else OpMatch(sig.op, bound)


def is_op(node: fx.Node, op: str | Iterable[str], gm: fx.GraphModule | None = None) -> bool:
    """True when ``node`` performs ``op`` (a canonical name, or any of several) in any spelling."""
    found = match_op(node, gm)
    if found is None:
        return False
    return found.op == op if isinstance(op, str) else found.op in set(op)


def constant_value(value: Any, gm: fx.GraphModule) -> Any:
    """Resolve a ``get_attr`` node to the tensor it reads; other non-node values pass through.

    Raises ``LookupError`` for a node computed at run time (its value is not a constant).
    """
    if isinstance(value, fx.Node):
        if value.op != "get_attr":
            raise LookupError(f"{value.name} is computed at run time, not a stored tensor")
        obj: Any = gm
        for part in value.target.split("."):
            obj = getattr(obj, part)
        return obj
    return value


# --- the built-in spellings -------------------------------------------------------------------

for _fn in (F.relu, torch.relu, torch.nn.functional.relu_, torch.relu_):
    register_function(
        _fn, "relu", ("input", "inplace"), {"inplace": False},
        {"inplace": True} if _fn in (torch.relu_, F.relu_) else None,
    )
register_method("relu", "relu", ("input",), fixed={"inplace": False})
register_method("relu_", "relu", ("input",), fixed={"inplace": True})
register_module(nn.ReLU, "relu", lambda m: {"inplace": m.inplace})


def _pool_stride(m: nn.Module) -> Any:
    return m.stride if m.stride is not None else m.kernel_size


_MAX_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
for _nd, _fn, _tfn, _cls in (
    (1, F.max_pool1d, torch.max_pool1d, nn.MaxPool1d),
    (2, F.max_pool2d, torch.max_pool2d, nn.MaxPool2d),
    (3, F.max_pool3d, torch.max_pool3d, nn.MaxPool3d),
):
    _defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                 "return_indices": False}
    register_function(_fn, "max_pool", (*_MAX_POOL_PARAMS, "return_indices"), _defaults,
                      {"ndim": _nd})
    # torch.max_poolNd spells "stride = kernel" as an empty list.
    register_function(_tfn, "max_pool", _MAX_POOL_PARAMS, {**_defaults, "stride": ()},
                      {"ndim": _nd, "return_indices": False})
    register_module(_cls, "max_pool", lambda m, nd=_nd: {
        "ndim": nd, "kernel_size": m.kernel_size, "stride": _pool_stride(m),
        "padding": m.padding, "dilation": m.dilation, "ceil_mode": m.ceil_mode,
        "return_indices": m.return_indices})

_AVG_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
for _nd, _fn, _cls in ((1, F.avg_pool1d, nn.AvgPool1d), (2, F.avg_pool2d, nn.AvgPool2d),
                       (3, F.avg_pool3d, nn.AvgPool3d)):
    register_function(_fn, "avg_pool", _AVG_POOL_PARAMS + (("divisor_override",) if _nd > 1 else ()),
                      {"stride": None, "padding": 0, "ceil_mode": False,
                       "count_include_pad": True, "divisor_override": None}, {"ndim": _nd})
    register_module(_cls, "avg_pool", lambda m, nd=_nd: {
        "ndim": nd, "kernel_size": m.kernel_size, "stride": _pool_stride(m),
        "padding": m.padding, "ceil_mode": m.ceil_mode,
        "count_include_pad": m.count_include_pad,
        "divisor_override": getattr(m, "divisor_override", None)})

register_function(
    F.batch_norm, "batch_norm",
    ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5},
)
register_function(
    torch.batch_norm, "batch_norm",
    ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps",
     "cudnn_enabled"),
)
# BatchNorm uses batch statistics when training *or* when it keeps no running statistics.
register_module(nn.modules.batchnorm._BatchNorm, "batch_norm", lambda m: {
    "running_mean": m.running_mean, "running_var": m.running_var, "weight": m.weight,
    "bias": m.bias, "training": m.training or m.running_mean is None,
    "momentum": m.momentum, "eps": m.eps})

_CONV_PARAMS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
for _nd, _fn, _tfn, _cls in ((1, F.conv1d, torch.conv1d, nn.Conv1d),
                             (2, F.conv2d, torch.conv2d, nn.Conv2d),
                             (3, F.conv3d, torch.conv3d, nn.Conv3d)):
    for _f in {_fn, _tfn}:
        register_function(_f, "conv", _CONV_PARAMS, _CONV_DEFAULTS, {"ndim": _nd})
    register_module(_cls, "conv", lambda m, nd=_nd: {
        "ndim": nd, "weight": m.weight, "bias": m.bias, "stride": m.stride,
        "padding": m.padding, "dilation": m.dilation, "groups": m.groups})

register_function(F.linear, "linear", ("input", "weight", "bias"), {"bias": None})
register_module(nn.Linear, "linear", lambda m: {"weight": m.weight, "bias": m.bias})

for _fn in (operator.add, operator.iadd):
    register_function(_fn, "add", ("input", "other"), fixed={"alpha": 1})
register_function(torch.add, "add", ("input", "other", "alpha"), {"alpha": 1})
register_method("add", "add", ("input", "other", "alpha"), {"alpha": 1})
register_method("add_", "add", ("input", "other", "alpha"), {"alpha": 1})

for _fn in (torch.cat, torch.concat):
    register_function(_fn, "cat", ("tensors", "dim"), {"dim": 0})

register_function(torch.flatten, "flatten", ("input", "start_dim", "end_dim"),
                  {"start_dim": 0, "end_dim": -1})
register_method("flatten", "flatten", ("input", "start_dim", "end_dim"),
                {"start_dim": 0, "end_dim": -1})
register_module(nn.Flatten, "flatten", lambda m: {"start_dim": m.start_dim,
                                                   "end_dim": m.end_dim})
