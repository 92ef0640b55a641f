"""Saving and loading compiled modules without pickle: ``tropfx.save(cm, path)``, ``tropfx.load(path)``.

A saved file is one ``torch.save`` archive of plain data that ``torch.load(weights_only=True)`` reads:

* ``tensors``: every parameter and buffer, once each (shared parameters stay shared);
* ``recipe``: a JSON document that rebuilds the module tree. A :class:`torch.fx.GraphModule` is its
  graph, node by node (op, target, args / kwargs with node references); any other module is its
  class, looked up by name in an allow-list, and its constructor config. ``call_function``
  targets are looked up by qualified name in an allow-list too. The compile report travels along.

Nothing in the file is code: loading imports no module the file names outside the allow-lists and
unpickles no object. The allow-lists hold the ``torch.nn`` layers, tropfx's layers (``tropfx.nn``)
and the functions of ``torch``, ``torch.nn.functional``, ``operator``, ``math``, ``tropfx.nn`` and
the ``torch.ops.aten`` / ``torch.ops.tropfx`` operators. :func:`register_serializable` adds a user
layer (with its constructor config) or function; register it in the process that loads, too.

How a module is rebuilt: ``cls(**config)`` (on the meta device when it allows, so no memory is
spent on weights that are replaced anyway), then its plain-data attributes, parameters, buffers
and children are set to the saved ones. The default config reads each constructor argument from
the attribute of the same name (``nn.Conv2d(in_channels=...)`` stores ``self.in_channels``);
``tropfx.save`` rebuilds every module once and refuses, naming the module, when that does not give
the same structure -- a file that saves always loads.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import inspect
import json
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import IO, Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY as _PRESERVED
from torch.fx.passes.shape_prop import TensorMetadata

from tropfx.errors import TropfxError
from tropfx.pass_base import Skip
from tropfx.report import Report, StageRow
from tropfx.tracing import AutoLeaf

__all__ = ["FORMAT", "SerializationError", "load", "register_serializable", "save"]

FORMAT = "tropfx.module"
VERSION = 1

PathOrFile = str | os.PathLike | IO[bytes]


class SerializationError(TropfxError, ValueError):
    """A module cannot be saved without code, or a file is not a valid tropfx module file."""


# --------------------------------------------------------------------------------------------------
# Allow-lists.

ConfigFn = Callable[[nn.Module], dict[str, Any]]
BuildFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class _ModuleEntry:
    cls: type[nn.Module]
    name: str
    config: ConfigFn
    build: BuildFn


_MODULES: dict[type, _ModuleEntry] = {}  # registered classes
_MODULE_NAMES: dict[str, _ModuleEntry] = {}
_FUNCTIONS: dict[str, Callable] = {}  # registered call_function targets, by name
_FUNCTION_NAMES: dict[Any, str] = {}

# Classes defined in these packages are allowed without registration (default config).
_MODULE_PACKAGES = ("torch.nn.modules.", "tropfx.nn.")
# call_function targets: the public functions defined in these modules (and tropfx.nn.*) ...
_FUNCTION_MODULES = frozenset({
    "operator", "math", "torch", "torch.functional", "torch.nn.functional", "torch._C._nn",
    "torch._C._linalg", "torch._C._fft", "torch._C._special", "torch.linalg", "torch.fft",
    "torch.special",
})
# ... these builtins (fx records x.shape as getattr(x, "shape")) ...
_BUILTINS = frozenset({"getattr", "len", "int", "float", "bool", "tuple", "list", "range", "slice",
                       "min", "max", "abs", "round", "sum"})
# ... and the operators of these torch.ops namespaces.
_OP_NAMESPACES = frozenset({"aten", "tropfx"})
# Node type annotations that are classes (string annotations are kept as they are).
_TYPES = {"torch.Tensor": torch.Tensor, "int": int, "float": float, "bool": bool, "str": str}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}
_NODE_OPS = frozenset({"placeholder", "get_attr", "call_function", "call_method", "call_module",
                       "output"})


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def register_serializable(obj: Any = None, *, name: str | None = None,
                          config: ConfigFn | None = None, build: BuildFn | None = None) -> Any:
    """Allow ``tropfx.save`` / ``tropfx.load`` to store a layer class or a graph function.

    For an ``nn.Module`` subclass, ``config(module) -> dict`` gives the constructor keyword
    arguments (default: each argument of ``__init__`` read from the attribute of the same name)
    and ``build(**config) -> module`` makes the module (default: the class). After building,
    tropfx sets the module's plain attributes, parameters, buffers and children to the saved
    ones, so ``config`` only needs to produce the right structure. For a function (a
    ``call_function`` target), nothing more is needed.

    ``name`` is the key in the file (default ``module.QualName``); register under the same name
    in the process that loads. Usable as a decorator, with or without arguments::

        @tropfx.register_serializable
        class MyBlock(nn.Module): ...

        tropfx.register_serializable(MyLayer, config=lambda m: {"width": m.weight.shape[0]})
    """
    if obj is None:
        return lambda o: register_serializable(o, name=name, config=config, build=build)
    key = name or _qualified(obj)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        entry = _ModuleEntry(obj, key, config or constructor_config, build or obj)
        _MODULES[obj] = entry
        _MODULE_NAMES[key] = entry
    elif callable(obj):
        if config is not None or build is not None:
            raise SerializationError(f"register_serializable({key}): config= and build= are for "
                                     "nn.Module classes; a function needs neither")
        _FUNCTIONS[key] = obj
        _FUNCTION_NAMES[obj] = key
    else:
        raise SerializationError(f"register_serializable expects an nn.Module class or a "
                                 f"function, got {type(obj).__name__}")
    return obj


def _module_entry(cls: type) -> _ModuleEntry | None:
    if cls in _MODULES:
        return _MODULES[cls]
    if cls.__module__.startswith(_MODULE_PACKAGES) and "<" not in cls.__qualname__:
        return _ModuleEntry(cls, _qualified(cls), constructor_config, cls)
    return None


def _module_class(name: str, path: str) -> _ModuleEntry:
    """The allow-listed class saved as ``name``; never imports outside the allowed packages."""
    if name in _MODULE_NAMES:
        return _MODULE_NAMES[name]
    module_name, _, attr = name.rpartition(".")
    cls = None
    if f"{module_name}.".startswith(_MODULE_PACKAGES) and attr.isidentifier():
        try:
            cls = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and _qualified(cls) == name):
        raise SerializationError(
            f"cannot load {_where(path)}: its class {name} is not allowed (tropfx.load "
            "builds torch.nn and tropfx.nn layers only); if you trust it, import it and call "
            f"tropfx.register_serializable({attr}) before tropfx.load"
        )
    return _module_entry(cls)


def _home(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    return "operator" if module == "_operator" else module


def _function_module_allowed(module: str) -> bool:
    return module in _FUNCTION_MODULES or module.startswith("tropfx.nn.")


def _function_name(fn: Any, node: fx.Node) -> str:
    """The name a call_function target is saved under (checked to resolve back to ``fn``)."""
    if fn in _FUNCTION_NAMES:
        return _FUNCTION_NAMES[fn]
    if isinstance(fn, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = f"torch.ops:{fn}"
    elif _home(fn) == "builtins":
        name = f"builtins:{getattr(fn, '__name__', '?')}"
    else:
        module = _home(fn)
        attr = getattr(fn, "__name__", "")
        if _function_module_allowed(module):
            space = importlib.import_module(module)
            if getattr(space, attr, None) is not fn:  # e.g. F.max_pool2d is a dispatcher "fn"
                attr = next((k for k, v in vars(space).items()
                             if v is fn and not k.startswith("_")), attr)
        name = f"{module}:{attr}"
    try:
        if _resolve_function(name) is fn:
            return name
    except SerializationError:
        pass
    shown = getattr(fn, "__qualname__", None) or repr(fn)
    raise SerializationError(
        f"cannot save node {node.name}: its function {_home(fn)}.{shown} is not in tropfx's "
        "allow-list (torch, torch.nn.functional, operator, math, tropfx.nn, torch.ops.aten / "
        "tropfx); if it is yours, call tropfx.register_serializable(fn) before saving and loading"
    )


def _resolve_function(name: str) -> Callable:
    if name in _FUNCTIONS:
        return _FUNCTIONS[name]
    module, _, attr = name.partition(":")
    parts = attr.split(".")
    if not attr or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        raise SerializationError(f"function {name!r} is not allowed")
    if module == "torch.ops":
        if parts[0] not in _OP_NAMESPACES or len(parts) not in (2, 3):
            raise SerializationError(f"operator {attr} is not in the allowed namespaces "
                                     f"{sorted(_OP_NAMESPACES)}")
        obj: Any = torch.ops
        try:
            for part in parts:
                obj = getattr(obj, part)
        except (AttributeError, RuntimeError) as exc:
            raise SerializationError(f"operator torch.ops.{attr} does not exist (is the extension "
                                     "that defines it loaded?)") from exc
        return obj
    if module == "builtins":
        if attr not in _BUILTINS:
            raise SerializationError(f"builtin {attr} is not allowed")
        return getattr(builtins, attr)
    if not _function_module_allowed(module) or len(parts) != 1:
        raise SerializationError(f"function {name!r} is not in an allowed module")
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError as exc:
        raise SerializationError(f"cannot import {module} for function {attr}") from exc
    if obj is None or isinstance(obj, type) or not callable(obj) \
            or not _function_module_allowed(_home(obj)):
        raise SerializationError(f"{module}.{attr} is not an allowed function")
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


def _build(entry: _ModuleEntry, config: dict[str, Any]) -> nn.Module:
    """``entry.build(**config)`` on the meta device if it works there, else on the CPU; never
    touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return entry.build(**config)
        except Exception:  # noqa: BLE001 - a constructor that needs real tensors: build on CPU
            return entry.build(**config)


# --------------------------------------------------------------------------------------------------
# Plain data <-> JSON. Every JSON object is a tag {"$": kind, "v": ...}, so lists, tuples, dicts and
# node references stay distinct.

_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)


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


def _decode(value: Any, nodes: dict[str, fx.Node] | None = None) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    kind, v = value.get("$"), value.get("v")
    if kind == "tuple":
        return tuple(_decode(x, nodes) for x in v)
    if kind == "dict":
        return {_decode(k, nodes): _decode(x, nodes) for k, x in v}
    if kind == "node":
        if nodes is None or v not in nodes:
            raise SerializationError(f"the file refers to an unknown node {v!r}")
        return nodes[v]
    if kind == "float" and v in ("inf", "-inf", "nan"):
        return float(v)
    if kind == "slice":
        return slice(*(_decode(x, nodes) for x in v))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "torch":
        constant = getattr(torch, str(v), None)
        if isinstance(constant, _TORCH_CONSTANTS):
            return constant
    if kind == "device":
        return torch.device(v)
    if kind == "tensor_meta":
        return TensorMetadata(*(_decode(x, nodes) for x in v))
    raise SerializationError(f"the file holds an unknown value {value!r:.80}")


# --------------------------------------------------------------------------------------------------
# Saving.


def _where(path: str) -> str:
    return f"module {path!r}" if path else "the root module"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Saver:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.tensor_keys: dict[int, str] = {}
        self.module_paths: dict[int, str] = {}

    def tensor(self, t: torch.Tensor, key: str, path: str) -> str:
        if id(t) in self.tensor_keys:
            return self.tensor_keys[id(t)]
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise SerializationError(f"cannot save {key}: it is an uninitialized (lazy) parameter; "
                                     "run the model once first")
        if type(t) not in (torch.Tensor, nn.Parameter, nn.Buffer):
            raise SerializationError(f"cannot save {key} of {_where(path)}: it is a "
                                     f"{type(t).__name__}, not a plain tensor")
        self.tensor_keys[id(t)] = key
        self.tensors[key] = t.detach()
        return key

    def module(self, m: nn.Module, path: str) -> dict[str, Any]:
        if id(m) in self.module_paths:
            return {"alias": self.module_paths[id(m)]}
        self.module_paths[id(m)] = path
        if isinstance(m, fx.GraphModule):
            recipe = self.graph_module(m, path)
        else:
            recipe = self.plain_module(m, path)
        recipe["training"] = m.training
        recipe["params"] = {
            k: None if p is None else {"key": self.tensor(p, _join(path, k), path),
                                       "requires_grad": p.requires_grad}
            for k, p in m._parameters.items()
        }
        recipe["buffers"] = {k: None if b is None else self.tensor(b, _join(path, k), path)
                             for k, b in m._buffers.items()}
        recipe["non_persistent"] = sorted(m._non_persistent_buffers_set)
        recipe["children"] = {k: None if c is None else self.module(c, _join(path, k))
                              for k, c in m._modules.items()}
        return recipe

    def graph_module(self, gm: fx.GraphModule, path: str) -> dict[str, Any]:
        recipe: dict[str, Any] = {"kind": "graph", "class_name": type(gm).__name__,
                                  "nodes": _graph_recipe(gm, path)}
        report = getattr(gm, "report", None)
        if isinstance(report, Report):
            recipe["report"] = json.loads(report.to_json())
        return recipe

    def plain_module(self, m: nn.Module, path: str) -> dict[str, Any]:
        entry = _module_entry(type(m))
        if entry is None:
            cls = type(m).__name__
            raise SerializationError(
                f"cannot save {_where(path)} ({_qualified(type(m))}): tropfx.save stores "
                "no code, and only torch.nn and tropfx.nn layers are allowed by default. Compile "
                f"the model so that it becomes a graph of layers (tropfx.compile), or register "
                f"the class with tropfx.register_serializable({cls}) (and config=... if its "
                "constructor arguments are not stored as attributes of the same name)"
            )
        what = f"{_where(path)} ({type(m).__name__})"
        try:
            config = dict(entry.config(m))
        except SerializationError as exc:
            raise SerializationError(f"cannot save {what}: {exc}; register it with "
                                     "tropfx.register_serializable(cls, config=...)") from exc
        encoded_config = _encode(config, f"the config of {what}")
        attrs = _extra_attrs(m)
        encoded_attrs = {"$": "dict", "v": [[k, _encode(v, f"attribute {k!r} of {what}")]
                                            for k, v in attrs.items()]}
        self.check_rebuild(m, entry, config, attrs, what)
        return {"kind": "module", "class": entry.name, "config": encoded_config,
                "attrs": encoded_attrs}

    @staticmethod
    def check_rebuild(m: nn.Module, entry: _ModuleEntry, config: dict, attrs: dict,
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
        missing = sorted(set(_extra_attrs(rebuilt)) - set(attrs))
        if missing:
            raise SerializationError(f"cannot save {what}: the rebuilt module has attributes "
                                     f"{missing} that the saved one lacks; {hint}")
        for hooks in _HOOKS:
            if len(getattr(m, hooks)) > len(getattr(rebuilt, hooks)):
                raise SerializationError(f"cannot save {what}: it has {hooks.strip('_')} "
                                         "registered, and hooks are code; remove them first")


def _graph_recipe(gm: fx.GraphModule, path: str) -> list[dict[str, Any]]:
    if type(gm.graph._codegen) is not fx.graph.CodeGen:
        raise SerializationError(f"cannot save the graph of {_where(path)}: it uses "
                                 f"{type(gm.graph._codegen).__name__} (pytree inputs or outputs); "
                                 "only flat positional inputs are supported")
    nodes = []
    for node in gm.graph.nodes:
        where = f"node {node.name} of {_where(path)}"
        target = node.target
        if node.op == "call_function":
            target = _function_name(target, node)
        elif not isinstance(target, str):
            raise SerializationError(f"cannot save {where}: target {target!r} is not a name")
        entry = {"name": node.name, "op": node.op, "target": target,
                 "args": _encode(node.args, where), "kwargs": _encode(node.kwargs, where)}
        # Type annotations only show in the generated code; keep the usual ones.
        if isinstance(node.type, str):
            entry["type"] = node.type
        elif node.type in _TYPE_NAMES:
            entry["type_class"] = _TYPE_NAMES[node.type]
        meta = {}
        for key in ("tropfx", "tensor_meta"):  # best effort: facts for later passes
            if key in node.meta:
                with contextlib.suppress(SerializationError):
                    meta[key] = _encode(node.meta[key], where)
        if meta:
            entry["meta"] = meta
        nodes.append(entry)
    return nodes




def save(module: nn.Module, f: PathOrFile) -> None:
    """Save ``module`` -- usually a compiled ``GraphModule`` -- to ``f`` (a path or binary file).

    The file holds the graph, the weights and the compile report as plain data (see the module
    docs); :func:`load` rebuilds it with ``torch.load(weights_only=True)``. Raises
    :class:`SerializationError` naming the module or node that cannot be stored without code,
    and what to do. ``module`` is not modified.
    """
    if not isinstance(module, nn.Module):
        raise SerializationError(f"tropfx.save expects an nn.Module, got {type(module).__name__}")
    saver = _Saver()
    root = saver.module(module, "")
    from tropfx import __version__

    recipe = {"root": root, "tropfx": __version__, "torch": torch.__version__}
    torch.save({"format": FORMAT, "version": VERSION, "recipe": json.dumps(recipe),
                "tensors": saver.tensors}, f)


# --------------------------------------------------------------------------------------------------
# Loading.


class _Loader:
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.params: dict[str, nn.Parameter] = {}
        self.modules: dict[str, nn.Module] = {}

    def tensor(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise SerializationError(f"the file lacks tensor {key!r}")
        return self.tensors[key]

    def param(self, spec: dict[str, Any]) -> nn.Parameter:
        key = spec["key"]
        if key not in self.params:
            self.params[key] = nn.Parameter(self.tensor(key), requires_grad=spec["requires_grad"])
        return self.params[key]

    def module(self, recipe: dict[str, Any], path: str) -> nn.Module:
        if "alias" in recipe:
            if recipe["alias"] not in self.modules:
                raise SerializationError(f"{_where(path)} aliases unknown {recipe['alias']!r}")
            return self.modules[recipe["alias"]]
        kind = recipe.get("kind")
        if kind == "module":
            entry = _module_class(recipe["class"], path)
            config = _decode(recipe["config"])
            try:
                m = _build(entry, config)
            except Exception as exc:
                raise SerializationError(f"cannot rebuild {_where(path)}: "
                                         f"{entry.name}(**{config}) raised {exc}") from exc
            attrs = _decode(recipe["attrs"])
            bad = [k for k in attrs if not isinstance(k, str) or k in _INTERNAL or k.startswith("__")]
            if bad:
                raise SerializationError(f"{_where(path)}: the file sets reserved attributes {bad}")
            m.__dict__.update(attrs)
        elif kind == "graph":
            m = nn.Module()
        else:
            raise SerializationError(f"{_where(path)} has unknown kind {kind!r}")
        self.modules[path] = m
        m._parameters.clear()
        for k, spec in recipe["params"].items():
            m._parameters[k] = None if spec is None else self.param(spec)
        m._buffers.clear()
        for k, key in recipe["buffers"].items():
            m._buffers[k] = None if key is None else self.tensor(key)
        m._non_persistent_buffers_set = set(recipe["non_persistent"])
        m._modules.clear()
        for k, child in recipe["children"].items():
            m._modules[k] = None if child is None else self.module(child, _join(path, k))
        if kind == "graph":
            m = self.graph_module(m, recipe, path)
            self.modules[path] = m
        m.training = bool(recipe["training"])
        return m

    @staticmethod
    def graph_module(root: nn.Module, recipe: dict[str, Any], path: str) -> fx.GraphModule:
        graph = fx.Graph()
        nodes: dict[str, fx.Node] = {}
        for entry in recipe["nodes"]:
            op, target, name = entry["op"], entry["target"], entry["name"]
            if op not in _NODE_OPS:
                raise SerializationError(f"node {name} of {_where(path)} has unknown op {op!r}")
            args, kwargs = _decode(entry["args"], nodes), _decode(entry["kwargs"], nodes)
            if op == "call_function":
                target = _resolve_function(target)
                if target is builtins.getattr and not (len(args) >= 2 and isinstance(args[1], str)
                                                       and not args[1].startswith("_")):
                    raise SerializationError(f"node {name}: getattr of a private attribute")
            elif op == "call_method" and (not target.isidentifier() or target.startswith("_")):
                raise SerializationError(f"node {name}: method {target!r} is not allowed")
            elif op in ("get_attr", "call_module") and not _is_attr_path(target):
                raise SerializationError(f"node {name}: attribute {target!r} is not allowed")
            annotation = _TYPES.get(entry["type_class"]) if "type_class" in entry else entry.get("type")
            node = graph.create_node(op, target, tuple(args), dict(kwargs), name=name,
                                     type_expr=annotation if isinstance(annotation, (str, type)) else None)
            if node.name != name:
                raise SerializationError(f"the file has two nodes named {name!r}")
            node.meta.update({k: _decode(v) for k, v in entry.get("meta", {}).items()})
            nodes[name] = node
        try:
            graph.lint()
            class_name = recipe["class_name"]
            if not (isinstance(class_name, str) and class_name.isidentifier()):
                raise SerializationError(f"class name {class_name!r} is not an identifier")
            gm = fx.GraphModule(root, graph, class_name=class_name)
        except Exception as exc:
            raise SerializationError(f"the graph of {_where(path)} is invalid: {exc}") from exc
        # GraphModule copies only what nodes reference (with fresh containers): keep the saved tree.
        for registry in ("_parameters", "_buffers", "_modules"):
            setattr(gm, registry, getattr(root, registry))
        gm._non_persistent_buffers_set = root._non_persistent_buffers_set
        if "report" in recipe:
            gm.report = _report_from_dict(recipe["report"])
            gm.meta.setdefault(_PRESERVED, {})["report"] = gm.report
        return gm


def _is_attr_path(target: Any) -> bool:
    """``features.0.weight``, ``_tensor_constant0``: no dunders (no ``__class__``)."""
    return isinstance(target, str) and all(
        (part.isidentifier() or part.isdigit()) and not part.startswith("__")
        for part in target.split("."))


def _fields_of(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _report_from_dict(data: dict[str, Any]) -> Report:
    rows = []
    for row in data.get("rows", []):
        row = _fields_of(StageRow, row)
        row["skipped"] = [Skip(**_fields_of(Skip, s)) for s in row.get("skipped", [])]
        rows.append(StageRow(**row))
    leaves = [AutoLeaf(**_fields_of(AutoLeaf, a)) for a in data.get("leaves", [])]
    return Report(model=data.get("model", ""), rows=rows, leaves=leaves,
                  seconds=data.get("seconds", 0.0), inputs=data.get("inputs", ""))


def load(f: PathOrFile, *, map_location: Any = "cpu") -> nn.Module:
    """Load a module saved by :func:`save`: the ``GraphModule`` with its weights and ``.report``.

    Reads the file with ``torch.load(weights_only=True)`` and rebuilds the module from its recipe
    through the allow-lists; no code stored in the file runs. ``map_location`` is passed to
    ``torch.load`` (default: CPU). User layers and functions saved after
    :func:`register_serializable` must be registered again before loading.
    """
    try:
        blob = torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise SerializationError(f"no such file: {f}") from exc
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SerializationError(f"{f} is not a tropfx module file (torch.load with "
                                 f"weights_only=True refused it: {first})") from exc
    if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
        raise SerializationError(f"{f} is not a tropfx module file (saved by tropfx.save); a "
                                 "state_dict loads with model.load_state_dict(torch.load(...))")
    if not isinstance(blob.get("version"), int) or blob["version"] > VERSION:
        raise SerializationError(f"{f} has format version {blob.get('version')}; this tropfx "
                                 f"reads up to {VERSION}: upgrade tropfx")
    try:
        recipe = json.loads(blob["recipe"])
        return _Loader(blob["tensors"]).module(recipe["root"], "")
    except (KeyError, TypeError, AttributeError) as exc:
        raise SerializationError(f"{f} is corrupt: {type(exc).__name__}: {exc}") from exc
