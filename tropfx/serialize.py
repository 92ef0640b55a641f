"""Saving and loading compiled modules without code: ``tropfx.save(cm, path)``, ``tropfx.load(path)``.

A saved file is one ``torch.save`` archive of plain data that ``torch.load(weights_only=True)`` reads:

* ``tensors``: every parameter and buffer, once each (shared parameters stay shared);
* ``recipe``: a JSON document that rebuilds the module tree. A :class:`torch.fx.GraphModule` is its
  graph, node by node (op, target, args / kwargs with node references); any other module is its
  class, looked up by name in a table, and its constructor config. ``call_function`` targets and
  ``call_method`` names are looked up in tables too; the recipe declares each tensor's shape and
  dtype; the compile report travels along.

Nothing in the file is code, and :mod:`tropfx.serialize_gate` decides what a file may hold: it
checks the archive before ``torch.load`` reads it, resolves every name through explicit tables and
checks every string torch.fx writes into the generated ``forward``. ``save`` runs the same checks
on what it writes, so a file that saves also loads. :func:`register_serializable` adds a user
layer (with its constructor config) or function; register it in the process that loads, too.

How a module is rebuilt: ``cls(**config)`` (on the meta device when it allows, so no memory is
spent on weights that are replaced anyway), then its plain-data attributes, parameters, buffers
and children are set to the saved ones. The default config reads each constructor argument from
the attribute of the same name (``nn.Conv2d(in_channels=...)`` stores ``self.in_channels``);
``tropfx.save`` rebuilds every module once and refuses, naming the module, when that does not give
the same structure.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import inspect
import json
import math
import os
import re
from dataclasses import fields
from typing import Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY as _PRESERVED
from torch.fx.passes.shape_prop import TensorMetadata
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from tropfx import serialize_gate as gate
from tropfx.pass_base import Skip
from tropfx.report import Report, StageRow
from tropfx.serialize_gate import (
    FORMAT,
    VERSION,
    BuildFn,
    ConfigFn,
    PathOrFile,
    SerializationError,
)
from tropfx.tracing import AutoLeaf

__all__ = ["FORMAT", "SerializationError", "load", "register_serializable", "save"]

# Node type annotations that are classes (string annotations are kept when they are names).
_TYPES = {"torch.Tensor": torch.Tensor, "int": int, "float": float, "bool": bool, "str": str}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}
_NODE_OPS = frozenset({"placeholder", "get_attr", "call_function", "call_method", "call_module",
                       "output"})
_META_KEYS = ("tropfx", "tensor_meta")  # node facts that travel (plain data)


def register_serializable(obj: Any = None, *, name: str | None = None,
                          config: ConfigFn | None = None, build: BuildFn | None = None) -> Any:
    """Add a layer class or a graph function to the tables of ``tropfx.save`` / ``tropfx.load``.

    For an ``nn.Module`` subclass, ``config(module) -> dict`` gives the constructor keyword
    arguments (default: each argument of ``__init__`` read from the attribute of the same name)
    and ``build(**config) -> module`` makes the module (default: the class). After building,
    tropfx sets the module's plain attributes, parameters, buffers and children to the saved
    ones, so ``config`` only needs to produce the right structure. For a function (a
    ``call_function`` target), nothing more is needed; register only pure tensor computations:
    a loaded file may call it with any arguments. Functions that do I/O or change process state
    (``torch.load``, ``torch.set_num_threads``, ``operator.setitem`` ...) are refused.

    ``name`` is the key in the file (default ``module.QualName``); register under the same name
    in the process that loads. Usable as a decorator, with or without arguments::

        @tropfx.register_serializable
        class MyBlock(nn.Module): ...

        tropfx.register_serializable(MyLayer, config=lambda m: {"width": m.weight.shape[0]})
        tropfx.register_serializable(torchvision.ops.stochastic_depth)
    """
    if obj is None:
        return lambda o: register_serializable(o, name=name, config=config, build=build)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)) and name is None:
        name = gate.qualified(obj) if hasattr(obj, "__qualname__") else None
    gate.register(obj, name, config, build)
    return obj


# --------------------------------------------------------------------------------------------------
# Constructor configs.


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device,
                                           torch.layout, torch.memory_format)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def constructor_config(module: nn.Module) -> dict[str, Any]:
    """The keyword arguments that rebuild ``module``: each argument of its class's ``__init__``
    read from the attribute of the same name. A parameter argument given as a bool
    (``bias=True``) is read as "the parameter exists". Arguments with defaults that are not
    stored as plain data are left at their default (``device``, ``dtype``, ``generator``)."""
    config: dict[str, Any] = {}
    params = list(inspect.signature(type(module).__init__).parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            continue
        has_default = p.default is not p.empty
        if p.name in module._parameters or p.name in module._buffers:
            if isinstance(p.default, bool):
                config[p.name] = getattr(module, p.name) is not None
                continue
            value = inspect.Parameter.empty  # a tensor: restored from the saved ones anyway
        else:
            value = getattr(module, p.name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and _is_plain(value):
            config[p.name] = value
        elif not has_default:
            raise SerializationError(
                f"{type(module).__name__}.__init__ needs {p.name!r}, which the module does not "
                "store as a plain attribute of that name"
            )
    return config


_INTERNAL = frozenset(vars(nn.Module()))
_HOOKS = tuple(k for k in _INTERNAL if k.endswith("hooks"))


def _extra_attrs(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k not in _INTERNAL}


class _AllocationCap(TorchDispatchMode):
    """Refuses, before it runs, any torch operation that would take the build past ``limit``
    bytes of new tensors: a constructor that cannot run on the meta device is run on the CPU
    from the file's config, and a tampered config (a huge shape) must not allocate first.

    Each operation is run on the meta device first (its outputs' sizes, no memory); one that
    cannot (``.item()``, data-dependent shapes) is bounded by its inputs' and size arguments'
    product instead."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()
        self.limit, self.what, self.used = limit, what, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        need = self._bytes(func, args, kwargs)
        if self.used + need > self.limit:
            raise SerializationError(
                f"{self.what}: building it from the file's config would allocate at least "
                f"{self.used + need:,} bytes ({func}), more than max_bytes={self.limit:,}; the "
                "config does not match the saved tensors (a tampered file?) or, if you trust "
                "it, raise max_bytes")
        self.used += need
        return func(*args, **kwargs)

    @staticmethod
    def _bytes(func: Any, args: tuple, kwargs: dict) -> int:
        def meta(x: Any) -> Any:
            return x.to("meta") if isinstance(x, torch.Tensor) else x

        # Factory functions (zeros, ones, arange ...) take no tensor: their device goes to meta.
        kwargs = {**pytree.tree_map(meta, kwargs), **({"device": torch.device("meta")}
                                                      if "device" in kwargs else {})}
        try:
            out = func(*pytree.tree_map(meta, args), **kwargs)
            return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(out)
                       if isinstance(t, torch.Tensor))
        except Exception:  # noqa: BLE001 - no meta kernel, or a data-dependent shape: bound it
            bound = max([1] + [t.numel() for t in pytree.tree_leaves((args, kwargs))
                               if isinstance(t, torch.Tensor)])
            for x in pytree.tree_leaves((args, kwargs)):
                if type(x) is int and x > 1:
                    bound *= x
            return bound * 16  # the widest element (complex128)


def _build(entry: gate.ModuleEntry, config: dict[str, Any], max_bytes: int | None = None,
           what: str = "") -> nn.Module:
    """``entry.build(**config)`` on the meta device if it works there, else on the CPU (within
    ``max_bytes`` of new tensors when given: :class:`_AllocationCap`); never touching the
    caller's random state."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return entry.build(**config)
        except Exception:  # noqa: BLE001 - a constructor that needs real tensors: build on CPU
            if max_bytes is None:
                return entry.build(**config)
            with _AllocationCap(max_bytes, what):
                return entry.build(**config)


def _shape_mismatch(built: nn.Module, tensors: dict[str, Any]) -> str | None:
    """The first tensor of ``tensors`` whose shape differs from the one that ``built`` (a module
    made from its config, on the meta device or the CPU) has under that name, described; None
    if all agree.
    A config must describe the saved tensors: a file whose config names a huge ``shape`` and
    whose records are small is refused, not half-believed."""
    for key, t in tensors.items():
        made = built._parameters.get(key, built._buffers.get(key))
        if isinstance(made, torch.Tensor) and isinstance(t, torch.Tensor) \
                and made.shape != t.shape:
            return (f"its config implies {key!r} of shape {list(made.shape)}, but the tensor "
                    f"has shape {list(t.shape)}")
    return None


def _attr_name_ok(cls: type, name: Any) -> bool:
    """A plain attribute a file may set: an identifier that is not nn.Module's bookkeeping, not a
    dunder, and does not shadow a method (``forward``, ``extra_repr``)."""
    return isinstance(name, str) and _attr_name_ok_cached(cls, name)


@functools.lru_cache(maxsize=4096)
def _attr_name_ok_cached(cls: type, name: str) -> bool:
    return (name.isidentifier() and name not in _INTERNAL and not name.startswith("__")
            and not callable(getattr(cls, name, None)))


@functools.lru_cache(maxsize=4096)
def _class_attribute(cls: type, name: str) -> bool:
    return hasattr(cls, name)


# --------------------------------------------------------------------------------------------------
# Plain data <-> JSON. Every JSON object is a tag {"$": kind, "v": ...}, so lists, tuples, dicts and
# node references stay distinct. Decoded values are of a closed set of types whose repr is a
# literal: torch.fx writes them into generated code with repr.

_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)
_JSON_SCALARS = frozenset({type(None), bool, int, float, str})
_KEY_TYPES = (str, int, float, bool, type(None), tuple)


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$": "float", "v": repr(value)}
    if isinstance(value, fx.Node):
        return {"$": "node", "v": value.name}
    if isinstance(value, TensorMetadata):
        return {"$": "tensor_meta", "v": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, tuple):  # torch.Size included
        return {"$": "tuple", "v": [_encode(v, where) for v in value]}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[_encode(k, where), _encode(v, where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"$": "slice", "v": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"$": "ellipsis"}
    if isinstance(value, _TORCH_CONSTANTS):
        return {"$": "torch", "v": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"$": "device", "v": str(value)}
    raise SerializationError(f"cannot save {where}: it holds a {type(value).__name__} "
                             f"({value!r:.80}), which is not plain data")


class _Decoder:
    """JSON -> plain data, refusing anything else; ``nodes`` resolves node references (graph
    arguments), ``meta`` admits tensor metadata (node facts only)."""

    def __init__(self, where: str, nodes: dict[str, fx.Node] | None = None,
                 meta: bool = False) -> None:
        self.where, self.nodes, self.meta = where, nodes, meta

    def __call__(self, value: Any) -> Any:
        kind = type(value)
        if kind in _JSON_SCALARS:
            return value
        if kind is list:
            return [x if type(x) in _JSON_SCALARS else self(x) for x in value]
        if kind is not dict:
            raise self.error(value)
        kind, v = value.get("$"), value.get("v")
        # Scalars are returned inline (no call): they are most of a recipe's values.
        if kind == "tuple" and type(v) is list:  # the most frequent tag first: args, shapes
            return tuple([x if type(x) in _JSON_SCALARS else self(x) for x in v])
        if kind == "dict" and type(v) is list:
            out = {}
            for kv in v:
                if type(kv) is not list or len(kv) != 2:
                    raise self.error(value)
                key, x = kv
                if type(key) is not str:
                    key = self(key)
                    if not isinstance(key, _KEY_TYPES):
                        raise self.error(value)
                out[key] = x if type(x) in _JSON_SCALARS else self(x)
            return out
        if kind == "node":
            if self.nodes is None or not isinstance(v, str) or v not in self.nodes:
                raise SerializationError(f"{self.where}: refers to an unknown node {v!r:.80}")
            return self.nodes[v]
        if kind == "ellipsis":
            return Ellipsis
        if kind == "float" and v in ("inf", "-inf", "nan"):
            return float(v)
        if kind == "slice" and type(v) is list and len(v) == 3:
            parts = [self(x) for x in v]
            if all(p is None or isinstance(p, (int, fx.Node)) for p in parts):
                return slice(*parts)
        if kind == "torch" and isinstance(v, str) and v.isidentifier():
            constant = getattr(torch, v, None)
            if isinstance(constant, _TORCH_CONSTANTS):
                return constant
        if kind == "device" and isinstance(v, str):
            try:
                return torch.device(v)
            except (RuntimeError, ValueError) as exc:
                raise SerializationError(f"{self.where}: bogus device {v!r:.80}") from exc
        if kind == "tensor_meta" and self.meta and type(v) is list and \
                len(v) == len(TensorMetadata._fields):
            return TensorMetadata(*(self(x) for x in v))
        raise self.error(value)

    def error(self, value: Any) -> SerializationError:
        return SerializationError(f"{self.where}: the file holds an unknown value {value!r:.80}")


# --------------------------------------------------------------------------------------------------
# Saving: every name goes through the gate's checks, as load will check it.


def _where(path: str) -> str:
    return f"module {path!r}" if path else "the root module"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Saver:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.tensor_keys: dict[int, str] = {}
        self.module_paths: dict[int, str] = {}
        self.open: set[int] = set()  # modules being saved: their descendants may not alias them

    def tensor(self, t: torch.Tensor, key: str, path: str) -> str:
        if id(t) in self.tensor_keys:
            return self.tensor_keys[id(t)]
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise SerializationError(f"cannot save {key}: it is an uninitialized (lazy) parameter; "
                                     "run the model once first")
        if type(t) not in (torch.Tensor, nn.Parameter, nn.Buffer) or t.layout != torch.strided:
            raise SerializationError(f"cannot save {key} of {_where(path)}: it is a "
                                     f"{type(t).__name__} ({t.layout}), not a plain dense tensor")
        self.tensor_keys[id(t)] = key
        # An expanded view (stride 0) is stored as the tensor it describes: load refuses records
        # that describe more elements than they hold.
        self.tensors[key] = t.detach().clone() if gate.expanded(t) else t.detach()
        return key

    def module(self, m: nn.Module, path: str) -> dict[str, Any]:
        if id(m) in self.module_paths:
            if id(m) in self.open:
                raise SerializationError(f"cannot save {_where(path)}: it is its own ancestor "
                                         f"{_where(self.module_paths[id(m)])} (a cycle)")
            return {"alias": self.module_paths[id(m)]}
        self.module_paths[id(m)] = path
        self.open.add(id(m))
        where = f"cannot save {_where(path)}"
        if isinstance(m, fx.GraphModule):
            recipe = self.graph_module(m, path)
        else:
            recipe = self.plain_module(m, path)
        recipe["training"] = m.training
        recipe["params"] = {
            gate.check_segment(k, "parameter", where):
                None if p is None else {"key": self.tensor(p, _join(path, k), path),
                                        "requires_grad": p.requires_grad}
            for k, p in m._parameters.items()
        }
        recipe["buffers"] = {gate.check_segment(k, "buffer", where):
                             None if b is None else self.tensor(b, _join(path, k), path)
                             for k, b in m._buffers.items()}
        recipe["non_persistent"] = sorted(m._non_persistent_buffers_set)
        recipe["children"] = {gate.check_segment(k, "child module", where):
                              None if c is None else self.module(c, _join(path, k))
                              for k, c in m._modules.items()}
        self.open.discard(id(m))
        return recipe

    def graph_module(self, gm: fx.GraphModule, path: str) -> dict[str, Any]:
        class_name = type(gm).__name__
        gate.check_identifier(class_name, "class name", f"cannot save {_where(path)}")
        recipe: dict[str, Any] = {"kind": "graph", "class_name": class_name,
                                  "nodes": _graph_recipe(gm, path)}
        report = getattr(gm, "report", None)
        if isinstance(report, Report):
            recipe["report"] = json.loads(report.to_json())
        return recipe

    def plain_module(self, m: nn.Module, path: str) -> dict[str, Any]:
        entry = gate.module_entry(type(m))
        if entry is None:
            cls = type(m).__name__
            raise SerializationError(
                f"cannot save {_where(path)} ({gate.qualified(type(m))}): tropfx.save stores "
                "no code, and only the torch.nn and tropfx.nn layers in its tables are allowed by "
                "default. Compile the model so that it becomes a graph of layers (tropfx.compile), "
                f"or register the class with tropfx.register_serializable({cls}) (and config=... "
                "if its constructor arguments are not stored as attributes of the same name)"
            )
        what = f"{_where(path)} ({type(m).__name__})"
        try:
            config = dict((entry.config or constructor_config)(m))
        except SerializationError as exc:
            raise SerializationError(f"cannot save {what}: {exc}; register it with "
                                     "tropfx.register_serializable(cls, config=...)") from exc
        for key in config:
            gate.check_identifier(key, "constructor argument", f"cannot save {what}")
        encoded_config = _encode(config, f"the config of {what}")
        attrs = _extra_attrs(m)
        bad = [k for k in attrs if not _attr_name_ok(type(m), k)]
        if bad:
            raise SerializationError(f"cannot save {what}: its attributes {bad} are not plain "
                                     "names that a file may set (dunders, or shadowing methods)")
        encoded_attrs = {"$": "dict", "v": [[k, _encode(v, f"attribute {k!r} of {what}")]
                                            for k, v in attrs.items()]}
        self.check_rebuild(m, entry, config, attrs, what)
        return {"kind": "module", "class": entry.name, "config": encoded_config,
                "attrs": encoded_attrs}

    @staticmethod
    def check_rebuild(m: nn.Module, entry: gate.ModuleEntry, config: dict, attrs: dict,
                      what: str) -> None:
        """Build the module from its config now, so that a file that saves also loads."""
        hint = (f"register {type(m).__name__} with tropfx.register_serializable(cls, config=...) "
                "so that its constructor rebuilds it")
        try:
            rebuilt = _build(entry, config)
        except Exception as exc:
            raise SerializationError(f"cannot save {what}: {type(m).__name__}(**{config}) raised "
                                     f"{type(exc).__name__}: {exc}; {hint}") from exc
        if type(rebuilt) is not type(m):
            raise SerializationError(f"cannot save {what}: its build gives a "
                                     f"{type(rebuilt).__name__}; {hint}")
        mismatch = _shape_mismatch(rebuilt, {**m._parameters, **m._buffers})
        if mismatch:
            raise SerializationError(f"cannot save {what}: {mismatch}; {hint}")
        missing = sorted(set(_extra_attrs(rebuilt)) - set(attrs))
        if missing:
            raise SerializationError(f"cannot save {what}: the rebuilt module has attributes "
                                     f"{missing} that the saved one lacks; {hint}")
        for hooks in _HOOKS:
            if len(getattr(m, hooks)) > len(getattr(rebuilt, hooks)):
                raise SerializationError(f"cannot save {what}: it has {hooks.strip('_')} "
                                         "registered, and hooks are code; remove them first")


def _function_name(fn: Any, where: str) -> str:
    """The name a call_function target is saved under (one the gate resolves back to ``fn``)."""
    name = gate.function_name(fn)
    if name is not None:
        return name
    shown = f"{gate.home(fn)}.{getattr(fn, '__qualname__', None) or repr(fn)}"
    raise SerializationError(
        f"{where}: its function {shown} is not in tropfx's tables (pure tensor functions of "
        "torch, torch.nn.functional, operator, math and tropfx); if it is a pure tensor "
        f"computation, call tropfx.register_serializable({shown}) before saving and loading")


def _check_target(op: str, target: Any, args: tuple, where: str) -> Any:
    """The gate's check of a node's target, shared by save and load; returns the resolved one."""
    if op == "placeholder":
        return gate.check_placeholder(target, where)
    if op in ("get_attr", "call_module"):
        return gate.check_path(target, "attribute", where)
    if op == "call_method":
        return gate.check_method(target, where)
    if op == "output":
        if target != "output":
            raise SerializationError(f"{where}: an output node's target must be 'output'")
        return target
    fn = gate.resolve_function(target, where) if isinstance(target, str) else target
    if fn is builtins.getattr:
        gate.check_getattr(args, where)
    return fn


def _graph_recipe(gm: fx.GraphModule, path: str) -> list[dict[str, Any]]:
    if type(gm.graph._codegen) is not fx.graph.CodeGen:
        raise SerializationError(f"cannot save the graph of {_where(path)}: it uses "
                                 f"{type(gm.graph._codegen).__name__} (pytree inputs or outputs); "
                                 "only flat positional inputs are supported")
    nodes = []
    for node in gm.graph.nodes:
        where = f"cannot save node {node.name} of {_where(path)}"
        gate.check_identifier(node.name, "node name", where)
        target = node.target
        if node.op == "call_function":
            target = _function_name(target, where)
        resolved = _check_target(node.op, target, node.args, where)
        gate.check_kwargs(resolved, node.op, list(node.kwargs), where)
        entry = {"name": node.name, "op": node.op, "target": target,
                 "args": _encode(node.args, where), "kwargs": _encode(node.kwargs, where)}
        # Type annotations only show in the generated code; keep the usual ones.
        if gate.check_type_name(node.type):
            entry["type"] = node.type
        elif node.type in _TYPE_NAMES:
            entry["type_class"] = _TYPE_NAMES[node.type]
        meta = {}
        for key in _META_KEYS:  # best effort: facts for later passes, of the shapes load accepts
            if key in node.meta and _facts_ok({key: node.meta[key]}):
                with contextlib.suppress(SerializationError):
                    meta[key] = _encode(node.meta[key], where)
        if meta:
            entry["meta"] = meta
        nodes.append(entry)
    return nodes


def save(module: nn.Module, f: PathOrFile) -> None:
    """Save ``module`` -- usually a compiled ``GraphModule`` -- to ``f`` (a path or binary file).

    The file holds the graph, the weights and the compile report as plain data (see the module
    docs); :func:`load` rebuilds it. Raises :class:`SerializationError` naming the module or node
    that cannot be stored without code, or that :func:`load` would refuse, and what to do (often:
    the function or class to pass to :func:`register_serializable`). ``module`` is not modified.
    """
    if not isinstance(module, nn.Module):
        raise SerializationError(f"tropfx.save expects an nn.Module, got {type(module).__name__}")
    saver = _Saver()
    root = saver.module(module, "")
    from tropfx import __version__

    declared = {k: gate.tensor_spec(t) for k, t in saver.tensors.items()}
    text = json.dumps({"root": root, "tensors": declared, "tropfx": __version__,
                       "torch": torch.__version__})
    gate.check_depth(text, f"cannot save {type(module).__name__}")
    torch.save({"format": FORMAT, "version": VERSION, "recipe": text,
                "tensors": saver.tensors}, f)


# --------------------------------------------------------------------------------------------------
# Loading: the tree first (aliases only to modules already complete), then each graph node by node.


class _Loader:
    def __init__(self, tensors: dict[str, torch.Tensor], max_bytes: int | None = None) -> None:
        self.tensors, self.max_bytes = tensors, max_bytes
        self.params: dict[str, nn.Parameter] = {}
        self.done: dict[str, nn.Module] = {}  # complete modules: what an alias may name

    def tensor(self, key: Any, where: str) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise SerializationError(f"{where}: the file lacks tensor {key!r:.80}")
        return self.tensors[key]

    def param(self, spec: Any, where: str) -> nn.Parameter:
        if not (isinstance(spec, dict) and isinstance(spec.get("requires_grad"), bool)):
            raise SerializationError(f"{where}: invalid parameter record {spec!r:.80}")
        key = spec.get("key")
        if key not in self.params:
            self.params[key] = nn.Parameter(self.tensor(key, where),
                                            requires_grad=spec["requires_grad"])
        return self.params[key]

    def module(self, recipe: Any, path: str) -> nn.Module:
        where = f"cannot load {_where(path)}"
        if not isinstance(recipe, dict):
            raise SerializationError(f"{where}: its record is not an object")
        if "alias" in recipe:
            alias = recipe["alias"]
            if not isinstance(alias, str) or alias not in self.done:
                raise SerializationError(f"{where}: it aliases {alias!r:.80}, which is not a module "
                                         "complete before it (an ancestor, or unknown)")
            return self.done[alias]
        kind = recipe.get("kind")
        if kind == "module":
            m = self.plain_module(recipe, path, where)
        elif kind == "graph":
            m = nn.Module()
        else:
            raise SerializationError(f"{where}: unknown kind {kind!r:.40}")
        self.registries(m, recipe, path, where)
        if kind == "graph":
            m = _graph_module(m, recipe, path)
        m.training = bool(recipe.get("training"))
        self.done[path] = m
        return m

    def plain_module(self, recipe: dict, path: str, where: str) -> nn.Module:
        entry = gate.module_class(recipe.get("class"), _where(path))
        config = _Decoder(where)(recipe.get("config"))
        if not isinstance(config, dict):
            raise SerializationError(f"{where}: its config is not a dict")
        for key in config:
            gate.check_identifier(key, "constructor argument", where)
        try:
            m = _build(entry, config, self.max_bytes, where)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"{where}: {entry.name}(**{config!r:.200}) raised "
                                     f"{type(exc).__name__}: {exc}") from exc
        attrs = _Decoder(where)(recipe.get("attrs"))
        if not isinstance(attrs, dict):
            raise SerializationError(f"{where}: its attributes are not a dict")
        bad = [k for k in attrs if not _attr_name_ok(type(m), k)]
        if bad:
            raise SerializationError(f"{where}: the file sets reserved attributes {bad!r:.120}")
        m.__dict__.update(attrs)
        return m

    def registries(self, m: nn.Module, recipe: dict, path: str, where: str) -> None:
        """Parameters, buffers and children, by nn.Module's registration rules."""
        params, buffers = recipe.get("params"), recipe.get("buffers")
        children, non_persistent = recipe.get("children"), recipe.get("non_persistent")
        if not (isinstance(params, dict) and isinstance(buffers, dict)
                and isinstance(children, dict) and isinstance(non_persistent, list)):
            raise SerializationError(f"{where}: its record lacks parameters, buffers or children")
        for names, what in ((params, "parameter"), (buffers, "buffer"), (children, "child module")):
            for k in names:
                gate.check_segment(k, what, where)
        # nn.Module.add_module / register_parameter / register_buffer's rule, checked once for
        # all names: a name is one thing, and never an attribute of the module or its class.
        taken = [k for k in (*params, *buffers, *children)
                 if k in m.__dict__ or _class_attribute(type(m), k)]
        if taken or len(params) + len(buffers) + len(children) != \
                len({*params, *buffers, *children}):
            raise SerializationError(f"{where}: the names {sorted(taken)!r:.120} are taken twice "
                                     "or are attributes of the module")
        saved_params = {k: None if spec is None else self.param(spec, where)
                        for k, spec in params.items()}
        saved_buffers = {k: None if key is None else self.tensor(key, where)
                         for k, key in buffers.items()}
        mismatch = _shape_mismatch(m, {**saved_params, **saved_buffers})
        if mismatch:
            raise SerializationError(f"{where}: {mismatch} (a tampered file?)")
        m._parameters, m._buffers = saved_params, saved_buffers
        m._non_persistent_buffers_set = {k for k in non_persistent if k in buffers}
        m._modules = {}
        for k, child in children.items():
            m._modules[k] = None if child is None else self.module(child, _join(path, k))


def _facts_ok(facts: dict[str, Any]) -> bool:
    """Node facts of the shapes later passes and `tropfx summary` read."""
    def shapes_ok(meta: Any) -> bool:  # one tensor's metadata, or a container of them
        if isinstance(meta, TensorMetadata):
            return isinstance(meta.shape, tuple) and isinstance(meta.dtype, torch.dtype) and \
                all(type(d) is int for d in meta.shape)
        if isinstance(meta, (tuple, list)):
            return all(shapes_ok(m) for m in meta)
        if isinstance(meta, dict):
            return all(shapes_ok(m) for m in meta.values())
        return meta is None

    tropfx_facts = facts.get("tropfx", {})
    if not shapes_ok(facts.get("tensor_meta")):
        return False
    cost = tropfx_facts.get("cost", {}) if isinstance(tropfx_facts, dict) else None
    return isinstance(cost, dict) and all(isinstance(k, str) and type(v) is int
                                          for k, v in cost.items())


def _resolve(root: nn.Module, target: str, tensor: bool) -> bool:
    """Whether ``target`` names a submodule (or a parameter / buffer), by the registries only."""
    *parents, last = target.split(".")
    m = root
    for part in parents:
        m = m._modules.get(part)
        if m is None:
            return False
    if tensor:
        return isinstance(m._parameters.get(last), torch.Tensor) or \
            isinstance(m._buffers.get(last), torch.Tensor)
    return m._modules.get(last) is not None


def _graph_module(root: nn.Module, recipe: dict, path: str) -> fx.GraphModule:
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    entries = recipe.get("nodes")
    if not isinstance(entries, list):
        raise SerializationError(f"cannot load the graph of {_where(path)}: it has no node list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SerializationError(f"node {i} of {_where(path)} is not an object")
        name = gate.check_identifier(entry.get("name"), "node name", f"node {i} of {_where(path)}")
        where = f"node {name} of {_where(path)}"
        op = entry.get("op")
        if op not in _NODE_OPS:
            raise SerializationError(f"{where} has unknown op {op!r:.40}")
        decode = _Decoder(where, nodes)
        args, kwargs = decode(entry.get("args")), decode(entry.get("kwargs"))
        if not (isinstance(args, tuple) and isinstance(kwargs, dict)):
            raise SerializationError(f"{where}: its args are not a tuple or kwargs not a dict")
        target = _check_target(op, entry.get("target"), args, where)
        gate.check_kwargs(target, op, list(kwargs), where)
        if op == "get_attr" and not _resolve(root, target, tensor=True):
            raise SerializationError(f"{where}: {target!r} is not a parameter or buffer")
        if op == "call_module" and not _resolve(root, target, tensor=False):
            raise SerializationError(f"{where}: {target!r} is not a submodule")
        type_expr = _TYPES.get(entry["type_class"]) if "type_class" in entry else entry.get("type")
        if type_expr is not None and not (type_expr in _TYPE_NAMES or gate.check_type_name(type_expr)):
            raise SerializationError(f"{where}: type annotation {type_expr!r:.80} is not a name")
        node = graph.create_node(op, target, args, kwargs, name=name, type_expr=type_expr)
        if node.name != name:
            raise SerializationError(f"{where}: torch.fx names it {node.name!r} (a name taken "
                                     "twice, or a builtin's)")
        meta = entry.get("meta", {})
        if not (isinstance(meta, dict) and set(meta) <= set(_META_KEYS)):
            raise SerializationError(f"{where}: unknown node facts {sorted(meta)!r:.80}")
        facts = {k: _Decoder(where, meta=True)(v) for k, v in meta.items()}
        if not _facts_ok(facts):
            raise SerializationError(f"{where}: invalid node facts {meta!r:.120}")
        node.meta.update(facts)
        nodes[name] = node
    class_name = gate.check_identifier(recipe.get("class_name"), "class name",
                                       f"the graph of {_where(path)}")
    try:
        graph.lint()
        gm = fx.GraphModule(root, graph, class_name=class_name)
    except Exception as exc:
        raise SerializationError(f"the graph of {_where(path)} is invalid: {exc}") from exc
    # GraphModule copies only what nodes reference (with fresh containers): keep the saved tree.
    for registry in ("_parameters", "_buffers", "_modules"):
        setattr(gm, registry, getattr(root, registry))
    gm._non_persistent_buffers_set = root._non_persistent_buffers_set
    if "report" in recipe:
        gm.report = _report_from_dict(recipe["report"], path)
        gm.meta.setdefault(_PRESERVED, {})["report"] = gm.report
    return gm


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _fields_of(cls: type, data: Any) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _report_from_dict(data: Any, path: str) -> Report:
    try:
        rows = []
        for row in data.get("rows", []):
            row = _fields_of(StageRow, row)
            row["skipped"] = [Skip(**_fields_of(Skip, s)) for s in row.get("skipped", [])]
            rows.append(StageRow(**row))
        leaves = [AutoLeaf(**_fields_of(AutoLeaf, a)) for a in data.get("leaves", [])]
        report = Report(model=data.get("model", ""), rows=rows, leaves=leaves,
                        seconds=data.get("seconds", 0.0), inputs=data.get("inputs", ""))
        # A report that cannot print, or would print terminal escape sequences, is refused
        # here, not when `tropfx summary FILE` prints it.
        if _CONTROL.search(str(report)):
            raise ValueError("it holds control characters (terminal escape sequences)")
        report.to_json()
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise SerializationError(f"the report of {_where(path)} is invalid: {exc}") from exc
    return report


def load(f: PathOrFile, *, map_location: Any = "cpu", max_bytes: int | None = None) -> nn.Module:
    """Load a module saved by :func:`save`: the ``GraphModule`` with its weights and ``.report``.

    The file goes through :mod:`tropfx.serialize_gate` before anything is built: its zip records
    may expand to at most ``max_bytes`` (default: 4x the file's size; raise it for a file you
    trust that was recompressed), ``torch.load(weights_only=True)`` reads plain data only, and
    every name in the recipe is resolved through tropfx's tables. No code stored in the file
    runs, no file is touched, no process-wide setting changes, whether the module is loaded or
    called. Raises :class:`SerializationError` saying what was refused and where.
    ``map_location`` is passed to ``torch.load`` (default: CPU). User layers and functions saved
    after :func:`register_serializable` must be registered again before loading.
    """
    fh, name, size = gate.open_file(f)
    try:
        limit = gate.default_max_bytes(size) if max_bytes is None else int(max_bytes)
        gate.check_archive(fh, name, limit)
        try:
            # A path is read by torch's own zip reader (faster than through a Python file).
            source = os.fspath(f) if isinstance(f, str | os.PathLike) else fh
            blob = torch.load(source, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere in torch.load
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SerializationError(f"{name} is not a tropfx module file (torch.load with "
                                     f"weights_only=True refused it: {first:.300})") from exc
        gate.check_blob(blob, name)
        recipe = gate.parse_recipe(blob["recipe"], name)
        declared = recipe.get("tensors") if blob["version"] >= 2 else None
        gate.check_tensors(blob["tensors"], declared, name)
        try:
            return _Loader(blob["tensors"], limit).module(recipe["root"], "")
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"{name} is corrupt: {type(exc).__name__}: {exc}") from exc
    finally:
        if fh is not f:
            fh.close()
