"""tropnnc: structured compression of ReLU layers by clustering their neurons / channels (TropNNC).

Fotopoulos, Maragos, Misiakos, "TropNNC: Structured Neural Network Compression Using Tropical
Geometry". The math lives in :mod:`tropfx.tropnnc`; this pass finds the layers and does the surgery.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import networkx as nx
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from tropfx import tropnnc as T
from tropfx.errors import InputError
from tropfx.folding import batchnorm_affine, fold_affine
from tropfx.measure import eval_mode
from tropfx.ops import match_op
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.progress import progress
from tropfx.rewrite import tensor_shape

__all__ = ["CHANNELWISE", "LAYERS", "METHODS", "TropNNC", "tropnnc"]

# Layers whose output neurons / channels can be compressed, and that can read compressed ones.
# Only groups=1 convolutions: a grouped conv ties its channels to groups of its input.
LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Modules and functions that act on every channel separately and commute with merging channels
# the way ReLU and pooling do (TropNNC §6: "ReLU and maxout or average pooling layers in between").
# Users add their own; ReLU, max / avg pooling, BatchNorm and flatten are recognized in every
# spelling through tropfx.match_op.
CHANNELWISE: set[Any] = {
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
}
_SPATIAL_ONLY = {nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                 F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}


@dataclass(frozen=True)
class Method:
    """A compression method: how it picks clusters, and the rule that turns clusters into a layer
    (:func:`tropfx.tropnnc.rebuild`), used when clusters come from pre-fusion weights."""

    rule: str
    single_output: bool = False
    thresholdable: bool = False


METHODS: dict[str, Method] = {
    "multi": Method("mean_sum", thresholdable=True),             # TropNNC Alg. 2
    "iterative": Method("iterative", thresholdable=True),        # TropNNC Alg. 3
    "single": Method("sum_generators", single_output=True),      # TropNNC Alg. 1
    "zonotope_kmeans": Method("mean_generators", single_output=True),
    "neural_path_kmeans": Method("mean_mean"),
    "l1": Method("keep"),
    "random": Method("keep"),
    "cup": Method("keep", thresholdable=True),
    "thinet": Method("keep"),
}

_BOUND_MAX_NEURONS = 10  # vertex enumeration: 2**n subset sums per zonotope, per output
_BOUND_MAX_OUTPUTS = 64


@dataclass
class _Consumer:
    node: fx.Node
    target: str
    layout: str  # "channels" (dim 1), "last" (Linear over the last dim), "flat" (after flatten)
    spatial: int = 1  # positions per channel in a flattened layout


@dataclass
class _Group:
    """One compressible hidden layer: the producer whose outputs are clustered, the channel-wise
    nodes in between (the region), and every layer that reads the channels."""

    producer: fx.Node
    target: str
    consumers: list[_Consumer]
    bn: fx.Node | None = None
    pooled: bool = False  # a pooling / reshape between the layers (Theorem 11 does not apply)
    views: list[fx.Node] = field(default_factory=list)  # view/reshape used as flatten


class _Decline(Exception):
    """Why a group cannot be compressed; becomes a Skip row in the report."""


@dataclass(frozen=True, eq=False)
class TropNNC(GraphPass):
    """Structured compression of hidden ReLU layers by clustering neurons / channels (TropNNC).

    Pattern (TropNNC §3.2, §6): a producer ``Linear`` / ``ConvNd`` (``groups=1``), optionally an
    eval-mode ``BatchNorm`` right after it, a ``ReLU``, channel-wise nodes (max / avg / adaptive
    pooling, dropout, identity; flatten or ``view(N, -1)`` before a ``Linear``) and one or more
    consumer ``Linear`` / ``ConvNd`` layers reading the channels. The producer's ``n`` outputs are
    clustered into ``K = round(ratio * n)`` (or as many as ``threshold`` gives) and both sides are
    rewritten into physically smaller layers: producer ``(K, ...)``, consumers reading ``K``
    channels. Every consumer of a producer is compressed together (one group). A producer whose
    channels reach anything else -- a residual add, a concat, a model output, a non-channel-wise
    op, a shared module -- is skipped with the reason in the report.

    Methods (:data:`METHODS`): ``"multi"`` (Alg. 2, default), ``"iterative"`` (Alg. 3,
    ``num_iter``), ``"single"`` (Alg. 1; one output), and the baselines ``"zonotope_kmeans"``,
    ``"neural_path_kmeans"``, ``"l1"``, ``"random"``, ``"cup"`` and ``"thinet"`` (data-driven:
    needs ``calibration=(x,)``). Non-uniform (§6): give ``threshold`` instead of ``ratio`` and
    ``nonuniform="v1"`` (threshold x sqrt(dim)) / ``"v2"`` (x mean norm) / ``None`` (CUP's raw
    global threshold), with ``"multi"``, ``"iterative"`` or ``"cup"``.

    BatchNorm between producer and ReLU is folded into the producer (§6). With
    ``batchnorm="prefusion"`` (default; §7.5: "consistently led to significantly better
    results") the clusters are found on the pre-fusion weights and the layer is built from the
    fused ones; ``"fuse"`` clusters the fused weights.

    ``include`` / ``exclude`` are globs on the producer's module name (``"features.*"``);
    ``ratio`` may be a mapping ``{glob: ratio}`` (first match wins; unmatched layers are kept).
    ``ratio=1`` is an exact identity. Deterministic for a ``seed``; ``restarts`` K-means runs
    (seeds ``seed, seed + 1, ...``) keep the clustering of least inertia. ``info["layers"]`` has one
    row per layer: ``n -> K``, parameters and MACs before / after (MACs need example inputs),
    and the Theorem 11 bound on ``max_{||x|| <= bound_radius} ||v(x) - v~(x)||_1`` for small
    ``Linear -> ReLU -> Linear`` layers (``bound=None``: when ``n <= 10``; ``True``: always try;
    ``False``: never). A progress bar shows with 8 layers or more on a terminal (``progress=True``
    / ``False`` forces it on / off; ``TROPFX_QUIET=1`` silences it).
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
        if self.batchnorm not in ("prefusion", "fuse"):
            raise InputError(f"{where}: batchnorm={self.batchnorm!r}; use 'prefusion' or 'fuse'")
        if self.method == "thinet":
            if not isinstance(self.calibration, tuple) or not self.calibration:
                raise InputError(f"{where}: method='thinet' is data-driven; pass calibration=(x,) "
                                 "with a small batch of real inputs")
        if isinstance(self.num_iter, bool) or not isinstance(self.num_iter, int) or self.num_iter < 0:
            raise InputError(f"{where}: num_iter={self.num_iter!r} must be an int >= 0")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise InputError(f"{where}: restarts={self.restarts!r} must be an int >= 1")

    def _ratios(self) -> list[tuple[str, float]]:
        if isinstance(self.ratio, Mapping):
            return list(self.ratio.items())
        return [("*", self.ratio)]

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.threshold is None and all(r == 1 for _, r in self._ratios())

    # ------------------------------------------------------------------ matching

    def _selected(self, target: str) -> bool:
        if self.include is not None and not any(fnmatch.fnmatchcase(target, p)
                                                for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(target, p) for p in self.exclude)

    def _ratio_for(self, target: str) -> float | None:
        for glob, r in self._ratios():
            if fnmatch.fnmatchcase(target, glob):
                return r
        return None

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats()
        groups = []
        modules = dict(gm.named_modules())
        calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        attrs = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
        dataflow = nx.DiGraph((a, u) for a in gm.graph.nodes for u in a.users)
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(modules[node.target], LAYERS):
                continue
            if not self._selected(node.target) or (self.threshold is None
                                                   and self._ratio_for(node.target) is None):
                continue
            try:
                groups.append(_find_group(gm, node, modules, calls, attrs))
            except _Decline as reason:
                if _is_hidden(node, modules, dataflow):
                    stats.skip(node.target, str(reason))
        if not groups:
            if not stats.skipped:
                stats.skip("<model>", "no Linear / Conv -> ReLU -> Linear / Conv layer matches "
                                      f"include={self.include} exclude={list(self.exclude)}")
            return PassResult(gm, False, stats)
        rows, changed = [], False
        quiet = None if self.progress is None else not self.progress
        if quiet is None and len(groups) < 8:
            quiet = True  # a bar for a handful of layers is noise
        for group in progress(groups, desc="tropnnc", unit="layer", quiet=quiet):
            try:
                row = self._compress(gm, group, modules)
            except _Decline as reason:
                stats.skip(group.target, str(reason))
                continue
            rows.append(row)
            if row["K"] != row["n"] or row.get("rewritten"):
                changed = True
                stats.rewritten.append(f"{group.target}: {row['n']} -> {row['K']} "
                                       f"(into {', '.join(row['consumers'])})")
        stats.info["layers"] = [{k: v for k, v in r.items() if k != "rewritten"} for r in rows]
        stats.info["method"] = self.method
        return PassResult(gm, changed, stats)

    # ------------------------------------------------------------------ compression

    def _compress(self, gm: fx.GraphModule, group: _Group, modules: dict) -> dict[str, Any]:
        prod = modules[group.target]
        cons = [modules[c.target] for c in group.consumers]
        bn = modules[group.bn.target] if group.bn is not None else None
        n = prod.weight.shape[0]
        weight, bias = prod.weight.detach(), _bias(prod)
        A0, b0 = weight.reshape(n, -1), bias
        Cs = [_consumer_matrix(m.weight.detach(), c, n) for m, c in zip(cons, group.consumers,
                                                                         strict=True)]
        C = torch.cat(Cs, 0)
        A, b = A0, b0
        if bn is not None:
            s, t = batchnorm_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
            fw, fb = fold_affine(weight, bias, s.to(weight.device), t.to(weight.device))
            A, b = fw.reshape(n, -1), fb
        row = {"layer": group.target, "consumers": [c.target for c in group.consumers],
               "n": n, "K": n, "params": [_params(prod, bn, *cons)] * 2,
               "macs": [_macs(group)] * 2, "bound": None}
        ratio = self._ratio_for(group.target) if self.threshold is None else None
        if ratio == 1:
            return row  # the identity: nothing is touched
        try:
            result = self._cluster(gm, group, modules, (A0, b0) if bn is not None else (A, b),
                                   (A, b), C, ratio)
        except InputError as e:
            raise _Decline(f"{self.method}: {e}") from e
        K = result.A.shape[0]
        bound = self._bound(group, bn, (A, b, C), result)
        _rewrite(gm, group, modules, result, Cs, weight.shape)
        new_cons = [modules[c.target] for c in group.consumers]
        new_prod = gm.get_submodule(group.target)
        macs = row["macs"][0]
        row.update(K=K, params=[row["params"][0], _params(new_prod, *new_cons)],
                   macs=[macs, None if macs is None else macs * K // n], bound=bound,
                   rewritten=True)
        return row

    def _cluster(self, gm: fx.GraphModule, group: _Group, modules: dict,
                 clustered: tuple[Tensor, Tensor], fused: tuple[Tensor, Tensor], C: Tensor,
                 ratio: float | None) -> T.CompressedLayer:
        """Clusters from ``clustered`` weights (pre-fusion ones with batchnorm='prefusion'), the
        layer from the ``fused`` ones (TropNNC §7.5)."""
        A, b = clustered if self.batchnorm == "prefusion" else fused
        n = A.shape[0]
        spec = METHODS[self.method]
        if spec.single_output and C.shape[0] != 1:
            raise InputError(f"Alg. 1 ({self.method!r}) compresses a layer with a single output; "
                             f"{group.target}'s consumers have {C.shape[0]} outputs -- use "
                             "method='multi'")
        if self.threshold is not None:
            vectors = torch.cat([A.reshape(n, -1), b[:, None], C.T], 1).double()
            labels = T.cluster_by_threshold(vectors, self.threshold, self.nonuniform)
            if self.method == "cup":
                labels = _cup_labels(vectors, labels)
        else:
            K = max(1, math.floor(ratio * n + 0.5))
            if self.method == "thinet":  # selection from data, least squares on the fused layer
                contrib = _contributions(gm, group, modules, self.calibration,
                                         self.calibration_samples, self.seed)
                return T.thinet(*fused, C, K, contrib)
            labels = self._labels(A, b, C, K)
        return T.rebuild(*fused, C, labels, spec.rule, num_iter=self.num_iter)

    def _labels(self, A: Tensor, b: Tensor, C: Tensor, K: int) -> Tensor:
        seed, m = self.seed, self.method
        if m in ("multi", "iterative", "neural_path_kmeans"):
            # Alg. 2's clusters: Alg. 3 starts from them, Neural Path K-means shares them
            return T.compress_multi(A, b, C, K, seed, n_init=self.restarts).labels
        if m == "single":
            return T.compress_single(A, b, C, K, seed).labels
        if m == "zonotope_kmeans":
            return T.zonotope_kmeans(A, b, C, K, seed).labels
        if m == "l1":
            return T.l1_structured(A, b, C, K).labels
        if m == "random":
            return T.random_structured(A, b, C, K, seed).labels
        return T.cup(A, b, C, K=K).labels

    def _bound(self, group: _Group, bn: nn.Module | None, layer: tuple[Tensor, Tensor, Tensor],
               result: T.CompressedLayer) -> float | None:
        A, b, C = layer
        linear = (group.bn is None and not group.pooled
                  and all(c.layout == "last" for c in group.consumers))
        small = A.shape[0] <= _BOUND_MAX_NEURONS and C.shape[0] <= _BOUND_MAX_OUTPUTS
        if self.bound is False or not linear or (self.bound is None and not small):
            return None
        try:
            return T.theorem11_bound(A, b, C, result.A, result.b, result.C,
                                     radius=self.bound_radius)
        except InputError:  # too many generators for vertex enumeration
            return None


def tropnnc(ratio: float | Mapping[str, float] | None = None, method: str = "multi", *,
            nonuniform: str | None = None, threshold: float | None = None,
            include: Sequence[str] | None = None, exclude: Sequence[str] = (), seed: int = 0,
            batchnorm: str = "prefusion", num_iter: int = 10, restarts: int = 1,
            calibration: Any = None,
            calibration_samples: int = 4096, bound: bool | None = None,
            bound_radius: float = 1.0, progress: bool | None = None) -> TropNNC:
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
                   bound_radius, progress)


# ---------------------------------------------------------------------- group discovery


def _is_hidden(node: fx.Node, modules: dict, dataflow: nx.DiGraph) -> bool:
    """Whether a declined layer is worth a report line: a later layer reads what it computes
    (a model's last layers are not hidden layers and are never compressed)."""
    return node in dataflow and any(
        d.op == "call_module" and isinstance(modules[d.target], LAYERS)
        for d in nx.descendants(dataflow, node))


def _bias(module: nn.Module) -> Tensor:
    if module.bias is not None:
        return module.bias.detach()
    return module.weight.new_zeros(module.weight.shape[0])


def _describe(node: fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "output":
        return "the model output"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return f"{node.name} ({target})"


def _channelwise(node: fx.Node, modules: dict) -> Any:
    key = type(modules[node.target]) if node.op == "call_module" else node.target
    return key if key in CHANNELWISE else None


def _reads_shape(u: fx.Node, v: fx.Node, lay: str) -> bool:
    """``v.dim()`` or ``v.size(d)`` of a dim other than the channels'."""
    if u.op != "call_method" or u.args[0] is not v:
        return False
    if u.target == "dim":
        return True
    if u.target != "size" or len(u.args) + len(u.kwargs) != 2:
        return False
    d = u.args[1] if len(u.args) == 2 else u.kwargs.get("dim")
    shape = tensor_shape(v)
    if not isinstance(d, int) or shape is None:
        return d == 0
    channel = len(shape) - 1 if lay == "last" else 1
    return d % len(shape) != channel


def _flatten_view(v: fx.Node, u: fx.Node) -> bool:
    """``x.view(N, -1)`` / ``x.reshape(N, -1)`` that flattens all dims after the channels."""
    if u.op != "call_method" or u.target not in ("view", "reshape") or u.args[0] is not v:
        return False
    before, after = tensor_shape(v), tensor_shape(u)
    return (before is not None and after is not None and len(before) >= 3 and len(after) == 2
            and after[0] == before[0] and after[1] == math.prod(before[1:]))


def _find_group(gm: fx.GraphModule, producer: fx.Node, modules: dict, calls: Counter,
                attrs: list[str]) -> _Group:
    """The channel region of ``producer``: every node its output channels flow through up to the
    layers reading them, checked with networkx for a ReLU on every path. Raises _Decline."""
    target = producer.target
    module = modules[target]
    if calls[target] > 1:
        raise _Decline(f"module is called {calls[target]} times (shared); its channels cannot "
                       "shrink for one call only")
    if any(a == target or a.startswith(target + ".") for a in attrs):
        raise _Decline("its parameters are also read directly by the graph")
    if getattr(module, "groups", 1) != 1:
        raise _Decline(f"grouped convolution (groups={module.groups}) ties channels to groups")
    n = module.weight.shape[0]
    group = _Group(producer, target, [])
    graph = nx.DiGraph()
    layout = {producer: ("last" if isinstance(module, nn.Linear) else "channels", 1)}
    relus, frontier = set(), [producer]
    while frontier:
        v = frontier.pop()
        lay, spatial = layout[v]
        for u in v.users:
            graph.add_edge(v, u)
            if u in layout:
                continue
            if u.op == "call_module" and isinstance(modules[u.target], LAYERS):
                group.consumers.append(_consumer(u, v, lay, spatial, n, modules, calls, attrs,
                                                 layout))
                continue
            new = (lay, spatial)
            m = match_op(u, gm)
            op = m.op if m is not None else None
            if u.op == "output":
                raise _Decline(f"its channels reach the model output through {v.name}; the "
                               "output's shape cannot change")
            if op in ("add", "cat") or (u.op == "call_function" and u.target in (torch.add, torch.cat)):
                what = "a residual add" if op == "add" else "a concatenation"
                raise _Decline(f"its channels reach {what} ({u.name}), which couples them with "
                               "other channels; TropNNC cannot merge coupled channels (§6)")
            if _reads_shape(u, v, lay):
                continue  # x.size(0), x.dim(): metadata that compression does not change
            if op == "relu":
                relus.add(u)
            elif op == "batch_norm":
                new = _check_bn(u, v, producer, group, modules, calls)
            elif op in ("max_pool", "avg_pool"):
                if lay != "channels" or m.args.get("return_indices"):
                    raise _Decline(f"{_describe(u, modules)} pools across its channels")
                group.pooled = True
            elif op == "flatten" or _flatten_view(v, u):
                new = _check_flatten(u, v, m, lay)
                group.pooled = True
                if op != "flatten":
                    group.views.append(u)
            elif (u.op == "call_method" and u.target in ("view", "reshape")
                  and tensor_shape(u) is None):
                raise _Decline(f"its channels reach {u.name} ({u.target}); the pass needs "
                               "example_inputs to tell whether it flattens the channels")
            elif _channelwise(u, modules) is not None:
                if _channelwise(u, modules) in _SPATIAL_ONLY:
                    if lay != "channels":
                        raise _Decline(f"{_describe(u, modules)} pools across its channels")
                    group.pooled = True
            else:
                raise _Decline(f"its channels reach {_describe(u, modules)}, which TropNNC does "
                               "not support between layers (only ReLU, pooling, dropout, "
                               "flatten; §6); register it in tropfx.passes.cluster_channels."
                               "CHANNELWISE if it acts on every channel separately")
            layout[u] = new
            frontier.append(u)
    if not group.consumers:
        raise _Decline("no Linear / Conv layer reads its channels")
    linear_paths = graph.subgraph(x for x in graph if x not in relus)
    for c in group.consumers:
        if c.node in linear_paths and nx.has_path(linear_paths, producer, c.node):
            raise _Decline(f"no ReLU between it and {c.target}: TropNNC compresses ReLU layers "
                           "(§3.2)")
    return group


def _check_bn(u: fx.Node, v: fx.Node, producer: fx.Node, group: _Group, modules: dict,
              calls: Counter) -> tuple[str, int]:
    if v is not producer:
        raise _Decline(f"BatchNorm {_describe(u, modules)} is not right after the layer; only "
                       "layer -> BatchNorm -> ReLU folds into the layer (TropNNC §6)")
    if u.op != "call_module":
        raise _Decline(f"functional batch_norm {u.name}: use an nn.BatchNorm module, or run "
                       "fuse_batchnorm first")
    bn = modules[u.target]
    if bn.training or bn.running_mean is None:
        raise _Decline(f"BatchNorm {u.target} uses batch statistics (training mode or "
                       "track_running_stats=False); call model.eval() before compressing")
    if calls[u.target] > 1:
        raise _Decline(f"BatchNorm {u.target} is shared")
    if len(producer.users) > 1:
        raise _Decline("its pre-BatchNorm output is read elsewhere too")
    var = bn.running_var.detach()
    if not (torch.isfinite(var).all() and torch.isfinite(bn.running_mean).all()
            and (var + bn.eps > 0).all()):
        raise _Decline(f"BatchNorm {u.target} has non-finite or non-positive statistics")
    group.bn = u
    return ("channels", 1)


def _check_flatten(u: fx.Node, v: fx.Node, m: Any, lay: str) -> tuple[str, int]:
    shape = tensor_shape(v)
    if lay == "last" and shape is not None and len(shape) == 2 and m is not None \
            and m.args["start_dim"] in (1, -1):
        return lay, 1  # flatten(1) of (N, n) changes nothing
    if lay != "channels":
        raise _Decline(f"{u.name} flattens an already flat / linear layout")
    if shape is None:
        raise _Decline(f"{u.name} flattens the channels; the pass needs example_inputs to know "
                       "how many positions each channel has")
    if m is not None and (m.args["start_dim"] != 1 or m.args["end_dim"] not in (-1, len(shape) - 1)):
        raise _Decline(f"{u.name} must flatten every dim after the channels "
                       "(start_dim=1, end_dim=-1)")
    return "flat", math.prod(shape[2:])


def _consumer(u: fx.Node, v: fx.Node, lay: str, spatial: int, n: int, modules: dict,
              calls: Counter, attrs: list[str], layout: dict) -> _Consumer:
    module = modules[u.target]
    if u.args[0] is not v or any(a is v for a in (*u.args[1:], *u.kwargs.values())):
        raise _Decline(f"{u.target} reads the channels other than as its input")
    if calls[u.target] > 1:
        raise _Decline(f"{u.target} is called {calls[u.target]} times (shared); its input "
                       "channels cannot shrink for one call only")
    if any(a == u.target or a.startswith(u.target + ".") for a in attrs):
        raise _Decline(f"{u.target}'s parameters are also read directly by the graph")
    if isinstance(module, nn.Linear):
        if lay == "channels":
            raise _Decline(f"Linear {u.target} reads the last dim, not the channels; flatten first")
        expected = n * spatial
        if module.weight.shape[1] != expected:
            raise _Decline(f"{u.target} reads {module.weight.shape[1]} features, expected "
                           f"{n} channels x {spatial} positions = {expected}")
    else:
        if lay != "channels" or module.groups != 1 or module.weight.shape[1] != n:
            raise _Decline(f"{u.target} does not read the {n} channels with groups=1")
        if module.padding_mode != "zeros":
            raise _Decline(f"{u.target} uses padding_mode={module.padding_mode!r}")
    return _Consumer(u, u.target, lay, spatial)


# ---------------------------------------------------------------------- surgery


def _consumer_matrix(weight: Tensor, consumer: _Consumer, n: int) -> Tensor:
    """Columns ``C_:,i`` of a consumer: every weight reading channel ``i`` (TropNNC §6)."""
    if consumer.layout == "flat":  # a Linear reading (n, positions) flattened
        weight = weight.reshape(weight.shape[0], n, consumer.spatial)
    return weight.transpose(0, 1).reshape(n, -1).T


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _resized(module: nn.Module, weight: Tensor, bias: Tensor | None, **sizes: int) -> nn.Module:
    """A copy of ``module`` with new parameters (same class, options, dtype, device)."""
    old_w, old_b = module.weight, module.bias
    module.weight, module.bias = None, None  # do not deep-copy tensors about to be replaced
    try:
        new = copy.deepcopy(module)
    finally:
        module.weight, module.bias = old_w, old_b
    new.weight = nn.Parameter(weight.to(old_w.dtype).contiguous(), old_w.requires_grad)
    if bias is None:
        new.bias = None
    else:
        ref = old_b if old_b is not None else old_w
        new.bias = nn.Parameter(bias.to(ref.dtype).contiguous(), ref.requires_grad)
    for k, v in sizes.items():
        setattr(new, k, v)
    return new


def _rewrite(gm: fx.GraphModule, group: _Group, modules: dict, result: T.CompressedLayer,
             Cs: list[Tensor], in_shape: torch.Size) -> None:
    prod = modules[group.target]
    K = result.A.shape[0]
    keep_bias = prod.bias is not None or group.bn is not None or bool((result.b != 0).any())
    sizes = {"out_features": K} if isinstance(prod, nn.Linear) else {"out_channels": K}
    new_prod = _resized(prod, result.A.reshape(K, *in_shape[1:]),
                        result.b if keep_bias else None, **sizes)
    _set_module(gm, group.target, new_prod)
    modules[group.target] = new_prod
    rows = [c.shape[0] for c in Cs]
    for consumer, C_new in zip(group.consumers, result.C.split(rows, 0), strict=True):
        module = modules[consumer.target]
        w = module.weight
        m = w.shape[0]
        if consumer.layout == "flat":
            new_w = C_new.T.reshape(K, m, consumer.spatial).transpose(0, 1).reshape(m, -1)
            sizes = {"in_features": K * consumer.spatial}
        elif consumer.layout == "last":
            new_w = C_new
            sizes = {"in_features": K}
        else:
            new_w = C_new.T.reshape(K, m, *w.shape[2:]).transpose(0, 1)
            sizes = {"in_channels": K}
        new = _resized(module, new_w, module.bias.detach() if module.bias is not None else None,
                       **sizes)
        _set_module(gm, consumer.target, new)
        modules[consumer.target] = new
    if group.bn is not None:  # folded into the producer
        group.bn.replace_all_uses_with(group.producer)
        gm.graph.erase_node(group.bn)
    for view in group.views:  # a hard-coded view(N, C*H*W) would no longer fit
        with gm.graph.inserting_after(view):
            flat = gm.graph.call_function(torch.flatten, (view.args[0], 1))
        flat.meta = copy.copy(view.meta)
        view.replace_all_uses_with(flat)
        gm.graph.erase_node(view)


def _params(*mods: nn.Module | None) -> int:
    return sum(p.numel() for m in mods if m is not None for p in m.parameters())


def _macs(group: _Group) -> int | None:
    nodes = [group.producer, *(c.node for c in group.consumers)]
    costs = [n.meta.get("tropfx", {}).get("cost", {}).get("macs") for n in nodes]
    return None if any(c is None for c in costs) else sum(costs)


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


def _contributions(gm: fx.GraphModule, group: _Group, modules: dict, calibration: tuple,
                   samples: int, seed: int) -> Tensor:
    """ThiNet's ``x^`` (Luo et al. 2017, Eq. 2): for sampled entries of each consumer's output,
    the part each input channel adds, from the current model on the calibration batch."""
    wanted = {c.node.args[0] for c in group.consumers}
    capture = _Capture(gm, wanted)
    with eval_mode(gm):
        try:
            capture.run(*calibration)
        except Exception as e:
            raise InputError(f"the calibration inputs do not fit the model: {e}") from e
    gen = torch.Generator().manual_seed(seed)
    n = modules[group.target].weight.shape[0]
    parts = []
    for c in group.consumers:
        module = modules[c.target]
        x, w = capture.values[c.node.args[0]].double(), module.weight.detach().double()
        m = w.shape[0]
        if c.layout == "last":
            U = x.reshape(-1, n, 1, 1)
            W = w.reshape(m, n, 1)
        elif c.layout == "flat":
            U = x.reshape(x.shape[0], n, c.spatial, 1)
            W = w.reshape(m, n, c.spatial)
        else:
            if w.dim() == 5 or isinstance(module.padding, str):
                raise InputError(f"thinet supports Conv1d / Conv2d consumers with numeric "
                                 f"padding; {c.target} is not one")
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
