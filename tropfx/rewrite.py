"""Graph-surgery helpers shared by passes."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

__all__ = ["float_dtype", "replace_with_module", "tensor_shape", "users_after"]


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape recorded by shape propagation, or None without example inputs."""
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def users_after(value: fx.Node, node: fx.Node) -> list[fx.Node]:
    """Users of ``value`` that run after ``node`` (they would see an in-place update by it)."""
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return [u for u in value.users if u is not node and order[u] > order[node]]


def _free_name(gm: fx.GraphModule, hint: str) -> str:
    name, i = hint.replace(".", "_"), 1
    while hasattr(gm, name):
        name, i = f"{hint.replace('.', '_')}_{i}", i + 1
    return name


def replace_with_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, hint: str,
                        args: tuple) -> fx.Node:
    """Replace ``node`` by a call of ``module`` (registered on ``gm`` under a fresh name derived
    from ``hint``) on ``args``; the new node inherits ``node.meta``. Returns the new node."""
    existing = next(iter((*gm.parameters(), *gm.buffers())), None)
    if existing is not None:  # the new layer lives where the model lives
        module = module.to(existing.device)
    name = _free_name(gm, hint)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    new.meta = copy.copy(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def float_dtype(node: fx.Node) -> torch.dtype:
    meta = node.meta.get("tensor_meta")
    dtype = getattr(meta, "dtype", None)
    return dtype if dtype is not None and dtype.is_floating_point else torch.float32
