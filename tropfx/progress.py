"""Progress bars that stay out of the way: ``for x in progress(items, desc="pruning"): ...``.

A thin wrapper over ``tqdm``. Bars go to stderr and are shown only when it is a terminal, so logs,
pipes and CI stay clean; ``TROPFX_QUIET=1`` turns them off everywhere, ``quiet=False`` forces them
on. Passes and long loops use it so that users see where the time goes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["ENV_VAR", "is_quiet", "progress"]

ENV_VAR = "TROPFX_QUIET"
T = TypeVar("T")


def is_quiet(quiet: bool | None = None) -> bool:
    """Whether bars are off: ``quiet`` if given, else ``$TROPFX_QUIET`` is set to a true value
    (1, true, yes, on), else whether stderr is not a terminal."""
    if quiet is not None:
        return bool(quiet)
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    return not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


class _NoBar:
    """What ``progress`` returns when quiet: iterates like the iterable, ignores updates."""

    def __init__(self, iterable: Iterable | None, total: int | None) -> None:
        self.iterable, self.total, self.n = iterable, total, 0

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __len__(self) -> int:
        if self.total is not None:
            return self.total
        return len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable[T] | None = None, total: int | None = None,
             desc: str | None = None, quiet: bool | None = None, **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total`` and ``.update(n)``).

    ``quiet``: ``True`` never shows a bar, ``False`` always does, ``None`` (default) decides with
    :func:`is_quiet`. Extra keyword arguments go to ``tqdm``. The bar is removed when done
    (``leave=False``) unless asked otherwise. Usable as a context manager either way.
    """
    if is_quiet(quiet):
        return _NoBar(iterable, total)
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, **kwargs)
