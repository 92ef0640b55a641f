"""tropfx: compiler-style torch.fx passes that rewrite networks into tropical / morphological form.

>>> import tropfx
>>> from tropfx import passes as tp
>>> cm = tropfx.compile(model, passes=[tp.fuse_batchnorm()], example_inputs=(x,))
>>> print(cm.report)
"""

from tropfx import passes  # noqa: E402,I001 - after the core, which the passes import
from tropfx.errors import InputError, PassError, TracingError, TropfxError, VerificationError
from tropfx.measure import register_cost
from tropfx.ops import is_op, match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats, Skip, graph_pass
from tropfx.pipeline import compile
from tropfx.report import Report, StageRow
from tropfx.serialize import load, register_serializable, save
from tropfx.summary import Summary, summary
from tropfx.tracing import AutoLeaf, trace

__version__ = "0.1.0"

__all__ = [
    "AutoLeaf",
    "GraphPass",
    "InputError",
    "PassError",
    "PassResult",
    "PassStats",
    "Report",
    "Skip",
    "StageRow",
    "Summary",
    "TracingError",
    "TropfxError",
    "VerificationError",
    "compile",
    "graph_pass",
    "is_op",
    "load",
    "match_op",
    "passes",
    "register_cost",
    "register_serializable",
    "save",
    "summary",
    "trace",
]
