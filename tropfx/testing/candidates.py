"""What the exact passes should look at, recognized independently of :mod:`tropfx.ops`.

The zoo tests and ``benchmarks/zoo.py`` count candidates with these recognizers (module types and
torch function / method names) and compare the count with what each pass rewrote or listed: a
spelling the passes' own matcher misses then shows up as an unreported candidate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["EXACT_PASS_NAMES", "exact_pass_candidates"]

EXACT_PASS_NAMES = ("fuse_batchnorm", "relu_to_maxplus", "maxpool_to_dilation")

# torch.nn.modules.activation also holds these, which are not element-wise activations
_NOT_ELEMENTWISE = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention)
_ACTIVATION_FUNCTIONS = {
    getattr(F, name) for name in (
        "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "elu", "selu", "celu", "gelu", "silu",
        "mish", "hardswish", "hardsigmoid", "leaky_relu", "softplus", "sigmoid", "tanh",
        "logsigmoid", "threshold", "prelu", "rrelu", "glu", "softsign", "tanhshrink")
} | {torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max}
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_",
                       "clip", "clamp_min", "clamp_max"}
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_POOL_FUNCTIONS = {getattr(F, f"{kind}max_pool{nd}d{tail}") for kind in ("", "adaptive_")
                   for nd in (1, 2, 3) for tail in ("", "_with_indices")}


def _spatial_max(n: fx.Node) -> bool:
    """amax / max over a spatial dim of an (N, C, L) or (N, C, H, W) tensor (shapes needed)."""
    if n.target not in (torch.amax, torch.max, "amax", "max") or n.op not in ("call_function",
                                                                              "call_method"):
        return False
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    meta = n.args[0].meta.get("tensor_meta") if isinstance(n.args[0], fx.Node) else None
    if not isinstance(dims, (tuple, list)) or not dims or meta is None or len(meta.shape) not in (3, 4):
        return False
    return all(isinstance(d, int) for d in dims) and any(d % len(meta.shape) >= 2 for d in dims)


def exact_pass_candidates(gm: fx.GraphModule) -> dict[str, int]:
    """How many nodes of ``gm`` each exact pass should rewrite or list, by module type and function
    name (``gm`` traced by ``tropfx.compile``, so that shapes are known)."""
    found = dict.fromkeys(EXACT_PASS_NAMES, 0)
    for n in gm.graph.nodes:
        m = gm.get_submodule(n.target) if n.op == "call_module" else None
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or n.target in (F.batch_norm, torch.batch_norm):
            found["fuse_batchnorm"] += 1
        elif (m is not None and type(m).__module__ == "torch.nn.modules.activation"
              and not isinstance(m, _NOT_ELEMENTWISE)) \
                or (n.op == "call_function" and n.target in _ACTIVATION_FUNCTIONS) \
                or (n.op == "call_method" and n.target in _ACTIVATION_METHODS):
            found["relu_to_maxplus"] += 1
        elif isinstance(m, _POOL_MODULES) or (n.op == "call_function" and n.target in _POOL_FUNCTIONS) \
                or _spatial_max(n):
            found["maxpool_to_dilation"] += 1
    return found
