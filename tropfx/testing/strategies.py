"""Hypothesis strategies that build random small PyTorch models with matching example inputs.

A drawn model is described by a *spec*: a list of plain-data tokens (tuples of str/int/float/bool,
nested tuples for sub-chains). The first two tokens are a header, the rest are blocks:

    ("seed", seed)                                  seeds every weight and the inputs
    ("input", shape[, values])                      (N, C, L), (N, C, H, W) or (N, F); values from
                                                    INPUT_VALUES (default "normal")
    ("conv", nd, in_c, out_c, kernel, stride, padding, groups, bias, padding_mode)
    ("linear", in_f, out_f, bias)
    ("bn", spelling, nd, channels, affine, eps)     spelling from BN_SPELLINGS
    ("relu", spelling)                              spelling from RELU_SPELLINGS
    ("maxpool", spelling, nd, kernel, stride, padding, dilation, ceil_mode)
    ("flatten", spelling)                           spelling from FLATTEN_SPELLINGS
    ("residual", add_spelling, inner_tokens)        x + inner(x) or torch.add(x, inner(x))
    ("concat", tokens_a, tokens_b)                  torch.cat([a(x), b(x)], dim=1)
    ("shared", layer_token)                         layer(layer(x)), one layer instance
    ("multi_user", layer_token, bn_token)           y = layer(x); bn(y) + y

A chain of blocks that are all torch.nn modules becomes an ``nn.Sequential``; any other chain
becomes a :class:`SpecNet`, whose ``forward`` interprets the tokens. :func:`build_case` turns a
spec back into the same model and inputs, so a failing example can be replayed from its repr.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy
from torch import nn

__all__ = [
    "ADD_SPELLINGS",
    "BN_EPS",
    "BN_SPELLINGS",
    "BN_VAR_RANGE",
    "FLATTEN_SPELLINGS",
    "INPUT_VALUES",
    "MAXPOOL_SPELLINGS",
    "RELU_SPELLINGS",
    "BatchNormStats",
    "ModelCase",
    "SpecNet",
    "batchnorm_stats",
    "build_case",
    "conv_models",
    "mlp_models",
    "models",
    "random_batchnorm_stats",
    "randomize_batchnorm_",
]

Token = tuple[Any, ...]
Shape = tuple[int, ...]

MAX_BATCH = 3
MAX_CHANNELS = 8
MAX_SPATIAL = 12
MAX_FEATURES = 16

RELU_SPELLINGS: tuple[str, ...] = (
    "module",  # nn.ReLU()
    "module_inplace",  # nn.ReLU(inplace=True)
    "F.relu",
    "F.relu_inplace",  # F.relu(x, inplace=True)
    "torch.relu",
    "torch.relu_",  # also what F.relu_ is
    "method",  # x.relu()
    "method_",  # x.relu_()
)
BN_SPELLINGS: tuple[str, ...] = ("module", "F.batch_norm", "torch.batch_norm")
MAXPOOL_SPELLINGS: tuple[str, ...] = ("module", "functional")
FLATTEN_SPELLINGS: tuple[str, ...] = ("module", "torch.flatten", "method")
ADD_SPELLINGS: tuple[str, ...] = ("+", "torch.add")
BN_EPS: tuple[float, ...] = (1e-5, 1e-3, 1e-1)
# Example input values: "normal" N(0, 1); "grid" N(0, 1) rounded to halves, so that max pools
# and ReLUs see exact ties, exact zeros and -0.0; "specials" the grid with +-inf sprinkled in.
INPUT_VALUES: tuple[str, ...] = ("normal", "grid", "specials")
BN_VAR_RANGE: tuple[float, float] = (1e-8, 10.0)

# Spellings that are a torch.nn module: a chain made only of these can be an nn.Sequential.
_MODULE_SPELLINGS = frozenset({"module", "module_inplace"})
_PADDING_MODES = ("zeros", "reflect", "circular")
# (kernel, stride, padding) of a conv, most common first so that shrinking heads there.
_CONV_GEOMETRIES = ((3, 1, 1), (1, 1, 0), (3, 1, 0), (3, 2, 1), (1, 2, 0), (3, 2, 0))
# (kernel, stride, padding, dilation, ceil_mode) of a max pool; torch requires padding <= kernel // 2.
_POOL_GEOMETRIES = tuple(
    (kernel, stride, padding, dilation, ceil_mode)
    for kernel, stride, dilation, ceil_mode in itertools.product((2, 3, 1), (2, 1, 3), (1, 2), (False, True))
    for padding in range(kernel // 2 + 1)
)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_MAX_POOL_FUNCTIONS = {1: F.max_pool1d, 2: F.max_pool2d}


@dataclass
class ModelCase:
    """A random model in eval mode, example inputs for it, and the spec it was built from.

    Some ReLU spellings work in place and may modify the inputs: clone them for every run.
    """

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    spec: list[Token]

    def __repr__(self) -> str:
        return f"ModelCase({type(self.model).__name__}, spec={self.spec!r})"


# --------------------------------------------------------------------------- BatchNorm statistics


class BatchNormStats(NamedTuple):
    """Statistics and affine parameters for one BatchNorm over ``num_features`` channels."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


def random_batchnorm_stats(num_features: int, generator: torch.Generator) -> BatchNormStats:
    """Nasty but finite BN statistics drawn from ``generator``.

    running_mean ~ N(0, 1); running_var log-uniform over BN_VAR_RANGE (so variances far below eps
    occur); weight and bias ~ N(0, 1) with about a fifth of the entries exactly zero; eps from BN_EPS.
    """
    low, high = (math.log(v) for v in BN_VAR_RANGE)
    mean = torch.randn(num_features, generator=generator)
    var = torch.empty(num_features).uniform_(low, high, generator=generator).exp_()
    weight = _sprinkle_zeros(torch.randn(num_features, generator=generator), generator)
    bias = _sprinkle_zeros(torch.randn(num_features, generator=generator), generator)
    eps = BN_EPS[int(torch.randint(len(BN_EPS), (), generator=generator))]
    return BatchNormStats(mean, var, weight, bias, eps)


def _sprinkle_zeros(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``values`` with about a fifth of the entries set to exactly zero."""
    keep = torch.rand(values.shape, generator=generator) >= 0.2
    return values * keep


def randomize_batchnorm_(
    module: nn.Module, generator: torch.Generator, *, keep_eps: bool = False
) -> nn.Module:
    """Give every BatchNorm in ``module`` random statistics (see random_batchnorm_stats), in place.

    Affine parameters are set only where the BN has them; ``num_batches_tracked`` is left alone.
    Returns ``module``.
    """
    for bn in module.modules():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        stats = random_batchnorm_stats(bn.num_features, generator)
        with torch.no_grad():
            if bn.running_mean is not None:
                bn.running_mean.copy_(stats.running_mean)
                bn.running_var.copy_(stats.running_var)
            if bn.weight is not None:
                bn.weight.copy_(stats.weight)
                bn.bias.copy_(stats.bias)
        if not keep_eps:
            bn.eps = stats.eps
    return module


def batchnorm_stats(num_features: int) -> SearchStrategy[BatchNormStats]:
    """Strategy for random_batchnorm_stats(num_features, ...) from a drawn seed."""
    return st.integers(0, 2**32 - 1).map(
        lambda seed: random_batchnorm_stats(num_features, torch.Generator().manual_seed(seed))
    )


# --------------------------------------------------------------------------- building from a spec


def build_case(spec: Sequence[Token]) -> ModelCase:
    """Build the model and example inputs that ``spec`` describes; equal specs give equal cases."""
    (seed_kind, seed), (input_kind, shape, *values), *blocks = spec
    if (seed_kind, input_kind) != ("seed", "input") or len(values) > 1 or not set(values) <= set(
            INPUT_VALUES):
        raise ValueError(f"a spec starts with ('seed', int), ('input', shape[, values]) with values "
                         f"in {INPUT_VALUES}; got {spec[:2]!r}")
    generator = torch.Generator().manual_seed(seed)
    # Module constructors draw default weights from the global RNG; forking it leaves the caller's
    # random state alone (every weight is then overwritten from `generator`).
    with torch.random.fork_rng(devices=[]):
        model = _build_chain(tuple(blocks), generator).eval()
    inputs = (_input_values(shape, values[0] if values else "normal", generator),)
    return ModelCase(model, inputs, list(spec))


def _input_values(shape: Shape, values: str, generator: torch.Generator) -> torch.Tensor:
    """Example inputs: see INPUT_VALUES."""
    x = torch.randn(shape, generator=generator)
    if values == "normal":
        return x
    x = (x * 2).round() / 2  # ties, and exact zeros ...
    x[(x == 0) & (torch.rand(shape, generator=generator) < 0.5)] = -0.0  # ... of both signs
    if values == "specials":
        u = torch.rand(shape, generator=generator)
        x[u < 0.05] = math.inf
        x[u > 0.95] = -math.inf
    return x


def _build_chain(tokens: tuple[Token, ...], generator: torch.Generator) -> nn.Module:
    """An nn.Sequential if every token is a plain torch.nn module, else a SpecNet."""
    if all(_is_plain(token) for token in tokens):
        return nn.Sequential(*(_MODULE_MAKERS[t[0]](t, generator) for t in tokens))
    return SpecNet(tokens, generator)


def _is_plain(token: Token) -> bool:
    """Whether the token is a single torch.nn module, usable inside an nn.Sequential."""
    kind = token[0]
    return kind in ("conv", "linear") or (kind in _MODULE_MAKERS and token[1] in _MODULE_SPELLINGS)


class SpecNet(nn.Module):
    """A model whose ``forward`` interprets spec tokens in order, one step per token.

    Step ``i`` owns the attributes named ``f"{kind}{i}"`` (or prefixed by it), e.g. ``conv0``,
    ``bn1_mean``, ``concat2_a``.
    """

    def __init__(self, tokens: tuple[Token, ...], generator: torch.Generator) -> None:
        super().__init__()
        self.spec = tokens
        self.step_names = [f"{token[0]}{i}" for i, token in enumerate(tokens)]
        for name, token in zip(self.step_names, tokens, strict=True):
            _add_step(self, name, token, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, token in zip(self.step_names, self.spec, strict=True):
            x = _run_step(self, name, token, x)
        return x


def _add_step(net: nn.Module, name: str, token: Token, generator: torch.Generator) -> None:
    """Register on ``net`` the modules, parameters and buffers that the step ``name`` needs."""
    if _is_plain(token):
        net.add_module(name, _MODULE_MAKERS[token[0]](token, generator))
    elif token[0] in _STATE_BUILDERS:
        _STATE_BUILDERS[token[0]](net, name, token, generator)


def _run_step(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    """Apply the step ``name`` of ``net`` to ``x``."""
    if _is_plain(token):
        return getattr(net, name)(x)
    return _FORWARDS[token[0]](net, name, token, x)


def _fill_layer_(layer: nn.Conv1d | nn.Conv2d | nn.Linear, generator: torch.Generator) -> nn.Module:
    """Draw a conv/linear layer's weights from ``generator``, scaled to keep activations O(1)."""
    bound = math.sqrt(3.0 / layer.weight[0].numel())
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-1.0, 1.0, generator=generator)
    return layer


def _make_conv(token: Token, generator: torch.Generator) -> nn.Module:
    _, nd, in_c, out_c, kernel, stride, padding, groups, bias, padding_mode = token
    conv = _CONV[nd](
        in_c, out_c, kernel, stride, padding, groups=groups, bias=bias, padding_mode=padding_mode
    )
    return _fill_layer_(conv, generator)


def _make_linear(token: Token, generator: torch.Generator) -> nn.Module:
    _, in_f, out_f, bias = token
    return _fill_layer_(nn.Linear(in_f, out_f, bias=bias), generator)


def _make_batchnorm(token: Token, generator: torch.Generator) -> nn.Module:
    _, _, nd, channels, affine, eps = token
    return randomize_batchnorm_(_BATCHNORM[nd](channels, eps=eps, affine=affine), generator, keep_eps=True)


def _make_relu(token: Token, generator: torch.Generator) -> nn.Module:
    return nn.ReLU(inplace=token[1] == "module_inplace")


def _make_maxpool(token: Token, generator: torch.Generator) -> nn.Module:
    _, _, nd, kernel, stride, padding, dilation, ceil_mode = token
    return _MAXPOOL[nd](kernel, stride, padding, dilation, ceil_mode=ceil_mode)


def _make_flatten(token: Token, generator: torch.Generator) -> nn.Module:
    return nn.Flatten()


_MODULE_MAKERS: dict[str, Callable[[Token, torch.Generator], nn.Module]] = {
    "conv": _make_conv,
    "linear": _make_linear,
    "bn": _make_batchnorm,
    "relu": _make_relu,
    "maxpool": _make_maxpool,
    "flatten": _make_flatten,
}


def _add_functional_bn(net: nn.Module, name: str, token: Token, generator: torch.Generator) -> None:
    _, _, _, channels, affine, _ = token
    stats = random_batchnorm_stats(channels, generator)
    net.register_buffer(f"{name}_mean", stats.running_mean)
    net.register_buffer(f"{name}_var", stats.running_var)
    # A None parameter reads back as None, which is what the functional BNs take for "no affine".
    net.register_parameter(f"{name}_weight", nn.Parameter(stats.weight) if affine else None)
    net.register_parameter(f"{name}_bias", nn.Parameter(stats.bias) if affine else None)


def _add_residual(net: nn.Module, name: str, token: Token, generator: torch.Generator) -> None:
    net.add_module(name, _build_chain(token[2], generator))


def _add_concat(net: nn.Module, name: str, token: Token, generator: torch.Generator) -> None:
    net.add_module(f"{name}_a", _build_chain(token[1], generator))
    net.add_module(f"{name}_b", _build_chain(token[2], generator))


def _add_shared(net: nn.Module, name: str, token: Token, generator: torch.Generator) -> None:
    _add_step(net, name, token[1], generator)


def _add_multi_user(net: nn.Module, name: str, token: Token, generator: torch.Generator) -> None:
    _add_step(net, f"{name}_layer", token[1], generator)
    _add_step(net, f"{name}_bn", token[2], generator)


_STATE_BUILDERS: dict[str, Callable[[nn.Module, str, Token, torch.Generator], None]] = {
    "bn": _add_functional_bn,
    "residual": _add_residual,
    "concat": _add_concat,
    "shared": _add_shared,
    "multi_user": _add_multi_user,
}

_RELU_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F.relu": F.relu,
    "F.relu_inplace": lambda x: F.relu(x, inplace=True),
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "method": lambda x: x.relu(),
    "method_": lambda x: x.relu_(),
}


def _forward_relu(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    return _RELU_FUNCTIONS[token[1]](x)


def _forward_bn(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    _, spelling, _, _, _, eps = token
    mean, var = getattr(net, f"{name}_mean"), getattr(net, f"{name}_var")
    weight, bias = getattr(net, f"{name}_weight"), getattr(net, f"{name}_bias")
    if spelling == "F.batch_norm":
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
    return torch.batch_norm(x, weight, bias, mean, var, False, 0.1, eps, True)


def _forward_maxpool(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    _, _, nd, kernel, stride, padding, dilation, ceil_mode = token
    return _MAX_POOL_FUNCTIONS[nd](
        x, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )


def _forward_flatten(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1) if token[1] == "torch.flatten" else x.flatten(1)


def _forward_residual(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    inner = getattr(net, name)(x)
    return x + inner if token[1] == "+" else torch.add(x, inner)


def _forward_concat(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([getattr(net, f"{name}_a")(x), getattr(net, f"{name}_b")(x)], dim=1)


def _forward_shared(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    return _run_step(net, name, token[1], _run_step(net, name, token[1], x))


def _forward_multi_user(net: nn.Module, name: str, token: Token, x: torch.Tensor) -> torch.Tensor:
    y = _run_step(net, f"{name}_layer", token[1], x)
    return _run_step(net, f"{name}_bn", token[2], y) + y


_FORWARDS: dict[str, Callable[[nn.Module, str, Token, torch.Tensor], torch.Tensor]] = {
    "relu": _forward_relu,
    "bn": _forward_bn,
    "maxpool": _forward_maxpool,
    "flatten": _forward_flatten,
    "residual": _forward_residual,
    "concat": _forward_concat,
    "shared": _forward_shared,
    "multi_user": _forward_multi_user,
}


# --------------------------------------------------------------------------- drawing specs

# A block drawer takes (draw, shape, plain) and returns (tokens, new shape); `plain` restricts it
# to torch.nn-module spellings so that the chain stays an nn.Sequential.
BlockDrawer = Callable[[DrawFn, Shape, bool], tuple[list[Token], Shape]]


def _spellings(spellings: tuple[str, ...], plain: bool) -> SearchStrategy[str]:
    """Any of ``spellings``, or only the torch.nn-module ones when ``plain``."""
    return st.sampled_from([s for s in spellings if not plain or s in _MODULE_SPELLINGS])


def _max_width(shape: Shape) -> int:
    return MAX_CHANNELS if len(shape) > 2 else MAX_FEATURES


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pool_out(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a max pool, as torch's pooling_output_shape computes it."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # With ceil_mode, a last window that would start inside the right padding is dropped.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_ok(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> bool:
    """Whether the pool gives 1..MAX_SPATIAL outputs, each window touching the input.

    A window whose taps all fall in the padding yields -inf (possible with dilation), so skip those.
    """
    out = _pool_out(size, kernel, stride, padding, dilation, ceil_mode)
    return 1 <= out <= MAX_SPATIAL and all(
        any(0 <= i * stride - padding + j * dilation < size for j in range(kernel)) for i in range(out)
    )


def _padding_mode_ok(mode: str, padding: int, size: int) -> bool:
    if padding == 0:
        return mode == "zeros"  # other modes are no-ops without padding
    return mode != "reflect" or padding < size  # circular needs padding <= size, always true here


def _draw_conv(
    draw: DrawFn, shape: Shape, widths: SearchStrategy[int], keep_size: bool
) -> tuple[Token, Shape]:
    batch, in_c, *size = shape
    out_c = draw(widths)
    gcd = math.gcd(in_c, out_c)
    groups = draw(st.sampled_from([g for g in range(1, gcd + 1) if gcd % g == 0]))
    geometries = [
        (k, s, p)
        for k, s, p in _CONV_GEOMETRIES
        if (not keep_size or (s == 1 and 2 * p == k - 1)) and all(_conv_out(n, k, s, p) >= 1 for n in size)
    ]
    kernel, stride, padding = draw(st.sampled_from(geometries))
    mode = draw(st.sampled_from([m for m in _PADDING_MODES if _padding_mode_ok(m, padding, min(size))]))
    token = ("conv", len(size), in_c, out_c, kernel, stride, padding, groups, draw(st.booleans()), mode)
    return token, (batch, out_c, *(_conv_out(n, kernel, stride, padding) for n in size))


def _draw_linear(
    draw: DrawFn, shape: Shape, widths: SearchStrategy[int], keep_size: bool
) -> tuple[Token, Shape]:
    batch, in_f = shape
    out_f = draw(widths)
    return ("linear", in_f, out_f, draw(st.booleans())), (batch, out_f)


def _draw_layer(
    draw: DrawFn, shape: Shape, widths: SearchStrategy[int], keep_size: bool
) -> tuple[Token, Shape]:
    """A conv on (N, C, *spatial) or a linear on (N, F) with ``widths`` output channels.

    ``keep_size`` keeps the spatial size (stride 1, "same" padding).
    """
    return (_draw_conv if len(shape) > 2 else _draw_linear)(draw, shape, widths, keep_size)


def _draw_bn(draw: DrawFn, shape: Shape, plain: bool) -> Token:
    spelling = draw(_spellings(BN_SPELLINGS, plain))
    nd = 2 if len(shape) == 4 else 1  # BatchNorm1d serves both (N, C) and (N, C, L)
    return ("bn", spelling, nd, shape[1], draw(st.booleans()), draw(st.sampled_from(BN_EPS)))


def _draw_relu(draw: DrawFn, plain: bool) -> Token:
    return ("relu", draw(_spellings(RELU_SPELLINGS, plain)))


def _maybe_bn(draw: DrawFn, shape: Shape, plain: bool) -> list[Token]:
    """A BN token three times out of four (a layer is usually followed by BN), else nothing."""
    return [_draw_bn(draw, shape, plain)] if draw(st.integers(0, 3)) else []


def _draw_unit(
    draw: DrawFn, shape: Shape, widths: SearchStrategy[int], keep_size: bool
) -> tuple[list[Token], Shape]:
    """A layer, usually followed by BN, in any spelling."""
    layer, shape = _draw_layer(draw, shape, widths, keep_size)
    return [layer, *_maybe_bn(draw, shape, plain=False)], shape


def _layer_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    layer, shape = _draw_layer(draw, shape, st.integers(1, _max_width(shape)), keep_size=False)
    return [layer, *_maybe_bn(draw, shape, plain)], shape


def _bn_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    return [_draw_bn(draw, shape, plain)], shape


def _relu_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    return [_draw_relu(draw, plain)], shape


def _maxpool_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    batch, channels, *size = shape
    geometries = [g for g in _POOL_GEOMETRIES if all(_pool_ok(n, *g) for n in size)]
    geometry = draw(st.sampled_from(geometries))
    token = ("maxpool", draw(_spellings(MAXPOOL_SPELLINGS, plain)), len(size), *geometry)
    return [token], (batch, channels, *(_pool_out(n, *geometry) for n in size))


def _residual_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    """x + inner(x), inner = layer [BN], or layer [BN] ReLU layer [BN] as in a ResNet block."""
    same = st.just(shape[1])
    inner, _ = _draw_unit(draw, shape, same, keep_size=True)
    if draw(st.booleans()):
        second, _ = _draw_unit(draw, shape, same, keep_size=True)
        inner += [_draw_relu(draw, plain=False), *second]
    return [("residual", draw(st.sampled_from(ADD_SPELLINGS)), tuple(inner))], shape


def _draw_branch(draw: DrawFn, shape: Shape, max_width: int) -> tuple[tuple[Token, ...], int]:
    """A concat branch that keeps the spatial size: layer chain, 3x3 stride-1 max pool, or identity.

    Returns the branch tokens and its output width (at most ``max_width``).
    """
    kinds = ["layer"]
    if shape[1] <= max_width:
        kinds += ["identity", "maxpool"] if len(shape) > 2 else ["identity"]
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return (), shape[1]
    if kind == "maxpool":
        spelling = draw(_spellings(MAXPOOL_SPELLINGS, plain=False))
        return (("maxpool", spelling, len(shape) - 2, 3, 1, 1, 1, False),), shape[1]
    tokens, out = _draw_unit(draw, shape, st.integers(1, max_width), keep_size=True)
    # A ReLU may end a branch but never starts one: an in-place ReLU on x would corrupt the other.
    if draw(st.booleans()):
        tokens.append(_draw_relu(draw, plain=False))
    return tuple(tokens), out[1]


def _concat_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    budget = _max_width(shape)
    branch_a, width_a = _draw_branch(draw, shape, budget - 1)
    branch_b, width_b = _draw_branch(draw, shape, budget - width_a)
    return [("concat", branch_a, branch_b)], (shape[0], width_a + width_b, *shape[2:])


def _shared_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    """One shape-keeping layer instance called twice, usually followed by BN."""
    layer, _ = _draw_layer(draw, shape, st.just(shape[1]), keep_size=True)
    return [("shared", layer), *_maybe_bn(draw, shape, plain)], shape


def _multi_user_block(draw: DrawFn, shape: Shape, plain: bool) -> tuple[list[Token], Shape]:
    """y = layer(x); bn(y) + y: the layer's output has a user besides its BN."""
    layer, shape = _draw_layer(draw, shape, st.integers(1, _max_width(shape)), keep_size=False)
    return [("multi_user", layer, _draw_bn(draw, shape, plain=False))], shape


_BLOCK_DRAWERS: dict[str, BlockDrawer] = {
    "layer": _layer_block,
    "bn": _bn_block,
    "relu": _relu_block,
    "maxpool": _maxpool_block,
    "residual": _residual_block,
    "concat": _concat_block,
    "shared": _shared_block,
    "multi_user": _multi_user_block,
}
_SEQUENTIAL_BLOCKS = ("layer", "bn", "relu", "maxpool")
# Relative odds of the block kinds (1 where not listed): layers are the most common, so that
# most BNs follow a layer, and the ReLUs and max pools that later passes rewrite come next.
_BLOCK_WEIGHTS = {"layer": 3, "relu": 2, "maxpool": 2}


def _draw_blocks(
    draw: DrawFn, shape: Shape, kinds: Sequence[str], max_blocks: int, plain: bool
) -> tuple[list[Token], Shape]:
    """Between 1 and ``max_blocks`` blocks of the given kinds, tracking the activation shape."""
    weighted = [
        k for k in kinds if not plain or k in _SEQUENTIAL_BLOCKS for _ in range(_BLOCK_WEIGHTS.get(k, 1))
    ]
    tokens: list[Token] = []
    for _ in range(draw(st.integers(1, max_blocks))):
        new_tokens, shape = _BLOCK_DRAWERS[draw(st.sampled_from(weighted))](draw, shape, plain)
        tokens += new_tokens
    return tokens, shape


def _draw_head(draw: DrawFn, shape: Shape, plain: bool) -> list[Token]:
    """Flatten then Linear, optionally followed by [BN] ReLU Linear."""
    tokens = [("flatten", draw(_spellings(FLATTEN_SPELLINGS, plain)))]
    widths = st.integers(1, MAX_FEATURES)
    linear, shape = _draw_linear(draw, (shape[0], math.prod(shape[1:])), widths, keep_size=False)
    tokens.append(linear)
    if draw(st.booleans()):
        tokens += _maybe_bn(draw, shape, plain)
        tokens.append(_draw_relu(draw, plain))
        tokens.append(_draw_linear(draw, shape, widths, keep_size=False)[0])
    return tokens


def _draw_plain(draw: DrawFn) -> bool:
    """Whether to restrict to torch.nn modules (an nn.Sequential), one time in four.

    Drawn as an integer so that shrinking moves towards the simpler, plain model.
    """
    return draw(st.integers(0, 3)) == 0


def _draw_case(draw: DrawFn, input_shape: Shape, tokens: list[Token], specials: bool) -> ModelCase:
    """Draw the weight seed and the input values and build the case, rejecting the rare one whose
    output overflows (with ``specials``, infinite inputs may give infinite or NaN outputs)."""
    values = draw(st.sampled_from(INPUT_VALUES if specials else INPUT_VALUES[:2]))
    header = ("input", input_shape) if values == "normal" else ("input", input_shape, values)
    case = build_case([("seed", draw(st.integers(0, 2**32 - 1))), header, *tokens])
    if values != "specials":
        with torch.no_grad():
            out = case.model(*(t.clone() for t in case.inputs))
        # Each BN with a tiny variance scales activations by up to ~1/sqrt(eps); a long enough stack
        # of them could overflow float32. Reject that draw rather than tame the statistics for all.
        assume(bool(torch.isfinite(out).all()))
    return case


@st.composite
def _conv_models(draw: DrawFn, dims: tuple[int, ...], max_blocks: int, specials: bool) -> ModelCase:
    nd = draw(st.sampled_from(dims))
    size = [draw(st.integers(1, MAX_SPATIAL)) for _ in range(nd)]
    input_shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(1, MAX_CHANNELS)), *size)
    plain = _draw_plain(draw)
    tokens, shape = _draw_blocks(draw, input_shape, list(_BLOCK_DRAWERS), max_blocks, plain)
    if draw(st.booleans()):
        tokens += _draw_head(draw, shape, plain)
    return _draw_case(draw, input_shape, tokens, specials)


@st.composite
def _mlp_models(draw: DrawFn, max_blocks: int, specials: bool) -> ModelCase:
    input_shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(1, MAX_FEATURES)))
    kinds = [k for k in _BLOCK_DRAWERS if k != "maxpool"]
    tokens, _ = _draw_blocks(draw, input_shape, kinds, max_blocks, _draw_plain(draw))
    return _draw_case(draw, input_shape, tokens, specials)


def _check_max_blocks(max_blocks: int) -> None:
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")


def conv_models(dims: Sequence[int] = (1, 2), max_blocks: int = 4, *,
                specials: bool = False) -> SearchStrategy[ModelCase]:
    """Small conv nets on (N, C, L) inputs (dims=1) or (N, C, H, W) inputs (dims=2).

    Up to ``max_blocks`` blocks (conv [BN], BN, ReLU, max pool, residual, concat, shared conv,
    multi-user conv), then sometimes a flatten + linear head. Inputs are normal or on a grid of
    halves (ties, exact zeros of both signs); with ``specials`` also with +-inf entries (for passes
    whose layers map infinities exactly: the outputs may then hold inf or NaN).
    """
    dims = tuple(dims)
    if not dims or not set(dims) <= {1, 2}:
        raise ValueError(f"dims must be a non-empty subset of (1, 2), got {dims!r}")
    _check_max_blocks(max_blocks)
    return _conv_models(dims, max_blocks, specials)


def mlp_models(max_blocks: int = 4, *, specials: bool = False) -> SearchStrategy[ModelCase]:
    """Small MLPs on (N, F) inputs: linear [BN], BN, ReLU, residual, concat, shared, multi-user;
    input values as for :func:`conv_models`."""
    _check_max_blocks(max_blocks)
    return _mlp_models(max_blocks, specials)


def models(*, specials: bool = False) -> SearchStrategy[ModelCase]:
    """Any model from conv_models() or mlp_models() (``specials``: see :func:`conv_models`)."""
    return st.one_of(conv_models(specials=specials), mlp_models(specials=specials))
