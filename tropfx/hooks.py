"""Modules carrying hooks: what a pass must know before it removes or replaces one.

A forward hook on a BatchNorm sees the BatchNorm's output; fold the BatchNorm away and the hook
no longer runs, or runs on another value. tropfx never drops a hook silently: a pass either
carries the hooks over to a replacement that computes the same values at the same place
(:func:`carry_hooks`), or declines the rewrite with the reason :func:`hook_reason` gives.
"""

from __future__ import annotations

from torch import nn

__all__ = ["HOOK_KINDS", "carry_hooks", "hook_reason", "hooks_of"]

# The per-module hook tables of nn.Module (attribute, what the user registered it with).
HOOK_KINDS: dict[str, str] = {
    "_forward_pre_hooks": "forward-pre",
    "_forward_hooks": "forward",
    "_backward_pre_hooks": "backward-pre",
    "_backward_hooks": "backward",
}


def hooks_of(module: nn.Module) -> dict[str, int]:
    """``{kind: count}`` of the hooks registered on ``module`` itself (not its children)."""
    found = {}
    for attr, kind in HOOK_KINDS.items():
        table = getattr(module, attr, None)
        if table:
            found[kind] = len(table)
    return found


def hook_reason(module: nn.Module, name: str = "", action: str = "rewriting it") -> str | None:
    """The reason a pass must not remove or replace ``module`` (it has hooks), or ``None``.

    ``name`` is the module's path in the model and ``action`` what the pass would do, for the
    message: ``"bn1 has 1 forward hook; folding it away would drop it: remove the hook
    (handle.remove()) before tropfx.compile, or register it on the compiled model"``.
    """
    found = hooks_of(module)
    if not found:
        return None
    total = sum(found.values())
    kinds = ", ".join(f"{n} {kind}" for kind, n in found.items())
    what = f"{name} ({type(module).__name__})" if name else type(module).__name__
    return (f"{what} has {kinds} hook{'s' if total > 1 else ''}; {action} would drop "
            f"{'them' if total > 1 else 'it'}: remove the hooks (handle.remove()) before "
            "tropfx.compile, or register them on the compiled model")


def carry_hooks(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the hooks of ``source`` (same functions, same order), for a replacement that
    takes the same inputs and returns the same values as ``source``.

    The hooks receive ``target`` as their module argument; with_kwargs / always_call flags are kept.
    """
    for attr in (*HOOK_KINDS, "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                 "_forward_hooks_always_called"):
        table = getattr(source, attr, None)
        if table:
            getattr(target, attr).update(table)
    if source._backward_hooks:  # register_full_backward_hook's hooks must stay full-hook style
        target._is_full_backward_hook = source._is_full_backward_hook
