"""tropfx's graph passes, one public pass per module, each configured by calling its factory.

>>> from tropfx import passes as tp
>>> cm = tropfx.compile(model, passes=[tp.fuse_batchnorm()], example_inputs=(x,))
"""

from tropfx.pass_base import checked_factory
from tropfx.passes import binarize_bise as _binarize_bise
from tropfx.passes import fuse_batchnorm as _fuse_batchnorm
from tropfx.passes import lower_kernels as _lower_kernels
from tropfx.passes import maxpool_to_dilation as _maxpool_to_dilation
from tropfx.passes import prune_l1 as _prune_l1
from tropfx.passes import relu_to_maxplus as _relu_to_maxplus
from tropfx.passes import tropnnc as _tropnnc
from tropfx.passes.binarize_bise import BinarizeBiSE
from tropfx.passes.fuse_batchnorm import FuseBatchNorm
from tropfx.passes.lower_kernels import LowerKernels
from tropfx.passes.maxpool_to_dilation import MaxPoolToDilation
from tropfx.passes.prune_l1 import PruneL1
from tropfx.passes.relu_to_maxplus import ReluToMaxPlus
from tropfx.passes.tropnnc import TropNNC

# The factories, with bad options raising InputError (tropfx.pass_base.checked_factory).
binarize_bise = checked_factory(_binarize_bise.binarize_bise)
tropnnc = checked_factory(_tropnnc.tropnnc)
fuse_batchnorm = checked_factory(_fuse_batchnorm.fuse_batchnorm)
lower_kernels = checked_factory(_lower_kernels.lower_kernels)
maxpool_to_dilation = checked_factory(_maxpool_to_dilation.maxpool_to_dilation)
prune_l1 = checked_factory(_prune_l1.prune_l1)
relu_to_maxplus = checked_factory(_relu_to_maxplus.relu_to_maxplus)

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
