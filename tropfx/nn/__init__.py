"""tropfx's layers: max-plus / min-plus (dense and sparse), Maxout, and morphological
convolutions. Pure-torch reference implementations; ``tropfx.nn.functional`` has the math."""

from tropfx.nn.binary import BinaryLinear, BinaryMorphology2d, ThresholdedConv2d
from tropfx.nn.bise import LUI, BiSE, BiSEL, BiSERegularizer, DenseLUI, LevelSetEncoder
from tropfx.nn.maxplus import Maxout, MaxPlus, MinPlus, SparseMaxPlus, SparseMinPlus

__all__ = [
    "LUI", "BiSE", "BiSEL", "BiSERegularizer", "BinaryLinear", "BinaryMorphology2d", "DenseLUI",
    "LevelSetEncoder", "ThresholdedConv2d",
    "MaxPlus", "Maxout", "MinPlus", "SparseMaxPlus", "SparseMinPlus"]
