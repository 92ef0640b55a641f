"""tropfx's graph passes, one public pass per module, each configured by calling its factory.

>>> from tropfx import passes as tp
>>> cm = tropfx.compile(model, passes=[tp.fuse_batchnorm()], example_inputs=(x,))
"""

from tropfx.passes.binarize_bise import BinarizeBiSE, binarize_bise
from tropfx.passes.fuse_batchnorm import FuseBatchNorm, fuse_batchnorm
from tropfx.passes.lower_kernels import LowerKernels, lower_kernels
from tropfx.passes.maxpool_to_dilation import MaxPoolToDilation, maxpool_to_dilation
from tropfx.passes.prune_l1 import PruneL1, prune_l1
from tropfx.passes.relu_to_maxplus import ReluToMaxPlus, relu_to_maxplus
from tropfx.passes.tropnnc import TropNNC, tropnnc

__all__ = [
    "BinarizeBiSE",
    "FuseBatchNorm",
    "LowerKernels",
    "MaxPoolToDilation",
    "PruneL1",
    "ReluToMaxPlus",
    "TropNNC",
    "binarize_bise",
    "fuse_batchnorm",
    "lower_kernels",
    "maxpool_to_dilation",
    "prune_l1",
    "relu_to_maxplus",
    "tropnnc",
]
