"""BiSE / BiMoNN layers (tropfx.nn.bise): formulas, initialization, regularizers, exact learning.

Oracles are written from the paper's equations with plain loops or numpy, never by calling the
function under test: Def. 2.1 / 2.4 by hand, Eqs. 13-15 in numpy, Eq. 28 over every subset, binary
morphology by shifting a zero-padded image, and activation (Theorem 2.3 with binary inputs) by
enumerating all 2^|Omega| input patterns.
"""

import functools
import itertools
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import tropfx
from tropfx.errors import InputError, ParameterError
from tropfx.nn.bise import (
    BIAS_NOISE,
    BIAS_REPARAMS,
    DUAL_K,
    LUI,
    WEIGHT_REPARAMS,
    BiSE,
    BiSEL,
    BiSEModule,
    BiSERegularizer,
    DenseLUI,
    LevelSetEncoder,
    best_constant_se,
    bias_interval,
    constant_set_distance,
    init_statistics,
    loss_exact,
    loss_normal,
    loss_unif,
    project_,
    smooth_threshold,
    softplus_inverse,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
MODES = [(w, b) for w in WEIGHT_REPARAMS for b in BIAS_REPARAMS
         if WEIGHT_REPARAMS[w].positive or not BIAS_REPARAMS[b].needs_positive_weights]




def xi(u):
    return 0.5 * np.tanh(u) + 0.5


def softplus_np(x):
    return np.log1p(np.exp(x))


# ---------------------------------------------------------------------------------------------------
# Binary morphology and activation oracles.


def binary_morphology(x: np.ndarray, se: np.ndarray, op: str) -> np.ndarray:
    """``y[j] = OR (AND) over s in S of x[j + s - center]``, x zero-padded: the layers' convention."""
    kh, kw = se.shape
    pad = np.pad(x, [(0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)])
    h, w = x.shape[-2:]
    shifted = [pad[..., i:i + h, j:j + w] for i, j in zip(*np.nonzero(se), strict=True)]
    return (np.any(shifted, 0) if op == "dilation" else np.all(shifted, 0)).astype(x.dtype)


def neuron_operation(w: np.ndarray, b: float, p: float):
    """The binary operation of one BiSE neuron, or None: ``(op, S, complemented)`` such that for every
    binary pattern X of |Omega| pixels, ``xi(p (X.w - b)) > 1/2`` equals ``psi_S(X)`` (complemented
    when ``p < 0``). Theorem 2.3 with delta = 1/2, checked over all 2^|Omega| patterns."""
    patterns = np.array(list(itertools.product([0.0, 1.0], repeat=w.size)))
    fires = xi(p * (patterns @ w - b)) > 0.5
    if p < 0:
        fires = ~fires
    for op in ("dilation", "erosion"):
        for se in itertools.product([False, True], repeat=w.size):
            se = np.array(se)
            if not se.any():
                continue
            hit = patterns[:, se].any(1) if op == "dilation" else patterns[:, se].all(1)
            if np.array_equal(hit, fires):
                return op, se, p < 0
    return None


# ---------------------------------------------------------------------------------------------------
# Shapes and the layers' formulas (Def. 2.1, Def. 2.4, DenseLUI).


def test_shapes():
    x = torch.rand(2, 3, 9, 7)
    assert BiSE(3)(x[:, :1]).shape == (2, 1, 9, 7)
    assert BiSE((3, 5), channels=3)(x).shape == (2, 3, 9, 7)
    assert BiSE(3, channels=3, padding=0)(x).shape == (2, 3, 7, 5)
    assert LUI(3, 4)(x).shape == (2, 4, 9, 7)
    assert LUI(6, 2, groups=2)(torch.rand(2, 6, 4, 4)).shape == (2, 2, 4, 4)
    assert BiSEL(3, 5, 5)(x).shape == (2, 5, 9, 7)
    assert DenseLUI(7, 4)(torch.rand(6, 7)).shape == (6, 4)
    assert LevelSetEncoder(4)(x).shape == (2, 12, 9, 7)
    y = BiSEL(3, 2)(x)
    assert ((y > 0) & (y < 1)).all()
    for m, n, fan in ((BiSE((3, 5), channels=2), 2, 15), (LUI(6, 4, groups=2), 4, 3),
                      (DenseLUI(7, 4), 4, 7)):
        w, b, p = m.neurons()
        assert w.shape == (n, fan) and b.shape == p.shape == (n,) and m.fan == fan
        assert m.effective_weight().shape == m.omega.shape


@pytest.mark.parametrize("weight,bias", MODES)
def test_bise_is_definition_2_1(weight, bias):
    torch.manual_seed(0)
    m = BiSE((3, 5), channels=2, weight_reparam=weight, bias_reparam=bias, scale_init=1.7, dtype=F64)
    x = torch.rand(3, 2, 6, 5, dtype=F64)
    w, b = m.effective_weight().detach().numpy(), m.effective_bias().detach().numpy()
    xp = np.pad(x.numpy(), [(0, 0), (0, 0), (1, 1), (2, 2)])  # "same", zeros
    expected = np.zeros(x.shape)
    for c, i, j in itertools.product(range(2), range(6), range(5)):
        corr = (xp[:, c, i:i + 3, j:j + 5] * w[c, 0]).sum((1, 2))  # cross-correlation, as Conv2d
        expected[:, c, i, j] = xi(1.7 * (corr - b[c]))
    np.testing.assert_allclose(m(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bisel_is_definition_2_4():
    torch.manual_seed(1)
    layer = BiSEL(3, 2, 3, dtype=F64)
    x = torch.rand(2, 3, 5, 5, dtype=F64)
    with torch.no_grad():
        layer.bise.scale.uniform_(-2, 2)
        layer.lui.scale.uniform_(-2, 2)
        chi_w, chi_b, chi_p = layer.bise.neurons()
        lui_w, lui_b, lui_p = layer.lui.neurons()
        outputs = []
        for k in range(2):
            # chi_{n,k} is BiSE channel k * N + n (documented layout); LUI_k reads those N channels
            chis = [smooth_threshold(chi_p[k * 3 + n] * (
                F.conv2d(x[:, n:n + 1], chi_w[k * 3 + n].view(1, 1, 3, 3), padding=1)
                - chi_b[k * 3 + n])) for n in range(3)]
            combined = sum(lui_w[k, n] * chis[n] for n in range(3))
            outputs.append(smooth_threshold(lui_p[k] * (combined - lui_b[k])))
        torch.testing.assert_close(layer(x), torch.cat(outputs, 1), rtol=1e-12, atol=1e-12)


def test_bisel_identity_lui_is_its_bise_neurons():
    torch.manual_seed(3)
    layer = BiSEL(1, 3, 3, identity_lui=True, dtype=F64)
    assert isinstance(layer.lui, nn.Identity) and "identity_lui=True" in repr(layer)
    assert not any(isinstance(m, LUI) for m in layer.modules())
    x = torch.rand(2, 1, 5, 5, dtype=F64)
    torch.testing.assert_close(layer(x), layer.bise(x.repeat(1, 3, 1, 1)), rtol=0, atol=0)
    with pytest.raises(InputError, match="in_channels=1"):
        BiSEL(2, 3, identity_lui=True)




@pytest.mark.parametrize("identity_lui", [False, True])
def test_bisel_with_one_input_channel_is_its_bise_on_copies(identity_lui):
    """``BiSEL(1, K)`` convolves its one channel once with K outputs (``BiSE.forward_shared``):
    the same values and gradients as the BiSE bank on K copies of the input (Def. 2.4)."""
    torch.manual_seed(5)
    layer = BiSEL(1, 3, 5, identity_lui=identity_lui, dtype=F64)
    with torch.no_grad():
        layer.bise.scale.uniform_(-2, 2)
    x = torch.rand(2, 1, 7, 6, dtype=F64, requires_grad=True)
    y = layer(x)
    reference = layer.lui(layer.bise(x.repeat(1, 3, 1, 1)))
    torch.testing.assert_close(y, reference, rtol=1e-12, atol=1e-12)
    g = torch.rand_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    expected = torch.autograd.grad(reference, [x, *layer.parameters()], g)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="BiSE: expected 1 input channels"):
        layer.bise.forward_shared(torch.rand(1, 2, 4, 4, dtype=F64))


def test_bisel_input_means_set_the_bise_and_lui_biases_apart():
    """``input_mean`` starts the BiSE biases at ``input_mean * sum W`` and ``lui_input_mean`` the
    LUI biases (Eqs. 194-195, no noise here); each leaves the other at its own value."""
    for means in ((0.5, 0.5), (0.8, 0.5), (0.5, 0.2), (0.75, 0.25)):
        torch.manual_seed(4)
        layer = BiSEL(3, 2, 5, input_mean=means[0], lui_input_mean=means[1], bias_noise=0.0,
                      weight_reparam="dual", dtype=F64)
        for module, mean in ((layer.bise, means[0]), (layer.lui, means[1])):
            w, b, _ = module.neurons()
            torch.testing.assert_close(b, mean * w.sum(1), rtol=1e-12, atol=1e-12)
        assert layer.lui.input_mean == means[1] and layer.bise.input_mean == means[0]
    with pytest.raises(InputError, match="lui_input_mean=0.3 sets the bias of LUIs"):
        BiSEL(1, 3, identity_lui=True, lui_input_mean=0.3)
    with pytest.raises(InputError, match="LUI: need 0 <= input_mean <= 1"):
        BiSEL(2, 1, lui_input_mean=1.5)

def test_dense_lui_is_a_lui_on_1x1_images():
    torch.manual_seed(2)
    dense, lui = DenseLUI(6, 3), LUI(6, 3)
    lui.load_state_dict({k: v.view_as(lui.state_dict()[k]) for k, v in dense.state_dict().items()})
    x = torch.rand(4, 6)
    torch.testing.assert_close(dense(x), lui(x[:, :, None, None]).flatten(1))


# ---------------------------------------------------------------------------------------------------
# Reparametrizations (§2.4, Eqs. 13-15) against numpy.


def test_dual_constant_is_twice_the_inverse_threshold_at_095():
    assert DUAL_K == pytest.approx(2 * math.atanh(0.9))
    assert xi(DUAL_K / 2) == pytest.approx(0.95)


@settings(max_examples=50)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(0, 2**31))
def test_weight_reparametrizations_match_equations_13_and_14(n, fan, seed):
    omega = torch.randn(n, fan, generator=torch.Generator().manual_seed(seed), dtype=F64) * 3
    o = omega.numpy()
    np.testing.assert_array_equal(WEIGHT_REPARAMS["identity"].forward(omega).numpy(), o)
    np.testing.assert_allclose(WEIGHT_REPARAMS["positive"].forward(omega).numpy(), softplus_np(o),
                               rtol=1e-12)
    dual = softplus_np(o) * (2 * math.atanh(0.9)) / softplus_np(o).sum(1, keepdims=True)
    np.testing.assert_allclose(WEIGHT_REPARAMS["dual"].forward(omega).numpy(), dual, rtol=1e-12)
    for mode in WEIGHT_REPARAMS.values():  # inverse(forward(.)) is the identity on the range
        w = mode.forward(omega)
        torch.testing.assert_close(mode.forward(mode.inverse(w)), w, rtol=1e-9, atol=1e-9)


def test_bias_interval_and_the_projected_reparametrization_eq_15():
    w = torch.tensor([[0.1, 0.3, 0.2, 0.5], [0.4, 0.4, 0.4, 0.4], [0.7, 0.0, 0.0, 0.0]], dtype=F64)
    lower, upper = bias_interval(w)
    # l_c = (W_(1) + W_(2)) / 2, u_c = sum W - W_(1) / 2 (§2.4)
    torch.testing.assert_close(lower, torch.tensor([0.15, 0.4, 0.0], dtype=F64))
    torch.testing.assert_close(upper, torch.tensor([1.05, 1.4, 0.7], dtype=F64))
    lone_lower, lone_upper = bias_interval(torch.tensor([[0.8]], dtype=F64))
    assert lone_lower.item() == lone_upper.item() == pytest.approx(0.4)  # one weight: W / 2
    beta = softplus_inverse(torch.tensor([0.01, 0.9, 2.0], dtype=F64))
    b = BIAS_REPARAMS["projected_reparam"].forward(beta, w)
    torch.testing.assert_close(b, torch.tensor([0.15, 0.9, 0.7], dtype=F64))  # low, inside, high
    np.testing.assert_allclose(BIAS_REPARAMS["positive"].forward(beta, w).numpy(),
                               softplus_np(beta.numpy()), rtol=1e-12)
    torch.testing.assert_close(BIAS_REPARAMS["identity"].forward(beta, w), beta)


def test_projected_reparam_bias_follows_the_clamping_bound():
    # B = l_c(W) when f+(beta) < l_c: the gradient reaches the two smallest weights, not beta.
    w = torch.tensor([[0.2, 0.6, 1.0]], dtype=F64, requires_grad=True)
    beta = torch.tensor([-5.0], dtype=F64, requires_grad=True)
    BIAS_REPARAMS["projected_reparam"].forward(beta, w).sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([[0.5, 0.5, 0.0]], dtype=F64))
    assert beta.grad.item() == 0


@settings(max_examples=60)
@given(st.integers(1, 9), st.integers(0, 2**31))
def test_bias_interval_lies_between_the_smallest_weight_and_the_sum(fan, seed):
    w = torch.rand(3, fan, generator=torch.Generator().manual_seed(seed), dtype=F64) + 1e-3
    lower, upper = bias_interval(w)
    assert (lower <= upper).all()
    if fan > 1:  # min(W) <= l_c <= u_c < sum W
        assert (lower >= w.min(1).values).all() and (upper < w.sum(1)).all()


def test_projection_step_puts_the_bias_back_into_c_b():
    torch.manual_seed(3)
    model = nn.Sequential(BiSEL(2, 2, bias_reparam="projected"), DenseLUI(3, 2))
    layer = model[0].bise
    with torch.no_grad():
        layer.beta[:2] = 30.0  # far above u_c
        layer.beta[2:] = -30.0  # far below l_c
    before = model[1].beta.detach().clone()
    assert project_(model) == 2  # the BiSE and the LUI of the BiSEL; DenseLUI is 'positive'
    w, b, _ = layer.neurons()
    lower, upper = bias_interval(w)
    torch.testing.assert_close(b[:2], upper[:2])
    torch.testing.assert_close(b[2:], lower[2:])
    assert torch.equal(model[1].beta, before)
    assert not layer.project_() or torch.allclose(layer.neurons().bias, b)  # idempotent


# ---------------------------------------------------------------------------------------------------
# Initialization, Appendix B.


def test_init_statistics_are_appendix_b():
    h = 0.95
    inv = math.atanh(2 * h - 1)
    for n in (1, 9, 64):
        slope = (math.sqrt(3) + 2) / (8 * inv) * math.sqrt(n)  # Eq. 189
        mean = (math.sqrt(3) + 2) / (4 * slope * math.sqrt(n))  # Eq. 190
        var = 1 / (slope**2 * n) - mean**2  # Eq. 191
        assert init_statistics(n) == pytest.approx((mean, var))
        assert mean * n == pytest.approx(DUAL_K)  # Eq. 201: mu n = 2 xi^-1(h)
        assert mean - math.sqrt(3 * var) > 0  # every initial weight is positive


@pytest.mark.parametrize("weight,bias", MODES)
def test_fresh_layers_follow_appendix_b(weight, bias):
    n = 64
    layer = DenseLUI(n, 4000, weight_reparam=weight, bias_reparam=bias, input_mean=0.3,
                     generator=torch.Generator().manual_seed(4), dtype=F64)
    w, b, p = (t.detach() for t in layer.neurons())
    mean, var = init_statistics(n)
    half = math.sqrt(3 * var)
    assert torch.equal(p, torch.ones(4000, dtype=F64))
    if weight == "dual":  # renormalized: every row sums to K exactly (Prop. B.1)
        torch.testing.assert_close(w.sum(1), torch.full((4000,), DUAL_K, dtype=F64))
    else:  # Eq. 192: U(mu - sqrt(3 sigma), mu + sqrt(3 sigma))
        assert mean - half - 1e-9 <= w.min() and w.max() <= mean + half + 1e-9
        assert w.var().item() == pytest.approx(var, rel=0.02)
    assert w.mean().item() == pytest.approx(mean, rel=0.01)
    # Eq. 195: b = E(x_0) sum W + U(-eps, eps), eps = 1e-4 (App. B.2)
    noise = b - 0.3 * w.sum(1)
    assert noise.abs().max() <= BIAS_NOISE * (1 + 1e-6)
    assert noise.abs().max() > BIAS_NOISE / 2


def test_init_is_seeded_and_scale_init_zero_is_eq_193():
    a = BiSEL(2, 3, generator=torch.Generator().manual_seed(5), scale_init=0.0)
    b = BiSEL(2, 3, generator=torch.Generator().manual_seed(5), scale_init=0.0)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert not a.bise.scale.any() and not a.lui.scale.any()
    # Later layers start at b = sum W / 2 (Eq. 194): halfway between dilation and erosion.
    w, bias, _ = a.lui.neurons()
    torch.testing.assert_close(bias, w.sum(1) / 2, atol=BIAS_NOISE, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("weight,bias", MODES)
def test_gradients_reach_every_parameter(weight, bias):
    torch.manual_seed(6)
    model = nn.Sequential(BiSEL(2, 3, weight_reparam=weight, bias_reparam=bias),
                          LUI(3, 1, weight_reparam=weight, bias_reparam=bias))
    x = (torch.rand(4, 2, 6, 6) < 0.5).float()
    model(x).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_gradcheck_float64():
    torch.manual_seed(7)
    layer = BiSEL(2, 2, weight_reparam="dual", bias_reparam="projected_reparam", dtype=F64)
    x = torch.rand(1, 2, 4, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *layer.parameters()))


def test_at_p_zero_only_the_scale_has_a_gradient():
    # App. B.2: with every p = 0, dL/dW = dL/db = 0 and dL/dp != 0 thanks to the bias noise.
    torch.manual_seed(8)
    model = BiSEL(1, 2, scale_init=0.0)
    model(torch.rand(3, 1, 5, 5)).sum().backward()
    for module in (model.bise, model.lui):
        assert not module.omega.grad.any() and not module.beta.grad.any()
    assert model.lui.scale.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Regularizers, §4.


def subsets(n):
    for r in range(1, n + 1):
        yield from itertools.combinations(range(n), r)


@settings(max_examples=60)
@given(st.integers(1, 7), st.integers(0, 2**31))
def test_l_exact_is_the_best_subset_distance(fan, seed):
    # Prop. A.13: the best S of Eq. 28 over all subsets is a thresholded set, so the fast search
    # over thresholded sets (Eq. 41) reaches the brute-force minimum.
    w = torch.rand(3, fan, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for row, value in zip(w.numpy(), loss_exact(w, None).numpy(), strict=True):
        brute = min((row**2).sum() - row[list(s)].sum() ** 2 / len(s) for s in subsets(fan))
        assert value == pytest.approx(brute, abs=1e-12)


def test_constant_weights_have_zero_distance_and_ties_stay_together():
    w = torch.tensor([[0.0, 0.7, 0.7, 0.0, 0.7], [0.5, 0.5, 0.5, 0.5, 0.5]], dtype=F64)
    assert torch.equal(best_constant_se(w), w > 0.1)
    torch.testing.assert_close(loss_exact(w, None), torch.zeros(2, dtype=F64))


def test_l_unif_and_l_normal_by_hand():
    w = torch.tensor([[1.1, 2.0, 3.0, 0.1]], dtype=F64)  # mean 1.55
    # Eq. 42: tau_u = 2/3 * 1.55 = 1.033 -> S_u = {1.1, 2, 3}; Eq. 44 (with the squares of Eq. 28)
    assert loss_unif(w, None).item() == pytest.approx(14.22 - 6.1**2 / 3)
    # Eq. 43: tau_n = 3/4 * 1.55 = 1.1625 -> S_n = {2, 3}
    assert loss_normal(w, None).item() == pytest.approx(14.22 - 5.0**2 / 2)


def test_regularizer_gradient_is_eq_28_with_s_fixed():
    w = torch.tensor([[0.3, 1.0, 0.9, 0.05]], dtype=F64, requires_grad=True)
    se = best_constant_se(w)
    loss_exact(w, None).sum().backward()
    expected = 2 * w.detach() - 2 * se * (w.detach() * se).sum() / se.sum()
    torch.testing.assert_close(w.grad, expected)
    assert torch.autograd.gradcheck(lambda v: constant_set_distance(v, se), (w.detach().requires_grad_(),))


@pytest.mark.parametrize("kind,fn", [("exact", loss_exact), ("unif", loss_unif),
                                     ("normal", loss_normal)])
def test_regularizer_is_zero_before_its_start_then_sums_every_neuron(kind, fn):
    torch.manual_seed(9)
    model = nn.Sequential(BiSEL(1, 2), nn.Flatten(), DenseLUI(2 * 4 * 4, 3))
    reg = BiSERegularizer(model, kind=kind, weight=0.5, start=10)
    assert reg(0).item() == 0 and reg(9).item() == 0
    expected = sum(fn(*m.neurons()[:2]).sum() for m in (model[0].bise, model[0].lui, model[2]))
    torch.testing.assert_close(reg(10), 0.5 * expected)
    assert reg(10).item() > 0
    mean = BiSERegularizer(model, kind=kind, weight=0.5, reduction="mean")(0)
    torch.testing.assert_close(mean, 0.5 * expected / (2 + 2 + 3))


def test_regularized_training_step():
    torch.manual_seed(10)
    model = BiSEL(1, 1, bias_reparam="projected")
    reg = BiSERegularizer(model, kind="exact", weight=0.01, start=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = (torch.rand(4, 1, 8, 8) < 0.5).float()
    for step in range(3):
        opt.zero_grad()
        loss = F.mse_loss(model(x), x) + reg(step)
        loss.backward()
        opt.step()
        project_(model)
        assert torch.isfinite(loss)
    w, b, _ = model.bise.neurons()
    lower, upper = bias_interval(w)
    assert ((lower - 1e-6 <= b) & (b <= upper + 1e-6)).all()


def eq_20_distance(w: np.ndarray, b: float, se: np.ndarray, op: str) -> float:
    """Eq. 20 for one (S, psi) with SLSQP: squared distance to the constraints of Eqs. 21-23
    (dilation) or 24-26 (erosion), every weight >= 0 (Eq. 20's domain R+^Omega)."""
    from scipy.optimize import minimize

    n = w.size
    rows, rhs = [], []  # rows @ (w, b) <= rhs
    if op == "dilation":
        rows.append(np.r_[~se, -1.0])  # Eq. 21: sum_{Omega \ S} w - b <= 0
        rows += [np.r_[-np.eye(n)[s], 1.0] for s in np.flatnonzero(se)]  # Eq. 22: b <= w_s
    else:
        rows.append(np.r_[-se.astype(float), 1.0])  # Eq. 24: b - sum_S w <= 0
        rows += [np.r_[1.0 - np.eye(n)[s], -1.0] for s in np.flatnonzero(se)]  # Eq. 25
    rows += [np.r_[-np.eye(n)[k], 0.0] for k in range(n)]  # Eqs. 23 / 26, and w_S >= 0
    a = np.array(rows, dtype=float)
    rhs = np.zeros(len(rows))
    z0 = np.r_[w, b]
    res = minimize(lambda z: ((z - z0) ** 2).sum(), z0, jac=lambda z: 2 * (z - z0), method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda z: rhs - a @ z, "jac": lambda z: -a}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success, res.message
    return res.fun


def test_l_acti_is_the_smallest_eq_20_distance_over_every_se():
    pytest.importorskip("tropfx.bise_math")
    from tropfx.nn.bise import loss_acti

    g = torch.Generator().manual_seed(11)
    w = torch.rand(5, 4, generator=g, dtype=F64) + 0.05
    b = w.sum(1) * torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)
    loss = loss_acti(w, b).numpy()
    for i in range(5):
        # every subset, not only thresholded ones (Prop. 3.2 says they suffice), both operations
        brute = min(eq_20_distance(w[i].numpy(), b[i].item(), np.isin(np.arange(4), s), op)
                    for s in subsets(4) for op in ("dilation", "erosion"))
        assert loss[i] == pytest.approx(brute, abs=1e-7)


def test_l_acti_matches_equations_35_to_40_and_has_the_projection_gradient():
    bise_math = pytest.importorskip("tropfx.bise_math")
    from tropfx.nn.bise import loss_acti

    g = torch.Generator().manual_seed(12)
    w = (torch.rand(4, 9, generator=g, dtype=F64) + 0.05).requires_grad_(True)
    # neuron 0 is activated, 1 and 2 project onto dilations with Eq. 21 active, 3 onto an erosion
    b = (w.detach().sum(1) * torch.tensor([0.05, 0.15, 0.25, 0.9], dtype=F64)).requires_grad_(True)
    loss = loss_acti(w, b)
    assert loss[0].item() == 0
    target = bise_math.project_activable(w.detach(), b.detach(), solver="osqp")
    loss.sum().backward()  # the gradient of a squared distance to a convex set: 2 (z - P(z))
    torch.testing.assert_close(w.grad, 2 * (w.detach() - target.weight))
    torch.testing.assert_close(b.grad, 2 * (b.detach() - target.bias))
    checked = 0
    for i, op in enumerate(target.operation):
        duals = bise_math.activable_qp_duals(w[i].detach(), b[i].detach(), target.se[i], op)
        lam = duals.sum_dual.item()
        if op != "dilation" or lam <= 1e-9:
            continue  # Eqs. 35-39 are the dilation with Eq. 21 active
        W, B, S = w[i].detach().numpy(), b[i].item(), target.se[i].numpy()
        T = S & (W <= duals.bias.item())  # Eq. 31
        K = ~S & (W <= lam)  # Eq. 32
        Kbar = ~S & ~K  # Eq. 33
        D = Kbar.sum() * (T.sum() + 1) + 1  # Eq. 34
        b_star = (W[Kbar].sum() + Kbar.sum() * (W[T].sum() + B)) / D  # Eq. 35
        w_star = W.copy()  # Eq. 39 on S \ T
        w_star[Kbar] = W[Kbar] + (W[T].sum() + B - (T.sum() + 1) * W[Kbar].sum()) / D  # Eq. 36
        w_star[K] = 0  # Eq. 37
        w_star[T] = b_star  # Eq. 38
        np.testing.assert_allclose(w_star, duals.weight.numpy(), atol=1e-6)
        assert b_star == pytest.approx(duals.bias.item(), abs=1e-6)
        # Eq. 40, with + (b - b*)^2: a squared distance
        assert loss[i].item() == pytest.approx(((W - w_star) ** 2).sum() + (B - b_star) ** 2, abs=1e-6)
        checked += 1
    assert checked >= 2
    # An activated neuron (a flat 3x3 dilation, b inside [L, U)) is at distance 0.
    flat = torch.full((1, 9), 0.3, dtype=F64)
    assert loss_acti(flat, torch.tensor([0.15], dtype=F64)).item() == 0


def test_acti_regularizer_trains():
    pytest.importorskip("tropfx.bise_math")
    torch.manual_seed(13)
    model = BiSEL(1, 2, 3)
    reg = BiSERegularizer(model, kind="acti", weight=0.1, start=1)
    assert reg(0).item() == 0 and reg(1).item() > 0
    reg(1).backward()
    for name, param in model.named_parameters():  # the loss reads W and b, not p
        assert (param.grad is None) == name.endswith("scale"), name
        assert name.endswith("scale") or torch.isfinite(param.grad).all(), name


def test_l_acti_fast_and_osqp_solvers_agree_in_value_and_gradient():
    pytest.importorskip("tropfx.bise_math")
    from tropfx.nn.bise import loss_acti

    torch.manual_seed(14)
    model = nn.Sequential(BiSEL(1, 3, 5, weight_reparam="dual"), BiSEL(3, 1, 5))
    with torch.no_grad():  # spread the biases so that both operations and activated neurons occur
        for layer in model:
            layer.bise.beta.add_(torch.linspace(-2.0, 2.0, layer.bise.beta.numel()))
    grads, values = {}, {}
    for solver in ("fast", "osqp"):
        reg = BiSERegularizer(model, kind="acti", weight=1.0, solver=solver)
        assert f"solver={solver!r}" in repr(reg)
        model.zero_grad()
        value = reg(0)
        value.backward()
        values[solver] = value.detach()
        grads[solver] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert values["fast"].item() > 0
    torch.testing.assert_close(values["fast"], values["osqp"], rtol=1e-5, atol=1e-6)
    assert grads["fast"].keys() == grads["osqp"].keys()
    for name in grads["fast"]:
        torch.testing.assert_close(grads["fast"][name], grads["osqp"][name], rtol=1e-4, atol=1e-5)
    # the default is the fast solver
    w, b, p = model[0].bise.neurons()
    torch.testing.assert_close(loss_acti(w, b, p), loss_acti(w, b, p, solver="fast"))
    assert BiSERegularizer(model, kind="acti").solver == "fast"


# ---------------------------------------------------------------------------------------------------
# The central claim: trained on a binary morphological target, BiSEL(1, 1, 3) binarizes exactly.


TARGETS = {  # not symmetric: the SE is read in the stored kernel layout
    "dilation": ((0, 1, 0), (1, 1, 0), (0, 1, 1)),
    "erosion": ((1, 1, 0), (0, 1, 0), (0, 1, 0)),
}
STEPS = 300


@functools.cache
def trained_bisel(op: str) -> tuple[BiSEL, float]:
    """BiSEL(1, 1, 3) with default options, trained by Adam on ``op`` by ``TARGETS[op]``; the model
    and its final loss. Fixed seeds; about a second of CPU."""
    se = np.array(TARGETS[op], dtype=bool)
    gen = np.random.default_rng(12)
    density = 0.3 if op == "dilation" else 0.7  # keeps both classes common in the target
    x = (gen.random((32, 1, 16, 16)) < density).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(binary_morphology(x, se, op))
    torch.manual_seed(12)
    model = BiSEL(1, 1, kernel_size=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.mse_loss(model(xt), yt)
        loss.backward()
        opt.step()
    return model, loss.item()


@pytest.mark.parametrize("op", sorted(TARGETS))
def test_bisel_learns_a_morphological_operation_and_binarizes_exactly(op):
    se = np.array(TARGETS[op], dtype=bool)
    model, loss = trained_bisel(op)
    assert loss < 1e-2
    with torch.no_grad():
        bise = neuron_operation(*(t[0].double().numpy() for t in model.bise.neurons()))
        lui = neuron_operation(*(t[0].double().numpy() for t in model.lui.neurons()))
    assert bise is not None and lui is not None, "a BiSE of the trained BiSEL is not activated"
    # Binarization: each neuron becomes its operation, complemented if p < 0. A one-channel LUI is
    # the identity (or the complement); a complement of a dilation / erosion of x is not one, so the
    # two complements, if any, cancel and the BiSE alone is psi_S.
    learned_op, learned_se, complement = bise
    assert lui[1].tolist() == [True] and complement == lui[2]
    assert learned_op == op and np.array_equal(learned_se.reshape(3, 3), se)
    # The binarized network and the float one (thresholded) equal the target on fresh images,
    # borders included.
    fresh = (np.random.default_rng(13).random((64, 1, 16, 16)) < 0.5).astype(np.float32)
    binarized = binary_morphology(fresh, learned_se.reshape(3, 3), learned_op)
    assert np.array_equal(binarized, binary_morphology(fresh, se, op))
    with torch.no_grad():
        assert np.array_equal(model(torch.from_numpy(fresh)).numpy() > 0.5,
                              binary_morphology(fresh, se, op) > 0.5)


@pytest.mark.parametrize("op", sorted(TARGETS))
def test_trained_bisel_is_activated_for_bise_math_too(op):
    bise_math = pytest.importorskip("tropfx.bise_math")
    model, _ = trained_bisel(op)
    with torch.no_grad():
        w, b, p = model.bise.neurons()
        verdict = bise_math.is_activated(w, b, p=p)
        lui = bise_math.is_activated(*model.lui.neurons()[:2], p=model.lui.scale.detach())
    assert verdict.exact.all() and verdict.operation == (op,)
    assert np.array_equal(verdict.se[0].view(3, 3).numpy(), np.array(TARGETS[op], dtype=bool))
    assert lui.exact.all() and bool(lui.complemented[0]) == bool(verdict.complemented[0])


# ---------------------------------------------------------------------------------------------------
# Level-set encoder, §2.3.


@settings(max_examples=60)
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=6, unique=True), st.integers(1, 3),
       st.integers(0, 2**31))
def test_level_sets_decode_back_to_the_levels(levels, channels, seed):
    levels = sorted(levels)
    encoder = LevelSetEncoder([float(v) for v in levels], dtype=F64)
    g = torch.Generator().manual_seed(seed)
    below = float(levels[0] - 1)
    palette = torch.tensor([below] + levels, dtype=F64)
    x = palette[torch.randint(len(palette), (2, channels, 4, 5), generator=g)]
    bits = encoder(x)
    assert bits.shape == (2, channels * len(levels), 4, 5)
    assert set(bits.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(encoder.decode(bits, fill=below), x)
    # channel c * L + i is (x_c >= levels[i]); the level sets of a channel are nested
    for c, i in itertools.product(range(channels), range(len(levels))):
        assert torch.equal(bits[:, c * len(levels) + i], (x[:, c] >= levels[i]).double())
    per_channel = bits.unflatten(1, (channels, len(levels)))
    assert (per_channel[:, :, 1:] <= per_channel[:, :, :-1]).all()
    # Any image decodes to its values snapped down onto the levels.
    y = torch.rand(2, channels, 3, 3, generator=g, dtype=F64) * 120 - 60
    snapped = encoder.decode(encoder(y), fill=-math.inf)
    for value, got in zip(y.flatten().tolist(), snapped.flatten().tolist(), strict=True):
        assert got == max([v for v in levels if v <= value], default=-math.inf)


def test_rgb_and_8_bit_images_are_exact():
    g = torch.Generator().manual_seed(14)
    rgb = torch.randint(0, 256, (2, 3, 6, 6), generator=g).float()
    encoder = LevelSetEncoder(range(1, 256))
    assert torch.equal(encoder.decode(encoder(rgb)), rgb)
    unit = LevelSetEncoder(4)  # 1/4, 2/4, 3/4, 1 for images in [0, 1]
    gray = torch.randint(0, 5, (2, 1, 5, 5), generator=g).float() / 4
    assert torch.equal(unit.decode(unit(gray)), gray)


# ---------------------------------------------------------------------------------------------------
# torch.fx, tropfx.trace and state_dict.


class Tiny(nn.Module):
    """Every layer of the module: gray levels -> BiSEL -> LUI -> BiSE -> DenseLUI."""

    def __init__(self):
        super().__init__()
        self.levels = LevelSetEncoder(3)
        self.conv = BiSEL(3, 2, 3, weight_reparam="dual", bias_reparam="projected_reparam")
        self.lui = LUI(2, 2)
        self.bise = BiSE((3, 3), channels=2, padding=0)
        self.head = DenseLUI(2 * 3 * 3, 4, bias_reparam="projected")

    def forward(self, x):
        return self.head(self.bise(self.lui(self.conv(self.levels(x)))).flatten(1))


def test_symbolic_trace_of_every_layer():
    torch.manual_seed(15)
    model = Tiny()
    x = torch.rand(2, 1, 5, 5)
    traced = fx.symbolic_trace(model)
    assert torch.equal(traced(x), model(x))
    for layer, sample in ((model.conv, model.levels(x)), (model.head, torch.rand(2, 18)),
                          (model.levels, x)):
        assert torch.equal(fx.symbolic_trace(layer)(sample), layer(sample))
    again = pickle.loads(pickle.dumps(traced))
    assert torch.equal(again(x), model(x))
    # The argument checks run at call time inside the traced module too.
    with pytest.raises(InputError, match="BiSEL"):
        traced(torch.rand(2, 2, 5, 5))


def test_tropfx_trace_keeps_the_layers_whole():
    gm, auto = tropfx.trace(Tiny())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["levels", "conv", "lui", "bise", "head"] and not auto


def test_state_dict_round_trip():
    torch.manual_seed(16)
    a, b = Tiny(), Tiny()
    x = torch.rand(3, 1, 5, 5)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    for ma, mb in zip(a.modules(), b.modules(), strict=True):
        if isinstance(ma, BiSEModule):
            for ta, tb in zip(ma.neurons(), mb.neurons(), strict=True):
                assert torch.equal(ta, tb)
    assert set(a.state_dict()) >= {"levels.levels", "conv.bise.omega", "conv.lui.beta", "head.scale"}


# ---------------------------------------------------------------------------------------------------
# Errors.


def test_nan_parameters_are_reported():
    layer = BiSEL(1, 1)
    with torch.no_grad():
        layer.bise.omega[0, 0, 1, 1] = math.nan
    with pytest.raises(ParameterError, match=r"BiSE: its weights \(omega\) hold NaN"):
        layer(torch.rand(1, 1, 4, 4))
    dense = DenseLUI(3, 2)
    with torch.no_grad():
        dense.scale[0] = math.inf
    with pytest.raises(ParameterError, match="DenseLUI.*scale"):
        dense(torch.rand(1, 3))


@pytest.mark.parametrize("make,match", [
    (lambda: BiSE(3, weight_reparam="negative"), "BiSE: unknown weight_reparam='negative'"),
    (lambda: LUI(2, 2, bias_reparam="raw"), "LUI: unknown bias_reparam='raw'"),
    (lambda: BiSEL(1, 1, weight_reparam="identity", bias_reparam="projected"),
     "bias_reparam='projected'.*weight_reparam='identity'.*'dual', 'positive'"),
    (lambda: DenseLUI(2, 2, weight_reparam="identity", bias_reparam="projected_reparam"),
     "DenseLUI: bias_reparam='projected_reparam'"),
    (lambda: BiSE(0), "kernel_size"),
    (lambda: BiSE(3, padding=-1), "padding"),
    (lambda: LUI(3, 2, groups=2), "groups=2 must divide"),
    (lambda: DenseLUI(3, 2, input_mean=2.0), "input_mean"),
    (lambda: LevelSetEncoder([0.5, 0.2]), "strictly increasing"),
    (lambda: BiSERegularizer(nn.Linear(2, 2)), "holds no BiSE layer"),
    (lambda: BiSERegularizer(BiSE(3), kind="l1"), "unknown kind='l1'"),
    (lambda: BiSERegularizer(BiSE(3), kind="acti", solver="scipy"), "solver must be 'fast'"),
    (lambda: BiSERegularizer(BiSEL(1, 1, weight_reparam="identity"), kind="acti"),
     r"\['bise', 'lui'\] use a signed weight_reparam"),
])
def test_bad_options_are_named(make, match):
    with pytest.raises(InputError, match=match):
        make()


@pytest.mark.parametrize("layer,x,match", [
    (BiSE(3), torch.rand(1, 4, 4), r"BiSE: the input must be a tensor \(N, C, H, W\)"),
    (BiSE(3, channels=2), torch.rand(1, 3, 4, 4), "expected 2 input channels"),
    (BiSEL(2, 1), torch.rand(1, 1, 4, 4), "BiSEL: expected 2 input channels"),
    (LUI(2, 1), torch.ones(1, 2, 4, 4, dtype=torch.int64), "floating point"),
    (DenseLUI(3, 1), torch.rand(2, 3, 1), r"DenseLUI: the input must be a tensor \(N, C\)"),
    (LevelSetEncoder(2), torch.rand(4, 4), "LevelSetEncoder"),
])
def test_bad_inputs_are_named(layer, x, match):
    with pytest.raises(InputError, match=match):
        layer(x)
