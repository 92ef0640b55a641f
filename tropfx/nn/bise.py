"""BiSE neurons and the BiMoNN layers built from them: BiSE, LUI, BiSEL, DenseLUI, level-set inputs.

Aouad & Talbot, "A foundation for exact binarized morphological neural networks". A BiSE neuron
(Def. 2.1) is a convolution whose weights and bias are reparametrized, followed by a smooth threshold
and a learnable scale ``p`` that inverts the output when negative::

    chi(x) = xi(p * (x (*) W(omega) - B(beta))),    xi(u) = tanh(u) / 2 + 1 / 2

When its effective parameters ``(W, b) = (W(omega), B(beta))`` satisfy Theorem 2.3 (it is
*activated*), the neuron thresholded at 1/2 *is* a binary dilation or erosion by an SE ``S``, and
binarization replaces it with that operation without changing a single output bit.

Conventions:

* ``(*)`` is what ``nn.Conv2d`` computes, a cross-correlation: an activated dilation computes
  ``y[j] = OR_{s in S} x[j + s - pad]``, the max-over-window of :func:`~tropfx.nn.morphology.dilation2d`
  with the SE laid out as stored. (The paper's true convolution reflects ``S``; symmetric SEs agree.)
  :mod:`tropfx.bise_math` flattens kernels in the same layout (``neurons()`` rows).
* The image is padded with zeros, i.e. the outside is background (``scipy.ndimage``'s
  ``border_value=0``): an erosion whose window leaves the image gives 0 there. Lowering to
  :func:`~tropfx.nn.morphology.erosion2d`, which pads with +inf, needs the input zero-padded first.
* Inputs are images in [0, 1] (binary, or almost binary, Def. 2.2); gray / RGB images go through
  :class:`LevelSetEncoder` first (§2.3).

Every layer is a bank of independent neurons. Its raw parameters are ``omega``, ``beta`` and
``scale`` (the paper's ``omega``, ``beta``, ``p``); read the effective ones through
:meth:`BiSEModule.effective_weight`, :meth:`~BiSEModule.effective_bias` and
:meth:`~BiSEModule.neurons`, never from ``omega`` / ``beta`` directly.

Training helpers (§2.4, §4): :class:`BiSERegularizer` adds L_exact, L_unif, L_normal or L_acti to the
loss after a start delay, and :func:`project_` is the projection step of the "projected" bias mode,
called after ``optimizer.step()``.
"""

# No ``from __future__ import annotations``: torch.fx copies the root forward's annotations into the
# code it generates, and string annotations make the traced module unpicklable.
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from tropfx.errors import InputError, ParameterError
from tropfx.tracing import register_leaf

__all__ = [
    "BIAS_NOISE",
    "BIAS_REPARAMS",
    "DUAL_K",
    "REGULARIZERS",
    "THRESHOLD_LEVEL",
    "WEIGHT_REPARAMS",
    "BiSE",
    "BiSEL",
    "BiSEModule",
    "BiSEParams",
    "BiSERegularizer",
    "BiasReparam",
    "DenseLUI",
    "LUI",
    "LevelSetEncoder",
    "WeightReparam",
    "best_constant_se",
    "bias_interval",
    "constant_set_distance",
    "dual_weight",
    "init_statistics",
    "inverse_threshold",
    "loss_acti",
    "loss_exact",
    "loss_normal",
    "loss_unif",
    "project_",
    "smooth_threshold",
    "softplus_inverse",
]

THRESHOLD_LEVEL = 0.95  # h of Appendix B: a saturated BiSE output reaches xi(.) >= h
BIAS_NOISE = 1e-4  # epsilon_bias of App. B.2 (Eqs. 208-209); the paper uses [1e-4, 1e-2]


# ---------------------------------------------------------------------------------------------------
# The smooth threshold and the reparametrizations (§2.4). Reparametrizations act on rows: one neuron per
# row, its |Omega| weights flattened.


def smooth_threshold(u: Tensor) -> Tensor:
    """The normalized tanh of Def. 2.1, ``xi(u) = tanh(u) / 2 + 1 / 2``, from R onto ]0, 1[."""
    return 0.5 * torch.tanh(u) + 0.5


# One call_function node wherever torch.fx traces a BiSE computation inline (a BiSE layer as the
# traced root, or a forward that calls a layer's methods): binarize_bise lists such nodes as skipped.
fx.wrap("smooth_threshold")


def inverse_threshold(y: float) -> float:
    """``xi^-1(y) = atanh(2 y - 1)`` for ``y`` in ]0, 1[."""
    return math.atanh(2.0 * y - 1.0)


DUAL_K = 2.0 * inverse_threshold(THRESHOLD_LEVEL)  # K = 2 xi^-1(0.95) of Eq. 14 (= mu n, Eq. 201)


def softplus_inverse(v: Tensor) -> Tensor:
    """``f+^-1(v) = log(exp(v) - 1)`` (Eq. 13), in a form that neither overflows nor cancels.

    Values at or below 0 are outside softplus's range; they are raised to the dtype's epsilon, the
    nearest bias softplus can represent usefully.
    """
    v = v.clamp_min(torch.finfo(v.dtype).eps)
    return v + torch.log(-torch.expm1(-v))


def dual_weight(omega: Tensor) -> Tensor:
    """Dual reparametrization, Eq. 14: ``W = K f+(omega) / sum_k f+(omega_k)`` over each row.

    Every neuron's weights are positive and sum to ``K = 2 xi^-1(0.95)``.
    """
    w = F.softplus(omega)
    return DUAL_K * w / w.sum(1, keepdim=True)


def bias_interval(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``C_b = [l_c(W), u_c(W)]`` of §2.4 for each row of ``weight`` (n, |Omega|).

    ``l_c = (W_(1) + W_(2)) / 2`` and ``u_c = sum W - W_(1) / 2``, with ``W_(1) <= W_(2)`` the two
    smallest weights (counted with repetition). A single-weight neuron has no ``W_(2)``; its interval
    is the point ``W / 2``, the bias at which it is the identity (or, with ``p < 0``, the complement).
    """
    smallest = weight.sort(dim=1).values
    # cat([first two, first]) holds W_(2) at index 1 when |Omega| >= 2 and W_(1) when |Omega| = 1,
    # without reading the row length (a Proxy under torch.fx).
    second = torch.cat([smallest[:, :2], smallest[:, :1]], dim=1)[:, 1]
    upper = weight.sum(1) - smallest[:, 0] / 2
    lower = torch.minimum((smallest[:, 0] + second) / 2, upper)
    return lower, upper


def _clamp_to_interval(b: Tensor, weight: Tensor) -> Tensor:
    lower, upper = bias_interval(weight)
    return torch.minimum(torch.maximum(b, lower), upper)


def _projected_reparam_bias(beta: Tensor, weight: Tensor) -> Tensor:
    # Eq. 15: B_pr(beta) = f+(beta) clamped to C_b. The clamp is differentiable in W through the bounds.
    return _clamp_to_interval(F.softplus(beta), weight)


class WeightReparam(NamedTuple):
    """A weight reparametrization ``W(omega)`` on rows (n, |Omega|) and its inverse (App. B, Eq. 196)."""

    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    positive: bool  # W(omega) >= 0 for every omega, which Theorem 2.3 and the projections assume


class BiasReparam(NamedTuple):
    """A bias reparametrization ``B(beta; W)`` (n,) given the effective weights (n, |Omega|).

    ``project`` maps an effective bias to the one kept after ``optimizer.step()`` (``None``: no
    projection step); ``inverse`` gives the ``beta`` that yields a bias (App. B, Eq. 197).
    """

    forward: Callable[[Tensor, Tensor], Tensor]
    inverse: Callable[[Tensor, Tensor], Tensor]
    needs_positive_weights: bool
    project: Callable[[Tensor, Tensor], Tensor] | None = None


# Registries: add an entry to make a new reparametrization available to every layer by name.
WEIGHT_REPARAMS: dict[str, WeightReparam] = {
    "identity": WeightReparam(lambda omega: omega, lambda w: w, positive=False),
    "positive": WeightReparam(F.softplus, softplus_inverse, positive=True),  # Eq. 13
    # f+^-1(W) is exact when the target W sums to K, which App. B's initialization does on average
    "dual": WeightReparam(dual_weight, softplus_inverse, positive=True),  # Eq. 14
}

BIAS_REPARAMS: dict[str, BiasReparam] = {
    "identity": BiasReparam(lambda beta, w: beta, lambda b, w: b, needs_positive_weights=False),
    "positive": BiasReparam(lambda beta, w: F.softplus(beta), lambda b, w: softplus_inverse(b),
                            needs_positive_weights=False),  # Eq. 13
    # §2.4 "Projected": B = f+(beta) during the step, projected onto C_b after it. C_b lies in
    # ]0, inf[ only for positive weights, where f+ can reach it.
    "projected": BiasReparam(lambda beta, w: F.softplus(beta),
                             lambda b, w: softplus_inverse(_clamp_to_interval(b, w)),
                             needs_positive_weights=True, project=_clamp_to_interval),
    "projected_reparam": BiasReparam(_projected_reparam_bias,  # Eq. 15
                                     lambda b, w: softplus_inverse(_clamp_to_interval(b, w)),
                                     needs_positive_weights=True),
}


def init_statistics(fan: int, level: float = THRESHOLD_LEVEL) -> tuple[float, float]:
    """Mean and variance of a fresh effective weight of a neuron with ``fan = |Omega|`` weights.

    App. B summary: ``p' = (sqrt3 + 2) sqrt(n) / (8 xi^-1(h))`` (Eq. 189), ``mu = (sqrt3 + 2) /
    (4 p' sqrt(n))`` (Eq. 190, i.e. ``mu n = 2 xi^-1(h) = K``) and ``sigma = 1 / (p'^2 n) - mu^2``
    (Eq. 191). Weights are then ``U(mu - sqrt(3 sigma), mu + sqrt(3 sigma))`` (Eq. 192), all positive.
    """
    inv = inverse_threshold(level)
    slope = (math.sqrt(3) + 2) * math.sqrt(fan) / (8 * inv)
    mean = (math.sqrt(3) + 2) / (4 * slope * math.sqrt(fan))
    return mean, 1 / (slope**2 * fan) - mean**2


# ---------------------------------------------------------------------------------------------------
# Checks that run at call time. fx.wrap keeps each one a single call_function node when torch.fx traces
# a model: they branch on concrete values.


@fx.wrap
def check_bise_input(x: Tensor, name: str, channels: int | tuple[int, ...], dims: int) -> None:
    """Raise :class:`InputError` unless ``x`` is a floating tensor (N, channels, *dims spatial*);
    ``channels`` may list several allowed counts."""
    layout = {0: "(N, C)", 2: "(N, C, H, W)"}[dims]
    if not isinstance(x, Tensor) or x.dim() != dims + 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name}: the input must be a tensor {layout}, got {got}; add a batch "
                         "dimension with x.unsqueeze(0)")
    allowed = (channels,) if isinstance(channels, int) else tuple(dict.fromkeys(channels))
    if x.shape[1] not in allowed:
        shared = f" (or {allowed[1]}, shared by every neuron)" if len(allowed) > 1 else ""
        raise InputError(f"{name}: expected {allowed[0]} input channels{shared} (dim 1) but the "
                         f"input {tuple(x.shape)} has {x.shape[1]}")
    if not x.is_floating_point():
        raise InputError(f"{name}: the input must be floating point in [0, 1], got {x.dtype}; "
                         "use x.float(), or LevelSetEncoder for gray-level images")


@fx.wrap
def check_bise_parameters(name: str, omega: Tensor, beta: Tensor, scale: Tensor) -> None:
    """Raise :class:`ParameterError` if a raw parameter of a BiSE layer is NaN or infinite."""
    for label, value in (("weights (omega)", omega), ("bias (beta)", beta), ("scale (p)", scale)):
        if not bool(torch.isfinite(value).all()):
            raise ParameterError(f"{name}: its {label} hold NaN or inf; training diverged (lower the "
                                 "learning rate) or the checkpoint is corrupt; call "
                                 "reset_parameters() or reload good weights")


# ---------------------------------------------------------------------------------------------------
# Layers.


class BiSEParams(NamedTuple):
    """Effective parameters of a bank of ``n`` BiSE neurons, one neuron per row.

    ``weight`` (n, |Omega|) is ``W(omega)`` flattened (input channel first, then the kernel row-major),
    ``bias`` (n,) is ``B(beta)`` and ``scale`` (n,) is ``p``: the inputs of :mod:`tropfx.bise_math`.
    """

    weight: Tensor
    bias: Tensor
    scale: Tensor


class BiSEModule(nn.Module):
    """The body shared by every BiSE layer: ``n`` independent BiSE neurons (Def. 2.1).

    Parameters ``omega`` (n, fan_in, *kernel), ``beta`` (n,) and ``scale`` (n,) are the paper's
    ``omega``, ``beta`` and ``p``. Options (keyword-only in every layer):

    * ``weight_reparam``: a key of :data:`WEIGHT_REPARAMS` -- ``"identity"``, ``"positive"``
      (softplus, Eq. 13) or ``"dual"`` (Eq. 14).
    * ``bias_reparam``: a key of :data:`BIAS_REPARAMS` -- ``"identity"``, ``"positive"`` (Eq. 13),
      ``"projected"`` (softplus, projected onto ``C_b`` by :func:`project_` after each optimizer
      step) or ``"projected_reparam"`` (Eq. 15). The projected modes need positive weights.
    * ``scale_init``: the initial ``p``. Eq. 193 sets 0, so as not to favour complementing; every
      other gradient is then 0 at the start (App. B.2), and in our runs a BiSEL trained that way
      collapsed to a constant output. The default, 1, learns dilations and erosions reliably. ``p``
      seldom changes sign in training (at ``p = 0`` the neuron is constant), so a layer meant to
      complement its result should start at ``scale_init=-1``.
    * ``input_mean``: ``E(x_0)`` of Eqs. 194-195; the bias starts at ``input_mean * sum W``. Keep 1/2
      for layers fed by other BiSE layers; give the data's mean to the first layer.
    * ``bias_noise``: ``epsilon_bias``, the half-width of the uniform noise added to the bias, which
      makes the gradients nonzero at ``p = 0`` (App. B.2).
    * ``generator``: the ``torch.Generator`` of the initialization (torch's global one if ``None``).
    """

    _dims: int  # spatial dimensions of the input: 2 for images, 0 for vectors

    def __init__(self, neurons: int, fan_in: int, kernel_size: tuple[int, ...], *,
                 weight_reparam: str = "positive", bias_reparam: str = "positive",
                 scale_init: float = 1.0, input_mean: float = 0.5, bias_noise: float = BIAS_NOISE,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if weight_reparam not in WEIGHT_REPARAMS:
            raise InputError(f"{name}: unknown weight_reparam={weight_reparam!r}; use one of "
                             f"{sorted(WEIGHT_REPARAMS)} or register it in WEIGHT_REPARAMS")
        if bias_reparam not in BIAS_REPARAMS:
            raise InputError(f"{name}: unknown bias_reparam={bias_reparam!r}; use one of "
                             f"{sorted(BIAS_REPARAMS)} or register it in BIAS_REPARAMS")
        positive_weights = WEIGHT_REPARAMS[weight_reparam].positive
        if BIAS_REPARAMS[bias_reparam].needs_positive_weights and not positive_weights:
            positive = sorted(k for k, v in WEIGHT_REPARAMS.items() if v.positive)
            raise InputError(f"{name}: bias_reparam={bias_reparam!r} projects the bias onto C_b, which "
                             f"softplus can reach only for positive weights, but weight_reparam="
                             f"{weight_reparam!r} can be negative; use weight_reparam in {positive} "
                             "or bias_reparam='positive'")
        if not 0.0 <= input_mean <= 1.0 or not bias_noise >= 0.0 or not math.isfinite(scale_init):
            raise InputError(f"{name}: need 0 <= input_mean <= 1, bias_noise >= 0 and a finite "
                             f"scale_init; got {input_mean}, {bias_noise}, {scale_init}")
        self.weight_reparam, self.bias_reparam = weight_reparam, bias_reparam
        self.scale_init, self.input_mean, self.bias_noise = scale_init, input_mean, bias_noise
        factory = {"device": device, "dtype": dtype}
        self.omega = nn.Parameter(torch.empty(neurons, fan_in, *kernel_size, **factory))
        self.beta = nn.Parameter(torch.empty(neurons, **factory))
        self.scale = nn.Parameter(torch.empty(neurons, **factory))
        self.reset_parameters(generator)

    @property
    def fan(self) -> int:
        """``|Omega|``: the number of weights of one neuron."""
        return self.omega[0].numel()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Appendix B: effective weights ``U(mu - sqrt(3 sigma), mu + sqrt(3 sigma))`` (Eqs. 190-192,
        :func:`init_statistics`), ``p = scale_init`` (Eq. 193) and the bias ``input_mean * sum W +
        U(-eps, eps)`` (Eqs. 194-195), mapped back to ``omega`` and ``beta`` by the reparametrizations'
        inverses (Eqs. 196-197)."""
        mean, var = init_statistics(self.fan)
        half = math.sqrt(3 * var)
        with torch.no_grad():
            w = torch.empty_like(self.omega).uniform_(mean - half, mean + half, generator=generator)
            self.omega.copy_(WEIGHT_REPARAMS[self.weight_reparam].inverse(w.flatten(1)).view_as(w))
            w = self._flat_weight()  # the dual reparametrization renormalizes: take what it gives
            noise = torch.empty_like(self.beta).uniform_(-self.bias_noise, self.bias_noise,
                                                         generator=generator)
            b = self.input_mean * w.sum(1) + noise
            self.beta.copy_(BIAS_REPARAMS[self.bias_reparam].inverse(b, w))
            self.scale.fill_(self.scale_init)

    def _flat_weight(self) -> Tensor:
        return WEIGHT_REPARAMS[self.weight_reparam].forward(self.omega.flatten(1))

    def effective_weight(self) -> Tensor:
        """``W(omega)``, shaped like ``omega`` (n, fan_in, *kernel); differentiable."""
        return self._flat_weight().view_as(self.omega)

    def effective_bias(self) -> Tensor:
        """``B(beta)`` (n,); differentiable (in ``omega`` too for ``"projected_reparam"``)."""
        return BIAS_REPARAMS[self.bias_reparam].forward(self.beta, self._flat_weight())

    def neurons(self) -> BiSEParams:
        """The effective ``(W, b, p)`` with one neuron per row; differentiable (use ``torch.no_grad()``
        to read them)."""
        w = self._flat_weight()
        return BiSEParams(w, BIAS_REPARAMS[self.bias_reparam].forward(self.beta, w), self.scale)

    def project_(self) -> bool:
        """The projection step of the bias mode, in place (``"projected"``: ``B(beta)`` onto ``C_b``).

        Call after ``optimizer.step()``; returns whether the mode has a projection step at all.
        """
        project = BIAS_REPARAMS[self.bias_reparam].project
        if project is None:
            return False
        with torch.no_grad():
            w = self._flat_weight()
            b = project(BIAS_REPARAMS[self.bias_reparam].forward(self.beta, w), w)
            self.beta.copy_(BIAS_REPARAMS[self.bias_reparam].inverse(b, w))
        return True

    def _threshold(self, y: Tensor, weight: Tensor) -> Tensor:
        """``xi(p (y - b))`` for pre-activations ``y`` with the neurons on dim 1; ``weight`` is the
        flat ``W(omega)`` the bias may depend on (computed once per call)."""
        b, p = BIAS_REPARAMS[self.bias_reparam].forward(self.beta, weight), self.scale
        if self._dims:
            b, p = b.view(-1, *(1,) * self._dims), p.view(-1, *(1,) * self._dims)
        return smooth_threshold(p * (y - b))

    def _check(self, x: Tensor, channels: int | tuple[int, ...]) -> None:
        name = type(self).__name__
        check_bise_input(x, name, channels, self._dims)
        check_bise_parameters(name, self.omega, self.beta, self.scale)

    def _options_repr(self) -> str:
        return (f"weight_reparam={self.weight_reparam!r}, bias_reparam={self.bias_reparam!r}, "
                f"scale_init={self.scale_init}, input_mean={self.input_mean}")


IntOrPair = int | tuple[int, int]


def _pair(name: str, arg: str, value: IntOrPair) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise InputError(f"{name}: {arg} must be a positive int or a pair of them, got {value!r}")
    return pair


def _positive_int(name: str, arg: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise InputError(f"{name}: {arg} must be a positive int, got {value!r}")
    return value


def _padding(name: str, padding: str | int | tuple[int, int]) -> str | tuple[int, int]:
    if padding == "same":
        return padding
    pair = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
        raise InputError(f"{name}: padding must be 'same', an int >= 0 or a pair, got {padding!r}")
    return pair


class BiSE(BiSEModule):
    """``channels`` independent BiSE neurons (Def. 2.1), neuron ``c`` filtering input channel ``c``.

    Input (N, channels, H, W) in [0, 1], output of the same shape (with ``padding="same"``, the
    default): ``y[:, c] = xi(p_c * (x[:, c] (*) W_c - b_c))``; an input (N, 1, H, W) is shared by
    every neuron (``x[:, 0]`` in place of ``x[:, c]``, :meth:`forward_shared`) with ``(*)`` a zero-padded
    cross-correlation by the ``kernel_size`` window (see the module docstring). ``BiSE(3)`` is the
    paper's single neuron with a 3x3 kernel. Options: :class:`BiSEModule`.
    """

    _dims = 2

    def __init__(self, kernel_size: IntOrPair = 3, *, channels: int = 1,
                 padding: str | int | tuple[int, int] = "same", **options):
        name = type(self).__name__
        self.kernel_size = _pair(name, "kernel_size", kernel_size)
        self.channels = _positive_int(name, "channels", channels)
        self.padding = _padding(name, padding)
        super().__init__(channels, 1, self.kernel_size, **options)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` is (N, channels, H, W), neuron ``c`` filtering channel ``c``; or (N, 1, H, W), shared
        by every neuron (:meth:`forward_shared`)."""
        self._check(x, (self.channels, 1))
        w = self._flat_weight()
        # groups = channels: depthwise; groups = 1 on one channel: one conv with `channels` outputs.
        y = F.conv2d(x, w.view_as(self.omega), padding=self.padding, groups=x.shape[1])
        return self._threshold(y, w)

    def forward_shared(self, x: Tensor) -> Tensor:
        """Every neuron filters the same one-channel input (N, 1, H, W): ``forward`` of
        ``x.repeat(1, channels, 1, 1)``, computed as one convolution with ``channels`` outputs
        (on CPU several times faster than the depthwise convolution of the copies). ``forward``
        does the same on a one-channel input; call that one from a model's forward, so that the
        layer stays one node for torch.fx and ``binarize_bise``."""
        self._check(x, 1)
        w = self._flat_weight()
        return self._threshold(F.conv2d(x, w.view_as(self.omega), padding=self.padding), w)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, channels={self.channels}, padding={self.padding!r}, "
                + self._options_repr())


class LUI(BiSEModule):
    """Layer Union Intersection (§2.3): BiSE neurons with a 1x1 kernel across channels.

    Output channel ``k`` reads the ``in_channels / groups`` input channels of its group (the default,
    ``groups=1``: all of them), as a grouped 1x1 convolution; activated, it is their union (a
    dilation across channels) or their intersection (an erosion). Input (N, in_channels, H, W),
    output (N, out_channels, H, W). Options: :class:`BiSEModule`.
    """

    _dims = 2

    def __init__(self, in_channels: int, out_channels: int, *, groups: int = 1, **options):
        name = type(self).__name__
        self.in_channels = _positive_int(name, "in_channels", in_channels)
        self.out_channels = _positive_int(name, "out_channels", out_channels)
        self.groups = _positive_int(name, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise InputError(f"{name}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        super().__init__(out_channels, in_channels // groups, (1, 1), **options)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x, self.in_channels)
        w = self._flat_weight()
        return self._threshold(F.conv2d(x, w.view_as(self.omega), groups=self.groups), w)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
                + self._options_repr())


class DenseLUI(BiSEModule):
    """The binarizable fully connected layer (§2.3, "DenseLUI"): a LUI on (N, in_features) vectors.

    ``y[:, k] = xi(p_k * (x @ W_k - b_k))``, i.e. a :class:`LUI` applied to the input reshaped to
    (N, in_features, 1, 1). Options: :class:`BiSEModule`.
    """

    _dims = 0

    def __init__(self, in_features: int, out_features: int, **options):
        name = type(self).__name__
        self.in_features = _positive_int(name, "in_features", in_features)
        self.out_features = _positive_int(name, "out_features", out_features)
        super().__init__(out_features, in_features, (), **options)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x, self.in_features)
        w = self._flat_weight()
        return self._threshold(F.linear(x, w), w)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, " + self._options_repr()


class BiSEL(nn.Module):
    """BiSE Layer, Def. 2.4 (Eq. 11): ``N x K`` BiSE neurons and ``K`` LUI, like a convolution.

    ``phi(x)_k = LUI_k[(chi_{n,k}(x_n))_n]``: every input channel ``n`` is filtered by its own BiSE
    ``chi_{n,k}`` for each output ``k``, and LUI ``k`` takes the union or intersection of the ``N``
    results instead of their sum. Submodules: ``bise`` (a :class:`BiSE` with ``N * K`` channels,
    channel ``k * N + n`` holding ``chi_{n,k}``) and ``lui`` (a :class:`LUI` with ``groups=K``).
    Input (N_batch, in_channels, H, W) in [0, 1], output (N_batch, out_channels, H', W').

    ``options`` (:class:`BiSEModule`) go to both; ``input_mean`` only to ``bise``, since the LUI
    inputs are BiSE outputs, centred on 1/2 by App. B's assumption 3. ``lui_input_mean`` is the
    ``input_mean`` of ``lui`` (default 1/2, Eq. 194): its bias starts at ``lui_input_mean * sum W``,
    so a lower value starts the LUIs nearer a union and a higher one nearer an intersection (the
    remark on bias initialization after Prop. B.1: ``E(x) < 1/2`` leans a neuron to a dilation).

    ``identity_lui=True`` (only with ``in_channels=1``) makes ``lui`` an ``nn.Identity``: a LUI
    reading a single channel is, once activated, the union (or intersection) of one set, i.e. that
    set (Def. 2.4 with ``N = 1``), so the layer is just its ``K`` BiSE neurons. The default keeps
    the trainable one-input LUI neurons, which add a second smooth threshold after each BiSE.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair = 3, *,
                 padding: str | int | tuple[int, int] = "same", identity_lui: bool = False,
                 lui_input_mean: float = 0.5, **options):
        super().__init__()
        name = type(self).__name__
        self.in_channels = _positive_int(name, "in_channels", in_channels)
        self.out_channels = _positive_int(name, "out_channels", out_channels)
        if identity_lui and in_channels != 1:
            raise InputError(f"{name}: identity_lui=True drops the LUIs, which is exact only when each "
                             f"reads one channel (in_channels=1), got in_channels={in_channels}")
        if identity_lui and lui_input_mean != 0.5:
            raise InputError(f"{name}: lui_input_mean={lui_input_mean} sets the bias of LUIs that "
                             "identity_lui=True removes; drop one of the two")
        lui_options = {k: v for k, v in options.items() if k != "input_mean"}
        lui_options["input_mean"] = lui_input_mean
        self.bise = BiSE(kernel_size, channels=in_channels * out_channels, padding=padding, **options)
        self.lui = (nn.Identity() if identity_lui else
                    LUI(in_channels * out_channels, out_channels, groups=out_channels, **lui_options))

    def forward(self, x: Tensor) -> Tensor:
        check_bise_input(x, type(self).__name__, self.in_channels, 2)
        if self.in_channels == 1:  # the K copies of one channel: one convolution with K outputs
            return self.lui(self.bise(x))  # (BiSE.forward shares a one-channel input)
        # K copies of the input, output-major, so BiSE channel k * N + n filters x_n for output k
        # and LUI group k gathers exactly (chi_{n,k}(x_n))_n.
        return self.lui(self.bise(x.repeat(1, self.out_channels, 1, 1)))

    def extra_repr(self) -> str:
        identity = ", identity_lui=True" if isinstance(self.lui, nn.Identity) else ""
        return f"{self.in_channels}, {self.out_channels}{identity}"


class LevelSetEncoder(nn.Module):
    """Gray / RGB images to binary channels through upper level sets (§2.3, Eq. 12).

    Input (N, C, *spatial); output (N, C * L, *spatial) with channel ``c * L + i`` equal to
    ``(x_c >= levels[i])`` as 0. / 1. ``levels`` is a strictly increasing sequence of thresholds, or
    an int ``L`` for ``1/L, 2/L, ..., 1`` (images in [0, 1]). The level sets of a channel are nested;
    :meth:`decode` inverts the encoding on images whose values are levels (or below the first).
    """

    def __init__(self, levels: int | Sequence[float] = 8, *, dtype: torch.dtype | None = None):
        super().__init__()
        name = type(self).__name__
        if isinstance(levels, int):
            levels = [i / _positive_int(name, "levels", levels) for i in range(1, levels + 1)]
        values = torch.as_tensor(list(levels), dtype=dtype or torch.get_default_dtype())
        if values.dim() != 1 or values.numel() == 0 or not bool(torch.isfinite(values).all()) \
                or not bool((values[1:] > values[:-1]).all()):
            raise InputError(f"{name}: levels must be a positive int or a non-empty, strictly "
                             f"increasing sequence of finite thresholds, got {levels!r}")
        self.register_buffer("levels", values)

    def forward(self, x: Tensor) -> Tensor:
        check_level_input(x, type(self).__name__)
        # (N, C, *s, 1) >= (L,) -> (N, C, *s, L) -> (N, C, L, *s) -> (N, C * L, *s)
        bits = (x.unsqueeze(-1) >= self.levels).movedim(-1, 2).flatten(1, 2)
        return bits.to(self.levels.dtype)

    def decode(self, bits: Tensor, fill: float = 0.0) -> Tensor:
        """The image whose encoding is ``bits``: per pixel, the highest level whose bit is set
        (``fill`` where none is). ``decode(encode(x))`` is ``x`` snapped down onto the levels."""
        n = self.levels.numel()
        if bits.dim() < 2 or bits.shape[1] % n:
            raise InputError(f"{type(self).__name__}.decode: expected (N, C * {n}, ...) bits, got "
                             f"shape {tuple(bits.shape)}")
        per_level = bits.unflatten(1, (-1, n)).movedim(2, -1) > 0.5  # (N, C, *s, L)
        values = torch.where(per_level, self.levels, torch.full_like(self.levels, -math.inf))
        top = values.amax(-1)
        return torch.where(torch.isneginf(top), torch.full_like(top, fill), top)

    def extra_repr(self) -> str:
        return f"levels={[round(v, 6) for v in self.levels.tolist()]}"


@fx.wrap
def check_level_input(x: Tensor, name: str) -> None:
    """Raise :class:`InputError` unless ``x`` is a real tensor (N, C, *spatial)."""
    if not isinstance(x, Tensor) or x.dim() < 3 or x.is_complex():
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name}: the input must be a real image tensor (N, C, *spatial), got {got}")


# tropfx.trace keeps them as call_module nodes, for the binarization pass to replace as units.
register_leaf(BiSE, LUI, DenseLUI, BiSEL, LevelSetEncoder)


# ---------------------------------------------------------------------------------------------------
# Morphological regularization (§4). Each loss maps a layer's effective parameters, weight (n, |Omega|),
# bias (n,) and scale (n,), to one value per neuron.


def constant_set_distance(weight: Tensor, se: Tensor) -> Tensor:
    """Eq. 28: squared distance of each row of ``weight`` to ``{theta 1_S}``, per row.

    ``sum_i W_i^2 - (sum_{s in S} W_s)^2 / |S|`` with ``se`` a boolean mask like ``weight``. An empty
    ``S`` counts as the distance to 0, ``sum_i W_i^2``.
    """
    inside = (weight * se).sum(1)
    return (weight**2).sum(1) - inside**2 / se.sum(1).clamp_min(1)


def best_constant_se(weight: Tensor) -> Tensor:
    """The SE minimizing Eq. 28 over thresholded sets ``(W >= W_k)`` (§3.2.2, Prop. A.13), per row.

    Returns a boolean mask like ``weight``; no gradient. Ties in ``W`` stay together: a thresholded
    set holds all weights equal to its smallest.
    """
    with torch.no_grad():
        ordered = weight.sort(dim=1, descending=True).values
        k = torch.arange(1, weight.shape[1] + 1, device=weight.device, dtype=weight.dtype)
        distance = (weight**2).sum(1, keepdim=True) - ordered.cumsum(1) ** 2 / k
        # The top k weights form a thresholded set only if the (k+1)-th is strictly smaller.
        distance[:, :-1][ordered[:, 1:] == ordered[:, :-1]] = math.inf
        smallest = ordered.gather(1, distance.argmin(1, keepdim=True))
        return weight >= smallest


def loss_exact(weight: Tensor, bias: Tensor, scale: Tensor | None = None) -> Tensor:
    """L_exact, Eq. 41: Eq. 28's distance to the constant set of the best thresholded SE ``S*``
    (held constant: the gradient is Eq. 28's with ``S = S*``)."""
    return constant_set_distance(weight, best_constant_se(weight))


def _loss_mean_threshold(weight: Tensor, factor: float) -> Tensor:
    se = (weight > factor * weight.mean(1, keepdim=True)).detach()
    return constant_set_distance(weight, se)


def loss_unif(weight: Tensor, bias: Tensor, scale: Tensor | None = None) -> Tensor:
    """L_unif, Eqs. 42 and 44: Eq. 28 with ``S_u = (W > 2/3 mean(W))``."""
    return _loss_mean_threshold(weight, 2 / 3)


def loss_normal(weight: Tensor, bias: Tensor, scale: Tensor | None = None) -> Tensor:
    """L_normal, Eqs. 43 and 45: Eq. 28 with ``S_n = (W > 3/4 mean(W))``."""
    return _loss_mean_threshold(weight, 3 / 4)


def loss_acti(weight: Tensor, bias: Tensor, scale: Tensor | None = None, *,
              solver: str = "fast") -> Tensor:
    """L_acti, Eqs. 30 and 40: squared distance of ``(W, b)`` to the nearest activable set.

    The closest ``(S*, psi*)`` and the projection ``(W*, b*)`` solve Eq. 20 for every thresholded
    ``S`` and both operations (:func:`tropfx.bise_math.project_activable`). ``solver="fast"`` (the
    default) solves them exactly from their KKT conditions, by sorting, vectorized over neurons;
    ``solver="osqp"`` runs OSQP on the 2 |Omega| QPs of each neuron as in §4.1 -- the same solution
    to about 1e-8, but too slow for more than a few neurons per step (§4.1: "the first step of
    computing S* is too long in practice"). Eqs. 35-39 write ``(W*, b*)`` as the projection onto
    the face of ``A_{psi*, S*}`` whose constraints have nonzero dual values, an affine function of
    ``(W, b)``; the gradient of Eq. 40 is then ``2 ((W, b) - (W*, b*))``, exactly what
    ``||W - W*||^2 + (b - b*)^2`` gives with ``(W*, b*)`` held constant -- for erosion too, which
    the paper does not spell out. Neurons that are already activated (for the sign of ``scale``)
    cost 0.
    """
    from tropfx import bise_math  # imported here: only this loss needs the projection solvers

    p = 1.0 if scale is None else scale.detach()
    target = bise_math.project_activable(weight.detach(), bias.detach(), solver=solver, p=p)
    return ((weight - target.weight) ** 2).sum(1) + (bias - target.bias) ** 2


# A registry: add an entry to make a new loss available to BiSERegularizer by name.
REGULARIZERS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "exact": loss_exact,
    "unif": loss_unif,
    "normal": loss_normal,
    "acti": loss_acti,
}


class BiSERegularizer:
    """The morphological loss term ``c * L_morpho`` of Eq. 29 over every BiSE layer of ``model``.

    ``kind`` is a key of :data:`REGULARIZERS` (``"exact"``, ``"unif"``, ``"normal"`` or ``"acti"``);
    ``weight`` is ``c``; before step ``start`` the term is 0 (the regularization delay of App. C).
    Neurons' losses are summed (``reduction="sum"``) or averaged (``"mean"``) over the whole model.
    ``solver`` is the projection solver of ``kind="acti"`` (:func:`loss_acti`): ``"fast"`` (exact,
    the default) or ``"osqp"`` (the paper's, slow); other kinds ignore it. The model is read, never
    modified. Use::

        reg = BiSERegularizer(model, kind="unif", weight=0.01, start=10_000)
        loss = criterion(model(x), y) + reg(step)
    """

    def __init__(self, model: nn.Module, kind: str = "unif", weight: float = 1.0, start: int = 0,
                 reduction: str = "sum", solver: str = "fast"):
        if kind not in REGULARIZERS:
            raise InputError(f"BiSERegularizer: unknown kind={kind!r}; use one of "
                             f"{sorted(REGULARIZERS)} or register it in REGULARIZERS")
        if reduction not in ("sum", "mean"):
            raise InputError(f"BiSERegularizer: reduction must be 'sum' or 'mean', got {reduction!r}")
        if solver not in ("fast", "osqp"):
            raise InputError(f"BiSERegularizer: solver must be 'fast' (exact) or 'osqp', got {solver!r}")
        if not isinstance(start, int) or start < 0 or not math.isfinite(weight):
            raise InputError(f"BiSERegularizer: need an int start >= 0 and a finite weight, got "
                             f"start={start!r}, weight={weight!r}")
        self.layers = [(path, m) for path, m in model.named_modules() if isinstance(m, BiSEModule)]
        if not self.layers:
            raise InputError(f"BiSERegularizer: {type(model).__name__} holds no BiSE layer (BiSE, LUI, "
                             "BiSEL, DenseLUI); there is nothing to regularize")
        if kind == "acti":
            signed = [path or "<root>" for path, m in self.layers
                      if not WEIGHT_REPARAMS[m.weight_reparam].positive]
            if signed:
                raise InputError(f"BiSERegularizer: kind='acti' solves Eq. 20 for positive weights "
                                 f"(Eqs. 21-26), but {signed} use a signed weight_reparam; build them "
                                 "with weight_reparam='positive' or 'dual'")
        self.kind, self.weight, self.start, self.reduction = kind, weight, start, reduction
        self.solver = solver
        loss = REGULARIZERS[kind]
        self._loss = functools.partial(loss, solver=solver) if loss is loss_acti else loss

    def __call__(self, step: int) -> Tensor:
        """``weight * L_morpho`` at training step ``step`` (a 0-dim tensor; exactly 0 before ``start``)."""
        first = self.layers[0][1].omega
        if step < self.start or self.weight == 0:
            return torch.zeros((), dtype=first.dtype, device=first.device)
        per_neuron = torch.cat([self._loss(*m.neurons()) for _, m in self.layers])
        total = per_neuron.sum() if self.reduction == "sum" else per_neuron.mean()
        return self.weight * total

    def __repr__(self) -> str:
        solver = f", solver={self.solver!r}" if self._loss is not REGULARIZERS[self.kind] else ""
        return (f"BiSERegularizer(kind={self.kind!r}, weight={self.weight}, start={self.start}, "
                f"reduction={self.reduction!r}{solver}, layers={len(self.layers)})")


def project_(model: nn.Module) -> int:
    """Apply the projection step of every BiSE layer of ``model`` in place; call after
    ``optimizer.step()``. Only ``bias_reparam="projected"`` layers change (their bias is projected
    onto ``C_b``, §2.4 "Projected"); returns how many layers were projected."""
    return sum(m.project_() for m in model.modules() if isinstance(m, BiSEModule))
