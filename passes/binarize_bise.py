"""binarize_bise: BiSE / BiMoNN layers -> boolean morphology and thresholded integer sums.

Aouad & Talbot, "A foundation for exact binarized morphological neural networks" (*BiSE* below),
§3. The math -- activation checks, projections, deviation propagation -- is :mod:`tropfx.bise_math`;
the binarized layers are :mod:`tropfx.nn.binary`. This pass finds the layers, plans every neuron,
and only then rewrites the graph.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_flatten

from tropfx import bise_math
from tropfx.errors import InputError, ParameterError
from tropfx.hooks import hook_reason
from tropfx.measure import clone_inputs, describe_inputs, eval_mode
from tropfx.nn.binary import (
    BINARY_LAYERS,
    OPERATIONS,
    BinaryLinear,
    BinaryMorphology2d,
    ThresholdedConv2d,
)
from tropfx.nn.bise import LUI, BiSE, BiSEL, BiSEModule, DenseLUI, LevelSetEncoder, smooth_threshold
from tropfx.pass_base import GraphPass, PassResult, PassStats
from tropfx.rewrite import _free_name, float_dtype, replace_with_module, tensor_shape

__all__ = ["BINARIZERS", "BINARY_OUTPUT", "METHODS", "MOVES_VALUES", "BinarizeBiSE", "Binarized",
           "NeuronBank", "binarize_bise", "bit_agreement", "count_threshold", "plan_neurons"]

METHODS = ("exact", "activable", "constant")
LAST_LAYER = ("binary", "float")
NO_GUARANTEE = 0.5  # a deviation from {0, 1} of 1/2: the values carry no bit


# ---------------------------------------------------------------------------------------------------
# Planning: how each neuron of one BiSE layer binarizes (pure functions of its parameters).


@dataclass(frozen=True)
class NeuronBank:
    """How the ``n`` neurons of one BiSE layer binarize, one entry per neuron.

    The binarized neuron is ``1[|x & S| >= threshold]`` with ``S = se`` (bool, (n, |Omega|), the
    weights' flat layout), complemented where ``complement`` (``p < 0``): ``operation`` names it --
    ``"dilation"`` (``threshold = 1``), ``"erosion"`` (``threshold = |S|``) or ``"threshold"``
    (any other count, from ``method="constant"``). ``activated``: Theorem 2.3 holds for binary
    inputs, so ``se`` is the neuron's own SE (distance 0); otherwise it is the projection's and
    ``distance`` is the distance to the activable (Eq. 20) or constant (Eq. 28) set. ``exact``: the
    neuron is activated for the deviation ``delta_in`` that its inputs carry in the float network
    (§3.3), so the binarized neuron reproduces the thresholded float one bit for bit. ``delta`` is the
    deviation of the layer's float outputs (Lemma A.8; 1/2 when a neuron is not exact).
    """

    operation: tuple[str, ...]
    se: Tensor
    threshold: Tensor
    complement: Tensor
    activated: Tensor
    exact: Tensor
    distance: Tensor
    delta_in: float
    delta: float


def plan_neurons(layer: BiSEModule, delta: float, where: str, *, method: str = "exact",
                 solver: str = "fast") -> NeuronBank:
    """Binarize the neurons of ``layer`` whose inputs lie within ``delta`` of {0, 1}.

    ``method`` ``"exact"`` / ``"activable"``: non-activated neurons are projected onto activable
    parameters (Eq. 20, :func:`~tropfx.bise_math.project_activable` with ``solver``) and become
    their dilation / erosion. ``"constant"``: their weights are projected onto ``theta 1_S`` (Eq. 28,
    :func:`~tropfx.bise_math.project_constant`) and their bias kept, so that they become
    ``1[theta |x & S| > b] = 1[|x & S| >= floor(b / theta) + 1]`` (``p > 0``; for ``p < 0`` the
    complement of ``|x & S| >= ceil(b / theta)``), a count threshold. ``where`` names the layer in
    errors.
    """
    with torch.no_grad():
        w, b, p = (t.detach().to("cpu", torch.float64) for t in layer.neurons())
    bad = (~(torch.isfinite(w).all(1) & torch.isfinite(b) & torch.isfinite(p))).nonzero().flatten()
    if bad.numel():
        raise ParameterError(
            f"binarize_bise: {where} ({type(layer).__name__}) has NaN or infinite parameters in "
            f"neuron(s) {bad.tolist()[:10]}: training diverged or the checkpoint is corrupt. Reload "
            f"good weights (or call {where}.reset_parameters()) before binarizing")
    if method == "constant":
        projection = bise_math.project_constant(w, b, p=p)
    else:
        projection = bise_math.project_activable(w, b, solver=solver, p=p)
    se, complement = projection.se, projection.complemented
    sizes = se.sum(1)
    threshold = torch.where(torch.tensor([op == "erosion" for op in projection.operation]), sizes, 1)
    if method == "constant":
        counted, flipped = count_threshold(projection.weight.amax(1), b, p, w.shape[1])
        threshold = torch.where(projection.exact, threshold, counted)
        complement = torch.where(projection.exact, complement, flipped)
    operation = tuple("dilation" if t == 1 else "erosion" if t == n else "threshold"
                      for t, n in zip(threshold.tolist(), sizes.tolist(), strict=True))
    exact = torch.zeros_like(projection.exact)
    out = NO_GUARANTEE
    if delta < NO_GUARANTEE:
        exact = bise_math.is_activated(w, b, delta=delta, p=p).exact
        deviation = bise_math.propagate_delta(w, b, p=p, delta=delta)
        out = NO_GUARANTEE if bool(torch.isnan(deviation).any()) else float(deviation.max())
    return NeuronBank(operation, se, threshold, complement, projection.exact,
                      exact & projection.exact, projection.distance, delta, out)


def count_threshold(theta: Tensor, b: Tensor, p: Tensor, fan: int) -> tuple[Tensor, Tensor]:
    """``(t, complement)`` with ``1[p (theta c - b) > 0] = 1[c >= t] XOR complement`` for every
    count ``c`` in ``0 .. fan``: the thresholded BiSE neuron with constant weights ``theta 1_S``.

    ``p > 0``: ``c > b / theta``, i.e. ``t = floor(b / theta) + 1``; ``p < 0``: ``c < b / theta``,
    the complement of ``c >= ceil(b / theta)``; ``p = 0``: never (``chi = 1/2``). ``theta = 0``
    gives a constant (``t = 0``: always, ``t = fan + 1``: never).
    """
    never, always = torch.full_like(b, fan + 1.0), torch.zeros_like(b)
    ratio = b / theta.where(theta > 0, torch.ones_like(theta))
    up = torch.where(theta > 0, torch.floor(ratio) + 1, torch.where(b < 0, always, never))
    down = torch.where(theta > 0, torch.ceil(ratio), torch.where(b > 0, never, always))
    t = torch.where(p > 0, up, torch.where(p < 0, down, never))
    return t.clamp(0, fan + 1).to(torch.int64), p < 0


# ---------------------------------------------------------------------------------------------------
# Binarizers: one per layer type (a registry users extend). Each turns a float layer into steps --
# binarized layers, or (method, args) calls such as BiSEL's input repeat -- and the banks it planned.

Plan = Callable[[BiSEModule, float, str], NeuronBank]  # (layer, deviation of its input, path)


@dataclass
class Binarized:
    """The replacement of one layer: ``steps`` applied in order to its input -- ``(name, layer)``
    for a binarized layer registered as ``<node>_<name>``, or ``(method, args)`` for a tensor
    method call -- its neuron ``banks`` as ``(module path, bank, kernel)`` (``kernel`` is the SE's
    2-D shape for a spatial bank, None for a channel bank), and the deviation of its float output."""

    steps: list[tuple[str, nn.Module | tuple]]
    banks: list[tuple[str, NeuronBank, tuple[int, int] | None]]
    delta: float


def _binarize_bise(m: BiSE, delta: float, plan: Plan, path: str) -> Binarized:
    bank = plan(m, delta, path)
    se = bank.se.view(m.channels, *m.kernel_size)
    if all(op in OPERATIONS for op in bank.operation):  # OR / AND of shifted planes
        layer = BinaryMorphology2d(se, bank.operation, bank.complement, padding=m.padding)
    else:  # count thresholds: a depthwise integer convolution
        layer = ThresholdedConv2d(se[:, None].to(torch.int8), bank.threshold, bank.complement,
                                  groups=m.channels, padding=m.padding)
    return Binarized([("binary", layer)], [(path, bank, m.kernel_size)], bank.delta)


def _binarize_lui(m: LUI, delta: float, plan: Plan, path: str) -> Binarized:
    bank = plan(m, delta, path)
    layer = ThresholdedConv2d(bank.se.view(m.omega.shape).to(torch.int8), bank.threshold,
                              bank.complement, groups=m.groups)
    return Binarized([("binary", layer)], [(path, bank, None)], bank.delta)


def _binarize_dense_lui(m: DenseLUI, delta: float, plan: Plan, path: str) -> Binarized:
    bank = plan(m, delta, path)
    layer = BinaryLinear(bank.se.to(torch.int8), bank.threshold, bank.complement)
    return Binarized([("binary", layer)], [(path, bank, None)], bank.delta)


def _binarize_bisel(m: BiSEL, delta: float, plan: Plan, path: str) -> Binarized:
    # Def. 2.4 as BiSEL.forward computes it: K copies of the input, the BiSE bank, the grouped LUI.
    bise = _binarize_bise(m.bise, delta, plan, f"{path}.bise")
    steps = [("repeat", (1, m.out_channels, 1, 1)), ("bise_binary", bise.steps[0][1])]
    if not isinstance(m.lui, LUI):  # identity_lui=True: the BiSE outputs are the layer's
        return Binarized(steps, bise.banks, bise.delta)
    lui = _binarize_lui(m.lui, bise.delta, plan, f"{path}.lui")
    return Binarized(steps + [("lui_binary", lui.steps[0][1])], bise.banks + lui.banks, lui.delta)


BINARIZERS: dict[type[nn.Module], Callable[[nn.Module, float, Plan, str], Binarized]] = {
    BiSE: _binarize_bise,
    LUI: _binarize_lui,
    DenseLUI: _binarize_dense_lui,
    BiSEL: _binarize_bisel,
}

# Nodes that only move values (reshape, select, concatenate, repeat): their outputs are as far from
# {0, 1} as their inputs, and they take bool tensors as they are. Users add their own (a function, a
# tensor method name or a module type).
MOVES_VALUES: set[Any] = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.squeeze,
    torch.unsqueeze, torch.permute, torch.transpose, torch.flip, torch.roll, operator.getitem,
    nn.Flatten, nn.Unflatten, nn.Identity,
    "flatten", "view", "reshape", "permute", "transpose", "contiguous", "repeat", "expand",
    "squeeze", "unsqueeze", "clone", "flip", "roll", "unflatten", "detach",
}
# Layers whose outputs are exactly 0 or 1, whatever their input.
BINARY_OUTPUT: set[type[nn.Module]] = {LevelSetEncoder, *BINARY_LAYERS}


def _key(node: fx.Node, gm: fx.GraphModule) -> Any:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target))
    return node.target if node.op in ("call_function", "call_method") else None


def _binarizer(node: fx.Node, gm: fx.GraphModule) -> Callable | None:
    if node.op != "call_module":
        return None
    cls = type(gm.get_submodule(node.target))
    return next((BINARIZERS[c] for c in cls.__mro__ if c in BINARIZERS), None)


def bit_agreement(reference: Any, binarized: Any) -> tuple[int, int]:
    """(equal bits, bits) between two outputs, each tensor read as bits: bool as is, real values
    thresholded at 1/2 (``x > 0.5``, the BiSE rule)."""
    ref = [t for t in tree_flatten(reference)[0] if isinstance(t, Tensor)]
    new = [t for t in tree_flatten(binarized)[0] if isinstance(t, Tensor)]
    equal = total = 0
    for a, b in zip(ref, new, strict=True):
        bits_a = a if a.dtype == torch.bool else a > 0.5
        bits_b = b if b.dtype == torch.bool else b > 0.5
        equal += int((bits_a == bits_b).sum())
        total += bits_a.numel()
    return equal, total


# ---------------------------------------------------------------------------------------------------
# The pass.


@dataclass(frozen=True, eq=False)
class BinarizeBiSE(GraphPass):
    """Every ``BiSE``, ``LUI``, ``BiSEL`` and ``DenseLUI`` node -> boolean layers (BiSE §3).

    Pattern -> replacement (one node per call site; :data:`BINARIZERS` maps layer types):

    * ``BiSE`` -> :class:`~tropfx.nn.binary.BinaryMorphology2d` (per channel: dilation or erosion by
      its SE, complemented where ``p < 0``), or a depthwise
      :class:`~tropfx.nn.binary.ThresholdedConv2d` when ``method="constant"`` left count thresholds;
    * ``LUI`` -> :class:`~tropfx.nn.binary.ThresholdedConv2d` (grouped 1x1, ``W = 1_S``, ``t = 1``
      for a union, ``t = |S|`` for an intersection);
    * ``DenseLUI`` -> :class:`~tropfx.nn.binary.BinaryLinear` (the same on vectors);
    * ``BiSEL`` -> ``x.repeat(1, K, 1, 1)`` -> ``BinaryMorphology2d`` -> ``ThresholdedConv2d``
      (no ``ThresholdedConv2d`` for ``BiSEL(1, K, identity_lui=True)``, whose LUIs are the identity).

    Each neuron binarizes exactly when it is *activated* (Theorem 2.3, checked in O(|Omega|) by
    Prop. 3.1): it then is the dilation / erosion by its SE. Otherwise ``method`` picks an
    approximation: ``"exact"`` and ``"activable"`` project it onto activable parameters (Eq. 20,
    §3.2.1) -- they build the same network; ``"exact"`` is the default name when the aim is
    exactness and the report is read for which neurons are -- and ``"constant"`` projects its
    weights onto constant ones ``theta 1_S`` (Eq. 28, §3.2.2) and keeps its bias: the neuron becomes
    the count threshold ``1[|x & S| >= t]``, ``t = floor(b / theta) + 1`` (:func:`count_threshold`),
    a dilation when ``t = 1``, an erosion when ``t = |S|``, else a rank filter (integer weights and
    threshold, operation ``"threshold"``). A neuron is reported *exact* when it is activated
    for the deviation from {0, 1} that its inputs carry in the float network, propagated from binary
    model inputs (Lemma A.8, §3.3); when all are, the binarized network equals the float network
    thresholded at 1/2 on every binary input.

    Binarized layers output ``torch.bool``. Binarized layers, value-moving nodes
    (:data:`MOVES_VALUES`) and the graph output take the bits as they are; any other consumer --
    e.g. a last layer kept in float -- receives them as 0. / 1. in the replaced layer's float dtype.
    ``last_layer="float"`` keeps the BiSE layers that no other BiSE layer follows in float (the
    paper's MNIST practice); ``"binary"`` binarizes every layer, giving a boolean network.

    Report (``stats``): ``rewritten`` has one line per layer; ``skipped`` the layers kept in float;
    ``info`` has ``neurons`` (one row per neuron: layer path, index, exact, activated, distance,
    operation, complement, SE as ``"010/111/010"`` kernel rows or the indices of the inputs it
    reads), ``layers`` (per-layer counts, distances and deviations), the totals, and ``agreement``:
    the fraction of equal output bits between the binarized network and the float one thresholded
    at 1/2, on ``inputs`` if given, else on one random binary batch shaped like the example inputs
    (``agreement_inputs`` says which; ``None`` without either); ``layer_agreement`` gives, per
    replaced node, the same fraction for its output inside the two networks (where they part).

    Not exact (``exact=False``): the runner records the error against the float stage (infinite for
    a bool output, whose dtype differs), and ``agreement`` says what changed. Preconditions, checked
    before anything changes: finite parameters (else :class:`ParameterError` naming the layer);
    layers called on one tensor, and carrying no hooks (:mod:`tropfx.hooks`; else skipped with the
    reason). A root ``BiSEL`` is traced into its ``bise`` and ``lui`` layers, both replaced (a BiSE
    bank reading one shared channel gets ``.repeat`` first); BiSE math traced op by op -- a root
    ``BiSE``, ``LUI`` or ``DenseLUI``, or a forward calling ``BiSE.forward_shared`` -- cannot be
    replaced and each of its thresholds is listed as skipped.
    """

    method: str = "exact"
    last_layer: str = "binary"
    inputs: tuple | None = None
    solver: str = "fast"
    seed: int = 0
    name: ClassVar[str] = "binarize_bise"
    exact: ClassVar[bool] = False

    def __post_init__(self) -> None:
        where = "binarize_bise"
        if self.method not in METHODS:
            raise InputError(f"{where}: method={self.method!r}; use one of {list(METHODS)}")
        if self.last_layer not in LAST_LAYER:
            raise InputError(f"{where}: last_layer={self.last_layer!r}; use 'binary' (a boolean "
                             "network) or 'float' (keep the last BiSE layers in float)")
        if self.solver not in bise_math.SOLVERS:
            raise InputError(f"{where}: solver={self.solver!r}; use one of {list(bise_math.SOLVERS)}")
        if self.method == "constant" and self.solver != "fast":
            raise InputError(f"{where}: solver={self.solver!r} chooses the QP solver of the activable "
                             "projection (Eq. 20), but method='constant' (Eq. 28) solves no QP; drop "
                             "solver= or use method='activable'")
        if self.inputs is not None:
            inputs = (self.inputs,) if isinstance(self.inputs, Tensor) else self.inputs
            if not isinstance(inputs, (tuple, list)) or not all(isinstance(x, Tensor) for x in inputs):
                raise InputError(f"{where}: inputs= must be a tensor or a tuple of tensors (the "
                                 "model's positional inputs), got "
                                 f"{type(self.inputs).__name__}")
            object.__setattr__(self, "inputs", tuple(inputs))

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = PassStats(info={"method": self.method, "last_layer": self.last_layer})
        layers = {n: fn for n in gm.graph.nodes if (fn := _binarizer(n, gm)) is not None}
        for node in gm.graph.nodes:  # BiSE math traced op by op: not a layer node we can replace
            if node.op == "call_function" and node.target is smooth_threshold:
                stats.skip(node, INLINE)
        if not layers:
            stats.info["note"] = "no BiSE, LUI, BiSEL or DenseLUI layer"
            return PassResult(gm, False, stats)
        kept = _last_layers(gm, layers) if self.last_layer == "float" else set()

        # Plan every layer in graph order, carrying each value's deviation from {0, 1}.
        plans: dict[fx.Node, Binarized] = {}
        deltas: dict[fx.Node, float] = {}
        plan = functools.partial(plan_neurons, method=self.method, solver=self.solver)
        for node in gm.graph.nodes:
            deltas[node] = _deviation(node, gm, deltas)
            if node not in layers:
                continue
            if node in kept:
                stats.skip(node, "kept in float (last_layer='float'): no BiSE layer follows it")
            elif len(node.args) != 1 or node.kwargs:
                stats.skip(node, "called with other arguments than one input tensor")
            elif reason := _hooked(gm.get_submodule(node.target), node.target):
                stats.skip(node, reason)
            else:
                x = node.args[0]
                module = gm.get_submodule(node.target)
                delta = deltas.get(x, NO_GUARANTEE) if isinstance(x, fx.Node) else NO_GUARANTEE
                plans[node] = layers[node](module, delta, plan, node.target)
                _share_input(plans[node], module, x)
                deltas[node] = plans[node].delta

        inputs, described = self._agreement_inputs(gm)
        watched = {node.name for node in plans}
        reference = _run(gm, inputs, described, watched) if inputs is not None else None

        # Everything is checked: rewrite.
        produced, renamed = {}, {}
        for node, binarized in plans.items():
            dtype, name = float_dtype(node), node.name
            new = _rewrite(gm, node, binarized)
            produced[new], renamed[new.name] = dtype, name
            banks = [bank for _, bank, _ in binarized.banks]
            n = sum(len(b.operation) for b in banks)
            exact = sum(int(b.exact.sum()) for b in banks)
            stats.rewritten.append(f"{name} -> {', '.join(_chain(new, node_count=len(binarized.steps)))}"
                                   f": {n} neurons, {exact} exact, {n - exact} approximated")
            new.meta["tropfx"] = {**new.meta.get("tropfx", {}),
                                  "binarize_bise": {"from": name, "neurons": n, "exact": exact}}
        _cast_consumers(gm, produced)
        gm.graph.lint()
        gm.recompile()

        stats.info.update(_summarize(plans))
        stats.info["kept_float"] = [n.name for n in kept]
        stats.info["agreement_inputs"] = described
        stats.info["agreement"] = stats.info["agreement_bits"] = None
        stats.info["layer_agreement"] = {}
        if inputs is not None:
            output, layers_out = _run(gm, inputs, described, set(renamed))
            equal, total = bit_agreement(reference[0], output)
            stats.info["agreement"] = equal / total if total else None
            stats.info["agreement_bits"] = total
            for new_name, bits in layers_out.items():
                old = renamed[new_name]
                equal, total = bit_agreement(reference[1][old], bits)
                stats.info["layer_agreement"][old] = equal / total if total else None
        return PassResult(gm, bool(plans), stats)

    def _agreement_inputs(self, gm: fx.GraphModule) -> tuple[tuple | None, str]:
        if self.inputs is not None:
            return self.inputs, f"inputs= ({describe_inputs(self.inputs)})"
        metas = [n.meta.get("tensor_meta") for n in gm.graph.nodes if n.op == "placeholder"]
        if not all(hasattr(m, "shape") for m in metas):
            return None, "none: input shapes unknown; pass inputs=(x,) or compile with example_inputs"
        device = next((t.device for t in (*gm.parameters(), *gm.buffers())), torch.device("cpu"))
        g = torch.Generator().manual_seed(self.seed)
        xs = tuple((torch.rand(tuple(m.shape), generator=g) < 0.5).to(device, m.dtype) for m in metas)
        return xs, f"random binary {describe_inputs(xs)} (seed {self.seed}); pass inputs= for real data"


INLINE = ("a BiSE threshold traced op by op (the compiled model is itself a BiSE / LUI / DenseLUI, "
          "or a forward calls a BiSE layer's methods): binarize_bise replaces BiSE layers called "
          "as submodules; compile nn.Sequential(layer), or call the layer itself")


def _hooked(module: nn.Module, path: str) -> str | None:
    """Why a layer carrying hooks (on itself or a submodule, e.g. BiSEL.bise) is not replaced."""
    return next((r for name, m in module.named_modules()
                 if (r := hook_reason(m, f"{path}.{name}" if name else path, "binarizing it"))), None)


def _share_input(binarized: Binarized, module: nn.Module, x: Any) -> None:
    """A BiSE bank reading one shared channel (``BiSE.forward`` on (N, 1, H, W), as in
    ``BiSEL(1, K)``) gets its input copied to its ``channels`` first, as the binary layers need."""
    if not isinstance(module, BiSE) or module.channels == 1:
        return
    shape = tensor_shape(x) if isinstance(x, fx.Node) else None
    if shape is None:  # unknown: expand is a no-op on `channels` channels and copies one channel
        binarized.steps.insert(0, ("expand", (-1, module.channels, -1, -1)))
    elif shape[1] == 1:
        binarized.steps.insert(0, ("repeat", (1, module.channels, 1, 1)))


def _deviation(node: fx.Node, gm: fx.GraphModule, deltas: dict[fx.Node, float]) -> float:
    """How far ``node``'s float values may be from {0, 1} (bise_math's delta) on binary inputs."""
    if node.op == "placeholder":
        return 0.0  # the exactness claims are about binary model inputs
    key = _key(node, gm)
    if key in BINARY_OUTPUT:
        return 0.0
    if key in MOVES_VALUES:
        return max((deltas.get(a, NO_GUARANTEE) for a in node.all_input_nodes), default=0.0)
    return NO_GUARANTEE


def _last_layers(gm: fx.GraphModule, layers: dict[fx.Node, Any]) -> set[fx.Node]:
    """The layer nodes from which no other layer node can be reached."""
    reaches: dict[fx.Node, bool] = {}
    for node in reversed(gm.graph.nodes):
        reaches[node] = any(u in layers or reaches[u] for u in node.users)
    return {n for n in layers if not reaches[n]}


def _rewrite(gm: fx.GraphModule, node: fx.Node, binarized: Binarized) -> fx.Node:
    """Replace ``node`` by the chain of ``binarized.steps``; the last node inherits ``node.meta``."""
    existing = next(iter((*gm.parameters(), *gm.buffers())), None)
    current = node.args[0]
    *head, (last_name, last_layer) = binarized.steps
    with gm.graph.inserting_before(node):
        for step, what in head:
            if isinstance(what, nn.Module):
                target = _free_name(gm, f"{node.name}_{step}")
                gm.add_submodule(target, what if existing is None else what.to(existing.device))
                current = gm.graph.call_module(target, (current,))
            else:
                current = gm.graph.call_method(step, (current, *what))
            current.meta["tropfx"] = {"binarize_bise": {"from": node.name}}
    return replace_with_module(gm, node, last_layer, f"{node.name}_{last_name}", (current,))


def _chain(last: fx.Node, node_count: int) -> list[str]:
    nodes = [last]
    while len(nodes) < node_count:
        nodes.insert(0, nodes[0].args[0])
    return [str(n.target) if n.op == "call_module" else f".{n.target}()" for n in nodes]


def _takes_bits(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "output" or _key(node, gm) in BINARY_LAYERS


def _cast_consumers(gm: fx.GraphModule, produced: dict[fx.Node, torch.dtype]) -> None:
    """Give every consumer that is not a binarized layer, a value-moving node or the output the bits
    as 0. / 1. in the float dtype the replaced layer produced."""
    for node, dtype in produced.items():
        frontier, seen = [node], {node}
        while frontier:
            source = frontier.pop()
            floats = []
            for user in list(source.users):
                if _key(user, gm) in MOVES_VALUES:
                    if user not in seen:
                        seen.add(user)
                        frontier.append(user)
                elif not _takes_bits(user, gm):
                    floats.append(user)
            if floats:
                with gm.graph.inserting_after(source):
                    cast = gm.graph.call_method("to", (source, dtype))
                cast.meta["tropfx"] = {"binarize_bise": {"from": node.name, "cast": str(dtype)}}
                for user in floats:
                    user.replace_input_with(source, cast)


class _Watch(fx.Interpreter):
    """Runs a graph and keeps the values of the nodes named in ``names``."""

    def __init__(self, gm: fx.GraphModule, names: set[str]):
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = out
        return out


def _run(gm: fx.GraphModule, inputs: tuple, described: str, names: set[str]) -> tuple[Any, dict]:
    """The outputs of ``gm`` on ``inputs`` and the values of the nodes in ``names``."""
    try:
        with eval_mode(gm):
            watch = _Watch(gm, names)
            return watch.run(*clone_inputs(inputs)), watch.values
    except Exception as exc:
        raise InputError(f"binarize_bise: the model does not run on the agreement inputs "
                         f"({described}): {type(exc).__name__}: {exc}; pass inputs=(x,) shaped as "
                         "the model expects") from exc


def _se_text(se: Tensor, kernel: tuple[int, int] | None) -> str:
    """``"010/111/010"`` for a 2-D kernel, else the input indices as ranges ``"0-3,7"``."""
    if kernel is not None:
        return "/".join("".join("1" if v else "0" for v in row) for row in se.view(kernel).tolist())
    idx = se.nonzero().flatten().tolist()
    parts, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


def _summarize(plans: dict[fx.Node, Binarized]) -> dict[str, Any]:
    """``info``: one row per neuron, one per layer, and the totals."""
    rows, layers = [], []
    for node, binarized in plans.items():
        for path, bank, kernel in binarized.banks:
            for i, op in enumerate(bank.operation):
                rows.append({
                    "node": node.name, "layer": path, "neuron": i,
                    "exact": bool(bank.exact[i]), "activated": bool(bank.activated[i]),
                    "distance": float(bank.distance[i]), "operation": op,
                    "threshold": int(bank.threshold[i]), "complement": bool(bank.complement[i]),
                    "se": _se_text(bank.se[i], kernel)})
            n = len(bank.operation)
            layers.append({
                "layer": path, "neurons": n, "exact": int(bank.exact.sum()),
                "activated": int(bank.activated.sum()), "approximated": n - int(bank.activated.sum()),
                "dilations": sum(op == "dilation" for op in bank.operation),
                "erosions": sum(op == "erosion" for op in bank.operation),
                "thresholds": sum(op == "threshold" for op in bank.operation),
                "complemented": int(bank.complement.sum()),
                "max_distance": float(bank.distance.max()), "mean_distance": float(bank.distance.mean()),
                "delta_in": bank.delta_in, "delta_out": bank.delta})
    total = len(rows)
    exact = sum(r["exact"] for r in rows)
    return {"neurons": rows, "layers": layers, "total_neurons": total, "exact_neurons": exact,
            "approximated_neurons": total - exact,
            "activated_neurons": sum(r["activated"] for r in rows), "all_exact": exact == total}


def binarize_bise(method: str = "exact", last_layer: str = "binary", *, inputs: Any = None,
                  solver: str = "fast", seed: int = 0) -> BinarizeBiSE:
    """The ``binarize_bise`` pass (see :class:`BinarizeBiSE`).

    Args:
        method: ``"exact"`` (default) or ``"activable"``: activated neurons exactly, the others
            projected onto activable parameters (Eq. 20); ``"constant"``: weights projected onto
            constant ones (Eq. 28), bias kept: a count threshold ``1[|x & S| >= t]``.
        last_layer: ``"binary"`` (default): every layer, a boolean network; ``"float"``: keep the
            last BiSE layers in float.
        inputs: a tensor or tuple of the model's inputs to measure ``info["agreement"]`` on
            (default: one random binary batch shaped like the compile's example inputs).
        solver: ``"fast"`` or ``"osqp"``, the solver of Eq. 20.
        seed: of the random agreement batch.
    """
    return BinarizeBiSE(method, last_layer, inputs, solver, seed)

