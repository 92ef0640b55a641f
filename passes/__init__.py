"""tropfx's graph passes, one public pass per module, each configured by calling its factory.

>>> from tropfx import passes as tp
>>> cm = tropfx.compile(model, passes=[tp.fuse_batchnorm()], example_inputs=(x,))
"""

from tropfx.passes.fuse_batchnorm import FuseBatchNorm, fuse_batchnorm
from tropfx.passes.relu_to_maxplus import ReluToMaxPlus, relu_to_maxplus

__all__ = [
    "FuseBatchNorm",
    "ReluToMaxPlus",
    "fuse_batchnorm",
    "relu_to_maxplus",
]
