"""tropnnc: structured compression of channel groups by clustering their channels (TropNNC).

Fotopoulos, Maragos, Misiakos, "TropNNC: Structured Neural Network Compression Using Tropical
Geometry". The math lives in :mod:`tropfx.tropnnc`, the channel-dependency graph and the surgery
in :mod:`tropfx.channels`; this pass reads match -> plan -> rewrite:

* match: :class:`tropfx.channels.ChannelGraph` finds the groups of coupled channels;
* plan: per group, ``K`` from ``ratio`` / ``threshold``, the clustering of the method's row in
  :data:`METHODS` (``labels``) and the merged channels (``rebuild``);
* rewrite: :func:`tropfx.channels.resize_channels` writes them into every member.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import networkx as nx
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from tropfx import tropnnc as T
from tropfx.channels import ChannelGraph, Group, Part, read_rows, resize_channels
from tropfx.errors import InputError
from tropfx.layers import layer_spec
from tropfx.measure import eval_mode
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.progress import progress

__all__ = ["METHODS", "Method", "Problem", "TropNNC", "tropnnc"]


@dataclass
class Problem:
    """One group as the algorithms see it (TropNNC §3.2, Figure 3): ``v(x) = C relu(A x + b)``.

    Row ``i`` of ``(A, b)`` is everything that computes channel ``i`` -- every producer's kernel
    and bias (BatchNorm folded in, §6), the kernels of depthwise convolutions and the parameters of
    BatchNorms on the path; column ``i`` of ``C`` is every weight that reads it. ``A0, b0`` are the
    same before BatchNorm folding (``batchnorm="prefusion"``, §7.5: clusters come from them, the
    layer from ``A, b``). ``contributions()`` is ThiNet's calibration data (``(S, n)``).
    """

    A: Tensor
    b: Tensor
    C: Tensor
    A0: Tensor
    b0: Tensor
    seed: int = 0
    restarts: int = 1
    num_iter: int = 10
    contributions: Callable[[], Tensor] | None = None
    memo: dict = field(default_factory=dict)

    def subset(self, idx: Tensor) -> Problem:
        """The channels ``idx`` only (one block of a grouped convolution). Outputs that read
        none of them (the other blocks of a grouped consumer) are left out: they add only zeros
        to the clustering vectors."""
        contrib = self.contributions
        C = self.C[:, idx]
        return Problem(self.A[idx], self.b[idx], C[C.abs().sum(1) > 0], self.A0[idx], self.b0[idx],
                       self.seed, self.restarts, self.num_iter,
                       None if contrib is None else (lambda: contrib()[:, idx]))

    @property
    def vectors(self) -> Tensor:
        """The clustering vectors ``(a_i, b_i, C_:,i)`` of TropNNC Alg. 2, step 1."""
        return torch.cat([self.A0, self.b0[:, None], self.C.T], 1)

    def vectors_as(self, dtype: torch.dtype) -> Tensor:
        """:attr:`vectors` in ``dtype``, converted while they are copied (float32: 0.25 s instead
        of 0.66 s for a float64 copy and its conversion on VGG-16's largest group)."""
        a = self.A0.shape[1]
        out = torch.empty(self.A0.shape[0], a + 1 + self.C.shape[0], dtype=dtype)
        out[:, :a].copy_(self.A0)
        out[:, a].copy_(self.b0)
        out[:, a + 1:].copy_(self.C.T)
        return out


def _rule(rule: str) -> Callable[[Problem, Tensor], T.CompressedLayer]:
    return lambda p, labels: T.rebuild(p.A, p.b, p.C, labels, rule, num_iter=p.num_iter)


def _thinet(p: Problem, K: int) -> T.CompressedLayer:
    if "thinet" not in p.memo:
        p.memo["thinet"] = T.thinet(p.A, p.b, p.C, K, p.contributions())
    return p.memo["thinet"]


@dataclass(frozen=True)
class Method:
    """A compression method: ``labels(problem, K)`` clusters the channels (``-1``: dropped) and
    ``rebuild(problem, labels)`` turns clusters into the compressed layer (a
    :func:`tropfx.tropnnc.rebuild` rule). ``paper_only``: its rule assumes the paper's
    ``Linear / Conv -> ReLU -> Linear / Conv`` (outside it, Alg. 2's mean / sum rule is used,
    or the group is skipped when ``single_output``)."""

    labels: Callable[[Problem, int], Tensor]
    rebuild: Callable[[Problem, Tensor], T.CompressedLayer]
    single_output: bool = False
    thresholdable: bool = False
    paper_only: bool = False
    data: bool = False


def _multi(p: Problem, K: int) -> Tensor:
    # Alg. 2, step 1 (compress_multi's clustering, without building its layer twice); the torch
    # K-means clusters float32 rows, scikit-learn's float64 ones
    vectors = p.vectors if T.KMEANS_BACKEND == "sklearn" else p.vectors_as(torch.float32)
    return T.kmeans_labels(vectors, K, p.seed, n_init=p.restarts)


METHODS: dict[str, Method] = {
    # TropNNC Alg. 2: K-means on (a_i, b_i, C_:,i); mean in, sum out
    "multi": Method(_multi, _rule("mean_sum"), thresholdable=True),
    # TropNNC Alg. 3: Alg. 2's clusters, then alternating minimisation (§5.2.2)
    "iterative": Method(_multi, _rule("iterative"), thresholdable=True, paper_only=True),
    # TropNNC Alg. 1 (one output): zonotope K-means, SUM of generators
    "single": Method(lambda p, K: T.compress_single(p.A0, p.b0, p.C, K, p.seed).labels,
                     _rule("sum_generators"), single_output=True, paper_only=True),
    "zonotope_kmeans": Method(lambda p, K: T.zonotope_kmeans(p.A0, p.b0, p.C, K, p.seed).labels,
                              _rule("mean_generators"), single_output=True, paper_only=True),
    "neural_path_kmeans": Method(_multi, _rule("mean_mean")),
    "l1": Method(lambda p, K: T.l1_structured(p.A0, p.b0, p.C, K).labels, _rule("keep")),
    "random": Method(lambda p, K: T.random_structured(p.A0, p.b0, p.C, K, p.seed).labels,
                     _rule("keep")),
    "cup": Method(lambda p, K: T.cup(p.A0, p.b0, p.C, K=K).labels, _rule("keep"),
                  thresholdable=True),
    "thinet": Method(lambda p, K: _thinet(p, K).labels,
                     lambda p, labels: _thinet(p, int(labels.max()) + 1), data=True),
}

_BOUND_MAX_NEURONS = 10  # vertex enumeration: 2**n subset sums per zonotope, per output
_BOUND_MAX_OUTPUTS = 64
_PARALLEL_PARAMS = 1 << 24
"""Groups with fewer parameters are compressed on one thread: their many small tensor ops gain
nothing from a second thread, and on a busy machine every parallel region waits for a thread
that is not running (resnet50 on 2 threads, load ~6: 36 s against 7 s on one; issue 19, item 4)."""


class _Decline(Exception):
    """Why a group is not compressed; becomes a Skip row in the report."""


@dataclass(frozen=True, eq=False)
class TropNNC(GraphPass):
    """Structured compression of channel groups by clustering channels (TropNNC).

    Pattern (TropNNC §3.2, §6): a *group* of coupled channels (:class:`tropfx.channels.Group`):
    the output channels of one or more ``Linear`` / ``ConvNd`` / ``ConvTransposeNd`` producers,
    joined by residual adds, passing BatchNorm, activations, pooling, dropout, depthwise
    convolutions, concatenations and flatten, up to every layer reading them. The group's ``n``
    channels are clustered into ``K = round(ratio * n)`` (at least ``min_channels``; or as many as
    ``threshold`` gives) and every member is rewritten into a physically smaller layer: producers
    and depthwise / BatchNorm layers keep the MEAN of a cluster's rows, consumers the SUM of its
    columns (Alg. 2, step 2). Grouped convolutions keep equal blocks (the same ``K`` per block;
    merges stay inside a block). A group that reaches the model output, an unknown op, a shared
    module or a reshape of the channel dim is skipped with the reason in the report.

    The paper covers one producer followed by ReLU, pooling, dropout, flatten and concatenation
    (a ReLU on every path). Groups past it (residual adds, depthwise convolutions, other
    activations, BatchNorm after the ReLU) are compressed too -- this extension is ours, not the
    paper's -- and their report row says why they are outside its guarantee (no Theorem 11
    bound); ``strict=True`` skips them instead.

    Methods (:data:`METHODS`): ``"multi"`` (Alg. 2, default), ``"iterative"`` (Alg. 3,
    ``num_iter``; Alg. 2's rule outside the paper's setting), ``"single"`` (Alg. 1; one output),
    and the baselines ``"zonotope_kmeans"``, ``"neural_path_kmeans"``, ``"l1"``, ``"random"``,
    ``"cup"`` and ``"thinet"`` (data-driven: needs ``calibration=(x,)``). Non-uniform (§6): give
    ``threshold`` instead of ``ratio`` and ``nonuniform="v1"`` (threshold x sqrt(dim)) / ``"v2"``
    (x mean norm) / ``None`` (CUP's raw global threshold), with ``"multi"``, ``"iterative"`` or
    ``"cup"``.

    BatchNorm right after a producer (its only reader) is folded into it (§6). With
    ``batchnorm="prefusion"`` (default; §7.5: "consistently led to significantly better
    results") the clusters are found on the pre-fusion weights and the layer is built from the
    fused ones; ``"fuse"`` clusters the fused weights; ``"keep"`` folds nothing: each BatchNorm
    stays, its parameters and running statistics merged (mean of a cluster) like every other
    BatchNorm on a group's path (ours; fine-tuning afterwards keeps BatchNorm).

    ``include`` / ``exclude`` are globs on the producers' module names (``"features.*"``; a
    group is selected when one of its producers matches); ``ratio`` may be a mapping
    ``{glob: ratio}`` (first match wins; unmatched groups are kept). ``ratio=1`` is an exact
    identity. Deterministic for a ``seed``; ``restarts`` K-means runs keep the clustering of
    least inertia. ``info["layers"]`` has one row per group (named after its first producer):
    ``n -> K``, producers, consumers, parameters and MACs before / after, ``paper`` (whether the
    paper's conditions hold, else ``outside``: why not) and the Theorem 11 bound on
    ``max_{||x|| <= bound_radius} ||v(x) - v~(x)||_1`` for small ``Linear -> ReLU -> Linear``
    groups (``bound=None``: when ``n <= 10``; ``True``: always try; ``False``: never).
    """

    ratio: float | Mapping[str, float] | None = None
    method: str = "multi"
    nonuniform: str | None = None
    threshold: float | None = None
    include: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    seed: int = 0
    batchnorm: str = "prefusion"
    num_iter: int = 10
    restarts: int = 1
    calibration: tuple | None = None
    calibration_samples: int = 4096
    bound: bool | None = None
    bound_radius: float = 1.0
    progress: bool | None = None
    min_channels: int = 1
    strict: bool = False
    name: ClassVar[str] = "tropnnc"

    def __post_init__(self) -> None:
        where = "tropnnc"
        if self.method not in METHODS:
            raise InputError(f"{where}: method={self.method!r}; use one of {sorted(METHODS)}")
        spec = METHODS[self.method]
        if self.threshold is None:
            if self.ratio is None:
                raise InputError(f"{where}: give ratio= (fraction of neurons kept, in (0, 1]) or "
                                 "threshold= (non-uniform)")
            for glob, r in self._ratios():
                if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
                    at = f" for {glob!r}" if glob != "*" else ""
                    raise InputError(f"{where}: ratio={r!r}{at} must be in (0, 1] (the fraction "
                                     "of neurons / channels kept)")
            if self.nonuniform is not None:
                raise InputError(f"{where}: nonuniform={self.nonuniform!r} needs threshold=")
        else:
            if self.ratio is not None:
                raise InputError(f"{where}: give ratio= or threshold=, not both")
            if not spec.thresholdable:
                raise InputError(f"{where}: threshold= (non-uniform) works with method='multi', "
                                 f"'iterative' or 'cup', not {self.method!r}")
            if (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
                    or not math.isfinite(self.threshold) or self.threshold < 0):
                raise InputError(f"{where}: threshold={self.threshold!r} must be a number >= 0")
            if self.nonuniform not in (None, "v1", "v2"):
                raise InputError(f"{where}: nonuniform={self.nonuniform!r}; use None, 'v1' or 'v2'")
        if self.batchnorm not in ("prefusion", "fuse", "keep"):
            raise InputError(f"{where}: batchnorm={self.batchnorm!r}; use 'prefusion' or 'fuse' "
                             "(folded), or 'keep'")
        if spec.data and (not isinstance(self.calibration, tuple) or not self.calibration):
            raise InputError(f"{where}: method={self.method!r} is data-driven; pass "
                             "calibration=(x,) with a small batch of real inputs")
        for key in ("num_iter", "restarts", "min_channels"):
            value, low = getattr(self, key), 0 if key == "num_iter" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{where}: {key}={value!r} must be an int >= {low}")

    def _ratios(self) -> list[tuple[str, float]]:
        if isinstance(self.ratio, Mapping):
            return list(self.ratio.items())
        return [("*", self.ratio)]

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.threshold is None and all(r == 1 for _, r in self._ratios())

    # ------------------------------------------------------------------ match

    def _selected(self, names: list[str]) -> bool:
        if self.include is not None and not any(fnmatch.fnmatchcase(t, p) for t in names
                                                for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(t, p) for t in names for p in self.exclude)

    def _ratio_for(self, names: list[str]) -> float | None:
        for glob, r in self._ratios():
            if any(fnmatch.fnmatchcase(t, glob) for t in names):
                return r
        return None

    @T.shared_projections()  # the groups' K-means seeding projections: one draw per model
    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        plans = []
        dataflow = nx.DiGraph((a, u) for a in gm.graph.nodes for u in a.users)
        for group in ChannelGraph(gm).groups:
            names = group.producers
            ratio = None if self.threshold is not None else self._ratio_for(names)
            if not self._selected(names) or (self.threshold is None and ratio is None):
                continue
            if group.frozen is not None:
                if _hidden(gm, group, dataflow):
                    stats.skip(group.name, group.frozen)
                continue
            if self.strict and self._outside(group) is not None:
                stats.skip(group.name, f"outside the paper's conditions (strict=True): "
                                       f"{self._outside(group)}")
                continue
            plans.append((group, ratio))
        if not plans:
            if not stats.skipped:
                stats.skip("<model>", "no group of channels between two Linear / Conv layers "
                                      f"matches include={self.include} exclude={list(self.exclude)}")
            return PassResult(gm, False, stats)
        rows, changed = [], False
        quiet = None if self.progress is None else not self.progress
        if quiet is None and len(plans) < 8:
            quiet = True  # a bar for a handful of groups is noise
        for group, ratio in progress(plans, desc="tropnnc", unit="group", quiet=quiet):
            try:
                with _threads_for(gm, group):
                    row = self._compress(gm, group, ratio)
            except _Decline as reason:
                stats.skip(group.name, str(reason))
                continue
            rows.append(row)
            if row["K"] != row["n"] or row.pop("rewritten", False):
                changed = True
                outside = f"; outside the paper's guarantee: {row['outside']}" \
                    if row["outside"] else ""
                stats.rewritten.append(f"{group.name}: {row['n']} -> {row['K']} "
                                       f"(into {', '.join(row['consumers'])}){outside}")
            row.pop("rewritten", None)
        if changed:
            gm.graph.lint()
            gm.recompile()
        stats.info["layers"] = rows
        stats.info["method"] = self.method
        return PassResult(gm, changed, stats)

    # ------------------------------------------------------------------ plan

    def _problem(self, gm: fx.GraphModule, group: Group) -> tuple[Problem, list, list]:
        """The group's ``Problem``, and its input-side / consumer parts with their row widths."""
        folded = set() if self.batchnorm == "keep" else \
            {p.member.fold for p in group.role("producer")} - {None}
        ins = [p for p in group.parts if p.member.role in ("producer", "depthwise", "batchnorm")
               and p.member.node not in folded]
        outs = group.role("consumer")
        build = [read_rows(gm, p, fold=bool(folded)) for p in ins]
        clus = build if self.batchnorm == "fuse" or not folded else \
            [read_rows(gm, p, fold=False) for p in ins]
        for rows in (*build, *(clus if clus is not build else ())):
            if not T.all_finite(rows):
                raise _Decline(f"{self.method}: A contains NaN or infinite values; compress only "
                               "finite weights")
        cols = [read_rows(gm, p) for p in outs]
        C = (torch.cat(cols, 1) if len(cols) > 1 else cols[0]).T if outs \
            else build[0].new_zeros(0, group.size)
        if not T.all_finite(C):
            raise _Decline(f"{self.method}: C contains NaN or infinite values; compress only "
                           "finite weights")

        def split(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
            # the first producer's bias is b; every other column is part of A
            A = torch.cat([rows[0][:, :-1], *rows[1:]], 1) if len(rows) > 1 else rows[0][:, :-1]
            return A, rows[0][:, -1]

        (A, b), (A0, b0) = split(build), split(clus)
        contributions = None
        if METHODS[self.method].data:
            def contributions() -> Tensor:
                return _contributions(gm, group, outs, self.calibration,
                                      self.calibration_samples, self.seed)
        problem = Problem(A, b, C, A0, b0, self.seed, self.restarts, self.num_iter, contributions)
        return problem, [(p, r.shape[1]) for p, r in zip(ins, build, strict=True)], \
            [(p, c.shape[1]) for p, c in zip(outs, cols, strict=True)]

    def _compress(self, gm: fx.GraphModule, group: Group, ratio: float | None) -> dict[str, Any]:
        n = group.size
        targets = list(dict.fromkeys(p.member.target for p in group.parts
                                     if p.member.role != "view"))
        params = _params(gm, targets)
        row = {"layer": group.name, "producers": group.producers, "consumers": group.consumers,
               "n": n, "K": n, "params": [params, params], "macs": [_macs(group)] * 2,
               "bound": None, "paper": self._outside(group) is None,
               "outside": self._outside(group)}
        if ratio == 1:
            return row  # the identity: nothing is touched
        method = METHODS[self.method]
        if method.single_output and row["outside"] is not None:
            raise _Decline(f"{self.method}: Alg. 1 needs the paper's Linear / Conv -> ReLU -> one "
                           f"output; this group is outside it ({row['outside']})")
        problem, ins, outs = self._problem(gm, group)
        if method.single_output and problem.C.shape[0] != 1:
            raise _Decline(f"Alg. 1 ({self.method!r}) compresses a layer with a single output; "
                           f"{group.name}'s consumers have {problem.C.shape[0]} outputs -- use "
                           "method='multi'")
        if method.data and (group.cells is not None or group.layout is not None):
            raise _Decline(f"{self.method}: grouped convolutions or a channel shuffle's cuts read "
                           "the channels; ThiNet's selection does not keep equal blocks or paths")
        try:
            labels = self._labels(problem, group, ratio)
            if group.layout is not None and group.layout.note:
                row["outside"] = f"{row['outside']}; {group.layout.note}"
            rebuild = method.rebuild
            if method.paper_only and row["outside"] is not None:
                rebuild = METHODS["multi"].rebuild  # Alg. 3's rescaling assumes ReLU(A x + b)
                row["rule"] = "mean_sum"
            result = rebuild(problem, labels)
        except InputError as e:
            raise _Decline(f"{self.method}: {e}") from e
        K = result.A.shape[0]
        if K == n:
            return row  # every channel is its own cluster: nothing to merge
        rows = self._rows(group, ins, outs, result)
        row["bound"] = self._bound(group, problem, result)
        resize_channels(gm, group, rows, merge=_mean_map(result.labels, K))
        macs = row["macs"][0]
        row.update(K=K, params=[params, _params(gm, targets)],
                   macs=[macs, None if macs is None else macs * K // n], rewritten=True)
        return row

    def _outside(self, group: Group) -> str | None:
        """Why the group is outside the paper's conditions (``None``: inside). A BatchNorm kept
        (``batchnorm="keep"``) puts it outside: the paper folds it (§6)."""
        if group.theory is None and self.batchnorm == "keep" and \
                any(p.member.fold is not None for p in group.role("producer")):
            return "batchnorm='keep': its BatchNorm is merged (mean of raw parameters), not folded"
        return group.theory

    def _k(self, n: int, ratio: float) -> int:
        return min(n, max(self.min_channels, math.floor(ratio * n + 0.5)))

    def _labels(self, problem: Problem, group: Group, ratio: float | None) -> Tensor:
        """Clusters of the group's channels; with grouped convolutions, the same number in every
        block (a block short of clusters -- duplicate channels -- splits its largest ones)."""
        if group.layout is not None:  # channels interleaved by a shuffle: per path (channels.py)
            if ratio is None:
                raise InputError("threshold= does not apply to channels interleaved by a channel "
                                 "shuffle (ShuffleNet v2); give ratio=")
            return group.layout.labels(
                lambda idx, k: _split_to(self._cluster(problem.subset(idx), k), k),
                lambda n: self._k(n, ratio))
        if group.cells is None:
            return self._cluster(problem, self._k(group.size, ratio) if ratio else None)
        cells = group.cells
        count = int(cells.max()) + 1
        per = group.size // count
        k = None if ratio is None else max(math.ceil(self.min_channels / count),
                                          self._k(per, ratio))
        found = []
        for c in range(count):
            idx = torch.nonzero(cells == c).flatten()
            found.append((idx, self._cluster(problem.subset(idx), k)))
        k = max(int(lab.max()) + 1 for _, lab in found)
        labels = torch.full((group.size,), -1, dtype=torch.long)
        for c, (idx, lab) in enumerate(found):
            labels[idx] = torch.where(lab >= 0, _split_to(lab, k) + c * k, -1)
        return labels

    def _cluster(self, problem: Problem, K: int | None) -> Tensor:
        if K is not None:
            return METHODS[self.method].labels(problem, K)
        vectors = problem.vectors
        labels = T.cluster_by_threshold(vectors, self.threshold, self.nonuniform)
        return _cup_labels(vectors, labels) if self.method == "cup" else labels

    def _rows(self, group: Group, ins: list[tuple[Part, int]], outs: list[tuple[Part, int]],
              result: T.CompressedLayer) -> list[Tensor | None]:
        """Split the compressed ``(A~, b~, C~)`` back into every member's new rows."""
        new: dict[int, Tensor] = {}
        A, b, C = result.A.double(), result.b.double(), result.C.double()
        start = ins[0][1] - 1
        new[id(ins[0][0])] = torch.cat([A[:, :start], b[:, None]], 1)
        for p, w in ins[1:]:
            new[id(p)] = A[:, start:start + w]
            start += w
        start = 0
        for p, w in outs:
            new[id(p)] = C[start:start + w].T
            start += w
        return [new.get(id(p)) for p in group.parts]

    def _bound(self, group: Group, problem: Problem, result: T.CompressedLayer) -> float | None:
        outs = group.role("consumer")
        linear = (group.theory is None and not group.role("producer")[0].member.fold
                  and all(p.member.spatial == 1 and p.member.node.op == "call_module"
                          and isinstance(p.member.node.graph.owning_module.get_submodule(
                              p.member.target), nn.Linear) for p in outs)
                  and all(k in ("relu", "passthrough", "producer") for k in group.kinds))
        small = group.size <= _BOUND_MAX_NEURONS and problem.C.shape[0] <= _BOUND_MAX_OUTPUTS
        if self.bound is False or not linear or (self.bound is None and not small):
            return None
        try:
            return T.theorem11_bound(problem.A, problem.b, problem.C, result.A, result.b,
                                     result.C, radius=self.bound_radius)
        except InputError:  # too many generators for vertex enumeration
            return None


def tropnnc(ratio: float | Mapping[str, float] | None = None, method: str = "multi", *,
            nonuniform: str | None = None, threshold: float | None = None,
            include: Sequence[str] | None = None, exclude: Sequence[str] = (), seed: int = 0,
            batchnorm: str = "prefusion", num_iter: int = 10, restarts: int = 1,
            calibration: Any = None, calibration_samples: int = 4096, bound: bool | None = None,
            bound_radius: float = 1.0, progress: bool | None = None, min_channels: int = 1,
            strict: bool = False) -> TropNNC:
    """The ``tropnnc`` pass (see :class:`TropNNC`).

    >>> cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, include=["fc_layers.0"])], example_inputs=(x,))
    """
    if calibration is not None and not isinstance(calibration, tuple):
        calibration = (calibration,)
    if isinstance(include, str) or isinstance(exclude, str):
        raise InputError("tropnnc: include / exclude are lists of globs, e.g. include=['fc.*']")
    return TropNNC(ratio, method, nonuniform, threshold,
                   tuple(include) if include is not None else None, tuple(exclude), seed,
                   batchnorm, num_iter, restarts, calibration, calibration_samples, bound,
                   bound_radius, progress, min_channels, strict)


# ---------------------------------------------------------------------- helpers


def _hidden(gm: fx.GraphModule, group: Group, dataflow: nx.DiGraph) -> bool:
    """Whether a declined group is worth a report line: a later Linear / Conv reads what it
    computes (a model's last layers are not hidden layers and are never compressed)."""
    if group.role("consumer"):
        return True
    later = set().union(*(nx.descendants(dataflow, p.member.node) for p in group.role("producer")))
    return any(layer_spec(gm.get_submodule(d.target)) is not None
               and layer_spec(gm.get_submodule(d.target)).kind == "mixing"
               for d in later if d.op == "call_module")


def _split_to(labels: Tensor, k: int) -> Tensor:
    """Labels ``0..k-1``: split the largest clusters while fewer than ``k`` exist (splitting a
    cluster of identical channels is lossless; K-means only finds fewer for duplicates)."""
    labels = labels.clone()
    while int(labels.max()) + 1 < k:
        counts = torch.bincount(labels[labels >= 0])
        big = int(counts.argmax())
        if counts[big] < 2:
            break
        labels[torch.nonzero(labels == big).flatten()[-1]] = int(labels.max()) + 1
    return labels


def _mean_map(labels: Tensor, K: int) -> Tensor:
    """``(K, n)``: row ``k`` averages the channels of cluster ``k`` (Alg. 2, step 2 (i))."""
    labels = labels.cpu()
    keep = labels >= 0
    mean = torch.zeros(K, len(labels), dtype=torch.float64)
    mean[labels[keep], torch.nonzero(keep).flatten()] = 1.0
    return mean / mean.sum(1, keepdim=True).clamp_min(1.0)


def _params(gm: fx.GraphModule, targets: list[str]) -> int:
    mods = [gm.get_submodule(t) for t in targets if _has(gm, t)]
    return sum(p.numel() for m in mods for p in m.parameters(recurse=False))


def _has(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_submodule(target)
    except AttributeError:
        return False
    return True


def _macs(group: Group) -> int | None:
    nodes = [p.member.node for p in group.parts if p.member.role in ("producer", "consumer")]
    costs = [n.meta.get("tropfx", {}).get("cost", {}).get("macs") for n in nodes]
    return None if any(c is None for c in costs) else sum(costs)


@contextlib.contextmanager
def _threads_for(gm: fx.GraphModule, group: Group) -> Iterator[None]:
    """One torch thread while compressing a group smaller than :data:`_PARALLEL_PARAMS`."""
    before = torch.get_num_threads()
    targets = list(dict.fromkeys(p.member.target for p in group.parts if p.member.role != "view"))
    if before > 1 and _params(gm, targets) < _PARALLEL_PARAMS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cup_labels(vectors: Tensor, labels: Tensor) -> Tensor:
    """CUP's representative: keep the max-norm member of each cluster, drop the others."""
    norms = vectors.norm(dim=1)
    out = torch.full_like(labels, -1)
    for k in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == k).flatten()
        out[members[norms[members].argmax()]] = k
    return out


# ---------------------------------------------------------------------- ThiNet calibration


class _Capture(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node]):
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.wanted:
            self.values[n] = out.detach()
        return out


def _contributions(gm: fx.GraphModule, group: Group, outs: list[Part], calibration: tuple,
                   samples: int, seed: int) -> Tensor:
    """ThiNet's ``x^`` (Luo et al. 2017, Eq. 2): for sampled entries of each consumer's output,
    the part each of the group's channels adds, from the current model on the calibration batch."""
    wanted = {p.member.node.args[0] for p in outs}
    capture = _Capture(gm, wanted)
    with eval_mode(gm):
        try:
            capture.run(*calibration)
        except Exception as e:
            raise InputError(f"the calibration inputs do not fit the model: {e}") from e
    gen = torch.Generator().manual_seed(seed)
    n = group.size
    parts = []
    for part in outs:
        node, s, o = part.member.node, part.member.spatial, part.offset
        module = gm.get_submodule(part.member.target)
        x, w = capture.values[node.args[0]].double(), module.weight.detach().double()
        m = w.shape[0]
        if isinstance(module, nn.Linear):
            lead = x.reshape(-1, x.shape[-1])
            U = lead[:, o * s:(o + n) * s].reshape(-1, n, s, 1)
            W = w[:, o * s:(o + n) * s].reshape(m, n, s)
        else:
            if w.dim() == 5 or isinstance(module.padding, str) or module.groups != 1 \
                    or getattr(module, "transposed", False):
                raise InputError(f"thinet supports Conv1d / Conv2d consumers with groups=1 and "
                                 f"numeric padding; {part.member.target} is not one")
            x, w = x[:, o:o + n], w[:, o:o + n]
            if w.dim() == 3:  # Conv1d as a Conv2d of height 1
                x, w = x[:, :, None], w[:, :, None]
                k = dict(kernel_size=(1, w.shape[-1]), dilation=(1, module.dilation[0]),
                         padding=(0, module.padding[0]), stride=(1, module.stride[0]))
            else:
                k = dict(kernel_size=w.shape[-2:], dilation=module.dilation,
                         padding=module.padding, stride=module.stride)
            U = F.unfold(x, **k)
            U = U.reshape(x.shape[0], n, -1, U.shape[-1])
            W = w.reshape(m, n, -1)
        b = torch.randint(U.shape[0], (samples,), generator=gen)
        j = torch.randint(m, (samples,), generator=gen)
        loc = torch.randint(U.shape[3], (samples,), generator=gen)
        parts.append(torch.einsum("snk,snk->sn", W[j], U[b, :, :, loc]))
    return torch.cat(parts)
