"""BiSE binarization math (tropfx.bise_math): the paper's formulas, brute-force oracles, properties.

Oracles never call the function under test:

* truth tables over every almost-binary input of a small kernel. Inputs within ``delta`` of binary
  range over boxes ``[0, delta]`` / ``[1 - delta, 1]`` per pixel; the binary image (``> 1/2``) is
  constant on a box and the convolution is linear, so a thresholded neuron agrees with a
  morphological operation on a whole box iff it does at the box's vertices ``{0, delta, 1 - delta, 1}``;
* every structuring element ``S`` of a kernel with ``|Omega| <= 5`` and both operations;
* an exact QP oracle: every constraint of Eq. 20 is homogeneous, so its feasible set is a polyhedral
  cone and the projection is the closest feasible projection onto the span of one of its faces
  (enumerate all active sets).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tropfx import bise_math
from tropfx.bise_math import (
    activable_qp_duals,
    bise_bounds,
    find_se,
    is_activated,
    morphological_params,
    project_activable,
    project_constant,
    propagate_delta,
)
from tropfx.errors import InputError, ParameterError

F64 = torch.float64
OPS = ("dilation", "erosion")


def t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# --------------------------------------------------------------------------------- oracles


def vertices(n: int, delta: float) -> np.ndarray:
    levels = [0.0, 1.0] if delta == 0 else [0.0, delta, 1.0 - delta, 1.0]
    return np.array(list(itertools.product(levels, repeat=n)))


def fires(w: np.ndarray, b: float, p: float, x: np.ndarray) -> np.ndarray:
    """``chi(x) > 1/2`` for ``chi = xi(p (x.w - b))``, ``xi`` increasing with ``xi(0) = 1/2``."""
    conv = x @ w
    return conv > b if p > 0 else (conv < b if p < 0 else np.zeros(len(x), dtype=bool))


def morph(x: np.ndarray, se: np.ndarray, op: str) -> np.ndarray:
    binary = x[:, se] > 0.5
    return binary.any(1) if op == "dilation" else binary.all(1)


def all_se(n: int):
    for bits in itertools.product([False, True], repeat=n):
        if any(bits):
            yield np.array(bits)


def matching(w: np.ndarray, b: float, p: float, delta: float) -> set:
    """Every (S, op) such that the thresholded neuron is op_S (its complement when p < 0)."""
    x = vertices(len(w), delta)
    out = fires(w, b, p, x)
    found = set()
    for se in all_se(len(w)):
        for op in OPS:
            target = morph(x, se, op)
            if np.array_equal(out, ~target if p < 0 else target):
                found.add((tuple(se.tolist()), op))
    return found


def cone_rows(n: int, se: np.ndarray, op: str) -> np.ndarray:
    """Rows ``A`` of Eq. 20's feasible set ``{z = (W, b) : A z <= 0}`` (Eqs. 21-26; ``W_s >= 0`` on S
    is implied by the others)."""
    rows = []
    s_idx, k_idx = np.flatnonzero(se), np.flatnonzero(~se)
    first = np.zeros(n + 1)
    if op == "dilation":
        first[k_idx], first[n] = 1.0, -1.0            # Eq. 21
        rows.append(first)
        for s in s_idx:                                # Eq. 22
            r = np.zeros(n + 1)
            r[n], r[s] = 1.0, -1.0
            rows.append(r)
    else:
        first[s_idx], first[n] = -1.0, 1.0            # Eq. 24
        rows.append(first)
        for s in s_idx:                                # Eq. 25
            r = np.ones(n + 1)
            r[s], r[n] = 0.0, -1.0
            rows.append(r)
    for k in k_idx:                                    # Eqs. 23, 26
        r = np.zeros(n + 1)
        r[k] = -1.0
        rows.append(r)
    return np.array(rows)


def project_cone(x: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact projection of ``x`` onto ``{z : A z <= 0}`` and its distance."""
    masks = np.array(list(itertools.product([0.0, 1.0], repeat=len(A))))
    M = masks[:, :, None] * A[None]
    z = x[None] - np.einsum("bij,bj->bi", np.linalg.pinv(M), M @ x)
    feasible = (z @ A.T <= 1e-9 * (1 + np.abs(x).max())).all(1)
    d = np.where(feasible, np.linalg.norm(z - x, axis=1), np.inf)
    i = int(np.argmin(d))
    return z[i], float(d[i])


def best_over_every_se(w: np.ndarray, b: float) -> float:
    x = np.append(w, b)
    return min(project_cone(x, cone_rows(len(w), se, op))[1] for se in all_se(len(w)) for op in OPS)


# ------------------------------------------------------------------------------ strategies


@st.composite
def neurons(draw, max_size: int = 5, positive: bool = False):
    """Small integer weights and half-integer biases (ties, closed ends of the intervals) or floats."""
    n = draw(st.integers(1, max_size))
    if draw(st.booleans()):
        w = draw(st.lists(st.integers(0 if positive else -2, 3), min_size=n, max_size=n))
        b = draw(st.integers(-2, 2 * n + 2)) / 2
    else:
        low = 0.0 if positive else -2.0
        w = draw(st.lists(st.floats(low, 3.0, width=32), min_size=n, max_size=n))
        b = draw(st.floats(-2.0, 2.0 * n, width=32))
    return np.array(w, dtype=np.float64), float(b)


scales = st.sampled_from([1.0, 2.5, -1.0, -0.5, 0.0])
deviations = st.sampled_from([0.0, 0.25, 0.375])   # dyadic: bounds and truth tables are exact


# --------------------------------------------------------------- Theorem 2.3 and Prop. 3.1


@settings(max_examples=150)
@given(neurons(), scales, deviations)
def test_activation_verdict_matches_the_truth_table(neuron, p, delta):
    w, b = neuron
    res = is_activated(t(w), t(b), delta=delta, p=p)
    truth = matching(w, b, p, delta)
    assert bool(res.exact) == bool(truth), (truth, res)
    assert bool(res.complemented) == (p < 0)
    if res.exact:
        assert (tuple(res.se.tolist()), res.operation) in truth
        assert float(res.lower) <= float(res.upper)
    else:
        assert res.operation is None and not res.se.any()


@settings(max_examples=60)
@given(neurons(max_size=4), scales, deviations)
def test_bounds_decide_every_structuring_element(neuron, p, delta):
    """Theorem 2.3 for every S (not only Prop. 3.1's candidate): L <= b < U (L < b <= U for p < 0)
    iff the neuron is the operation by S on every input within delta of binary."""
    w, b = neuron
    x = vertices(len(w), delta)
    out = fires(w, b, p, x)
    for se in all_se(len(w)):
        bounds = bise_bounds(t(w), t(b), torch.from_numpy(se), delta=delta, p=p)
        for op, verdict in (("dilation", bounds.dilation), ("erosion", bounds.erosion)):
            target = morph(x, se, op)
            assert bool(verdict) == np.array_equal(out, ~target if p < 0 else target), (se, op)


@settings(max_examples=40)
@given(neurons(max_size=4, positive=True), deviations)
def test_bounds_are_the_extreme_convolutions(neuron, delta):
    """Lemma A.8: L is the largest convolution where the operation gives 0, U the smallest where it
    gives 1 (non-negative weights, as Eq. 5 assumes on S)."""
    w, b = neuron
    x = vertices(len(w), delta)
    conv = x @ w
    for se in all_se(len(w)):
        bounds = bise_bounds(t(w), t(b), torch.from_numpy(se), delta=delta)
        for op, low, up in (("dilation", bounds.lower_dilation, bounds.upper_dilation),
                            ("erosion", bounds.lower_erosion, bounds.upper_erosion)):
            on = morph(x, se, op)
            assert float(low) == pytest.approx(conv[~on].max(), abs=1e-12)
            assert float(up) == pytest.approx(conv[on].min(), abs=1e-12)


def test_eqs_4_to_8_on_a_worked_example():
    w, se = t([3.0, -1.0, 2.0, 0.5]), torch.tensor([True, False, True, False])
    bounds = bise_bounds(w, t(1.0), se, delta=0.25)   # the paper's delta = 1/4
    low_d = 0.5 + 0.25 * (3.0 + 2.0)                  # Eq. 4
    up_d = 0.75 * 2.0 - 1.0                           # Eq. 5
    assert float(bounds.lower_dilation) == low_d
    assert float(bounds.upper_dilation) == up_d
    assert float(bounds.upper_erosion) == 4.5 - low_d  # Eq. 6
    assert float(bounds.lower_erosion) == 4.5 - up_d   # Eq. 8


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_integer_morphological_params_are_recognized(n):
    """(1_S, 0) and (1_S, |S| - 1) are activated; their erosions sit at b = L_- exactly, where
    Prop. 3.1's strict (W > tau_-) is empty: find_se needs (W >= tau_-) there."""
    for se in all_se(n):
        for op in OPS:
            w, b = morphological_params(torch.from_numpy(se), op)
            res = is_activated(w, b)
            assert bool(res.exact)
            assert res.se.tolist() == se.tolist()
            assert res.operation == (op if se.sum() > 1 else "dilation")   # |S| = 1: both
            truth = matching(w.double().numpy(), float(b), 1.0, 0.0)
            assert (tuple(se.tolist()), op) in truth
    w, b = morphological_params(torch.tensor([True, True, False]), "erosion")
    tau = (w.clamp(min=0).sum() - b) / 1.0                                 # Eq. 17
    assert not (w > tau).any()                                             # the paper's set: empty
    assert find_se(w, b).erosion.tolist() == [True, True, False]


def test_complemented_neuron_uses_the_non_strict_interval():
    """p < 0: chi > 1/2 iff conv < b, the complement of (conv >= b): activated for L < b <= U."""
    w = t([1.0, 1.0])
    at_upper = is_activated(w, t(1.0), p=-1.0)        # b = U_+ = 1: conv < 1 is NOT(x0 or x1)
    assert bool(at_upper.exact) and at_upper.operation == "dilation"
    assert bool(at_upper.complemented)
    assert not bool(is_activated(w, t(0.0), p=-1.0).exact)    # b = L_+: conv < 0 is never true
    assert bool(is_activated(w, t(0.0), p=1.0).exact)         # but conv > 0 is the dilation
    assert not bool(is_activated(w, t(0.5), p=0.0).exact)     # p = 0: constant neuron


@settings(max_examples=40)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1), st.sampled_from([1.0, 3.0, -2.0]))
def test_theorem_2_3_half_sum_inequality_needs_two_pixels(n, seed, p):
    """Theorem 2.3 states b <= sum(W) / 2 for an activated dilation and >= for an erosion; on binary
    inputs that needs |S| >= 2 (Props. A.6-A.7 assume more). |S| = 1 is a counterexample."""
    rng = np.random.default_rng(seed)
    se = rng.random(n) < 0.6
    se[rng.integers(n)] = True
    if se.sum() < 2:
        se[(np.flatnonzero(se)[0] + 1) % n] = True
    w = np.where(se, rng.uniform(1.0, 2.0, n), rng.uniform(-0.2, 0.15, n))
    biases = np.linspace(-1.0, w.sum() + 1.0, 41)
    res = is_activated(t(np.tile(w, (len(biases), 1))), t(biases), p=p)
    for b, exact, op, s in zip(biases, res.exact, res.operation, res.se, strict=True):
        if exact and s.sum() >= 2:
            assert (b <= w.sum() / 2 + 1e-12) if op == "dilation" else (b >= w.sum() / 2 - 1e-12)
    single = is_activated(t([1.0]), t(0.1))
    assert bool(single.exact)
    erosion = bise_bounds(t([1.0]), t(0.1), torch.tensor([True])).erosion
    assert bool(erosion) and 0.1 < 1.0 / 2          # an erosion with b < sum(W) / 2


# ----------------------------------------------------------------- delta propagation (§3.3)


@settings(max_examples=60)
@given(st.integers(1, 4), st.integers(0, 2**31 - 1), deviations, st.sampled_from([0.7, 2.0, -1.5]),
       st.floats(0.05, 0.95))
def test_propagated_delta_is_the_worst_output_deviation(n, seed, delta, p, frac):
    """Lemma A.8 / Eqs. 96-98: over all inputs within delta of binary, an activated neuron's outputs
    stay within propagate_delta of {0, 1}, and that bound is reached."""
    rng = np.random.default_rng(seed)
    se = rng.random(n) < 0.5
    se[rng.integers(n)] = True
    op = OPS[seed % 2]
    w = np.where(se, rng.uniform(1.0, 2.0, n), rng.uniform(0.0, 0.2, n))
    x = vertices(n, delta)
    conv = x @ w
    on = morph(x, se, op)
    low, up = conv[~on].max(), conv[on].min()       # the oracle's activation interval
    if not low < up:
        return
    b = low + frac * (up - low)
    chi = 0.5 * np.tanh(p * (conv - b)) + 0.5
    worst = np.minimum(chi, 1 - chi).max()
    assert float(propagate_delta(t(w), t(b), p=p, delta=delta)) == pytest.approx(worst, rel=1e-9)


def test_delta_propagates_through_a_chain_and_is_nan_when_not_activated():
    w = t([[2.0, 2.0, 0.1], [1.0, 1.0, 1.0]])
    b = t([1.0, 2.5])
    first = propagate_delta(w, b, p=3.0)              # binary inputs
    assert first.shape == (2,) and bool((first < 0.5).all())
    second = propagate_delta(t([2.0, 2.0]), t(3.0), p=3.0, delta=float(first.max()))
    assert 0 < float(second) < 0.5
    assert math.isnan(float(propagate_delta(t([1.0, 1.0]), t(5.0))))   # constant 0: not activated


# ------------------------------------------------------- projection onto activable parameters


@settings(max_examples=60)
@given(neurons(max_size=5), st.sampled_from(OPS), st.integers(0, 2**31 - 1))
def test_fast_qp_is_the_exact_projection_for_any_se(neuron, op, seed):
    """Eq. 20 for one (S, psi): the fast KKT solution equals the face-enumeration projection, and
    its multipliers satisfy the KKT conditions of the constraints of Eqs. 21-26."""
    w, b = neuron
    se = np.random.default_rng(seed).random(len(w)) < 0.5
    se[seed % len(w)] = True
    z_true, _ = project_cone(np.append(w, b), cone_rows(len(w), se, op))
    res = activable_qp_duals(t(w), t(b), torch.from_numpy(se), op, solver="fast")
    z = np.append(res.weight.numpy(), float(res.bias))
    np.testing.assert_allclose(z, z_true, atol=1e-9)
    # KKT: z - x + A^T y = 0, y >= 0, A z <= 0, y . (A z) = 0
    A = cone_rows(len(w), se, op)
    y = np.r_[float(res.sum_dual), res.se_duals.numpy()[se], res.nonneg_duals.numpy()[~se]]
    assert (y >= 0).all() and (res.se_duals.numpy()[~se] == 0).all()
    np.testing.assert_allclose(z - np.append(w, b) + A.T @ y, 0.0, atol=1e-9)
    assert (A @ z <= 1e-9).all()
    np.testing.assert_allclose(y * (A @ z), 0.0, atol=1e-9)


@settings(max_examples=25)
@given(neurons(max_size=5, positive=True), st.sampled_from(OPS), st.integers(0, 2**31 - 1))
def test_osqp_solves_the_same_qp(neuron, op, seed):
    w, b = neuron
    se = np.random.default_rng(seed).random(len(w)) < 0.5
    se[seed % len(w)] = True
    fast = activable_qp_duals(t(w), t(b), torch.from_numpy(se), op, solver="fast")
    ref = activable_qp_duals(t(w), t(b), torch.from_numpy(se), op, solver="osqp")
    np.testing.assert_allclose(ref.weight.numpy(), fast.weight.numpy(), atol=1e-5)
    assert float(ref.bias) == pytest.approx(float(fast.bias), abs=1e-5)
    assert float(ref.distance) == pytest.approx(float(fast.distance), abs=1e-5)
    # Multipliers are unique only when no weight of S is pushed to 0 (and b > 0).
    w_star = fast.weight.numpy()
    if (w_star[se] > 1e-3).all() and float(fast.bias) > 1e-3:
        assert float(ref.sum_dual) == pytest.approx(float(fast.sum_dual), abs=1e-5)
        np.testing.assert_allclose(ref.se_duals.numpy(), fast.se_duals.numpy(), atol=1e-5)
        np.testing.assert_allclose(ref.nonneg_duals.numpy(), fast.nonneg_duals.numpy(), atol=1e-5)


@settings(max_examples=30)
@given(neurons(max_size=5))
def test_fast_projection_is_optimal_over_every_se(neuron):
    """Eq. 19 by brute force over all 2^|Omega| - 1 structuring elements and both operations."""
    w, b = neuron
    proj = project_activable(t(w), t(b))
    if bool(proj.exact):
        assert float(proj.distance) == 0.0
        return
    assert float(proj.distance) == pytest.approx(best_over_every_se(w, b), abs=1e-9)
    # The returned point is feasible for the returned (S, psi) and at the returned distance.
    z = np.append(proj.weight.numpy(), float(proj.bias))
    se = proj.se.numpy()
    assert (cone_rows(len(w), se, proj.operation) @ z <= 1e-9).all()
    assert float(proj.distance) == pytest.approx(np.linalg.norm(z - np.append(w, b)), abs=1e-12)


@settings(max_examples=12)
@given(neurons(max_size=5))
def test_osqp_projection_is_optimal_over_every_se(neuron):
    w, b = neuron
    fast = project_activable(t(w), t(b))
    ref = project_activable(t(w), t(b), solver="osqp")
    assert float(ref.distance) == pytest.approx(float(fast.distance), abs=1e-5)
    if not bool(fast.exact):
        assert float(ref.distance) == pytest.approx(best_over_every_se(w, b), abs=1e-5)


def test_fast_and_osqp_projections_agree_on_larger_neurons():
    rng = np.random.default_rng(7)
    w = np.abs(rng.normal(size=(4, 12)))
    b = w.sum(1) * np.array([0.1, 0.4, 0.6, 0.9])
    fast = project_activable(t(w), t(b))
    ref = project_activable(t(w), t(b), solver="osqp")
    np.testing.assert_allclose(ref.distance.numpy(), fast.distance.numpy(), atol=1e-5)
    np.testing.assert_allclose(ref.weight.numpy(), fast.weight.numpy(), atol=1e-5)
    np.testing.assert_allclose(ref.bias.numpy(), fast.bias.numpy(), atol=1e-5)
    assert ref.operation == fast.operation and torch.equal(ref.se, fast.se)


def test_enumeration_matches_every_prefix_solved_alone():
    """The batched all-|S| search equals the minimum of the fixed-S solver over every prefix."""
    rng = np.random.default_rng(3)
    for w, b in [(rng.uniform(0, 1, 64), 9.0), (rng.normal(size=64), 1.0), (rng.uniform(0, 1, 64), 30.0)]:
        order = np.argsort(-w, kind="stable")
        ses = np.zeros((64, 64), dtype=bool)
        for k in range(64):
            ses[k, order[:k + 1]] = True
        dists = [activable_qp_duals(t(np.tile(w, (64, 1))), t(np.full(64, b)), torch.from_numpy(ses), op,
                                    solver="fast").distance for op in OPS]
        proj = project_activable(t(w), t(b))
        assert float(proj.distance) == pytest.approx(float(torch.cat(dists).min()), abs=1e-10)


def test_prop_3_2_thresholded_sets_miss_tie_splitting_optima():
    """With tied weights the best S may contain only some of the ties: W = (2, 1, 1, 1), b = 3. The
    paper's candidates (W >= W_k) reach d^2 / 2 = 0.15; the optimum 1/7 needs S = {0, 1, 2}."""
    w, b = np.array([2.0, 1.0, 1.0, 1.0]), 3.0
    x = np.append(w, b)
    thresholded = min(project_cone(x, cone_rows(4, w >= w[i], op))[1] for i in range(4) for op in OPS)
    proj = project_activable(t(w), t(b))
    assert thresholded ** 2 / 2 == pytest.approx(0.15)
    assert float(proj.distance) ** 2 / 2 == pytest.approx(1 / 7)
    assert float(proj.distance) == pytest.approx(best_over_every_se(w, b), abs=1e-12)
    assert proj.se.tolist() == [True, True, True, False] and proj.operation == "erosion"


@settings(max_examples=40)
@given(neurons(max_size=5, positive=True), st.integers(0, 2**31 - 1))
def test_dilation_projection_follows_eqs_35_to_39(neuron, seed):
    """When Eq. 21 is active (lambda* > 0), b* and W* are the closed forms of Eqs. 35-39 with
    T = {t in S : W_t <= b*} and K-bar = {k not in S : W_k > lambda*}."""
    w, b = neuron
    se = np.random.default_rng(seed).random(len(w)) < 0.5
    se[seed % len(w)] = True
    res = activable_qp_duals(t(w), t(b), torch.from_numpy(se), "dilation", solver="fast")
    lam, b_star = float(res.sum_dual), float(res.bias)
    if lam <= 1e-9:
        return
    T = se & (w <= b_star)
    K_bar = ~se & (w > lam)
    D = K_bar.sum() * (T.sum() + 1) + 1                                          # Eq. 34
    assert b_star == pytest.approx((w[K_bar].sum() + K_bar.sum() * (w[T].sum() + b)) / D, abs=1e-9)
    expected = np.where(K_bar, w + (w[T].sum() + b - (T.sum() + 1) * w[K_bar].sum()) / D, 0.0)  # 36-37
    expected = np.where(T, b_star, np.where(se, w, expected))                  # Eqs. 38-39
    np.testing.assert_allclose(res.weight.numpy(), expected, atol=1e-9)


def test_activated_neurons_are_kept_and_batches_match_single_neurons():
    rng = np.random.default_rng(11)
    w = np.abs(rng.normal(size=(6, 7)))
    b = w.sum(1) * rng.uniform(0.05, 0.95, 6)
    w[2], b[2] = [1, 1, 0, 0, 0, 0, 0], 1.0                   # an erosion by {0, 1}
    batch = project_activable(t(w), t(b))
    assert batch.exact.tolist()[2] and float(batch.distance[2]) == 0.0
    assert torch.equal(batch.weight[2], t(w[2])) and batch.operation[2] == "erosion"
    for i in range(6):
        one = project_activable(t(w[i]), t(b[i]))
        assert one.operation == batch.operation[i] and torch.equal(one.se, batch.se[i])
        assert float(one.distance) == pytest.approx(float(batch.distance[i]), abs=1e-12)
        picked = batch.neuron(i)
        assert picked.operation == one.operation and torch.equal(picked.weight, batch.weight[i])
    act = is_activated(t(w), t(b))
    assert act.exact.shape == (6,) and len(act.operation) == 6 and act.se.shape == (6, 7)


@settings(max_examples=25)
@given(neurons(max_size=6), st.sampled_from([2.0 ** -24, 2.0 ** -10, 2.0 ** 13]))
def test_projections_scale_with_the_parameters(neuron, c):
    """Eq. 20's feasible set is a cone: scaling (W, b) by c > 0 scales the projection and keeps
    (S, psi); no absolute tolerance may leak into the choice of S. (Powers of two scale floats
    exactly, so even biases on the closed end of an interval keep their verdict.)"""
    w, b = neuron
    ref, scaled = project_activable(t(w), t(b)), project_activable(t(c * w), t(c * b))
    assert scaled.operation == ref.operation and torch.equal(scaled.se, ref.se)
    assert float(scaled.distance) == pytest.approx(c * float(ref.distance), rel=1e-12)
    np.testing.assert_allclose(scaled.weight.numpy(), c * ref.weight.numpy(), rtol=1e-12, atol=1e-14 * c)
    const, const_scaled = project_constant(t(w), t(b)), project_constant(t(c * w), t(c * b))
    assert torch.equal(const_scaled.se, const.se) and const_scaled.operation == const.operation


def test_results_keep_the_weight_dtype():
    w = torch.rand(3, 5)
    b = torch.rand(3)
    proj = project_activable(w, b)
    assert proj.weight.dtype == torch.float32 and proj.bias.dtype == torch.float32
    assert proj.distance.shape == (3,)
    assert is_activated(w, b).lower.dtype == torch.float32
    assert project_constant(w[0], b[0]).weight.shape == (5,)


# ------------------------------------------------------------ projection onto constant weights


@settings(max_examples=40)
@given(neurons(max_size=5))
def test_constant_projection_is_optimal_over_every_se(neuron):
    """Eq. 28 minimized over every S: min_{theta > 0} ||W - theta 1_S||^2 has theta = mean_S(W)
    when positive (else its infimum is ||W||^2, at theta -> 0)."""
    w, b = neuron
    proj = project_constant(t(w), t(b))
    if bool(proj.exact):
        return
    best = min(np.sum(w ** 2) - se.sum() * max(w[se].mean(), 0.0) ** 2 for se in all_se(len(w)))
    assert float(proj.distance) ** 2 == pytest.approx(best, abs=1e-9)
    se = proj.se.numpy()
    theta = max(w[se].mean(), 0.0)
    np.testing.assert_allclose(proj.weight.numpy(), theta * se, atol=1e-12)
    assert proj.operation == ("erosion" if b > w.sum() / 2 else "dilation")
    if theta > 0:   # its bias activates theta 1_S for the chosen operation
        res = is_activated(proj.weight, proj.bias)
        assert bool(res.exact) and res.se.tolist() == se.tolist()


# ------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_helpful_errors():
    w, b = t([1.0, 2.0]), t(0.5)
    with pytest.raises(ParameterError, match="NaN"):
        is_activated(t([1.0, math.nan]), b)
    with pytest.raises(ParameterError, match="NaN"):
        project_activable(w, t(math.inf))
    with pytest.raises(ParameterError, match="empty"):
        bise_bounds(w, b, torch.tensor([False, False]))
    with pytest.raises(ParameterError, match="empty"):
        activable_qp_duals(w, b, torch.tensor([False, False]), "dilation")
    with pytest.raises(InputError, match="reshape"):
        is_activated(torch.ones(2, 3, 3), torch.zeros(2))
    with pytest.raises(InputError, match="bias"):
        is_activated(torch.ones(2, 3), torch.zeros(3))
    with pytest.raises(InputError, match="no entries"):
        is_activated(torch.ones(0), t(0.0))
    with pytest.raises(InputError, match="shaped like weight"):
        bise_bounds(w, b, torch.tensor([True]))
    with pytest.raises(InputError, match="torch.Tensor"):
        is_activated([1.0, 2.0], b)
    with pytest.raises(ParameterError, match="delta"):
        is_activated(w, b, delta=0.5)
    with pytest.raises(ParameterError, match="solver"):
        project_activable(w, b, solver="cvxpy")
    with pytest.raises(ParameterError, match="operation"):
        activable_qp_duals(w, b, torch.tensor([True, False]), "opening")
    with pytest.raises(ParameterError, match="scale p"):
        is_activated(w, b, p=math.nan)
    assert bise_math.SOLVERS == ("fast", "osqp")
