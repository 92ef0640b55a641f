"""TropNNC: data-free structured compression of a ReLU layer (pure tensor math).

Fotopoulos, Maragos, Misiakos, "TropNNC: Structured Neural Network Compression Using Tropical
Geometry" (referred to as *TropNNC* below). One hidden layer at a time (TropNNC §3.2, Figure 3):

    v(x) = C relu(A x + b),    A (n, d) input weights, b (n,) bias, C (m, n) output weights,

and a compressed layer is ``(A~ (K, d), b~ (K,), C~ (m, K))``. A bias of the *next* layer is not
part of ``C``: compression leaves it unchanged and it cancels from ``v - v~``.

Geometry (TropNNC §3.2): neuron ``i`` contributes the generator ``C_ji (a_i, b_i)`` to output
``j``; the positive ones span the positive zonotope ``P_j`` and the negative ones (with ``|C_ji|``)
the negative zonotope ``Q_j``, so ``v_j = p_j - q_j``. Theorem 11 bounds the output error by the
Hausdorff distances ``H(P_j, P~_j) + H(Q_j, Q~_j)``; the algorithms pick ``A~, b~, C~`` so that
the compressed zonotopes stay close:

* :func:`compress_single` -- Alg. 1, one output: K-means on generators, representative = SUM.
* :func:`compress_multi` -- Alg. 2: K-means on ``(a_i, b_i, C_:,i)``, MEAN in, SUM out.
* :func:`compress_iterative` -- Alg. 3: alternating minimisation of §5.2.2 from Alg. 2.
* baselines: :func:`zonotope_kmeans`, :func:`neural_path_kmeans` (Misiakos et al. 2022, cluster
  centres), :func:`l1_structured`, :func:`random_structured`, :func:`cup`.
* :func:`thinet` (Luo et al. 2017), the data-driven baseline, from calibration contributions.
* non-uniform (§6, §7.5): :func:`cluster_by_threshold` + :func:`merge_clusters`.
* :func:`rebuild`: a compressed layer from given clusters by any of the rules above (clusters
  found on pre-fusion weights, representatives from BatchNorm-fused ones, §7.5).
* :func:`point_to_zonotope_distance`, :func:`hausdorff_zonotopes`, :func:`theorem11_bound`.

Convolutions (TropNNC §6): flatten kernels with :func:`flatten_kernels`, compress, and restore
shapes with :func:`unflatten_kernels`.

Every function computes in float64 on the CPU and returns tensors in the dtype and on the device
of the corresponding input. Every compression returns a :class:`CompressedLayer` whose ``labels``
say which compressed neuron each original neuron went into (``-1``: dropped). A compression to
``K`` neurons returns *at most* ``K``, never more: K-means finds fewer clusters when the vectors it
clusters have fewer distinct values than clusters asked of it (identical ones merge losslessly).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from tropfx.errors import InputError

__all__ = [
    "KMEANS_BACKEND",
    "KMEANS_MAX_ITER",
    "KMEANS_N_INIT",
    "KMEANS_TOL",
    "MAX_HAUSDORFF_GENERATORS",
    "QP_SOLVERS",
    "REBUILD_RULES",
    "CompressedLayer",
    "all_finite",
    "cluster_by_threshold",
    "compress_iterative",
    "compress_multi",
    "compress_single",
    "cup",
    "flatten_kernels",
    "hausdorff_zonotopes",
    "kmeans_labels",
    "l1_structured",
    "merge_clusters",
    "neural_path_kmeans",
    "point_to_zonotope_distance",
    "random_structured",
    "rebuild",
    "shared_projections",
    "theorem11_bound",
    "thinet",
    "unflatten_kernels",
    "zonotope_generators",
    "zonotope_kmeans",
]

KMEANS_N_INIT = 1
"""K-means restarts. One k-means++ seeding is enough for the paper's use and keeps n = 4096 fast."""
KMEANS_MAX_ITER = 30
"""Lloyd iterations at most (sklearn: 300). One iteration costs ~3 s at n = d = m = 4096, K = 2048
on 2 cores; with about two neurons per cluster Lloyd settles in a few iterations."""
KMEANS_TOL = 1e-4
"""Lloyd stops when the centres move (sum of squared shifts) less than this times the mean
column variance (sklearn's rule)."""
KMEANS_BACKEND = "torch"
"""``"torch"``: float32 distances through one matmul per Lloyd iteration (the default since
issue 19: VGG-16's 4096 x 29k classifier group in seconds); ``"sklearn"``: scikit-learn's float64
``KMeans``."""
_REFINE_ITER = 3
"""Lloyd iterations on the full rows after converging on the seeding projection (long rows)."""
_CANDIDATES = 5
"""Centres each row compares itself with in those iterations: the nearest on the projection."""
_SEEDING_DIM = 256
"""Above this many dimensions k-means++ seeding runs on a Gaussian random projection to this many
dimensions (Johnson-Lindenstrauss): sklearn's greedy seeding on 4096 x 8193 vectors with K = 2048
takes ~8 minutes, on the projection ~3 s. Lloyd iterations always use the full vectors."""
_SEEDING_TABLE_ROWS = 8192
"""k-means++ seeding keeps the ``n x n`` table of squared distances (256 MiB at most) up to this
many rows."""
MAX_HAUSDORFF_GENERATORS = 14
"""Vertex enumeration visits all 2**k subset sums of a zonotope's k (non-zero) generators."""


class CompressedLayer(NamedTuple):
    """A compressed layer ``v~(x) = C relu(A x + b)``.

    ``labels[i]`` is the compressed neuron that original neuron ``i`` was merged into (or kept
    as), ``-1`` when it was dropped. For :func:`compress_single` / :func:`zonotope_kmeans`, ``C``
    has the shape of the ``c`` passed in (``(K,)`` or ``(1, K)``).
    """

    A: Tensor
    b: Tensor
    C: Tensor
    labels: Tensor


# --------------------------------------------------------------------------- validation


def _float_matrix(x: object, name: str, dim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor (float32/float64), got {x.dtype}")
    if x.dim() != dim:
        raise InputError(f"{name} must have {dim} dimension(s), got shape {tuple(x.shape)}")
    if not all_finite(x):
        raise InputError(f"{name} contains NaN or infinite values; compress only finite weights")
    return x.detach().to("cpu", torch.float64)


def all_finite(x: Tensor) -> bool:
    """Whether every entry of the floating-point tensor ``x`` is finite.

    A float64 sum is finite only when every term is (NaN and infinities propagate into it), and
    it takes one pass without the boolean mask of ``isfinite``: ~16x less CPU time on VGG-16's
    largest group (issue 19, item 4). A sum that overflows is settled by the mask."""
    return math.isfinite(float(x.detach().sum(dtype=torch.float64))) \
        or bool(torch.isfinite(x).all())


def _check_layer(A: object, b: object, C: object, *, single: bool = False) -> tuple[Tensor, ...]:
    """float64 CPU copies of ``(A, b, C)`` after checking shapes and finiteness; ``C`` comes back
    as ``(m, n)``, a 1-D ``C`` being one output (``m = 1``)."""
    A64 = _float_matrix(A, "A (input weights)", 2)
    b64 = _float_matrix(b, "b (input bias)", 1)
    name = "c (output weights)" if single else "C (output weights)"
    if isinstance(C, Tensor) and C.dim() == 1:  # one output
        C64 = _float_matrix(C, name, 1)[None]
    else:
        C64 = _float_matrix(C, name, 2)
    n = A64.shape[0]
    if b64.shape[0] != n or C64.shape[1] != n:
        raise InputError(
            f"shapes do not describe one layer of n neurons: A {tuple(A64.shape)} (n, d), "
            f"b {tuple(b64.shape)} (n,), C {tuple(C64.shape)} (m, n)")
    if single and C64.shape[0] != 1:
        raise InputError(f"c must have shape (n,) or (1, n) for a single output, got {tuple(C.shape)}"
                         "; use compress_multi for several outputs")
    if n == 0:
        raise InputError("the layer has no neurons (n = 0); there is nothing to compress")
    return A64, b64, C64


def _check_k(K: object, n: int) -> int:
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        raise InputError(f"K must be an int, got {type(K).__name__}")
    if not 1 <= K <= n:
        raise InputError(f"K must satisfy 1 <= K <= n = {n} (neurons kept), got K = {K}")
    return int(K)


def _result(A: Tensor, b: Tensor, C: Tensor, labels: Tensor, like: tuple[Tensor, Tensor, Tensor],
            ) -> CompressedLayer:
    """Cast each output back to the dtype and device of the matching input."""
    A0, b0, C0 = like
    if C0.dim() == 1:
        C = C[0]
    return CompressedLayer(A.to(A0.device, A0.dtype), b.to(b0.device, b0.dtype),
                           C.to(C0.device, C0.dtype), labels.to(A0.device))


# --------------------------------------------------------------------------- zonotopes (§3.2)


def zonotope_generators(A: Tensor, b: Tensor, C: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Generators of the positive and negative zonotopes of every output (TropNNC §3.2).

    Returns ``[(P_j, Q_j) for j in range(m)]`` with ``P_j = {C_ji (a_i, b_i) : C_ji > 0}`` and
    ``Q_j = {|C_ji| (a_i, b_i) : C_ji < 0}``, each of shape ``(count, d + 1)``; neurons with
    ``C_ji = 0`` contribute to neither. ``v_j = p_j - q_j`` where ``ENewt(p_j) = P_j``,
    ``ENewt(q_j) = Q_j`` (zonotopes with segments ``[0, g]``, TropNNC §3.1.3).
    """
    A64, b64, C64 = _check_layer(A, b, C)
    ab = torch.cat([A64, b64[:, None]], 1)
    out = []
    for c in C64:
        pos, neg = c > 0, c < 0
        out.append(((c[pos, None] * ab[pos]).to(A.device, A.dtype),
                    (-c[neg, None] * ab[neg]).to(A.device, A.dtype)))
    return out


# --------------------------------------------------------------------------- clustering


def kmeans_labels(X: Tensor, k: int, seed: int = 0, *, max_iter: int = KMEANS_MAX_ITER,
                  n_init: int = KMEANS_N_INIT, tol: float = KMEANS_TOL,
                  backend: str | None = None) -> Tensor:
    """Cluster labels ``0..k'-1`` (``k' <= k``) of the rows of ``X`` by K-means.

    k-means++ seeding (sklearn's ``kmeans_plusplus``, on a random projection when the rows are
    long, see ``_SEEDING_DIM``), then Lloyd iterations until the centres move less than ``tol``
    times the mean variance of the columns (sklearn's stopping rule) or ``max_iter``. The
    ``"torch"`` backend (default, :data:`KMEANS_BACKEND`) computes distances in float32 as one
    matrix product per iteration (``|x|^2 - 2 x.c + |c|^2``); long rows first iterate on the
    projection used for seeding, then at most ``_REFINE_ITER`` iterations on the full rows.
    ``"sklearn"`` is scikit-learn's float64 ``KMeans`` on the full rows. ``n_init`` restarts
    with seeds ``seed, seed + 1, ...`` keep the clustering of least inertia. ``k >= len(X)``
    puts every row in its own cluster without running K-means. Fewer than ``k`` clusters come
    back when ``X`` has fewer than ``k`` distinct rows (labels are compacted).
    """
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise InputError(f"n_init must be an int >= 1 (K-means restarts), got {n_init!r}")
    backend = KMEANS_BACKEND if backend is None else backend
    if backend not in ("torch", "sklearn"):
        raise InputError(f"backend must be 'torch' or 'sklearn', got {backend!r}")
    n = X.shape[0]
    if k >= n:
        return torch.arange(n)
    # float32 rows for the torch backend, float64 ones only for sklearn (from float64 X, the
    # float32 rows are the same either way)
    x64 = X.detach().to("cpu", torch.float64) if backend == "sklearn" else None
    x32 = X.detach().to("cpu", torch.float32)
    long = X.shape[1] > _SEEDING_DIM
    best, best_inertia = None, math.inf
    for s in range(seed, seed + n_init):
        seeding = x64 if x64 is not None else x32
        if long:
            seeding = x32 @ _projection(s, X.shape[1])
        if backend == "sklearn":
            labels, inertia = _sklearn_kmeans(x64, seeding, k, s, max_iter, tol)
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # k small sequential steps: threads only wait on a busy machine
            try:
                first = _kmeans_plusplus(seeding.float(), k, s)
            finally:
                torch.set_num_threads(threads)
            if not long:
                labels, inertia = _lloyd(x32, x32[first], max_iter, tol)
            else:  # iterate on the projection, then refine on the full rows
                labels, _ = _lloyd(seeding, seeding[first], max_iter, tol)
                labels, inertia = _refine(x32, seeding, labels, x32[first], _REFINE_ITER, tol)
        if best is None or inertia < best_inertia:
            best, best_inertia = labels, inertia
    return torch.unique(best, return_inverse=True)[1]


_PROJECTIONS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("projections",
                                                                          default=None)


@contextlib.contextmanager
def shared_projections() -> Iterator[None]:
    """Within the block, :func:`kmeans_labels` takes its seeding projections from one growing
    draw per seed instead of drawing each anew: numpy's ``standard_normal((d, 256))`` is the first
    ``d`` rows of the draw for more rows, so the result is the same. The groups of a model then
    draw only the longest one (resnet50: 5.6k rows instead of ~110k, 0.7 s of CPU). Also usable
    as a decorator; the draws are dropped when the block ends."""
    token = _PROJECTIONS.set({})
    try:
        yield
    finally:
        _PROJECTIONS.reset(token)


def _projection(seed: int, d: int) -> Tensor:
    """The ``(d, _SEEDING_DIM)`` float32 Gaussian projection of ``seed`` (see
    :func:`shared_projections`)."""
    shared = _PROJECTIONS.get()
    if shared is None:
        return torch.from_numpy(np.random.default_rng(seed).standard_normal((d, _SEEDING_DIM))).float()
    gen, R = shared.get(seed) or (np.random.default_rng(seed), torch.empty(0, _SEEDING_DIM))
    if R.shape[0] < d:  # the stream goes on where the shorter draw stopped
        more = torch.from_numpy(gen.standard_normal((d - R.shape[0], _SEEDING_DIM))).float()
        R = torch.cat([R, more])
        shared[seed] = gen, R
    return R[:d]


def _sklearn_kmeans(x64: Tensor, seeding: Tensor, k: int, seed: int, max_iter: int,
                    tol: float) -> tuple[Tensor, float]:
    # imported here: scikit-learn takes seconds to import, and `import tropfx` must stay fast
    from sklearn.cluster import KMeans, kmeans_plusplus
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # duplicate rows: fewer distinct clusters than k; handled by compacting the labels
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, first = kmeans_plusplus(seeding.double().numpy(), k, random_state=seed)
        km = KMeans(k, init=x64.numpy()[first], n_init=1, max_iter=max_iter, tol=tol,
                    random_state=seed).fit(x64.numpy())
    return torch.from_numpy(km.labels_).long(), km.inertia_


def _kmeans_plusplus(x: Tensor, k: int, seed: int) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; sklearn's variant with
    ``2 + log(k)`` candidates per centre): indices of ``k`` rows of ``x``. A row identical to a
    chosen centre has distance 0 and is never chosen while others are farther."""
    gen = torch.Generator().manual_seed(seed)
    n, trials = x.shape[0], 2 + int(math.log(k))
    xx = (x * x).sum(1)
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    xt = x.T.contiguous()
    closest = (xx + xx[chosen[0]] - 2 * x @ x[chosen[0]]).clamp_min(0)
    closest[chosen[0]] = 0.0
    rows = torch.arange(trials)
    # every pairwise distance at once when the steps would compute more of them (trials * k rows
    # of n) and they fit: one large product instead of k skinny ones (VGG-16's 4096-neuron
    # groups: 0.4 s instead of 2.5 s)
    table = torch.addmm(xx[:, None] + xx[None, :], x, xt, alpha=-2.0).clamp_min_(0) \
        if n <= _SEEDING_TABLE_ROWS and trials * (k - 1) >= n else None
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct rows than k: the rest would be duplicates
            taken = set(chosen)
            rest = [i for i in range(n) if i not in taken][:k - len(chosen)]
            return torch.tensor(chosen + rest)
        cand = torch.searchsorted(torch.cumsum(closest, 0),
                                  torch.rand(trials, generator=gen, dtype=x.dtype) * total)
        cand = cand.clamp(max=n - 1)
        d = table[cand] if table is not None else \
            torch.addmm(xx[cand, None] + xx[None, :], x[cand], xt, alpha=-2.0).clamp_min_(0)
        d[rows, cand] = 0.0
        torch.minimum(d, closest[None], out=d)
        best = int(d.sum(1).argmin())
        chosen.append(int(cand[best]))
        closest = d[best]
    return torch.tensor(chosen)


def _assign(x: Tensor, xx: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centre of every row and the squared distance to it (one matmul)."""
    d = torch.addmm(xx[:, None] + (centers * centers).sum(1)[None, :], x, centers.T, alpha=-2.0)
    dist, labels = d.min(1)
    return labels, dist.clamp_min(0)


def _means(x: Tensor, labels: Tensor, old: Tensor) -> Tensor:
    """Cluster means; an empty cluster keeps its old centre."""
    counts = torch.bincount(labels, minlength=old.shape[0])
    means = _segment_sum(x, labels, old.shape[0]).div_(counts.clamp_min(1)[:, None].to(x.dtype))
    empty = counts == 0
    if bool(empty.any()):
        means[empty] = old[empty]
    return means


def _mean_variance(x: Tensor, xx: Tensor) -> float:
    """The mean over columns of the column variances of ``x`` (sklearn's scale of ``tol``), from
    the squared row norms ``xx``: ``(sum_i |x_i|^2 - n |mean|^2) / ((n - 1) d)``, a matrix-vector
    product instead of a column-wise variance (0.7 s of CPU on VGG-16's largest group). Where
    the mean carries most of the second moment (the difference cancels), ``x.var(0)``."""
    n, d = x.shape
    if n < 2:
        return 0.0
    mean = torch.mv(x.T, x.new_ones(n)).double() / n
    total = float(xx.double().sum())
    spread = total - n * float((mean * mean).sum())
    if spread > 0.5 * total:
        return spread / ((n - 1) * d)
    return float(x.var(0).mean())


def _refine(x: Tensor, proj: Tensor, labels: Tensor, init: Tensor, iters: int,
            tol: float) -> tuple[Tensor, float]:
    """Lloyd's iterations on the full rows ``x`` from ``labels``, each row comparing itself
    only with the ``_CANDIDATES`` centres nearest to it on the projection ``proj``: exact
    distances at ``n * _CANDIDATES * d`` instead of ``n * k * d`` (VGG-16's classifier group:
    4096 x 2048 x 29k per full iteration)."""
    centers = _means(x, labels, init)
    c = min(_CANDIDATES, centers.shape[0])
    pp, xx = (proj * proj).sum(1), (x * x).sum(1)
    stop = tol * _mean_variance(x, xx)
    for step in range(iters + 1):
        pc = _means(proj, labels, proj.new_zeros(centers.shape[0], proj.shape[1]))
        near = torch.addmm(pp[:, None] + (pc * pc).sum(1)[None, :], proj, pc.T, alpha=-2.0)
        cand = near.topk(c, dim=1, largest=False).indices
        dots = _sampled_dots(x, centers, cand)  # x_i . c_j for the candidates j of row i only
        dist = (xx[:, None] + (centers * centers).sum(1)[cand] - 2 * dots).clamp_min(0)
        best, pick = dist.min(1)
        labels = cand.gather(1, pick[:, None])[:, 0]
        if step == iters:
            break
        new = _means(x, labels, centers)
        shift = float((new - centers).pow_(2).sum())
        centers = new
        if shift <= stop:
            break
    return labels, float(best.double().sum())


def _sampled_dots(x: Tensor, centers: Tensor, cand: Tensor) -> Tensor:
    """``out[i, s] = x_i . centers_{cand[i, s]}`` (``cand``'s rows hold distinct indices): a
    sampled dense-dense product (SDDMM) on the sparsity pattern of ``cand``. Gathering the
    candidate centres for a batched product instead copies ``n * c * d`` floats: 15x the CPU time
    for VGG-16's classifier groups (issue 19, item 4)."""
    n, c = cand.shape
    cols, order = cand.sort(1)  # CSR: increasing columns within a row
    with warnings.catch_warnings():  # torch's "CSR support is in beta state" notice
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(torch.arange(0, n * c + 1, c), cols.flatten(),
                                          x.new_zeros(n * c), (n, centers.shape[0]),
                                          check_invariants=False)
    dots = torch.sparse.sampled_addmm(pattern, x, centers.T, beta=0.0).values().reshape(n, c)
    return torch.empty_like(dots).scatter_(1, order, dots)


def _lloyd(x: Tensor, centers: Tensor, max_iter: int, tol: float) -> tuple[Tensor, float]:
    """Lloyd's iterations from ``centers``: the labels and the inertia (sum of squared
    distances to the nearest centre)."""
    xx = (x * x).sum(1)
    stop = tol * _mean_variance(x, xx)
    for _ in range(max_iter):
        labels, _ = _assign(x, xx, centers)
        new = _means(x, labels, centers)
        shift = float((new - centers).pow_(2).sum())
        centers = new
        if shift <= stop:
            break
    labels, dist = _assign(x, xx, centers)
    return labels, float(dist.double().sum())


def _segment_sum(values: Tensor, labels: Tensor, k: int) -> Tensor:
    """``out[c] = sum(values[i] for i with labels[i] == c)``; rows with label -1 are skipped.

    A product with the sparse ``(k, n)`` 0/1 matrix of the clusters. It adds each cluster's rows
    in index order from 0, as ``index_add_`` does on one thread (the same sums, bit for bit), but
    ``index_add_`` with more than one thread takes a path that sorts ``n x d`` expanded indices:
    25x the CPU time at ``n = 2048, d = 3820`` on 2 threads (issue 19, item 4)."""
    flat = values.reshape(values.shape[0], -1)
    rows = torch.nonzero(labels >= 0).flatten()
    lab = labels[rows]
    order = torch.argsort(lab, stable=True)  # (cluster, row) in increasing order: coalesced
    index = torch.stack([lab[order], rows[order]])
    ones = torch.ones(len(rows), dtype=values.dtype)
    clusters = torch.sparse_coo_tensor(index, ones, (k, len(labels)), is_coalesced=True,
                                       check_invariants=False)
    return torch.sparse.mm(clusters, flat).reshape(k, *values.shape[1:])


def merge_clusters(A: Tensor, b: Tensor, C: Tensor, labels: Tensor) -> CompressedLayer:
    """Cluster representatives by the rule of TropNNC Alg. 2, step 2.

    For every cluster ``k`` with neurons ``I_k`` (``labels[i] == k``; ``-1`` drops a neuron):
    ``(a~_k, b~_k) = mean{(a_i, b_i) : i in I_k}`` and ``C~_:,k = sum{C_:,i : i in I_k}``. Labels
    need not be contiguous: clusters are renumbered ``0..K'-1`` in increasing label order.
    """
    A64, b64, C64 = _check_layer(A, b, C)
    labels = _check_labels(labels, A64.shape[0])
    return _result(*_merge_mean_sum(A64, b64, C64, labels), like=(A, b, C))


def _check_labels(labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise InputError(f"labels must be an integer tensor of shape ({n},), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    labels = labels.detach().cpu().long()
    if bool((labels < -1).any()):
        raise InputError("labels must be >= 0 (cluster) or -1 (drop the neuron)")
    if bool((labels < 0).all()):
        raise InputError("labels drop every neuron; keep at least one cluster")
    out = torch.full_like(labels, -1)
    keep = labels >= 0
    out[keep] = torch.unique(labels[keep], return_inverse=True)[1]
    return out


def _merge_mean_sum(A: Tensor, b: Tensor, C: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    k = int(labels.max()) + 1
    counts = _segment_sum(torch.ones(len(labels), dtype=torch.float64), labels, k)
    ab = _segment_sum(torch.cat([A, b[:, None]], 1), labels, k) / counts[:, None]
    C_new = _segment_sum(C.T, labels, k).T
    return ab[:, :-1], ab[:, -1], C_new, labels


def _merge_mean_mean(A: Tensor, b: Tensor, C: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    A_new, b_new, C_sum, labels = _merge_mean_sum(A, b, C, labels)
    counts = _segment_sum(torch.ones(len(labels), dtype=torch.float64), labels, C_sum.shape[1])
    return A_new, b_new, C_sum / counts, labels


# --------------------------------------------------------------------------- Alg. 1 (single output)


def _split_clusters(K: int, n_pos: int, n_neg: int) -> tuple[int, int]:
    """Clusters for the positive and negative generators of Alg. 1 (``K/2`` each, step 2).

    Odd ``K``: the extra cluster goes to the sign with more generators (positive on a tie). A
    sign with fewer generators than its share keeps each generator and passes the surplus to the
    other sign. ``n_pos + n_neg > K`` is assumed (otherwise every generator is kept).
    """
    big, small = (K + 1) // 2, K // 2
    k_pos, k_neg = (big, small) if n_pos >= n_neg else (small, big)
    if k_pos > n_pos:
        k_pos, k_neg = n_pos, K - n_pos
    if k_neg > n_neg:
        k_pos, k_neg = K - n_neg, n_neg
    return k_pos, k_neg


def _single_output(A: Tensor, b: Tensor, c: Tensor, K: int, seed: int, *, mean: bool,
                   max_iter: int) -> CompressedLayer:
    A64, b64, C64 = _check_layer(A, b, c, single=True)
    K = _check_k(K, A64.shape[0])
    c64 = C64[0]
    pos, neg = torch.nonzero(c64 > 0).flatten(), torch.nonzero(c64 < 0).flatten()
    if len(pos) + len(neg) == 0:
        raise InputError("every output weight c_i is 0: the output does not depend on this layer "
                         "and Alg. 1 has no positive or negative generators to cluster; "
                         "remove the layer instead of compressing it")
    needed = (len(pos) > 0) + (len(neg) > 0)
    if K < needed:
        raise InputError(f"K = {K} but the output has both positive and negative generators; "
                         "Alg. 1 needs at least one cluster per sign, so K >= 2")
    gens = (c64.abs()[:, None] * torch.cat([A64, b64[:, None]], 1))
    if len(pos) + len(neg) <= K:
        k_pos, k_neg = len(pos), len(neg)
    else:
        k_pos, k_neg = _split_clusters(K, len(pos), len(neg))
    labels = torch.full((A64.shape[0],), -1, dtype=torch.long)
    reps, signs, offset = [], [], 0
    for idx, k, sign in ((pos, k_pos, 1.0), (neg, k_neg, -1.0)):
        if len(idx) == 0:
            continue
        lab = kmeans_labels(gens[idx], k, seed, max_iter=max_iter)
        k_found = int(lab.max()) + 1
        rep = _segment_sum(gens[idx], lab, k_found)
        if mean:
            rep = rep / torch.bincount(lab, minlength=k_found)[:, None].double()
        labels[idx] = lab + offset
        reps.append(rep)
        signs.append(torch.full((k_found,), sign, dtype=torch.float64))
        offset += k_found
    rep = torch.cat(reps)
    return _result(rep[:, :-1], rep[:, -1], torch.cat(signs)[None], labels, like=(A, b, c))


def compress_single(A: Tensor, b: Tensor, c: Tensor, K: int, seed: int = 0, *,
                    max_iter: int = KMEANS_MAX_ITER) -> CompressedLayer:
    """TropNNC Alg. 1 (single output): zonotope K-means with SUM representatives.

    1. split the generators ``|c_i| (a_i, b_i)`` by the sign of ``c_i``;
    2. K-means with ``K/2`` clusters on each sign. Odd ``K``: the extra cluster goes to the sign
       with more generators (positive on a tie); a sign with fewer generators than its share
       keeps each of them and passes the surplus clusters to the other sign;
    3. representative of a cluster = the SUM of its generators, which becomes a neuron's input
       weights and bias (``|c| relu(a.x + b) = relu(|c| a.x + |c| b)``);
    4. output weight ``+1`` for positive clusters (first), ``-1`` for negative ones.

    Neurons with ``c_i = 0`` contribute nothing and are dropped (label -1). When at most ``K``
    non-null generators exist, each is kept as it is (exact). Errors: every ``c_i = 0``, or
    ``K = 1`` while both signs occur (``InputError``).
    """
    return _single_output(A, b, c, K, seed, mean=False, max_iter=max_iter)


def zonotope_kmeans(A: Tensor, b: Tensor, c: Tensor, K: int, seed: int = 0, *,
                    max_iter: int = KMEANS_MAX_ITER) -> CompressedLayer:
    """Zonotope K-means (Misiakos et al. 2022), as described in TropNNC §5.1.1: Alg. 1 with the
    cluster CENTRE (mean of the generators) as representative. Same splitting rules and errors as
    :func:`compress_single`."""
    return _single_output(A, b, c, K, seed, mean=True, max_iter=max_iter)


# --------------------------------------------------------------------------- Alg. 2 / 3 (multi-output)


def _neuron_vectors(A: Tensor, b: Tensor, C: Tensor) -> Tensor:
    """The clustering vectors ``(a_i, b_i, C_:,i)`` of TropNNC Alg. 2, step 1 (rows)."""
    return torch.cat([A, b[:, None], C.T], 1)


def compress_multi(A: Tensor, b: Tensor, C: Tensor, K: int, seed: int = 0, *,
                   max_iter: int = KMEANS_MAX_ITER, n_init: int = KMEANS_N_INIT) -> CompressedLayer:
    """TropNNC Alg. 2 (non-iterative, multi-output).

    1. K-means with ``K`` centres on the vectors ``(a_i, b_i, C_:,i)``;
    2. (i) ``(a~_k, b~_k)`` = MEAN of the cluster's input weights and biases,
       (ii) ``C~_:,k`` = SUM of the cluster's output weights (:func:`merge_clusters`);
    3. the k-th row of ``(A~, b~)`` and the k-th column of ``C~`` are the representative.
    """
    A64, b64, C64 = _check_layer(A, b, C)
    K = _check_k(K, A64.shape[0])
    labels = kmeans_labels(_neuron_vectors(A64, b64, C64), K, seed, max_iter=max_iter,
                           n_init=n_init)
    return _result(*_merge_mean_sum(A64, b64, C64, labels), like=(A, b, C))


def neural_path_kmeans(A: Tensor, b: Tensor, C: Tensor, K: int, seed: int = 0, *,
                       max_iter: int = KMEANS_MAX_ITER, n_init: int = KMEANS_N_INIT,
                       ) -> CompressedLayer:
    """Neural Path K-means (Misiakos et al. 2022), as described in TropNNC §5.2.1: the clustering
    of Alg. 2 with the cluster CENTRE (mean of ``(a_i, b_i, C_:,i)``) as representative."""
    A64, b64, C64 = _check_layer(A, b, C)
    K = _check_k(K, A64.shape[0])
    labels = kmeans_labels(_neuron_vectors(A64, b64, C64), K, seed, max_iter=max_iter,
                           n_init=n_init)
    return _result(*_merge_mean_mean(A64, b64, C64, labels), like=(A, b, C))


def compress_iterative(A: Tensor, b: Tensor, C: Tensor, K: int, seed: int = 0, num_iter: int = 10,
                       *, max_iter: int = KMEANS_MAX_ITER, n_init: int = KMEANS_N_INIT,
                       ) -> CompressedLayer:
    """TropNNC Alg. 3 (iterative, multi-output), initialised by Alg. 2.

    Minimises, for every cluster ``k`` with neurons ``I_k`` and ``S_jk = sum_{i in I_k} C_ji
    (a_i, b_i)``, the criterion of §5.2.2 ``sum_j ||C~_jk (a~_k, b~_k) - S_jk||^2`` by
    ``num_iter`` rounds of the two closed-form steps (Alg. 3, lines 10 and 12):

    * ``C~_jk <- <S_jk, (a~_k, b~_k)> / ||(a~_k, b~_k)||^2``  (project ``S_jk`` on the direction)
    * ``(a~_k, b~_k) <- sum_j C~_jk S_jk / sum_j C~_jk^2``     (zero gradient in the direction)

    ``S_jk`` is never formed: both steps are segment sums over neurons, O(n (d + m)) per round.
    A cluster whose direction is 0 keeps its ``C~`` in the first step, and one whose ``C~_:,k``
    is 0 keeps its direction in the second (the criterion does not depend on them then). The
    second step never flips a direction: ``<new, old> = ||old||^2 > 0``.
    """
    A64, b64, C64 = _check_layer(A, b, C)
    K = _check_k(K, A64.shape[0])
    _check_num_iter(num_iter)
    labels = kmeans_labels(_neuron_vectors(A64, b64, C64), K, seed, max_iter=max_iter,
                           n_init=n_init)
    return _result(*_iterate(A64, b64, C64, labels, num_iter), like=(A, b, C))


def _check_num_iter(num_iter: object) -> None:
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 0:
        raise InputError(f"num_iter must be an int >= 0, got {num_iter!r}")


def _iterate(A64: Tensor, b64: Tensor, C64: Tensor, labels: Tensor, num_iter: int,
             ) -> tuple[Tensor, ...]:
    """Alg. 3 from the clusters ``labels``: Alg. 2's representatives, then ``num_iter`` rounds."""
    A_t, b_t, C_t, labels = _merge_mean_sum(A64, b64, C64, labels)
    ab, ab_t = torch.cat([A64, b64[:, None]], 1), torch.cat([A_t, b_t[:, None]], 1)
    # neurons / clusters as rows: c[i] = C_:,i, c_t[k] = C~_:,k; dropped neurons (-1) are ignored
    keep = labels >= 0
    ab, c, lab = ab[keep], C64.T[keep].contiguous(), labels[keep]
    c_t, k = C_t.T.contiguous(), len(b_t)
    for _ in range(num_iter):
        # C~_jk = sum_{i in I_k} C_ji <(a_i, b_i), (a~_k, b~_k)> / ||(a~_k, b~_k)||^2
        norm2 = torch.einsum("kd,kd->k", ab_t, ab_t)
        proj = torch.einsum("id,id->i", ab, ab_t[lab])
        new_c = _segment_sum(c * proj[:, None], lab, k) / norm2[:, None]
        c_t = torch.where(norm2[:, None] > 0, new_c, c_t)
        # (a~_k, b~_k) = sum_{i in I_k} <C_:,i, C~_:,k> (a_i, b_i) / ||C~_:,k||^2
        cnorm2 = torch.einsum("km,km->k", c_t, c_t)
        weight = torch.einsum("im,im->i", c, c_t[lab])
        new_ab = _segment_sum(ab * weight[:, None], lab, k) / cnorm2[:, None]
        ab_t = torch.where(cnorm2[:, None] > 0, new_ab, ab_t)
    return ab_t[:, :-1], ab_t[:, -1], c_t.T, labels


REBUILD_RULES = ("mean_sum", "mean_mean", "iterative", "keep", "sum_generators",
                 "mean_generators")


def rebuild(A: Tensor, b: Tensor, C: Tensor, labels: Tensor, rule: str = "mean_sum", *,
            num_iter: int = 10) -> CompressedLayer:
    """The compressed layer of given clusters, by one of the algorithms' representative rules.

    Used to cluster on one set of weights and build the layer from another, as TropNNC §6 / §7.5
    do when BatchNorm is fused layer by layer: the clusters come from the pre-fusion weights and
    the representatives from the fused ones. ``labels[i]`` is neuron ``i``'s cluster (``-1``:
    dropped). Rules:

    * ``"mean_sum"`` -- Alg. 2 step 2 (:func:`merge_clusters`); ``"mean_mean"`` -- Neural Path
      K-means (cluster centres); ``"iterative"`` -- Alg. 3 from these clusters;
    * ``"keep"`` -- pruning baselines: every cluster must have exactly one neuron, kept as it is;
    * ``"sum_generators"`` / ``"mean_generators"`` -- Alg. 1 / Zonotope K-means (one output):
      a cluster's generators ``|c_i| (a_i, b_i)`` must share the sign of ``c_i``; its
      representative is their sum / mean, with output weight ``+1`` or ``-1``.
    """
    A64, b64, C64 = _check_layer(A, b, C)
    labels = _check_labels(labels, A64.shape[0])
    if rule == "mean_sum":
        out = _merge_mean_sum(A64, b64, C64, labels)
    elif rule == "mean_mean":
        out = _merge_mean_mean(A64, b64, C64, labels)
    elif rule == "iterative":
        _check_num_iter(num_iter)
        out = _iterate(A64, b64, C64, labels, num_iter)
    elif rule == "keep":
        k = int(labels.max()) + 1
        if not torch.equal(torch.bincount(labels[labels >= 0], minlength=k), torch.ones(k).long()):
            raise InputError("rule='keep' needs one neuron per cluster (a pruning); use "
                             "'mean_sum' for clusters of several neurons")
        keep = torch.empty(k, dtype=torch.long)
        keep[labels[labels >= 0]] = torch.nonzero(labels >= 0).flatten()
        out = A64[keep], b64[keep], C64[:, keep], labels
    elif rule in ("sum_generators", "mean_generators"):
        if C64.shape[0] != 1:
            raise InputError(f"rule={rule!r} is Alg. 1 (one output); C has {C64.shape[0]} rows")
        c = C64[0]
        labels = torch.where(c == 0, -1, labels)  # null generators contribute nothing
        if bool((labels < 0).all()):
            raise InputError("every output weight c_i is 0: nothing to rebuild")
        labels = _check_labels(labels, len(c))
        k = int(labels.max()) + 1
        sign = _segment_sum(torch.sign(c), labels, k)
        count = _segment_sum(torch.ones_like(c), labels, k)
        if not bool((sign.abs() == count).all()):
            raise InputError("Alg. 1 clusters must not mix positive and negative generators")
        rep = _segment_sum(c.abs()[:, None] * torch.cat([A64, b64[:, None]], 1), labels, k)
        if rule == "mean_generators":
            rep = rep / count[:, None]
        out = rep[:, :-1], rep[:, -1], torch.sign(sign)[None], labels
    else:
        raise InputError(f"rule must be one of {REBUILD_RULES}, got {rule!r}")
    return _result(*out, like=(A, b, C))


# --------------------------------------------------------------------------- pruning baselines


def _keep(A: Tensor, b: Tensor, C: Tensor, keep: Tensor) -> CompressedLayer:
    """Prune to the neurons ``keep`` (sorted, kept unchanged)."""
    keep = torch.sort(keep).values
    labels = torch.full((A.shape[0],), -1, dtype=torch.long)
    labels[keep] = torch.arange(len(keep))
    idx = keep.to(A.device)
    return CompressedLayer(A.detach()[idx], b.detach()[idx], C.detach()[:, idx],
                           labels.to(A.device))


def l1_structured(A: Tensor, b: Tensor, C: Tensor, K: int) -> CompressedLayer:
    """L1 structured pruning (TropNNC §7 baselines): keep the ``K`` neurons whose own weights
    (row ``a_i`` of ``A``: the neuron's weights / flattened kernel, bias excluded) have the
    largest L1 norm; ties keep the lower index. Kept neurons are unchanged."""
    A64, b64, C64 = _check_layer(A, b, C)
    K = _check_k(K, A64.shape[0])
    order = torch.sort(A64.abs().sum(1), descending=True, stable=True).indices
    return _keep(A, b, C, order[:K])


def random_structured(A: Tensor, b: Tensor, C: Tensor, K: int, seed: int = 0) -> CompressedLayer:
    """Random structured pruning (TropNNC §7 baselines): keep ``K`` neurons drawn uniformly
    without replacement (``torch.randperm`` with a generator seeded by ``seed``)."""
    A64, _, _ = _check_layer(A, b, C)
    K = _check_k(K, A64.shape[0])
    gen = torch.Generator().manual_seed(seed)
    return _keep(A, b, C, torch.randperm(A64.shape[0], generator=gen)[:K])


def cup(A: Tensor, b: Tensor, C: Tensor, *, K: int | None = None, threshold: float | None = None,
        features: Tensor | None = None, method: str = "ward") -> CompressedLayer:
    """CUP (Duggal et al. 2021) as described in TropNNC §7: hierarchical clustering of per-neuron
    features, then every cluster is replaced by its member of maximum feature norm (kept
    unchanged, input and output weights); the other members are pruned.

    Exactly one of ``K`` (cut the tree into at most ``K`` clusters, ``maxclust``) or
    ``threshold`` (cut at that linkage distance, no rescaling) is given. ``features`` defaults to
    the vectors ``(a_i, b_i, C_:,i)`` (TropNNC §2: CUP's step 1 uses similar vectors for linear
    layers); pass your own ``(n, f)`` tensor for CUP's convolutional filter features.
    """
    A64, b64, C64 = _check_layer(A, b, C)
    n = A64.shape[0]
    feats = _neuron_vectors(A64, b64, C64) if features is None else _float_matrix(features,
                                                                                   "features", 2)
    if feats.shape[0] != n:
        raise InputError(f"features must have one row per neuron ({n}), got {tuple(feats.shape)}")
    if (K is None) == (threshold is None):
        raise InputError("cup needs exactly one of K= (number of clusters) or threshold=")
    if K is not None:
        K = _check_k(K, n)
        labels = _hierarchical(feats, method, K, "maxclust")
    else:
        labels = _hierarchical(feats, method, _nonnegative(threshold, "threshold"), "distance")
    norms = feats.norm(dim=1)
    # max-norm member of every cluster (lowest index on ties)
    keep = torch.stack([torch.nonzero(labels == k).flatten()[norms[labels == k].argmax()]
                        for k in range(int(labels.max()) + 1)])
    return _keep(A, b, C, keep)


# --------------------------------------------------------------------------- ThiNet (data-driven)


def thinet(A: Tensor, b: Tensor, C: Tensor, K: int, contributions: Tensor) -> CompressedLayer:
    """ThiNet (Luo et al. 2017), the data-driven baseline of TropNNC §7: greedy channel selection
    on calibration data, then least-squares rescaling of the kept channels.

    ``contributions`` is ``(S, n)``: for ``S`` sampled entries of the next layer's
    pre-activation output (an image, an output channel, a location), the part ``x^_c`` that
    neuron / channel ``c`` adds to it, so that the entry is ``sum_c x^_c`` plus the bias.
    ThiNet Alg. 1 removes, one at a time, the channel that minimises ``sum_s (sum_{c in T}
    x^_sc)^2`` over the removed set ``T`` until ``K`` remain; Eq. 6 then rescales the kept
    channels by ``w = argmin ||X^ 1 - X^_kept w||^2``, which multiplies their output weights.
    Kept neurons' input weights are unchanged.
    """
    A64, b64, C64 = _check_layer(A, b, C)
    n = A64.shape[0]
    K = _check_k(K, n)
    X = _float_matrix(contributions, "contributions", 2)
    if X.shape[1] != n or X.shape[0] == 0:
        raise InputError(f"contributions must be (S, n = {n}) with S >= 1 samples, got "
                         f"{tuple(X.shape)}")
    norms = (X * X).sum(0)
    removed = torch.zeros(n, dtype=torch.bool)
    r_dot = torch.zeros(n, dtype=torch.float64)  # <r, x_c> for the running residual r
    r_norm = 0.0
    for _ in range(n - K):
        # ||r + x_c||^2 for every candidate c; removed ones are excluded
        cost = r_norm + 2 * r_dot + norms
        cost[removed] = math.inf
        c = int(torch.argmin(cost))  # lowest index on ties
        removed[c] = True
        r_norm = float(cost[c])
        r_dot += X.T @ X[:, c]
    keep = torch.nonzero(~removed).flatten()
    target = X.sum(1)
    scale = torch.linalg.lstsq(X[:, keep], target[:, None], driver="gelsd").solution[:, 0]
    labels = torch.full((n,), -1, dtype=torch.long)
    labels[keep] = torch.arange(len(keep))
    return _result(A64[keep], b64[keep], C64[:, keep] * scale, labels, like=(A, b, C))


# --------------------------------------------------------------------------- non-uniform (§6, §7.5)


def _nonnegative(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)


def _hierarchical(vectors: Tensor, method: str, t: float, criterion: str) -> Tensor:
    if len(vectors) == 1:
        return torch.zeros(1, dtype=torch.long)
    from scipy.cluster import hierarchy  # lazy: keeps `import tropfx` fast

    try:
        Z = hierarchy.linkage(vectors.numpy(), method=method)
    except ValueError as e:
        raise InputError(f"hierarchical clustering with method={method!r} failed: {e}") from e
    labels = hierarchy.fcluster(Z, t, criterion=criterion)
    return torch.unique(torch.from_numpy(labels).long(), return_inverse=True)[1]


def cluster_by_threshold(vectors: Tensor, threshold: float, variant: str | None = None, *,
                         method: str = "ward") -> Tensor:
    """Labels ``0..K'-1`` of a hierarchical clustering cut at a distance threshold (TropNNC §6,
    "Non-uniform compression"; §7.5). ``K'`` follows from the threshold: non-uniform pruning.

    The cut distance is ``threshold`` (``variant=None``, CUP's global threshold),
    ``threshold * sqrt(dim)`` (``"v1"``: Variant 1, ``dim`` = length of the clustering vectors)
    or ``threshold * mean_i ||vectors_i||`` (``"v2"``: Variant 2). ``method`` is the scipy
    linkage (default Ward). Build the compressed layer from the labels with
    :func:`merge_clusters` (the Alg. 2 rule), with ``vectors`` e.g. ``(a_i, b_i, C_:,i)``.
    """
    x = _float_matrix(vectors, "vectors", 2)
    if x.shape[0] == 0:
        raise InputError("vectors is empty; there is nothing to cluster")
    t = _nonnegative(threshold, "threshold")
    if variant == "v1":
        t *= math.sqrt(x.shape[1])
    elif variant == "v2":
        t *= float(x.norm(dim=1).mean())
    elif variant is not None:
        raise InputError(f"variant must be None, 'v1' or 'v2', got {variant!r}")
    return _hierarchical(x, method, t, "distance")


# --------------------------------------------------------------------------- convolutions (§6)


def flatten_kernels(weight_in: Tensor, bias_in: Tensor | None, weight_out: Tensor,
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, b, C)`` of a conv / linear layer pair for the algorithms above (TropNNC §6).

    ``weight_in`` is ``(n, *in_kernel)`` (Linear ``(n, d)``, ConvNd ``(n, c_in, *k)``), so row
    ``i`` of ``A`` is channel ``i``'s unravelled kernel; ``weight_out`` is ``(m, n, *out_kernel)``
    so column ``i`` of ``C`` (``(m * prod(out_kernel), n)``) unravels every kernel reading channel
    ``i``. ``groups=1`` only. A Linear reading a flattened ``(n, h, w)`` map has ``weight_out`` of
    shape ``(m, n * h * w)``: reshape it to ``(m, n, h * w)`` first.
    """
    if weight_in.dim() < 2 or weight_out.dim() < 2 or weight_out.shape[1] != weight_in.shape[0]:
        raise InputError(f"weight_out {tuple(weight_out.shape)} must read the {weight_in.shape[0]} "
                         f"channels of weight_in {tuple(weight_in.shape)} along dim 1")
    n = weight_in.shape[0]
    b = bias_in if bias_in is not None else weight_in.new_zeros(n)
    return weight_in.reshape(n, -1), b, weight_out.transpose(0, 1).reshape(n, -1).T


def unflatten_kernels(A: Tensor, b: Tensor, C: Tensor, weight_in_shape: tuple[int, ...],
                      weight_out_shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`flatten_kernels` for ``K`` kept channels: ``(weight_in (K, *in_kernel),
    bias (K,), weight_out (m, K, *out_kernel))`` from the original weight shapes."""
    k = A.shape[0]
    out_shape = (weight_out_shape[0], *weight_out_shape[2:])
    return (A.reshape(k, *weight_in_shape[1:]), b,
            C.T.reshape(k, *out_shape).transpose(0, 1).contiguous())


# --------------------------------------------------------------------------- Hausdorff distance (§4)


def _generators(generators: Tensor, name: str) -> np.ndarray:
    g = _float_matrix(generators, name, 2).numpy()
    return g[np.abs(g).sum(1) > 0]  # a zero segment does not change the zonotope


QP_SOLVERS = ("bvls", "osqp")
"""Solvers of the point-to-zonotope QP. ``"bvls"`` (default): scipy's bounded-variable least
squares, an exact active-set method. ``"osqp"``: the OSQP ADMM solver (``pip install osqp``); it
is accurate to ~1e-9 at generic points but only to ~1e-4 where the minimiser is degenerate (a
vertex of one zonotope on a vertex of the other, more generators than dimensions), which makes
``H(Z, Z)`` come out ~1e-4 instead of 0. Both return the distance at a feasible ``lam``, so an
inaccurate solve over-estimates the distance (bounds built from it stay valid)."""


class _ZonotopeDistance:
    """dist(p, Z) for ``Z = {G^T lam : 0 <= lam <= 1}``, one solver set up per zonotope.

    The QP: min_lam 1/2 ||p - G^T lam||^2 = 1/2 lam^T (G G^T) lam - (G p)^T lam + const,
    subject to 0 <= lam <= 1.
    """

    def __init__(self, G: np.ndarray, solver: str):
        if solver not in QP_SOLVERS:
            raise InputError(f"solver must be one of {QP_SOLVERS}, got {solver!r}")
        self.G, self.solver = G, solver
        if len(G) == 0 or solver != "osqp":
            return
        import osqp  # optional: only solver="osqp" needs it
        import scipy.sparse as sparse

        k = len(G)
        self.osqp = osqp.OSQP()
        self.osqp.setup(sparse.csc_matrix(np.triu(G @ G.T)), np.zeros(k),
                        sparse.identity(k, format="csc"), np.zeros(k), np.ones(k),
                        verbose=False, eps_abs=1e-10, eps_rel=1e-10, max_iter=200_000,
                        polishing=False)  # polishing prints to stdout when it is not needed

    def __call__(self, p: np.ndarray) -> float:
        if len(self.G) == 0:
            return float(np.linalg.norm(p))
        if self.solver == "bvls":
            from scipy.optimize import lsq_linear  # lazy: keeps `import tropfx` fast

            lam = lsq_linear(self.G.T, p, bounds=(0.0, 1.0), method="bvls", tol=1e-12).x
        else:
            self.osqp.update(q=-(self.G @ p))
            lam = self.osqp.solve(raise_error=False).x  # inexact (max_iter) is still feasible
            if lam is None or not np.all(np.isfinite(lam)):
                raise RuntimeError("OSQP failed on a point-to-zonotope distance")
        return float(np.linalg.norm(p - self.G.T @ np.clip(lam, 0.0, 1.0)))


def point_to_zonotope_distance(point: Tensor, generators: Tensor, *, solver: str = "bvls") -> float:
    """``dist(p, Z) = min_{0 <= lam <= 1} ||p - G^T lam||`` for the zonotope ``Z`` of the
    segments ``[0, g_i]`` (rows of ``generators``, TropNNC §3.1.3), solved as a box-constrained
    QP (see :data:`QP_SOLVERS`)."""
    p = _float_matrix(point, "point", 1).numpy()
    G = _generators(generators, "generators")
    if generators.shape[1] != len(p):
        raise InputError(f"point has dimension {len(p)} but generators {tuple(generators.shape)} "
                         f"have {generators.shape[1]}")
    return _ZonotopeDistance(G, solver)(p)


def _subset_sums(G: np.ndarray, name: str) -> np.ndarray:
    """All ``2**k`` sums ``sum_{i in I} g_i``: a superset of the zonotope's vertices (§3.1.3)."""
    if len(G) > MAX_HAUSDORFF_GENERATORS:
        raise InputError(f"{name} has {len(G)} non-zero generators; vertex enumeration is limited "
                         f"to MAX_HAUSDORFF_GENERATORS = {MAX_HAUSDORFF_GENERATORS} (2**k points)")
    mask = np.array(list(itertools.product((0.0, 1.0), repeat=len(G))))
    return mask @ G if len(G) else np.zeros((1, G.shape[1]))


def hausdorff_zonotopes(G1: Tensor, G2: Tensor, *, solver: str = "bvls") -> float:
    """Hausdorff distance ``H(Z1, Z2)`` of the zonotopes spanned by the rows of ``G1``, ``G2``.

    TropNNC Definition 7 and Lemma 8: ``max(max_{u in V1} dist(u, Z2), max_{v in V2} dist(Z1,
    v))``. The vertices are among the ``2**k`` subset sums of the generators, and evaluating
    ``dist`` at the non-vertex ones too does not change the maxima (they lie in the zonotope,
    where Lemma 8's maximum is attained at a vertex), so all subset sums are used. At most
    :data:`MAX_HAUSDORFF_GENERATORS` non-zero generators per zonotope.
    """
    g1, g2 = _generators(G1, "G1"), _generators(G2, "G2")
    if G1.shape[1] != G2.shape[1]:
        raise InputError(f"G1 {tuple(G1.shape)} and G2 {tuple(G2.shape)} live in different "
                         "dimensions")
    v1, v2 = _subset_sums(g1, "G1"), _subset_sums(g2, "G2")
    to2, to1 = _ZonotopeDistance(g2, solver), _ZonotopeDistance(g1, solver)
    return max(max(to2(u) for u in v1), max(to1(v) for v in v2))


def theorem11_bound(A: Tensor, b: Tensor, C: Tensor, A_t: Tensor, b_t: Tensor, C_t: Tensor, *,
                    radius: float = 1.0, solver: str = "bvls") -> float:
    """TropNNC Theorem 11: a bound on ``max_{||x||_2 <= r} ||v(x) - v~(x)||_1``.

    Theorem 11 states ``(1/rho) max_{x in B} ||v(x) - v~(x)||_1 <= sum_j (H(P_j, P~_j) +
    H(Q_j, Q~_j))`` with ``B = {x in R^d : ||x||_2 <= r}`` (a Euclidean ball, not a box) and
    ``rho = sqrt(r^2 + 1)``. This returns ``rho * sum_j (H(P_j, P~_j) + H(Q_j, Q~_j))``, the
    right-hand side times ``rho``, for the original ``(A, b, C)`` and compressed ``(A_t, b_t,
    C_t)`` layers (``radius=0``: ``rho = 1``, the right-hand side itself).
    Zonotopes come from :func:`zonotope_generators`; each may have at most
    :data:`MAX_HAUSDORFF_GENERATORS` non-zero generators.
    """
    r = _nonnegative(radius, "radius")
    orig, comp = zonotope_generators(A, b, C), zonotope_generators(A_t, b_t, C_t)
    if len(orig) != len(comp) or A.shape[1] != A_t.shape[1]:
        raise InputError(f"the layers differ in inputs or outputs: C {tuple(C.shape)} vs "
                         f"{tuple(C_t.shape)}, A {tuple(A.shape)} vs {tuple(A_t.shape)}")
    total = sum(hausdorff_zonotopes(P, P_t, solver=solver) + hausdorff_zonotopes(Q, Q_t, solver=solver)
                for (P, Q), (P_t, Q_t) in zip(orig, comp, strict=True))
    return math.sqrt(r * r + 1.0) * total
