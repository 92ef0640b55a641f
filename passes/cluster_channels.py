"""Moved to :mod:`tropfx.passes.tropnnc`; this name stays for code that imported it."""

from tropfx.passes.tropnnc import METHODS, TropNNC, tropnnc

__all__ = ["METHODS", "TropNNC", "tropnnc"]
