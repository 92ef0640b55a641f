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
``clamp``       input, min, max, inplace (``ReLU6``, ``Hardtanh``, ``clamp`` / ``clip`` /
                ``clamp_min`` / ``clamp_max``; a missing bound is ``None``)
``threshold``   input, threshold, value, inplace (``y = x if x > threshold else value``)
``maximum``     input, other (element-wise, NaN-propagating; ``minimum`` likewise)
``leaky_relu``  input, negative_slope, inplace
``amax``        input, dim, keepdim (``amin`` likewise)
``max``         input, dim, keepdim: ``torch.max`` / ``x.max``; ``dim`` is a node for the
                element-wise ``torch.max(x, other)`` (``min`` likewise)
``adaptive_max_pool``  input, ndim, output_size, return_indices
``activation``  input, kind: a nonlinearity with no exact tropical form (GELU, SiLU, Sigmoid,
                Hardswish, ELU, ...), recognized so that passes can list what they did not rewrite
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
    # the function's own keyword names that differ from the canonical ones (min_val -> min)
    aliases: Mapping[str, str] = field(default_factory=dict)

    def bind(self, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        if len(args) > len(self.params):
            return None
        bound = dict(self.defaults)
        bound.update(zip(self.params, args, strict=False))
        for key, value in kwargs.items():
            key = self.aliases.get(key, key)
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
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Teach :func:`match_op` that ``call_function`` nodes of ``fn`` are ``op``.

    ``params`` names the positional parameters of ``fn`` in order, in canonical names;
    ``defaults`` gives values of omitted ones and ``fixed`` values implied by ``fn`` itself;
    ``aliases`` maps ``fn``'s own keyword names to canonical ones where they differ.
    """
    _FUNCTIONS[fn] = _Signature(op, tuple(params), dict(defaults or {}), dict(fixed or {}),
                                dict(aliases or {}))


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
    # F.max_poolNd(..., return_indices=True) traces as its _with_indices twin.
    register_function(getattr(F, f"max_pool{_nd}d_with_indices"), "max_pool",
                      (*_MAX_POOL_PARAMS, "return_indices"), _defaults,
                      {"ndim": _nd, "return_indices": True})
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

# --- clipped ReLUs: clamp(x, min, max) in every spelling ------------------------------------------

register_module(nn.Hardtanh, "clamp", lambda m: {  # nn.ReLU6 is a Hardtanh(0, 6)
    "min": m.min_val, "max": m.max_val, "inplace": m.inplace})
register_function(F.relu6, "clamp", ("input", "inplace"), {"inplace": False}, {"min": 0.0, "max": 6.0})
_HARDTANH_NAMES = {"min_val": "min", "max_val": "max"}
register_function(F.hardtanh, "clamp", ("input", "min", "max", "inplace"),
                  {"min": -1.0, "max": 1.0, "inplace": False}, aliases=_HARDTANH_NAMES)
register_function(F.hardtanh_, "clamp", ("input", "min", "max"), {"min": -1.0, "max": 1.0},
                  {"inplace": True}, aliases=_HARDTANH_NAMES)
for _fn in (torch.clamp, torch.clip):
    register_function(_fn, "clamp", ("input", "min", "max"), {"min": None, "max": None},
                      {"inplace": False})
for _fn in (torch.clamp_, torch.clip_):
    register_function(_fn, "clamp", ("input", "min", "max"), {"min": None, "max": None},
                      {"inplace": True})
for _name in ("clamp", "clip", "clamp_", "clip_"):
    register_method(_name, "clamp", ("input", "min", "max"), {"min": None, "max": None},
                    {"inplace": _name.endswith("_")})
for _side, _other in (("min", "max"), ("max", "min")):
    register_function(getattr(torch, f"clamp_{_side}"), "clamp", ("input", _side), fixed={
        _other: None, "inplace": False})
    for _suffix in ("", "_"):
        register_method(f"clamp_{_side}{_suffix}", "clamp", ("input", _side), fixed={
            _other: None, "inplace": _suffix == "_"})

for _fn in {F.threshold, getattr(F, "_threshold", F.threshold), torch.threshold}:
    register_function(_fn, "threshold", ("input", "threshold", "value", "inplace"), {"inplace": False})
for _fn in (F.threshold_, torch.threshold_):
    register_function(_fn, "threshold", ("input", "threshold", "value"), fixed={"inplace": True})
register_module(nn.Threshold, "threshold", lambda m: {
    "threshold": m.threshold, "value": m.value, "inplace": m.inplace})

for _op in ("maximum", "minimum"):
    register_function(getattr(torch, _op), _op, ("input", "other"))
    register_method(_op, _op, ("input", "other"))

register_function(F.leaky_relu, "leaky_relu", ("input", "negative_slope", "inplace"),
                  {"negative_slope": 0.01, "inplace": False})
register_function(F.leaky_relu_, "leaky_relu", ("input", "negative_slope"),
                  {"negative_slope": 0.01}, {"inplace": True})
register_module(nn.LeakyReLU, "leaky_relu", lambda m: {"negative_slope": m.negative_slope,
                                                       "inplace": m.inplace})

# --- global and adaptive max: amax over dims, adaptive max pooling --------------------------------

# torch.max / torch.min: a reduction when ``dim`` is an int (returning values and indices), the
# element-wise maximum / minimum when the second argument is a tensor (then ``dim`` holds it).
for _op in ("max", "min"):
    register_function(getattr(torch, _op), _op, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
    register_method(_op, _op, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
for _op in ("amax", "amin"):
    register_function(getattr(torch, _op), _op, ("input", "dim", "keepdim"), {"dim": (), "keepdim": False})
    register_method(_op, _op, ("input", "dim", "keepdim"), {"dim": (), "keepdim": False})
for _nd in (1, 2, 3):
    _fn = getattr(F, f"adaptive_max_pool{_nd}d")
    register_function(_fn, "adaptive_max_pool", ("input", "output_size", "return_indices"),
                      {"return_indices": False}, {"ndim": _nd})
    register_function(getattr(F, f"adaptive_max_pool{_nd}d_with_indices"), "adaptive_max_pool",
                      ("input", "output_size", "return_indices"), {}, {"ndim": _nd,
                                                                      "return_indices": True})
    register_module(getattr(nn, f"AdaptiveMaxPool{_nd}d"), "adaptive_max_pool", lambda m, nd=_nd: {
        "ndim": nd, "output_size": m.output_size, "return_indices": m.return_indices})

# --- nonlinearities with no exact tropical form (listed by the passes, never rewritten) -----------

_ACTIVATIONS: dict[str, tuple[tuple[Callable, ...], tuple[str, ...], dict[str, Any],
                              tuple[type[nn.Module], ...], tuple[str, ...]]] = {
    # kind: (functions, their parameters after input, defaults, module types, tensor methods)
    "GELU": ((F.gelu,), ("approximate",), {"approximate": "none"}, (nn.GELU,), ()),
    "SiLU": ((F.silu,), ("inplace",), {"inplace": False}, (nn.SiLU,), ()),
    "Mish": ((F.mish,), ("inplace",), {"inplace": False}, (nn.Mish,), ()),
    "Hardswish": ((F.hardswish,), ("inplace",), {"inplace": False}, (nn.Hardswish,), ()),
    "Hardsigmoid": ((F.hardsigmoid,), ("inplace",), {"inplace": False}, (nn.Hardsigmoid,), ()),
    "Sigmoid": ((torch.sigmoid, F.sigmoid, torch.sigmoid_), (), {}, (nn.Sigmoid,),
                ("sigmoid", "sigmoid_")),
    "Tanh": ((torch.tanh, F.tanh, torch.tanh_), (), {}, (nn.Tanh,), ("tanh", "tanh_")),
    "ELU": ((F.elu, F.elu_), ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}, (nn.ELU,), ()),
    "CELU": ((F.celu,), ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}, (nn.CELU,), ()),
    "SELU": ((F.selu, torch.selu), ("inplace",), {"inplace": False}, (nn.SELU,), ()),
    "Softplus": ((F.softplus,), ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0},
                 (nn.Softplus,), ()),
    "PReLU": ((F.prelu, torch.prelu), ("weight",), {}, (nn.PReLU,), ()),
    "RReLU": ((F.rrelu,), ("lower", "upper", "training", "inplace"),
              {"lower": 1 / 8, "upper": 1 / 3, "training": False, "inplace": False}, (nn.RReLU,), ()),
    "LogSigmoid": ((F.logsigmoid,), (), {}, (nn.LogSigmoid,), ()),
    "Softsign": ((F.softsign,), (), {}, (nn.Softsign,), ()),
    "Tanhshrink": ((F.tanhshrink,), (), {}, (nn.Tanhshrink,), ()),
    "GLU": ((F.glu,), ("dim",), {"dim": -1}, (nn.GLU,), ()),
    "Hardshrink": ((F.hardshrink,), ("lambd",), {"lambd": 0.5}, (nn.Hardshrink,), ()),
    "Softshrink": ((F.softshrink,), ("lambd",), {"lambd": 0.5}, (nn.Softshrink,), ()),
}
for _kind, (_fns, _params, _defaults, _modules, _methods) in _ACTIVATIONS.items():
    for _fn in _fns:
        register_function(_fn, "activation", ("input", *_params), _defaults, {"kind": _kind})
    for _cls in _modules:
        register_module(_cls, "activation", lambda m, kind=_kind: {"kind": kind})
    for _name in _methods:
        register_method(_name, "activation", ("input",), fixed={"kind": _kind})
