"""What a pass is: a callable ``GraphModule -> PassResult``.

Built-in passes are small classes configured by a factory (``tropfx.passes.fuse_batchnorm()``) and
carry two declarations the runner acts on: ``exact`` (the pass claims numerical equivalence, so the
runner fails it when verification sees a difference beyond tolerance) and the tolerance itself. A plain
user function ``gm -> PassResult`` works as a pass too; it counts as not exact unless decorated with
:func:`graph_pass`. torch's own ``torch.fx.passes.infra.pass_base.PassResult`` is accepted as well.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import fx

from tropfx.errors import InputError, TropfxError

__all__ = ["GraphPass", "PassResult", "PassStats", "Skip", "checked_factory", "graph_pass",
           "pass_info"]


@dataclass(frozen=True)
class Skip:
    """A match the pass declined, and why."""

    node: str
    reason: str


@dataclass
class PassStats:
    """What a pass did: the rewrites it made, the matches it declined, and pass-specific facts."""

    rewritten: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def skip(self, node: fx.Node | str, reason: str) -> None:
        self.skipped.append(Skip(node if isinstance(node, str) else node.name, reason))

    @classmethod
    def coerce(cls, stats: PassStats | dict | None) -> PassStats:
        """Accept the stats a user pass returned as a PassStats, a dict of its fields, or None."""
        if stats is None:
            return cls()
        if isinstance(stats, PassStats):
            return stats
        known = {k: stats[k] for k in ("rewritten", "skipped", "info") if k in stats}
        extra = {k: v for k, v in stats.items() if k not in known}
        skipped = [s if isinstance(s, Skip) else Skip(*s) for s in known.get("skipped", [])]
        return cls(list(known.get("rewritten", [])), skipped, {**known.get("info", {}), **extra})


@dataclass
class PassResult:
    """The result of one pass: the (possibly new) graph module, whether it changed, and stats."""

    graph_module: fx.GraphModule
    modified: bool
    stats: PassStats = field(default_factory=PassStats)


class GraphPass:
    """Base of tropfx's configured passes.

    Subclasses set ``name`` and ``exact`` and implement :meth:`run`, which may mutate ``gm`` in place
    (the runner owns a private copy). ``rtol`` / ``atol`` of ``None`` mean the default for the
    model's dtype (:func:`tropfx.verify.default_tolerance`).
    """

    name: ClassVar[str] = "graph_pass"
    exact: ClassVar[bool] = True
    rtol: float | None = None
    atol: float | None = None

    def run(self, gm: fx.GraphModule) -> PassResult:
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        return self.run(gm)


@dataclass(frozen=True)
class PassInfo:
    name: str
    exact: bool
    rtol: float | None
    atol: float | None


def graph_pass(
    name: str | None = None,
    *,
    exact: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> Callable[[Callable], Callable]:
    """Declare a plain function ``gm -> PassResult`` a pass with a name and an exactness claim.

    >>> @graph_pass(exact=True)
    ... def drop_dropout(gm): ...
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(gm: fx.GraphModule) -> Any:
            return fn(gm)

        wrapper.name = name or fn.__name__
        wrapper.exact, wrapper.rtol, wrapper.atol = exact, rtol, atol
        return wrapper

    return decorate


def pass_info(p: Callable) -> PassInfo:
    """Name, exactness claim and tolerance of any pass (configured, decorated or plain)."""
    name = getattr(p, "name", None) or getattr(p, "__name__", None) or type(p).__name__
    return PassInfo(
        name=str(name),
        exact=bool(getattr(p, "exact", False)),
        rtol=getattr(p, "rtol", None),
        atol=getattr(p, "atol", None),
    )


def checked_factory(factory: Callable) -> Callable:
    """A pass factory whose bad arguments raise :class:`~tropfx.errors.InputError` naming the
    pass and its options, instead of Python's ``TypeError`` (``fuse_batchnorm(foo=1)``: "unexpected
    keyword argument"). The factory's own checks raise InputErrors already; a ``TypeError`` or
    ``ValueError`` escaping them (``ratio="half"`` compared with a number) is wrapped likewise."""
    signature = inspect.signature(factory).replace(return_annotation=inspect.Signature.empty)
    name = factory.__name__

    @functools.wraps(factory)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputError(f"{name}{signature}: {exc}; the options of {name} are "
                             f"{', '.join(signature.parameters) or 'none'}") from exc
        try:
            return factory(*args, **kwargs)
        except TropfxError:
            raise
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: bad option value ({type(exc).__name__}: {exc}); see "
                             f"help(tropfx.passes.{name}) for what each option takes") from exc

    return checked
