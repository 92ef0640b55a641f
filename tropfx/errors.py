"""The tropfx error hierarchy.

Every error a user can trigger is a :class:`TropfxError`; messages name the module path or graph node
involved, say what was expected, and say what to do about it.
"""

from __future__ import annotations


class TropfxError(Exception):
    """Base class of every error raised by tropfx."""


class InputError(TropfxError, TypeError):
    """The model or the example inputs handed to tropfx are not usable as given."""


class TracingError(TropfxError):
    """The root module's own ``forward`` cannot be traced by torch.fx."""


class PassError(TropfxError):
    """A pass raised, or returned something that is not a valid pass result."""


class VerificationError(TropfxError):
    """A pass declared exact changed the model's outputs beyond its tolerance."""


class ParameterError(TropfxError, ValueError):
    """A layer's parameters are outside its domain (NaN weights, a max-plus row that is all -inf)."""
