"""Tracing models to FX graphs, keeping untraceable submodules as leaves.

:func:`trace` is ``torch.fx.symbolic_trace`` with two additions. ``leaf_modules`` names submodules
(by qualified name or type) to keep as opaque ``call_module`` nodes. And a submodule whose ``forward``
cannot be traced (data-dependent control flow, calls into numpy, ...) does not fail the whole model:
the *innermost* module whose ``forward`` raised is made a leaf and tracing starts over, so the rest of
the model is still rewritten. Only a failure in the root's own ``forward`` is an error.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from tropfx.errors import TracingError

__all__ = ["AutoLeaf", "register_leaf", "trace"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_LEAF_TYPES: set[type[nn.Module]] = set()


def register_leaf(*module_types: type[nn.Module]) -> None:
    """Always keep these module types as single ``call_module`` nodes (tropfx's own layers are:
    passes rewrite and lower them as units)."""
    _LEAF_TYPES.update(module_types)


@dataclass(frozen=True)
class AutoLeaf:
    """A submodule kept as a leaf because its ``forward`` could not be traced."""

    path: str
    module_type: str
    reason: str


def _user_frame(exc: BaseException) -> str:
    """``file:line in fn: source`` of the innermost frame outside torch, or '' if none."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
    return ""


def _describe(exc: BaseException) -> str:
    where = _user_frame(exc)
    what = f"{type(exc).__name__}: {exc}".strip()
    return f"{what} (at {where})" if where else what


class _LeafTracer(fx.Tracer):
    """A tracer with user-chosen leaves that remembers which module's forward raised."""

    # No-argument construction is needed: unpickling a GraphModule re-traces with its tracer class.
    def __init__(self, leaf_names: set[str] = frozenset(), leaf_types: tuple[type, ...] = ()):
        super().__init__()
        self.leaf_names = leaf_names
        self.leaf_types = leaf_types
        self.culprit: tuple[str, nn.Module, BaseException] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.leaf_names
            or isinstance(m, self.leaf_types)
            or type(m) in _LEAF_TYPES
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            # The exception unwinds through every enclosing call_module; the first one to see it
            # is the innermost module, the smallest one to keep as a leaf.
            if self.culprit is None:
                try:
                    path = self.path_of_module(m)
                except NameError:
                    path = None  # not a registered submodule: blame the caller instead
                if path:
                    self.culprit = (path, m, exc)
            raise


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> tuple[fx.GraphModule, list[AutoLeaf]]:
    """Trace ``model`` to a ``GraphModule``; return it and the submodules kept as leaves on failure.

    ``leaf_modules`` holds qualified submodule names (``"backbone.layer1"``) and/or module types.
    Raises :class:`TracingError` when the root module's own ``forward`` is not traceable.
    """
    leaf_names = {x for x in leaf_modules if isinstance(x, str)}
    leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
    unknown = sorted(leaf_names - {name for name, _ in model.named_modules()})
    if unknown:
        raise TracingError(
            f"leaf_modules names {unknown}, which are not submodules of "
            f"{type(model).__name__}; use names from model.named_modules()"
        )
    auto: list[AutoLeaf] = []
    while True:
        tracer = _LeafTracer(leaf_names | {a.path for a in auto}, leaf_types)
        try:
            graph = tracer.trace(model, concrete_args)
            break
        except Exception as exc:
            if tracer.culprit is None:
                raise TracingError(
                    f"cannot trace the forward of the root module {type(model).__name__}: "
                    f"{_describe(exc)}. Untraceable submodules are kept as leaves automatically, "
                    "but the root's own forward must be traceable: move the data-dependent part "
                    "into a submodule, make the control flow depend only on constants (or pass "
                    "concrete_args=...), or wrap the offending function with torch.fx.wrap."
                ) from exc
            path, module, cause = tracer.culprit
            if path in tracer.leaf_names:  # a leaf that fails is not ours to fix by retracing
                raise TracingError(f"tracing failed at leaf module {path}: {_describe(cause)}") from exc
            auto.append(AutoLeaf(path, type(module).__name__, _describe(cause)))
    # A leaf found first may sit inside one found later (whose own forward also failed).
    auto = [a for a in auto if not any(a.path.startswith(f"{b.path}.") for b in auto)]
    return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__), auto
