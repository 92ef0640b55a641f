"""TropNNC math (tropfx.tropnnc): the paper's worked examples, brute-force oracles, properties.

Oracles are written from the paper's formulas with plain loops, never by calling the function
under test: clusters -> representatives (Alg. 1 / 2), the criterion of §5.2.2, Proposition 12's
bound, and a dense sampling of the zonotopes for the Hausdorff distance.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tropfx.errors import InputError
from tropfx.tropnnc import (
    MAX_HAUSDORFF_GENERATORS,
    cluster_by_threshold,
    compress_iterative,
    compress_multi,
    compress_single,
    cup,
    flatten_kernels,
    hausdorff_zonotopes,
    l1_structured,
    merge_clusters,
    neural_path_kmeans,
    point_to_zonotope_distance,
    random_structured,
    rebuild,
    theorem11_bound,
    thinet,
    unflatten_kernels,
    zonotope_generators,
    zonotope_kmeans,
)

F64 = torch.float64
SQRT3 = math.sqrt(3.0)


def mlp(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """v(x) = C relu(A x + b) for a batch x (N, d); a single-output c (n,) gives (N, 1)."""
    C = C if C.dim() == 2 else C[None]
    return torch.relu(x @ A.T + b) @ C.T


def random_layer(seed: int, n: int, d: int, m: int, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, generator=g, dtype=dtype),
            torch.randn(m, n, generator=g, dtype=dtype))


def ball_points(seed: int, d: int, radius: float, count: int = 2000) -> torch.Tensor:
    """Uniform points of the ball ||x||_2 <= radius, half of them on its sphere."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(count, d, generator=g, dtype=F64)
    u = u / u.norm(dim=1, keepdim=True)
    scale = torch.rand(count, 1, generator=g, dtype=F64) ** (1.0 / d)
    scale[: count // 2] = 1.0
    return radius * u * scale


layers = st.builds(
    random_layer, seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), d=st.integers(1, 3),
    m=st.integers(1, 3), dtype=st.sampled_from([torch.float32, F64]))


# --------------------------------------------------------------------------- zonotopes (§3.2)


def test_generators_split_by_sign_and_give_v_as_p_minus_q():
    A, b, C = random_layer(0, n=5, d=2, m=3)
    C[1, 2] = 0.0  # a null weight belongs to neither zonotope
    x = ball_points(1, d=2, radius=3.0, count=50)
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)
    v = mlp(x, A, b, C)
    for j, (P, Q) in enumerate(zonotope_generators(A, b, C)):
        assert len(P) == int((C[j] > 0).sum()) and len(Q) == int((C[j] < 0).sum())
        # p_j(x) = sum_g relu(<g, (x, 1)>) over P_j, likewise q_j; v_j = p_j - q_j (§3.2)
        p = torch.relu(x1 @ P.T).sum(1)
        q = torch.relu(x1 @ Q.T).sum(1)
        torch.testing.assert_close(p - q, v[:, j])


# --------------------------------------------------------------------------- worked examples


def test_example2_mean_generator_hausdorff_sqrt3_over_2():
    # TropNNC Example 2. The text prints the mean as (3/4, (2+sqrt3)/4); the mean of (1, 0) and
    # (1/2, sqrt3/2) is (3/4, sqrt3/4), and that is what gives the stated H = sqrt3/2.
    P = torch.tensor([[1.0, 0.0], [0.5, SQRT3 / 2]], dtype=F64)
    assert hausdorff_zonotopes(P, P.mean(0, keepdim=True)) == pytest.approx(SQRT3 / 2, abs=1e-6)


def test_example3_sum_generator_hausdorff_one_half():
    # TropNNC Example 3 (the sum is (3/2, sqrt3/2); the text's (3/2, (2+sqrt3)/2) is a typo).
    P = torch.tensor([[1.0, 0.0], [0.5, SQRT3 / 2]], dtype=F64)
    assert hausdorff_zonotopes(P, P.sum(0, keepdim=True)) == pytest.approx(0.5, abs=1e-6)


def test_examples_2_3_with_osqp():
    pytest.importorskip("osqp")
    P = torch.tensor([[1.0, 0.0], [0.5, SQRT3 / 2]], dtype=F64)
    assert hausdorff_zonotopes(P, P.mean(0, keepdim=True), solver="osqp") == pytest.approx(
        SQRT3 / 2, abs=1e-6)
    assert hausdorff_zonotopes(P, P.sum(0, keepdim=True), solver="osqp") == pytest.approx(
        0.5, abs=1e-6)


def test_examples_2_3_through_the_single_output_algorithms():
    # Neurons whose generators (a_i, b_i) are Example 2's; K = 1: Alg. 1 takes the sum,
    # zonotope K-means the mean; Theorem 11 at radius 0 (rho = 1) is H(P, P~) + H(Q, Q~).
    A, b, c = torch.tensor([[1.0], [0.5]], dtype=F64), torch.tensor([0.0, SQRT3 / 2], dtype=F64), \
        torch.ones(2, dtype=F64)
    ours, theirs = compress_single(A, b, c, 1), zonotope_kmeans(A, b, c, 1)
    torch.testing.assert_close(ours.A, torch.tensor([[1.5]], dtype=F64))
    torch.testing.assert_close(ours.b, torch.tensor([SQRT3 / 2], dtype=F64))
    torch.testing.assert_close(theirs.A, torch.tensor([[0.75]], dtype=F64))
    assert theorem11_bound(A, b, c[None], ours.A, ours.b, ours.C[None], radius=0.0) == \
        pytest.approx(0.5, abs=1e-6)
    assert theorem11_bound(A, b, c[None], theirs.A, theirs.b, theirs.C[None], radius=0.0) == \
        pytest.approx(SQRT3 / 2, abs=1e-6)


def test_example5_multi_output_two_neurons_to_one():
    # TropNNC Example 5: (a1, b1) = (1, 0), (a2, b2) = (0, 1), c11 = 3, c12 = 5, c21 = 4, c22 = 2.
    A, b = torch.tensor([[1.0], [0.0]], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    C = torch.tensor([[3.0, 5.0], [4.0, 2.0]], dtype=F64)
    out = compress_multi(A, b, C, 1)
    torch.testing.assert_close(torch.cat([out.A, out.b[:, None]], 1),
                               torch.tensor([[0.5, 0.5]], dtype=F64))
    torch.testing.assert_close(out.C, torch.tensor([[8.0], [6.0]], dtype=F64))
    # Neural Path K-means (cluster centre) halves the output weights instead
    torch.testing.assert_close(neural_path_kmeans(A, b, C, 1).C,
                               torch.tensor([[4.0], [3.0]], dtype=F64))


def test_example4_sum_beats_mean_and_proposition12_holds():
    # TropNNC Example 4 (numbers ours, the paper's are in a figure): three positive generators,
    # K/2 = 2 clusters {g1}, {g2, g3}. Sum representatives approximate P better than centres.
    G = torch.tensor([[0.2, 1.0], [1.0, 0.25], [1.0, 0.35]], dtype=F64)
    A, b, c = G[:, :1].clone(), G[:, 1].clone(), torch.ones(3, dtype=F64)
    ours, theirs = compress_single(A, b, c, 2), zonotope_kmeans(A, b, c, 2)
    assert ours.labels[1] == ours.labels[2] != ours.labels[0]
    h_ours = hausdorff_zonotopes(G, torch.cat([ours.A, ours.b[:, None]], 1))
    h_theirs = hausdorff_zonotopes(G, torch.cat([theirs.A, theirs.b[:, None]], 1))
    assert h_ours < h_theirs
    assert h_ours <= proposition12_rhs(G, ours.labels) + 1e-9


# --------------------------------------------------------------------------- Alg. 1 / 2 / 3 oracles


def alg1_oracle(A, b, c, labels):
    """Alg. 1 steps 3-5 from the labels: the sum of each cluster's generators, sign +-1."""
    rows, signs = [], []
    for k in range(int(labels.max()) + 1):
        members = [i for i in range(len(c)) if labels[i] == k]
        rows.append(sum(abs(c[i]) * torch.cat([A[i], b[i:i + 1]]) for i in members))
        signs.append(float(torch.sign(c[members[0]])))
        assert all(torch.sign(c[i]) == signs[-1] for i in members), "a cluster mixes signs"
    rows = torch.stack(rows)
    return rows[:, :-1], rows[:, -1], torch.tensor(signs, dtype=A.dtype)


def alg2_oracle(A, b, C, labels):
    """Alg. 2 step 2 from the labels: mean of (a_i, b_i), sum of C_:,i."""
    A_t, b_t, C_t = [], [], []
    for k in range(int(labels.max()) + 1):
        members = [i for i in range(A.shape[0]) if labels[i] == k]
        A_t.append(sum(A[i] for i in members) / len(members))
        b_t.append(sum(b[i] for i in members) / len(members))
        C_t.append(sum(C[:, i] for i in members))
    return torch.stack(A_t), torch.stack(b_t), torch.stack(C_t, 1)


def criterion(A, b, C, out):
    """§5.2.2: sum_k sum_j ||C~_jk (a~_k, b~_k) - sum_{i in I_k} C_ji (a_i, b_i)||^2."""
    ab, ab_t = torch.cat([A, b[:, None]], 1), torch.cat([out.A, out.b[:, None]], 1)
    total = 0.0
    for k in range(len(out.b)):
        members = out.labels == k
        S = C[:, members] @ ab[members]  # (m, d + 1): row j is sum_i C_ji (a_i, b_i)
        total += float(((out.C[:, k:k + 1] * ab_t[k] - S) ** 2).sum())
    return total


def proposition12_rhs(G, labels):
    """Proposition 12 / A.4: sum_i min(||g_i||, delta_max), delta_max = largest distance from a
    generator to its K-means cluster centre (the mean of its cluster)."""
    centres = {int(k): G[labels == k].mean(0) for k in labels.unique()}
    delta = max(float((G[i] - centres[int(labels[i])]).norm()) for i in range(len(G)))
    return sum(min(float(G[i].norm()), delta) for i in range(len(G)))


def assert_same_function(layer, approx, d, seed=0):
    x = ball_points(seed, d, radius=3.0, count=200).to(layer[0].dtype)
    tol = 1e-4 if layer[0].dtype == torch.float32 else 1e-9
    torch.testing.assert_close(mlp(x, *approx), mlp(x, *layer), atol=tol, rtol=tol)


@settings(max_examples=40)
@given(layer=layers, seed=st.integers(0, 100))
def test_k_equals_n_is_exact_for_alg_1_2_3(layer, seed):
    A, b, C = layer
    n, d = A.shape
    for algo in (compress_multi, lambda *a: compress_iterative(*a, num_iter=3)):
        out = algo(A, b, C, n, seed)
        assert out.A.dtype == A.dtype and out.A.shape[0] == n
        assert_same_function(layer, out[:3], d)
    if bool((C[0] != 0).any()):
        out = compress_single(A, b, C[0], n, seed)
        assert_same_function((A, b, C[0]), out[:3], d)


@settings(max_examples=40)
@given(layer=layers, K=st.integers(1, 6), seed=st.integers(0, 100))
def test_compressed_layers_match_the_algorithms_from_their_labels(layer, K, seed):
    A, b, C = layer
    n, d = A.shape
    K = min(K, n)
    out = compress_multi(A, b, C, K, seed)
    assert out.A.shape[0] <= K and out.C.shape == (C.shape[0], out.A.shape[0])
    A64, b64, C64 = (t.double() for t in layer)
    expected = alg2_oracle(A64, b64, C64, out.labels)
    for got, want in zip(out[:3], expected, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert_same_function(tuple(t.to(A.dtype) for t in expected), out[:3], d)
    c = C64[0]
    K1 = max(K, 2)
    if bool((c != 0).any()) and K1 <= n:
        single = compress_single(A, b, C[0], K1, seed)
        assert single.A.shape[0] <= K1
        assert bool(((single.labels == -1) == (c == 0)).all())
        expected = alg1_oracle(A64, b64, c, single.labels)
        for got, want in zip(single[:3], expected, strict=True):
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@settings(max_examples=30)
@given(layer=layers, K=st.integers(1, 6), seed=st.integers(0, 100))
def test_alg3_starts_at_alg2_and_never_increases_its_criterion(layer, K, seed):
    A, b, C = (t.double() for t in layer)
    K = min(K, A.shape[0])
    start = compress_iterative(A, b, C, K, seed, num_iter=0)
    for got, want in zip(start, compress_multi(A, b, C, K, seed), strict=True):
        torch.testing.assert_close(got, want)
    values = [criterion(A, b, C, compress_iterative(A, b, C, K, seed, num_iter=t))
              for t in range(5)]
    for before, after in itertools.pairwise(values):
        assert after <= before * (1 + 1e-9) + 1e-12


def test_alg3_converges_to_the_best_rank_one_fit_of_example5():
    # One cluster: the criterion is ||C~ (a~, b~)^T - S||_F^2 with S the (m, d+1) matrix whose
    # row j is sum_i C_ji (a_i, b_i); the alternating steps are the power method, so the fit
    # tends to the rank-one truncated SVD of S.
    A, b = torch.tensor([[1.0], [0.0]], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    C = torch.tensor([[3.0, 5.0], [4.0, 2.0]], dtype=F64)
    out = compress_iterative(A, b, C, 1, num_iter=200)
    S = C @ torch.cat([A, b[:, None]], 1)
    U, s, Vh = torch.linalg.svd(S)
    best = s[0] * torch.outer(U[:, 0], Vh[0])
    torch.testing.assert_close(out.C[:, :1] * torch.cat([out.A, out.b[:, None]], 1), best)
    assert criterion(A, b, C, out) == pytest.approx(float(s[1] ** 2))


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 7), K=st.integers(2, 6))
def test_proposition12_bound_for_acute_generators(seed, n, K):
    # All a_i, b_i > 0: every pair of generators forms an acute angle (Proposition 12's premise).
    g = torch.Generator().manual_seed(seed)
    A, b = torch.rand(n, 1, generator=g, dtype=F64) + 0.1, torch.rand(n, generator=g, dtype=F64) + 0.1
    c = torch.randn(n, generator=g, dtype=F64)
    K = min(K, n)
    out = compress_single(A, b, c, K, seed)
    G = c.abs()[:, None] * torch.cat([A, b[:, None]], 1)
    P, Q = c > 0, c < 0
    new = torch.cat([out.A, out.b[:, None]], 1)
    h = hausdorff_zonotopes(G[P], new[out.C > 0]) + hausdorff_zonotopes(G[Q], new[out.C < 0])
    assert h <= proposition12_rhs(G, out.labels) + 1e-9


# --------------------------------------------------------------------------- Theorem 11


@settings(max_examples=25)
@given(layer=layers, K=st.integers(1, 5), seed=st.integers(0, 100),
       radius=st.sampled_from([0.5, 1.0, 3.0]),
       algo=st.sampled_from(["multi", "iterative", "npkm", "l1", "random", "cup"]))
def test_theorem11_bound_holds_on_the_ball(layer, K, seed, radius, algo):
    A, b, C = (t.double() for t in layer)
    n, d = A.shape
    K = min(K, n)
    out = {
        "multi": lambda: compress_multi(A, b, C, K, seed),
        "iterative": lambda: compress_iterative(A, b, C, K, seed, num_iter=3),
        "npkm": lambda: neural_path_kmeans(A, b, C, K, seed),
        "l1": lambda: l1_structured(A, b, C, K),
        "random": lambda: random_structured(A, b, C, K, seed),
        "cup": lambda: cup(A, b, C, K=K),
    }[algo]()
    bound = theorem11_bound(A, b, C, *out[:3], radius=radius)
    x = ball_points(seed, d, radius)
    observed = float((mlp(x, A, b, C) - mlp(x, *out[:3])).abs().sum(1).max())
    assert observed <= bound * (1 + 1e-9) + 1e-9


def test_theorem11_bound_is_zero_for_an_exact_compression():
    A, b, C = random_layer(3, n=4, d=2, m=2)
    A, b, C = torch.cat([A, A]), torch.cat([b, b]), torch.cat([C, 2 * C], 1)  # duplicated neurons
    out = merge_clusters(A, b, C, torch.arange(8) % 4)  # the pairs (K-means' luck aside)
    assert theorem11_bound(A, b, C, *out[:3], radius=2.0) == pytest.approx(0.0, abs=1e-9)
    assert_same_function((A, b, C), out[:3], d=2)


# --------------------------------------------------------------------------- Hausdorff distance


def hausdorff_by_sampling(G1, G2, steps=12):
    """Discrete Hausdorff distance of lam-grids of both zonotopes (the brute-force estimate)."""
    def cloud(G):
        grid = torch.tensor(list(itertools.product(np.linspace(0, 1, steps), repeat=len(G))),
                            dtype=F64)
        return grid @ G
    D = torch.cdist(cloud(G1), cloud(G2))
    return float(max(D.min(1).values.max(), D.min(0).values.max()))


generators_2d = st.builds(
    lambda seed, k: torch.randn(k, 2, generator=torch.Generator().manual_seed(seed), dtype=F64),
    seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3))


@settings(max_examples=25)
@given(G1=generators_2d, G2=generators_2d)
def test_hausdorff_matches_dense_sampling_in_2d_and_is_symmetric(G1, G2):
    h = hausdorff_zonotopes(G1, G2)
    assert h == pytest.approx(hausdorff_zonotopes(G2, G1), abs=1e-9)
    # every zonotope point is within half a grid step per generator of a sampled point
    mesh = float((G1.norm(dim=1).sum() + G2.norm(dim=1).sum()) / (2 * (12 - 1)))
    assert abs(h - hausdorff_by_sampling(G1, G2)) <= mesh + 1e-9


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 7), dim=st.integers(1, 3))
def test_hausdorff_of_identical_zonotopes_is_zero(seed, k, dim):
    G = torch.randn(k, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert hausdorff_zonotopes(G, G) == pytest.approx(0.0, abs=1e-9)
    # permuting and splitting a generator in two parallel halves gives the same zonotope
    if k:
        split = torch.cat([G[1:], G[:1] / 2, G[:1] / 2]).flip(0)
        assert hausdorff_zonotopes(G, split) == pytest.approx(0.0, abs=1e-9)


def test_point_to_zonotope_distance():
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)  # the box [0, 1] x [0, 2]
    assert point_to_zonotope_distance(torch.tensor([0.5, 1.0], dtype=F64), G) == 0.0
    assert point_to_zonotope_distance(torch.tensor([4.0, 6.0], dtype=F64), G) == \
        pytest.approx(5.0, abs=1e-9)
    assert point_to_zonotope_distance(torch.tensor([-1.0, 1.0], dtype=F64), G) == \
        pytest.approx(1.0, abs=1e-9)
    assert point_to_zonotope_distance(torch.tensor([3.0, 4.0], dtype=F64),
                                      torch.zeros(0, 2, dtype=F64)) == pytest.approx(5.0)


def test_osqp_and_bvls_agree_on_generic_points():
    pytest.importorskip("osqp")
    g = torch.Generator().manual_seed(0)
    G = torch.randn(5, 3, generator=g, dtype=F64)
    for p in 3 * torch.randn(20, 3, generator=g, dtype=F64):
        assert point_to_zonotope_distance(p, G, solver="osqp") == pytest.approx(
            point_to_zonotope_distance(p, G), abs=1e-6)


# --------------------------------------------------------------------------- splitting, baselines


@pytest.mark.parametrize(("signs", "K", "expected"), [
    ([1, 1, 1, 1, 1, -1], 3, [1, 1, -1]),       # odd K: the extra cluster to the larger sign
    ([1, 1, 1, -1, -1, -1], 3, [1, 1, -1]),     # tie: to the positive sign
    ([1, -1, -1, -1, -1, -1], 4, [1, -1, -1, -1]),  # one positive generator: surplus to negative
    ([1, 1, 1, 1, 1, 1], 3, [1, 1, 1]),         # one sign: all K clusters
    ([1, 0, -1, 0, 0, 1], 4, [1, 1, -1]),       # only 3 non-null generators: each kept, exact
])
def test_alg1_splits_clusters_between_signs(signs, K, expected):
    A, b, _ = random_layer(0, n=len(signs), d=2, m=1)
    c = torch.tensor(signs, dtype=F64) * torch.linspace(1, 2, len(signs), dtype=F64)
    out = compress_single(A, b, c, K)
    assert out.C.tolist() == expected
    if len(expected) < K:
        assert_same_function((A, b, c), out[:3], d=2)


def test_pruning_baselines_keep_unchanged_neurons():
    A, b, C = random_layer(5, n=6, d=3, m=2, dtype=torch.float32)
    A[4] *= 10.0
    A[1] *= 5.0
    out = l1_structured(A, b, C, 2)
    assert out.labels.tolist() == [-1, 0, -1, -1, 1, -1]
    torch.testing.assert_close(out.A, A[[1, 4]], rtol=0, atol=0)
    torch.testing.assert_close(out.C, C[:, [1, 4]], rtol=0, atol=0)
    rnd = random_structured(A, b, C, 3, seed=7)
    kept = torch.nonzero(rnd.labels >= 0).flatten()
    assert len(kept) == 3 and rnd.A.dtype == torch.float32
    torch.testing.assert_close(rnd.b, b[kept], rtol=0, atol=0)
    assert torch.equal(random_structured(A, b, C, 3, seed=7).labels, rnd.labels)


def test_cup_keeps_the_max_norm_member_of_each_cluster():
    A = torch.tensor([[1.0, 0.0], [1.1, 0.0], [0.0, 5.0], [0.0, 5.2]], dtype=F64)
    b, C = torch.zeros(4, dtype=F64), torch.ones(1, 4, dtype=F64)
    out = cup(A, b, C, K=2)
    assert out.labels.tolist() == [-1, 0, -1, 1]
    assert cup(A, b, C, threshold=1.0).labels.tolist() == [-1, 0, -1, 1]
    assert (cup(A, b, C, threshold=0.0).labels >= 0).all()


# --------------------------------------------------------------------------- non-uniform (§6, §7.5)


def test_cluster_by_threshold_variants_scale_the_threshold():
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    for t in (0.3, 1.0, 2.5):
        assert torch.equal(cluster_by_threshold(x, t, "v1"), cluster_by_threshold(x, t * 5 ** 0.5))
        mean_norm = float(x.norm(dim=1).mean())
        assert torch.equal(cluster_by_threshold(x, t, "v2"), cluster_by_threshold(x, t * mean_norm))
    assert cluster_by_threshold(x, 0.0).unique().numel() == 12
    assert cluster_by_threshold(x, 1e6).unique().numel() == 1


def test_threshold_clustering_merges_duplicate_neurons_exactly():
    A, b, C = random_layer(4, n=5, d=3, m=2)
    A, b, C = torch.cat([A, A, A]), torch.cat([b, b, b]), torch.cat([C, -C, 3 * C], 1)
    vectors = torch.cat([A, b[:, None]], 1)  # input side only: duplicates coincide
    labels = cluster_by_threshold(vectors, 1e-9, "v2")
    assert labels.unique().numel() == 5
    out = merge_clusters(A, b, C, labels)
    assert out.A.shape == (5, 3)
    assert_same_function((A, b, C), out[:3], d=3)


# --------------------------------------------------------------------------- convolutions (§6)


def test_conv_kernels_flatten_compress_and_restore():
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(3, 2, 3, 3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    w1, b1 = torch.cat([w1, w1]), torch.cat([b1, b1])  # channels i and i + 3 are identical
    w2 = torch.randn(4, 6, 2, 2, generator=g, dtype=F64)
    A, b, C = flatten_kernels(w1, b1, w2)
    assert A.shape == (6, 18) and C.shape == (16, 6)
    out = merge_clusters(A, b, C, torch.tensor([0, 1, 2, 0, 1, 2]))
    w1_t, b1_t, w2_t = unflatten_kernels(*out[:3], w1.shape, w2.shape)
    assert w1_t.shape == (3, 2, 3, 3) and w2_t.shape == (4, 3, 2, 2)
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=F64)
    net = lambda w1, b1, w2: torch.nn.functional.conv2d(  # noqa: E731
        torch.relu(torch.nn.functional.conv2d(x, w1, b1)), w2)
    torch.testing.assert_close(net(w1_t, b1_t, w2_t), net(w1, b1, w2))


# --------------------------------------------------------------------------- determinism, dtypes


def test_fixed_seed_is_deterministic():
    A, b, C = random_layer(11, n=40, d=6, m=4, dtype=torch.float32)
    for algo in (compress_multi, neural_path_kmeans, lambda *a: compress_iterative(*a, num_iter=4)):
        first, second = algo(A, b, C, 9, 3), algo(A, b, C, 9, 3)
        assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
        assert first.A.dtype == torch.float32
    first, second = compress_single(A, b, C[0], 9, 3), compress_single(A, b, C[0], 9, 3)
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_large_vectors_use_projected_seeding():
    # rows longer than the seeding dimension: k-means++ runs on a random projection
    A, b, C = random_layer(1, n=30, d=300, m=5)
    A[15:] = A[:15] + 1e-3 * A[15:]
    out = compress_multi(A, b, C, 15)
    assert out.labels.unique().numel() == 15
    assert torch.equal(out.labels[:15], out.labels[15:])


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_input_error():
    A, b, C = random_layer(0, n=4, d=2, m=2)
    with pytest.raises(InputError, match="1 <= K <= n"):
        compress_multi(A, b, C, 0)
    with pytest.raises(InputError, match="1 <= K <= n"):
        compress_iterative(A, b, C, 5)
    with pytest.raises(InputError, match="K must be an int"):
        compress_multi(A, b, C, 2.0)
    bad = A.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        compress_multi(bad, b, C, 2)
    with pytest.raises(InputError, match="shapes"):
        compress_multi(A, b[:3], C, 2)
    with pytest.raises(InputError, match="shapes"):
        compress_multi(A, b, C[:, :3], 2)
    with pytest.raises(InputError, match="floating-point"):
        compress_multi(A.long(), b, C, 2)
    with pytest.raises(InputError, match="every output weight"):
        compress_single(A, b, torch.zeros(4, dtype=F64), 2)
    with pytest.raises(InputError, match="K >= 2"):
        compress_single(A, b, torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64), 1)
    with pytest.raises(InputError, match="single output"):
        compress_single(A, b, C, 2)
    with pytest.raises(InputError, match="num_iter"):
        compress_iterative(A, b, C, 2, num_iter=-1)
    with pytest.raises(InputError, match="exactly one"):
        cup(A, b, C)
    with pytest.raises(InputError, match="variant"):
        cluster_by_threshold(A, 1.0, "v3")
    with pytest.raises(InputError, match="threshold"):
        cluster_by_threshold(A, -1.0)
    with pytest.raises(InputError, match="labels"):
        merge_clusters(A, b, C, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="MAX_HAUSDORFF_GENERATORS"):
        G = torch.randn(MAX_HAUSDORFF_GENERATORS + 1, 2, dtype=F64)
        hausdorff_zonotopes(G, G)
    with pytest.raises(InputError, match="dimension"):
        point_to_zonotope_distance(torch.zeros(3, dtype=F64), torch.ones(2, 2, dtype=F64))
    with pytest.raises(InputError, match="solver"):
        hausdorff_zonotopes(A, A, solver="cvx")


# --------------------------------------------------------------------------- rebuild, ThiNet


@settings(max_examples=30)
@given(layer=layers, K=st.integers(1, 6), seed=st.integers(0, 100))
def test_rebuild_from_labels_reproduces_every_algorithm(layer, K, seed):
    A, b, C = layer
    K = min(K, A.shape[0])
    for algo, rule in ((compress_multi, "mean_sum"), (neural_path_kmeans, "mean_mean")):
        out = algo(A, b, C, K, seed)
        again = rebuild(A, b, C, out.labels, rule)
        for x, y in zip(out, again, strict=True):
            torch.testing.assert_close(x, y)
    it = compress_iterative(A, b, C, K, seed, num_iter=3)
    again = rebuild(A, b, C, compress_multi(A, b, C, K, seed).labels, "iterative", num_iter=3)
    for x, y in zip(it, again, strict=True):
        torch.testing.assert_close(x, y)
    kept = l1_structured(A, b, C, K)
    for x, y in zip(kept, rebuild(A, b, C, kept.labels, "keep"), strict=True):
        torch.testing.assert_close(x, y)
    c = C[0]
    if (c != 0).any() and K >= int((c > 0).any()) + int((c < 0).any()):
        for algo, rule in ((compress_single, "sum_generators"), (zonotope_kmeans, "mean_generators")):
            out = algo(A, b, c, K, seed)
            again = rebuild(A, b, c, out.labels, rule)
            torch.testing.assert_close(mlp(ball_points(0, A.shape[1], 1.0, 50).to(A.dtype), *again[:3]),
                                       mlp(ball_points(0, A.shape[1], 1.0, 50).to(A.dtype), *out[:3]))


def test_rebuild_rejects_inconsistent_clusters():
    A, b, C = random_layer(0, 4, 2, 1)
    with pytest.raises(InputError, match="one neuron per cluster"):
        rebuild(A, b, C, torch.tensor([0, 0, 1, 2]), "keep")
    C = torch.tensor([[1.0, -1.0, 1.0, 2.0]], dtype=F64)
    with pytest.raises(InputError, match="mix positive and negative"):
        rebuild(A, b, C, torch.tensor([0, 0, 1, 1]), "sum_generators")
    with pytest.raises(InputError, match="rule must be one of"):
        rebuild(A, b, C, torch.tensor([0, 0, 1, 1]), "median")


def _naive_thinet_removal(X: torch.Tensor, K: int) -> list[int]:
    removed: list[int] = []
    for _ in range(X.shape[1] - K):
        best = min((c for c in range(X.shape[1]) if c not in removed),
                   key=lambda c: float(X[:, removed + [c]].sum(1).pow(2).sum()))
        removed.append(best)
    return sorted(set(range(X.shape[1])) - set(removed))


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 7), K=st.integers(1, 7))
def test_thinet_greedy_selection_and_least_squares_scaling(seed, n, K):
    K = min(K, n)
    A, b, C = random_layer(seed, n, 3, 2)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, n, generator=g, dtype=F64) * torch.rand(n, generator=g, dtype=F64)
    out = thinet(A, b, C, K, X)
    keep = torch.nonzero(out.labels >= 0).flatten()
    assert keep.tolist() == _naive_thinet_removal(X, K)
    torch.testing.assert_close(out.A, A[keep])
    scale = out.C[0] / C[0, keep]
    # the least-squares scaling is at least as good as no scaling, and optimal: residual _|_ X_keep
    resid = X.sum(1) - X[:, keep] @ scale
    assert resid.norm() <= (X.sum(1) - X[:, keep].sum(1)).norm() + 1e-9
    torch.testing.assert_close(X[:, keep].T @ resid, torch.zeros(K, dtype=F64), atol=1e-8, rtol=0)


def test_thinet_rejects_bad_contributions():
    A, b, C = random_layer(0, 4, 2, 1)
    with pytest.raises(InputError, match="contributions must be"):
        thinet(A, b, C, 2, torch.zeros(5, 3, dtype=F64))
