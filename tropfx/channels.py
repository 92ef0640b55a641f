"""The channel-dependency graph of a traced model: which channel dims must be resized together.

``ChannelGraph(gm)`` follows every value that carries channels through the FX graph in order and
gives each output channel of a mixing layer (:mod:`tropfx.layers`: Linear / ConvNd /
ConvTransposeNd) a *slot*. Channel-wise nodes (BatchNorm, activations, pooling, dropout,
depthwise convolutions, flatten, transpose, reductions over other dims) pass slots on; ``cat``
concatenates them and ``split`` / ``chunk`` slice them with their offsets; elementwise joins
(``add`` / ``sub`` / ``mul`` between branches, as in residual blocks and squeeze-excitation) unite
the slots they add position by position (networkx's union-find). A :class:`Group` is then the
set of mixing layers whose output channels are united: they must be resized together, with every
member -- producers (output channels and bias), channel-wise layers on the path (BatchNorm,
depthwise convolutions), consumers (input channels of the next layers; a Linear after a flatten
reads ``spatial`` features per channel) and hard-coded flattening views -- and the slice each owns.

Groups that a member reads other than whole -- interleaved with each other by a channel shuffle
over a concat, or cut by a chunk, as in ShuffleNet v2 -- become one *joint* group whose
:class:`Layout` replays the graph on channel ids to tell, for any new channel counts, which
member reads which channel where (an extension of ours, outside the TropNNC paper).

Anything the graph cannot follow (the model input or output, an unknown op, a reshape that splits
the channel dim, a shared module) *freezes* the groups whose slots reach it, with the reason.
:func:`resize_channels` rewrites every member of a group to new per-channel rows (merged, kept,
duplicated), the graph surgery any structured pass can use.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import torch
from networkx.utils import UnionFind
from torch import Tensor, fx, nn

from tropfx.errors import InputError
from tropfx.layers import FUNCTIONS, METHODS, layer_spec, sync_sizes
from tropfx.rewrite import tensor_shape

_SHUFFLES = (torch.channel_shuffle, torch.native_channel_shuffle, nn.functional.channel_shuffle)

__all__ = ["ChannelGraph", "Flow", "Group", "Layout", "Member", "Part", "read_rows",
           "resize_channels"]


@dataclass
class Flow:
    """The channels a value carries: ``slots[i]`` is the slot at position ``i`` of dim ``axis``
    (negative: counted from the end, while the rank is unknown). A flattened value holds
    ``spatial`` consecutive features per channel."""

    slots: Tensor
    axis: int
    ndim: int | None
    spatial: int = 1
    grid: Tensor | None = None  # inside a channel shuffle: the slots over dims axis, axis + 1

    def dim(self) -> int | None:
        if self.axis >= 0:
            return self.axis
        return None if self.ndim is None else self.axis % self.ndim


@dataclass(eq=False)
class Member:
    """A node that owns channels: ``role`` is ``"producer"`` (output channels of a mixing layer),
    ``"consumer"`` (its input channels), ``"depthwise"``, ``"batchnorm"`` or ``"view"`` (a
    hard-coded flattening view, replaced by ``flatten`` on resize). ``segments`` split its
    channel dim into ``[group, size]`` runs, updated as groups are resized."""

    node: fx.Node
    role: str
    slots: Tensor
    spatial: int = 1
    fold: fx.Node | None = None  # a producer's BatchNorm that can be folded into it
    segments: list[list] = field(default_factory=list)

    @property
    def target(self) -> str:
        return str(self.node.target)


@dataclass(eq=False)
class Part:
    """A group's share of a member: the segment ``segment`` of its channel dim."""

    member: Member
    segment: int
    shuffle: int | None = None  # it reads the group through a channel shuffle of this many groups
    index: Tensor | None = None  # a joint group (:class:`Layout`): its channel at each position
    joint: Layout | None = None

    @property
    def offset(self) -> int:
        """Where the share starts now (earlier segments may have been resized)."""
        return sum(size for _, size in self.member.segments[:self.segment])

    @property
    def size(self) -> int:
        return self.member.segments[self.segment][1]


@dataclass(eq=False)
class Group:
    """Channel dims that must be resized together: ``size`` channels, ordered as the first
    producer's; ``parts`` name every member's share. ``frozen``: why it cannot be resized
    (``None``: it can). ``cells``: for grouped convolutions, the block of every channel (merges
    stay inside a block and every block keeps the same size). ``theory``: ``None`` when the
    TropNNC paper's conditions hold (one producer, then only ReLU, pooling, dropout, flatten and
    concatenation up to the consumers, a ReLU on every path; TropNNC §3.2, §6), else why not.
    ``layout``: for a *joint* group -- the channels of several producers that a member reads
    interleaved or cut (ShuffleNet v2's concat -> channel shuffle -> chunk) -- how they travel;
    its parts then carry ``index`` (see :class:`Layout`)."""

    name: str
    size: int
    parts: list[Part]
    frozen: str | None = None
    cells: Tensor | None = None
    theory: str | None = None
    region: list[fx.Node] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # what the region's nodes are
    layout: Layout | None = None  # several producers' channels interleaved or cut (ShuffleNet v2)

    def role(self, role: str) -> list[Part]:
        return [p for p in self.parts if p.member.role == role]

    @property
    def producers(self) -> list[str]:
        return [p.member.target for p in self.role("producer")]

    @property
    def consumers(self) -> list[str]:
        return list(dict.fromkeys(p.member.target for p in self.role("consumer")))


# what takes a group outside the paper's conditions (TropNNC §3.2, §6)
_OUTSIDE = {"depthwise": "a depthwise convolution", "join": "an elementwise join",
            "elementwise": "an activation that is not a ReLU", "reduce": "a reduction",
            "transpose": "a transpose", "split": "a split"}


class _Stop(Exception):
    """The graph cannot follow the channels through a node; the message says why."""


class ChannelGraph:
    """The channel-dependency graph of ``gm`` (shapes from ``node.meta["tensor_meta"]`` where
    shape propagation ran; without them, flatten and view freeze what reaches them)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.flows: dict[fx.Node, Flow | list[Flow]] = {}
        self.kinds: dict[fx.Node, str] = {}
        self.members: list[Member] = []
        self._scalars: set[fx.Node] = set()
        self._uf = UnionFind()
        self._frozen: dict[int, str] = {}
        self._shuffles: set[int] = set()  # the group counts of the channel shuffles seen
        self._count = 0
        self._calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self._attrs = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
        for node in gm.graph.nodes:
            self._visit(node)
        self.groups = self._resolve()

    # ------------------------------------------------------------------ propagation

    def _slots(self, n: int, frozen: str | None = None) -> Tensor:
        slots = torch.arange(self._count, self._count + n)
        self._count += n
        if frozen is not None:
            self._freeze(slots, frozen)
        return slots

    def _freeze(self, flow: Flow | list | Tensor, reason: str) -> None:
        if isinstance(flow, list):
            for f in flow:
                self._freeze(f, reason)
            return
        slots = flow.slots if isinstance(flow, Flow) else flow
        for s in slots.tolist():
            self._frozen.setdefault(s, reason)

    def _union(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self._uf.union(x, y)

    def _visit(self, node: fx.Node) -> None:
        ins = [(a, self.flows[a]) for a in node.all_input_nodes if a in self.flows]
        if node.op in ("placeholder", "get_attr"):
            return
        if node.op == "output":
            for _, flow in ins:
                self._freeze(flow, "its channels reach the model output")
            return
        if node.op == "call_method" and node.target in ("size", "dim") or \
                (node.op == "call_function" and node.all_input_nodes
                 and all(a in self._scalars for a in node.all_input_nodes)):
            self._scalars.add(node)  # shape arithmetic: x.size(0) // 2
            return
        if not ins and node.op != "call_module":
            return
        try:
            if any(isinstance(f, Flow) and f.grid is not None for _, f in ins):
                out = self._grid(node, ins)
            elif node.op == "call_function" and node.target in _SHUFFLES or \
                    node.op == "call_module" and isinstance(self.modules[node.target],
                                                            nn.ChannelShuffle):
                out = self._shuffle(node, ins)
            else:
                out = self._rule(node, ins)
        except _Stop as why:
            for _, flow in ins:
                self._freeze(flow, str(why))
            return
        if out is not None:
            self.flows[node] = out

    def _rule(self, node: fx.Node, ins: list) -> Flow | list[Flow] | None:
        if node.op == "call_module":
            return self._module(node, ins)
        if node.op == "call_function":
            kind = FUNCTIONS.get(node.target)
            name = getattr(node.target, "__name__", str(node.target))
            if node.target is operator.getitem:
                return self._getitem(node, ins)
        else:
            kind = METHODS.get(node.target)
            name = f".{node.target}()"
        if kind is None:
            raise _Stop(f"its channels reach {node.name} ({name}), which is not known to be "
                        "channel-wise; register it in tropfx.layers.FUNCTIONS / METHODS")
        self.kinds[node] = kind
        if kind == "meta":
            self._scalars.add(node)
            return None
        if kind == "join":
            return self._join(node)
        if kind == "cat":
            return self._cat(node)
        flow = self._main(node, ins)
        if kind in ("relu", "elementwise", "passthrough"):
            return self._like(flow, node)
        if kind == "pool":
            self._expect_channels(flow, node, "pools")
            return self._like(flow, node)
        return getattr(self, f"_{kind}")(node, flow)

    def _main(self, node: fx.Node, ins: list) -> Flow:
        """The flow of the node's first argument, refusing channels anywhere else."""
        first = node.args[0] if node.args else None
        if len(ins) != 1 or ins[0][0] is not first or isinstance(ins[0][1], list):
            raise _Stop(f"{node.name} reads the channels other than as its input")
        return ins[0][1]

    def _like(self, flow: Flow, node: fx.Node) -> Flow:
        shape = tensor_shape(node)
        return Flow(flow.slots, flow.axis, len(shape) if shape is not None else flow.ndim,
                    flow.spatial)

    def _expect_channels(self, flow: Flow, node: fx.Node, verb: str) -> None:
        if flow.dim() != 1 or flow.spatial != 1:
            raise _Stop(f"{node.name} {verb} across the channels (they are not dim 1 here)")

    def _module(self, node: fx.Node, ins: list) -> Flow | None:
        target, module = node.target, self.modules[node.target]
        spec = layer_spec(module)
        desc = f"{target} ({type(module).__name__})"
        if spec is None:
            raise _Stop(f"its channels reach {desc}, which tropfx does not know; register it "
                        "with tropfx.layers.register_layer")
        self.kinds[node] = spec.kind if not spec.relu else "relu"
        if spec.passthrough:
            self.kinds[node] = "passthrough"
        shared = self._calls[target] > 1
        direct = any(a == target or a.startswith(target + ".") for a in self._attrs)
        if spec.kind == "mixing":
            return self._mixing(node, ins, module, spec, desc, shared or direct)
        if shared and spec.per_channel:  # a shared ReLU or pooling holds no channels
            raise _Stop(f"{desc} is called {self._calls[target]} times (shared); its channels "
                        "cannot shrink for one call only")
        if spec.kind == "opaque":
            raise _Stop(f"its channels reach {desc}, whose channels cannot be resized")
        if not ins:
            return None
        flow = self._main(node, ins)
        if spec.kind == "elementwise":
            return self._like(flow, node)
        if spec.kind == "flatten":
            return self._flatten(node, flow, module.start_dim, module.end_dim)
        self._expect_channels(flow, node, "acts")
        if spec.per_channel:
            if not spec.linear:
                raise _Stop(f"its channels reach {desc}; merging its per-channel tensors is "
                            "not defined")
            if getattr(module, "training", False) or getattr(module, "running_mean", 0) is None:
                raise _Stop(f"BatchNorm {desc} uses batch statistics (training mode or "
                            "track_running_stats=False); call model.eval() first")
            if direct:
                raise _Stop(f"the parameters of {desc} are also read directly by the graph")
            self.kinds[node] = "batchnorm"
            member = Member(node, "batchnorm", flow.slots)
            prev = node.args[0]
            producer = next((m for m in self.members if m.node is prev and m.role == "producer"),
                            None)
            if producer is not None and len(prev.users) == 1 and not \
                    layer_spec(self.modules[prev.target]).transposed:
                producer.fold = node
            self.members.append(member)
        return self._like(flow, node)

    def _mixing(self, node: fx.Node, ins: list, module: nn.Module, spec, desc: str,
                locked: bool) -> Flow:
        groups = getattr(module, "groups", 1) if spec.grouped else 1
        w = module.weight
        n_out = w.shape[spec.out_dim] * (groups if spec.transposed else 1)
        n_in = w.shape[spec.in_dim] * (1 if spec.transposed else groups)
        shape = tensor_shape(node)
        ndim = len(shape) if shape is not None else (w.dim() if spec.axis == 1 else None)
        why = None
        if locked:
            why = (f"{desc} is called {self._calls[node.target]} times (shared) or its parameters "
                   "are read directly by the graph; its channels cannot shrink")
        elif not spec.linear:
            why = (f"its channels reach {desc}, a max-plus / morphological layer: merging "
                   "channels is not defined for it")
        elif spec.transposed and groups > 1:
            why = f"{desc} is a grouped transposed convolution"
        depthwise = not spec.transposed and groups > 1 and groups == n_in
        if depthwise and n_out != n_in:
            why = f"{desc} is a depthwise convolution with a channel multiplier"
        flow = None
        if ins:
            if why is not None:
                raise _Stop(why)
            flow = self._main(node, ins)
        if why is None and depthwise:
            self.kinds[node] = "depthwise"
            if flow is None:  # on the model input: its channels are the input's
                return Flow(self._slots(n_out, "its channels are the model input's"), 1, ndim)
            self._expect_channels(flow, node, "convolves")
            self.members.append(Member(node, "depthwise", flow.slots))
            return Flow(flow.slots, 1, ndim)
        if flow is not None:
            if spec.axis == 1:
                self._expect_channels(flow, node, "reads")
            else:
                in_shape = tensor_shape(node.args[0])
                last = None if in_shape is None else len(in_shape) - 1
                if flow.dim() is None and flow.axis != -1 or \
                        flow.dim() is not None and flow.dim() != last:
                    raise _Stop(f"{desc} reads the last dim, not the channels; flatten first"
                                if last is not None else
                                f"{desc} reads channels whose layout needs example_inputs")
            if len(flow.slots) * flow.spatial != n_in:
                raise _Stop(f"{desc} reads {n_in} features, not {len(flow.slots)} channels x "
                            f"{flow.spatial} positions")
            self.members.append(Member(node, "consumer", flow.slots, flow.spatial))
        self.kinds[node] = "producer"
        slots = self._slots(n_out, why)  # a frozen producer still names its (frozen) group
        self.members.append(Member(node, "producer", slots))
        return Flow(slots, spec.axis, ndim)

    def _getitem(self, node: fx.Node, ins: list) -> Flow | None:
        source, index = node.args
        flow = self.flows.get(source) if isinstance(source, fx.Node) else None
        if source in self._scalars:
            self._scalars.add(node)
            return None
        if isinstance(flow, list) and isinstance(index, int):
            self.kinds[node] = "passthrough"
            return flow[index]
        raise _Stop(f"{node.name} indexes a value that carries channels")

    def _join(self, node: fx.Node) -> Flow:
        shape = tensor_shape(node)
        out_ndim = len(shape) if shape is not None else None
        flows = []
        for a in (*node.args, *node.kwargs.values()):
            if not isinstance(a, fx.Node) or a in self._scalars:
                continue
            flow = self.flows.get(a)
            a_shape = tensor_shape(a)
            if flow is None:
                if a_shape is not None and math.prod(a_shape) == 1:
                    continue  # a one-element tensor: a scale, not channels
                raise _Stop(f"{node.name} joins them with {a.name}, whose channels are not "
                            "produced by a layer tropfx can resize")
            if isinstance(flow, list):
                raise _Stop(f"{node.name} joins a tuple")
            dim = flow.dim()
            if dim is not None and out_ndim is not None and flow.ndim is not None:
                dim += out_ndim - flow.ndim  # broadcasting aligns dims from the right
            flows.append((flow, dim if dim is not None else flow.axis))
        full = max(flows, key=lambda f: len(f[0].slots))
        for flow, dim in flows:
            if dim != full[1] or flow.spatial != full[0].spatial:
                raise _Stop(f"{node.name} joins channels that sit in different dims")
            if len(flow.slots) == len(full[0].slots):
                self._union(full[0].slots, flow.slots)
            else:  # e.g. a (N, 1, H, W) attention map broadcast over every channel
                self._freeze(flow, f"{node.name} broadcasts them across other channels")
        out = full[0]
        return Flow(out.slots, full[1], out_ndim if out_ndim is not None else out.ndim,
                    out.spatial)

    def _cat(self, node: fx.Node) -> Flow:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = tensor_shape(node)
        parts = []
        for t in tensors:
            flow = self.flows.get(t) if isinstance(t, fx.Node) else None
            if flow is None or isinstance(flow, list):
                t_shape = tensor_shape(t) if isinstance(t, fx.Node) else None
                if t_shape is None:
                    raise _Stop(f"{node.name} concatenates them with {getattr(t, 'name', t)}, "
                                "whose size is unknown without example_inputs")
                parts.append(None)
                continue
            parts.append(flow)
        known = [f for f in parts if f is not None]
        axis = known[0].dim()
        if axis is None or shape is None and dim < 0:
            raise _Stop(f"{node.name} concatenates channels whose layout needs example_inputs")
        ndim = len(shape) if shape is not None else known[0].ndim
        if any(f.dim() != axis or f.spatial != 1 for f in known):
            raise _Stop(f"{node.name} concatenates values whose channels sit in different dims")
        if dim % (ndim or dim + 1) != axis:  # along another dim: position i is one channel
            for f in known[1:]:
                self._union(known[0].slots, f.slots)
            if len(known) != len(parts):
                raise _Stop(f"{node.name} concatenates them with values of unknown channels")
            return Flow(known[0].slots, axis, ndim)
        slots = []
        for t, f in zip(tensors, parts, strict=True):
            slots.append(f.slots if f is not None else self._slots(
                tensor_shape(t)[axis], f"{node.name} concatenates them with {t.name}, whose "
                "channels are not produced by a layer tropfx can resize"))
        return Flow(torch.cat(slots), axis, ndim)

    def _split(self, node: fx.Node, flow: Flow) -> list[Flow]:
        sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get(
            "chunks", node.kwargs.get("split_size_or_sections", node.kwargs.get("split_size")))
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if isinstance(sizes, fx.Node) or flow.ndim is None or flow.dim() is None:
            raise _Stop(f"{node.name} splits them at offsets known only at run time")
        index = torch.arange(len(flow.slots) * flow.spatial)
        if dim % flow.ndim != flow.dim():
            pieces = (index.chunk(sizes) if node.target in ("chunk", torch.chunk)
                      else index.split(sizes))
            return [flow for _ in pieces]
        if flow.spatial != 1:
            raise _Stop(f"{node.name} splits flattened channels")
        pieces = index.chunk(sizes) if node.target in ("chunk", torch.chunk) else index.split(sizes)
        return [Flow(flow.slots[p], flow.axis, flow.ndim) for p in pieces]

    def _flatten(self, node: fx.Node, flow: Flow, start: int = 0, end: int = -1) -> Flow:
        if node.op != "call_module":
            args = [*node.args[1:], None, None][:2]
            start = node.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
            end = node.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
        in_shape = tensor_shape(node.args[0])
        if in_shape is None or flow.dim() is None:
            raise _Stop(f"{node.name} flattens them; the pass needs example_inputs to know how "
                        "many positions each channel has")
        nd, axis = len(in_shape), flow.dim()
        start, end = start % nd, end % nd
        if start == end:
            return Flow(flow.slots, axis, nd, flow.spatial)
        if axis < start or axis > end:
            return Flow(flow.slots, axis if axis < start else axis - (end - start),
                        nd - (end - start), flow.spatial)
        if start != axis or end != nd - 1 or flow.spatial != 1:
            raise _Stop(f"{node.name} flattens the channels together with the dims before them")
        self.kinds[node] = "flatten"
        return Flow(flow.slots, axis, axis + 1, math.prod(in_shape[axis + 1:]))

    def _view(self, node: fx.Node, flow: Flow) -> Flow:
        before, after = tensor_shape(node.args[0]), tensor_shape(node)
        axis = flow.dim()
        if before is None or after is None or axis is None:
            raise _Stop(f"its channels reach {node.name} ({node.target}); the pass needs "
                        "example_inputs to tell whether it keeps the channels")
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        if after[:axis] == before[:axis] and len(after) == axis + 1 and flow.spatial == 1 \
                and after[axis] == math.prod(before[axis:]):
            self.kinds[node] = "flatten"  # view(N, -1): a hard-coded size is replaced on resize
            self.members.append(Member(node, "view", flow.slots))
            return Flow(flow.slots, axis, axis + 1, math.prod(before[axis + 1:]))
        if after[:axis + 1] == before[:axis + 1] and flow.spatial == 1:
            literal = len(sizes) > axis and isinstance(sizes[axis], int) and sizes[axis] != -1
            if literal and before[axis] > 1:
                raise _Stop(f"{node.name} ({node.target}) hard-codes the channel count")
            return Flow(flow.slots, axis, len(after))
        if after[:axis] == before[:axis] and after[axis + 2:] == before[axis + 1:] and \
                flow.spatial == 1 and len(sizes) == len(after) and after[axis] > 1 and \
                after[axis] * after[axis + 1] == before[axis]:
            if isinstance(sizes[axis + 1], int) and sizes[axis + 1] != -1:
                raise _Stop(f"{node.name} ({node.target}) hard-codes the channels per shuffle "
                            "group; write it as num_channels // groups or -1")
            if after[axis + 1] == 1:
                raise _Stop(f"{node.name} ({node.target}) splits the channels into groups of one "
                            "(a shuffle in as many groups as channels cannot shrink)")
            self.kinds[node] = "shuffle"  # (N, C, ...) -> (N, g, C / g, ...): a shuffle begins
            return Flow(flow.slots, axis, len(after), grid=flow.slots.view(after[axis], -1))
        raise _Stop(f"{node.name} ({node.target} {tuple(before)} -> {tuple(after)}) reshapes the "
                    "channel dim other than as a channel shuffle; the graph does not follow it")

    def _shuffle(self, node: fx.Node, ins: list) -> Flow:
        """``nn.ChannelShuffle(g)`` / ``torch.channel_shuffle(x, g)``: the channels permuted."""
        flow = self._main(node, ins)
        self._expect_channels(flow, node, "shuffles")
        g = (self.modules[node.target].groups if node.op == "call_module" else
             node.args[1] if len(node.args) > 1 else node.kwargs.get("groups"))
        if not isinstance(g, int) or g < 1 or len(flow.slots) % g:
            raise _Stop(f"{node.name} shuffles {len(flow.slots)} channels in {g} groups")
        if g > 1 and g == len(flow.slots):  # the identity now, but not once resized
            raise _Stop(f"{node.name} shuffles {g} channels in {g} groups (groups of one "
                        "cannot shrink)")
        self.kinds[node] = "shuffle"
        self._shuffles.add(g)
        return Flow(flow.slots.view(g, -1).t().flatten(), 1, flow.ndim)

    def _grid(self, node: fx.Node, ins: list) -> Flow:
        """Inside the view / transpose / view spelling of a channel shuffle (ShuffleNet): the
        channels sit over two dims; only a transpose of the two and the view that merges them
        back are followed."""
        flow = self._main(node, ins)
        kind = (METHODS if node.op == "call_method" else FUNCTIONS).get(node.target) \
            if node.op != "call_module" else None
        self.kinds[node] = "shuffle"
        a = flow.axis
        if kind == "passthrough":
            return flow
        if kind == "transpose":
            dims = list(node.args[1:])
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = list(dims[0])
            nd = flow.ndim
            perm = list(range(nd))
            if node.target in ("transpose", torch.transpose) and len(dims) == 2 and \
                    all(isinstance(d, int) for d in dims):
                x, y = dims[0] % nd, dims[1] % nd
                perm[x], perm[y] = perm[y], perm[x]
            elif all(isinstance(d, int) for d in dims) and len(dims) == nd:
                perm = [d % nd for d in dims]
            if perm == list(range(nd)):
                return flow
            swap = list(range(nd))
            swap[a], swap[a + 1] = a + 1, a
            if perm == swap:
                return Flow(flow.slots, a, nd, grid=flow.grid.t().contiguous())
        if kind == "view":
            before, after = tensor_shape(node.args[0]), tensor_shape(node)
            sizes = node.args[1:]
            if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
                sizes = sizes[0]
            if before is not None and after is not None and after[:a] == before[:a] and \
                    after[a + 1:] == before[a + 2:] and after[a] == before[a] * before[a + 1]:
                if len(sizes) > a and isinstance(sizes[a], int) and sizes[a] != -1:
                    raise _Stop(f"{node.name} ({node.target}) hard-codes the channel count")
                slots = flow.grid.flatten()
                if not torch.equal(slots, flow.slots):
                    self._shuffles.add(flow.grid.shape[1])
                return Flow(slots, a, len(after))
        raise _Stop(f"{node.name} ({node.target}) acts on channels split over two dims inside a "
                    "channel shuffle; only a transpose of the two and the view back are followed")

    def _transpose(self, node: fx.Node, flow: Flow) -> Flow:
        nd, axis = flow.ndim, flow.dim()
        if nd is None or axis is None:
            raise _Stop(f"{node.name} moves dims; the pass needs example_inputs")
        dims = list(node.args[1:]) or list(node.kwargs.values())
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        if node.target in ("transpose", torch.transpose):
            perm = list(range(nd))
            a, b = dims[0] % nd, dims[1] % nd
            perm[a], perm[b] = perm[b], perm[a]
        else:
            perm = [d % nd for d in dims]
        if flow.spatial != 1 and perm[axis] != axis:
            raise _Stop(f"{node.name} moves flattened channels")
        return Flow(flow.slots, perm.index(axis), nd, flow.spatial)

    def _reduce(self, node: fx.Node, flow: Flow) -> Flow:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        nd, axis = flow.ndim, flow.dim()
        if dims is None or nd is None or axis is None or flow.spatial != 1:
            raise _Stop(f"{node.name} reduces over the channels")
        dims = [d % nd for d in ((dims,) if isinstance(dims, int) else dims)]
        if axis in dims:
            raise _Stop(f"{node.name} reduces over the channels")
        new = axis if keep else axis - sum(d < axis for d in dims)
        return Flow(flow.slots, new, nd if keep else nd - len(dims))

    # ------------------------------------------------------------------ groups

    def _resolve(self) -> list[Group]:
        total = self._count
        root = torch.tensor([self._uf[s] for s in range(total)], dtype=torch.long)
        frozen: dict[int, str] = {}
        for s, reason in self._frozen.items():
            frozen.setdefault(int(root[s]), reason)
        producers = [m for m in self.members if m.role == "producer"]
        links = nx.Graph()
        for i, m in enumerate(producers):
            links.add_node(("p", i))
            links.add_edges_from((("p", i), ("c", int(r))) for r in root[m.slots].unique())
        order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        gid = torch.full((total,), -1, dtype=torch.long)
        jid = torch.full((total,), -1, dtype=torch.long)
        groups: list[Group] = []
        for comp in sorted(nx.connected_components(links),
                           key=lambda c: min(order[producers[i].node] for k, i in c if k == "p")):
            prods = sorted((producers[i] for k, i in comp if k == "p"),
                           key=lambda m: order[m.node])
            canon = root[prods[0].slots]
            n = len(canon)
            group = Group(prods[0].target, n, [])
            reasons = [frozen[int(r)] for r in canon.unique() if int(r) in frozen]
            if len(canon.unique()) != n:
                group.frozen = (f"its channels are joined with each other (an add of "
                                f"{prods[0].target}'s output with a permutation of itself)")
            elif sum(1 for k, _ in comp if k == "c") != n:
                group.frozen = "its producers are joined with each other's channels unevenly"
            elif reasons:
                group.frozen = reasons[0]
            g = len(groups)
            gid[canon], jid[canon] = g, torch.arange(n)
            groups.append(group)
        gid, jid, groups = self._join_interleaved(root, gid, jid, groups)
        for m in self.members:
            self._segment(m, gid[root[m.slots]], jid[root[m.slots]], groups)
        for node, flow in self.flows.items():  # graph order
            for f in flow if isinstance(flow, list) else [flow]:
                for g in gid[root[f.slots]].unique().tolist():
                    if g >= 0 and node not in groups[g].region:
                        groups[g].region.append(node)
        for group in groups:
            group.kinds = [self.kinds.get(node, "") for node in group.region]
            if group.layout is not None:
                self._check_joint(group)
            elif group.frozen is None:
                self._cells(group)
            group.theory = self._theory(group)
        return groups

    def _join_interleaved(self, root: Tensor, gid: Tensor, jid: Tensor,
                          groups: list[Group]) -> tuple[Tensor, Tensor, list[Group]]:
        """Groups that a member reads other than whole (interleaved with each other by a channel
        shuffle over a concat, or cut by a chunk: ShuffleNet v2) become one *joint* group: the
        channels of all of them, in order, with a :class:`Layout` that replays how they travel."""
        links = UnionFind()
        cut: set[int] = set()
        for m in self.members:
            bad = self._irregular(gid[root[m.slots]], jid[root[m.slots]], groups)
            cut |= bad
            for k in bad:
                links.union(min(bad), k)
        if not cut:
            return gid, jid, groups
        # a group concatenated with a cut one moves the cuts with its size (a chunk of
        # cat(x1, branch(x2))): it joins too, as does anything in a value with those channels
        values = [f.slots for flow in self.flows.values()
                  for f in (flow if isinstance(flow, list) else [flow])]
        grown = True
        while grown:
            grown = False
            for slots in values:
                ks = set(gid[root[slots]].unique().tolist()) - {-1}
                if len(ks) > 1 and ks & cut:
                    for k in ks:
                        links.union(min(cut & ks), k)
                    grown = grown or bool(ks - cut)
                    cut |= ks
        comps = {k: sorted(c) for c in links.to_sets() for k in c}
        newk = torch.full((len(groups) + 1,), -1, dtype=torch.long)  # index -1 stays -1
        offset = torch.zeros(len(groups) + 1, dtype=torch.long)
        out: list[Group] = []
        for k, group in enumerate(groups):
            if k not in cut:
                newk[k] = len(out)
                out.append(group)
                continue
            comp = comps[k]
            if k != comp[0]:
                continue
            sizes = [groups[c].size for c in comp]
            joint = Group(group.name, sum(sizes), [], next(
                (groups[c].frozen for c in comp if groups[c].frozen is not None), None))
            joint.layout = Layout(self, joint, sizes)
            start = 0
            for c, size in zip(comp, sizes, strict=True):
                newk[c], offset[c] = len(out), start
                start += size
            out.append(joint)
        return newk[gid], torch.where(gid >= 0, jid + offset[gid], -1), out

    def _irregular(self, g: Tensor, j: Tensor, groups: list[Group]) -> set[int]:
        """The groups a member reads other than whole, in order or through a channel shuffle
        that :meth:`_segment` follows (the cases where it would freeze them)."""
        n = len(g)
        change = torch.ones(n, dtype=torch.bool)
        change[1:] = g[1:] != g[:-1]
        bounds = [*torch.nonzero(change).flatten().tolist(), n]
        bad, shuffled, other = set(), False, set()
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k, size = int(g[a]), b - a
            if k < 0:
                continue
            whole = size == groups[k].size
            if whole and torch.equal(j[a:b], torch.arange(size)):
                continue
            if any(whole and size % s == 0 and torch.equal(j[a:b], _shuffled(size, s))
                   for s in self._shuffles):
                shuffled = True
            else:
                other.add(k)
        if shuffled:
            return other
        starts = torch.ones(n, dtype=torch.bool)  # as _plain cuts the runs
        starts[1:] = (g[1:] != g[:-1]) | ((g[1:] >= 0) & ((j[1:] != j[:-1] + 1) | (j[1:] == 0)))
        bounds = [*torch.nonzero(starts).flatten().tolist(), n]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(g[a])
            if k >= 0 and (int(j[a]) != 0 or b - a != groups[k].size):
                bad.add(k)
        return bad

    def _check_joint(self, group: Group) -> None:
        """Freeze a joint group that :meth:`Layout.replay` cannot rewrite, with the reason."""
        for part in group.parts:
            m = part.member
            if group.frozen is not None:
                return
            if len(part.index.unique()) != len(part.index):
                group.frozen = f"{m.node.name} reads some of its channels twice"
            elif m.role in ("producer", "consumer") and m.node.op == "call_module" and \
                    getattr(self.modules[m.target], "groups", 1) > 1:
                group.frozen = (f"grouped convolution {m.target} reads or produces channels "
                                "interleaved by a channel shuffle")
            elif m.role == "producer" and not torch.equal(
                    part.index, torch.arange(int(part.index[0]), int(part.index[0]) + len(part.index))):
                group.frozen = f"{m.node.name} produces its channels permuted"
        if group.frozen is not None:
            return
        layout = group.layout
        try:
            again = layout.replay(layout.sizes)
        except _Stop as why:
            group.frozen = f"a channel shuffle interleaves or cuts its channels: {why}"
            return
        if not all(torch.equal(a, p.index) for a, p in zip(again, group.parts, strict=True)):
            group.frozen = ("a channel shuffle interleaves or cuts its channels in a way the graph "
                            "could not replay")

    def _segment(self, member: Member, g: Tensor, j: Tensor, groups: list[Group]) -> None:
        """Cut a member's channel dim into parts: a run of a joint group's channels (in any order)
        is one part with ``index``; the rest as :meth:`_segment_runs` cuts it."""
        joint = torch.tensor([grp.layout is not None for grp in groups] + [False])
        key = torch.where(joint[g], g, -2)
        if not bool((key >= 0).any()):
            self._segment_runs(member, g, j, groups)
            return
        change = torch.ones(len(g), dtype=torch.bool)
        change[1:] = key[1:] != key[:-1]
        bounds = [*torch.nonzero(change).flatten().tolist(), len(g)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(key[a])
            if k < 0:
                self._segment_runs(member, g[a:b], j[a:b], groups)
                continue
            member.segments.append([k, b - a])
            groups[k].parts.append(Part(member, len(member.segments) - 1, index=j[a:b].clone(),
                                        joint=groups[k].layout))

    def _segment_runs(self, member: Member, g: Tensor, j: Tensor, groups: list[Group]) -> None:
        """Cut a member's channel dim into runs of one group in canonical order (0..n-1); a
        run that holds a whole group through a channel shuffle is one part (``Part.shuffle``)."""
        n = len(g)
        change = torch.ones(n, dtype=torch.bool)
        change[1:] = g[1:] != g[:-1]
        bounds = [*torch.nonzero(change).flatten().tolist(), n]
        runs = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k, size = int(g[a]), b - a
            whole = k >= 0 and size == groups[k].size
            runs.append(None if whole and torch.equal(j[a:b], torch.arange(size)) else next(
                (s for s in sorted(self._shuffles) if whole and size % s == 0
                 and torch.equal(j[a:b], _shuffled(size, s))), -1))
        if all(r is None or r == -1 for r in runs):
            self._plain(member, g, j, groups)
            return
        if any(r == -1 for r in runs):
            for k in {int(x) for x in g.tolist() if x >= 0}:
                groups[k].frozen = groups[k].frozen or (
                    f"{member.node.name} reads them beside channels shuffled in an order the "
                    "graph does not follow")
        for a, b, shuffle in zip(bounds[:-1], bounds[1:], runs, strict=True):
            k = int(g[a])
            member.segments.append([k if k >= 0 else None, b - a])
            if k >= 0:
                groups[k].parts.append(Part(member, len(member.segments) - 1, shuffle))

    def _plain(self, member: Member, g: Tensor, j: Tensor, groups: list[Group]) -> None:
        n = len(g)
        starts = torch.ones(n, dtype=torch.bool)
        starts[1:] = (g[1:] != g[:-1]) | ((g[1:] >= 0) & ((j[1:] != j[:-1] + 1) | (j[1:] == 0)))
        bounds = [*torch.nonzero(starts).flatten().tolist(), n]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(g[a])
            member.segments.append([k if k >= 0 else None, b - a])
            if k < 0:
                continue
            group = groups[k]
            if int(j[a]) != 0 or b - a != group.size:
                group.frozen = group.frozen or (
                    f"{member.node.name} reads only channels {int(j[a])}..{int(j[b - 1])} of its "
                    f"{group.size} (a split, chunk or permutation cuts the group)")
            group.parts.append(Part(member, len(member.segments) - 1))

    def _cells(self, group: Group) -> None:
        keys = []
        for part in group.parts:
            m = part.member
            if part.shuffle is not None:  # g equal blocks keep it a shuffle of the new count
                if m.role == "consumer" and m.node in {p.member.node for p in group.parts
                                                       if p.member.role == "producer"}:
                    group.frozen = (f"{m.node.name} reads through a channel shuffle the "
                                    "channels it produces")
                    return
                if getattr(self.modules.get(m.target), "groups", 1) > 1 and m.role != "depthwise":
                    group.frozen = (f"grouped convolution {m.target} reads the channels through "
                                    "a channel shuffle")
                    return
                keys.append(torch.arange(group.size) // (group.size // part.shuffle))
            if m.role not in ("producer", "consumer") or m.node.op != "call_module":
                continue
            module = self.modules[m.target]
            groups = getattr(module, "groups", 1)
            if groups == 1:
                continue
            if m.role == "consumer" and len(m.segments) != 1:
                group.frozen = (f"grouped convolution {m.target} reads the channels of several "
                                "groups; its blocks could not keep equal sizes")
                return
            keys.append(torch.arange(group.size) // (group.size // groups))
        if not keys:
            return
        cells = torch.unique(torch.stack(keys, 1), dim=0, return_inverse=True)[1]
        counts = torch.bincount(cells)
        if not bool((counts == counts[0]).all()):
            group.frozen = "its grouped convolutions split the channels into unequal blocks"
            return
        group.cells = cells

    def _theory(self, group: Group) -> str | None:
        prods = group.role("producer")
        if group.layout is not None:
            return (f"a channel shuffle interleaves or cuts the channels of {len(prods)} layers "
                    "(ShuffleNet v2); merges stay within one layer's channels that take the same "
                    "path (ours, not the paper's)")
        if len(prods) > 1:
            joins = [n.name for n in group.region if self.kinds.get(n) == "join"]
            return (f"{len(prods)} layers produce its channels, joined by "
                    f"{', '.join(joins[:3]) or 'an elementwise op'} (a residual add or another "
                    "elementwise join)")
        folded = prods[0].member.fold
        relus = set()
        for node in group.region:
            kind = self.kinds.get(node)
            if kind == "relu":
                relus.add(node)
            elif kind == "batchnorm" and node is not folded:
                return f"BatchNorm {node.target} is not right after the layer"
            elif kind in _OUTSIDE:
                return f"{_OUTSIDE[kind]} ({node.name}) is on the path"
        paths = nx.DiGraph((a, u) for a in group.region for u in a.users if a not in relus)
        start = prods[0].member.node
        for part in group.role("consumer"):
            end = part.member.node
            if start in paths and end in paths and nx.has_path(paths, start, end):
                return f"no ReLU between it and {end.target} (TropNNC §3.2 needs one)"
        return None

    def frozen_reasons(self) -> dict[str, str]:
        """``{group name: reason}`` of every frozen group."""
        return {g.name: g.frozen for g in self.groups if g.frozen is not None}


# ---------------------------------------------------------------------- joint groups

_REPLAYED = frozenset(("cat", "split", "view", "flatten", "transpose", "shuffle"))
_IDS = torch.float64  # channel ids as activations: exact integers, any op runs on them


class Layout:
    """How a joint group's channels travel, replayed for any new sizes (ours, not the paper's).

    In ShuffleNet v2 a unit concatenates its input's first half with a branch's output, shuffles
    the two (channel ``i`` of each goes to positions ``2i``, ``2i + 1``) and the next unit chunks
    the result: every producer's channels end up interleaved with the others' and cut, so that
    channel ``i`` of one producer is read by the branch of unit ``j`` (or leaves the stage) for
    ``i`` in an interval that depends on the channel count. The joint group holds the channels of
    all ``sizes`` (one run per producer group, in order); a part's ``index`` names the channel at
    each of its positions.

    :meth:`replay` runs the group's region of the graph on channel ids instead of activations
    (the concat, split, view, transpose and shuffle nodes for real, channel-wise nodes by passing
    the ids on), with every producer group resized, and tells which channel each member reads
    where. A channel's *path* is the set of parts that read it; :meth:`labels` clusters each
    producer's channels per path, into as many new channels as take that path after resizing,
    so every member is rewritten consistently. A path that no new channel takes is dropped
    (lossy; it happens when the halving of the channel count does not scale, e.g. 48 channels
    cut by 7 chunks)."""

    def __init__(self, graph: ChannelGraph, group: Group, sizes: list[int]):
        self.graph, self.group, self.sizes = graph, group, list(sizes)
        self.new: list[Tensor] | None = None  # per part, set by labels() / plan() for resizing
        self.chosen: list[int] | None = None
        self.why = ""  # why the last plan() failed
        self.moved = self.dropped = 0  # what the last plan() lost (see note)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def _owner(self, index: Tensor, sizes: list[int]) -> Tensor:
        """The producer group (0, 1, ...) of each channel id."""
        ends = torch.tensor(sizes).cumsum(0)
        return torch.searchsorted(ends, index, right=True)

    # ------------------------------------------------------------------ replay

    def replay(self, sizes: list[int]) -> list[Tensor]:
        """For every part of the group, the channel ids at its positions once every producer
        group has ``sizes[c]`` channels (numbered in order). Raises ``_Stop`` when the graph
        cannot be run so (e.g. a hard-coded split)."""
        graph, group = self.graph, self.group
        starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        emit = {}
        for part in group.role("producer"):
            c = int(self._owner(part.index[:1], self.sizes)[0])
            emit[part.member.node] = torch.arange(starts[c], starts[c] + sizes[c])
        by_node = defaultdict(list)
        for part in group.parts:
            by_node[part.member.node].append(part)
        region = set(group.region)
        env: dict[fx.Node, object] = {}
        reads: dict[int, Tensor] = {}
        nodes = list(graph.gm.graph.nodes)
        order = {node: i for i, node in enumerate(nodes)}
        for i, node in enumerate(nodes):
            for a in list(env):  # free what no later node reads (activations can be large)
                if isinstance(a, fx.Node) and all(order[u] < i for u in a.users):
                    del env[a]
            for part in by_node.get(node, []):
                if part.member.role != "producer" and id(part.member) not in reads:
                    src = part.member.node.args[0]
                    reads[id(part.member)] = self._vector(self._value(src, env), src,
                                                          part.member.spatial)
            if node in emit:
                env[node] = self._broadcast(emit[node].to(_IDS), node)
                for part in by_node.get(node, []):
                    if part.member.role == "producer":
                        reads[id(part.member)] = emit[node]
            elif node in region:
                env[node] = self._step(node, env)
        out = []
        seen: dict[int, int] = defaultdict(int)
        for part in group.parts:
            vec = reads.get(id(part.member))
            if vec is None:
                raise _Stop(f"{part.member.node.name} was not reached")
            mine = vec >= 0
            change = torch.ones(len(vec), dtype=torch.bool)
            change[1:] = mine[1:] != mine[:-1]
            runs = torch.nonzero(change & mine).flatten().tolist()
            i = seen[id(part.member)]
            seen[id(part.member)] += 1
            if i >= len(runs):
                raise _Stop(f"{part.member.node.name} reads fewer runs of the channels")
            a = runs[i]
            rest = torch.nonzero(~mine[a:]).flatten()
            out.append(vec[a:a + int(rest[0]) if len(rest) else len(vec)].clone())
        return out

    def _value(self, a: object, env: dict) -> object:
        if not isinstance(a, fx.Node):
            return a
        if a in env:
            return env[a]
        if a in self.graph._scalars and a.op in ("call_function", "call_method"):
            env[a] = self._run(a, env)
            return env[a]
        shape = tensor_shape(a)
        if shape is None:
            raise _Stop(f"{a.name}'s value is unknown without example_inputs")
        env[a] = torch.full(tuple(shape), -1.0, dtype=_IDS)  # channels of other groups
        return env[a]

    def _run(self, node: fx.Node, env: dict) -> object:
        args = fx.node.map_arg(node.args, lambda a: self._value(a, env))
        kwargs = fx.node.map_arg(node.kwargs, lambda a: self._value(a, env))
        try:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return self.graph.modules[node.target](*args, **kwargs)
        except Exception as e:  # e.g. a hard-coded split that the new sizes do not fit
            raise _Stop(f"{node.name} ({node.target}) does not run with the new channel counts "
                        f"({type(e).__name__}: {e})") from e

    def _step(self, node: fx.Node, env: dict) -> object:
        kind = self.graph.kinds.get(node)
        module = self.graph.modules.get(node.target) if node.op == "call_module" else None
        if node.target is operator.getitem or (kind in _REPLAYED and (
                module is None or isinstance(module, (nn.ChannelShuffle, nn.Flatten)))):
            return self._run(node, env)
        flow = self.graph.flows.get(node)
        inputs = [a for a in node.all_input_nodes if a in env and isinstance(env[a], Tensor)
                  and a in self.graph.flows and not isinstance(self.graph.flows[a], list)]
        if not inputs or not isinstance(flow, Flow):
            raise _Stop(f"{node.name} cannot be replayed")
        vecs = [self._vector(env[a], a) for a in inputs]
        known = [v for v in vecs if bool((v >= 0).any())]
        if kind == "join" and any(not torch.equal(v, known[0]) for v in known[1:]):
            raise _Stop(f"{node.name} joins channels that no longer line up")
        return self._broadcast((known or vecs)[0].to(_IDS), node)

    def _vector(self, t: object, node: fx.Node, spatial: int = 1) -> Tensor:
        """The channel ids along the channel dim of ``node``'s value ``t``."""
        flow = self.graph.flows.get(node)
        if not isinstance(t, Tensor) or not isinstance(flow, Flow) or flow.grid is not None \
                or flow.dim() is None:
            raise _Stop(f"{node.name}'s channels cannot be read back")
        axis = flow.dim()
        v = t[(0,) * axis + (slice(None),) + (0,) * (t.dim() - axis - 1)]
        step = max(flow.spatial, spatial)
        return v[::step].round().long()

    def _broadcast(self, ids: Tensor, node: fx.Node) -> Tensor:
        flow, shape = self.graph.flows.get(node), tensor_shape(node)
        if not isinstance(flow, Flow) or shape is None or flow.dim() is None or \
                flow.grid is not None or flow.spatial != 1:
            raise _Stop(f"{node.name}'s channels cannot be replayed")
        shape, axis = list(shape), flow.dim()
        shape[axis] = len(ids)
        view = [1] * len(shape)
        view[axis] = -1
        return ids.view(view).expand(shape).contiguous()

    # ------------------------------------------------------------------ plan

    def _paths(self, index: list[Tensor], sizes: list[int]) -> list[tuple[int, frozenset]]:
        """Every channel's producer group and the parts that read it."""
        readers: list[set[int]] = [set() for _ in range(sum(sizes))]
        for i, idx in enumerate(index):
            for j in idx.tolist():
                readers[j].add(i)
        owner = self._owner(torch.arange(sum(sizes)), sizes).tolist()
        return [(owner[j], frozenset(r)) for j, r in enumerate(readers)]

    def plan(self, sizes: list[int], grow: bool = False,
             move: bool = False) -> list[tuple[Tensor, Tensor]] | None:
        """With ``sizes[c]`` channels per producer group: ``(old channels, new channels)`` of
        every path (the new ones may be fewer, or none: the path is dropped; more only with
        ``grow``), or ``None`` when the graph does not run with these sizes, or a new channel
        takes a path no old one took and not ``move``. With ``move``, such a channel takes the
        old channels of the nearest path of its producer group (most parts in common, then
        nearest in relative position; lossy: the parts it no longer reaches lose them, the new
        ones read it with zero weights). Sets ``new`` (every part's new channel ids) for
        :func:`resize_channels`, and ``moved`` / ``dropped`` (channels on a path no old / new
        one takes)."""
        try:
            new = self.replay(sizes)
        except _Stop as why:
            self.why = str(why)
            return None
        cells: dict[tuple, tuple[list[int], list[int]]] = {}
        for j, key in enumerate(self._paths([p.index for p in self.group.parts], self.sizes)):
            cells.setdefault(key, ([], []))[0].append(j)
        old_at = self._relative(self.sizes)
        new_at = self._relative(sizes)
        moved = 0
        for q, key in enumerate(self._paths(new, sizes)):
            if key not in cells:
                self.why = ("with these channel counts a channel would take a path through the "
                            "graph that none takes now")
                near = [k for k in cells if k[0] == key[0]]
                if not move or not near:
                    return None
                key = max(near, key=lambda k: (len(k[1] & key[1]), -abs(
                    float(old_at[cells[k][0]].mean()) - float(new_at[q]))))
                moved += 1
            cells[key][1].append(q)
        if not grow and any(len(n) > len(o) for o, n in cells.values()):
            self.why = "with these channel counts more channels would take a path than take it now"
            return None
        self.new, self.chosen = new, list(sizes)
        self.moved, self.dropped = moved, sum(len(o) for o, n in cells.values() if not n)
        return [(torch.tensor(o), torch.tensor(n, dtype=torch.long)) for o, n in cells.values()]

    @staticmethod
    def _relative(sizes: list[int]) -> Tensor:
        """Every channel's position in its producer group, in [0, 1)."""
        return torch.cat([torch.arange(s, dtype=torch.float64) / s for s in sizes])

    @property
    def note(self) -> str:
        """What the last plan lost to paths that do not scale (empty: nothing)."""
        lost = ([f"{self.moved} new channels take a path through the shuffles that no old one "
                 "took (they merge the old channels of the nearest path)"] if self.moved else []) \
            + ([f"{self.dropped} old channels take a path that no new one takes (dropped)"]
               if self.dropped else [])
        return "; ".join(lost) + (" -- lossy even for duplicates" if lost else "")

    def labels(self, cluster: Callable[[Tensor, int], Tensor],
               k: Callable[[int], int]) -> Tensor:
        """Cluster labels of the group's channels (new channel ids): ``k(size)`` channels per
        producer group (or the fewest above that for which :meth:`plan` fits every new channel
        into the old paths, moving those on a new path to the nearest old one);
        ``cluster(channels, K)`` gives ``K`` clusters of some channels (labels ``0..K-1``,
        ``-1``: dropped)."""
        want = [min(s, max(1, k(s))) for s in self.sizes]
        for step in range(max(self.sizes) + 1):
            sizes = [min(s, w + step) for s, w in zip(self.sizes, want, strict=True)]
            if sizes == self.sizes and want != self.sizes:
                raise InputError(f"{self.group.name}: its channels cannot shrink through the "
                                 f"channel shuffle ({self.why})")
            cells = self.plan(sizes, move=True)
            if cells is not None:
                break
        else:  # unreachable: the old sizes replay the old layout (checked when the graph is built)
            raise ValueError(f"group {self.group.name}: no channel count replays its layout")
        labels = torch.full((self.size,), -1, dtype=torch.long)
        for old, new in cells:
            if len(new) == 0:
                continue
            lab = torch.arange(len(old)) if len(new) == len(old) else cluster(old, len(new))
            labels[old] = torch.where(lab >= 0, new[lab.clamp_min(0)], -1)
        return labels


# ---------------------------------------------------------------------- rows of a member


def _shuffled(n: int, groups: int) -> Tensor:
    """``order[p]``: the channel at position ``p`` after a shuffle of ``n`` channels in
    ``groups`` groups (``view(g, n / g)``, transpose, flatten)."""
    return torch.arange(n).view(groups, -1).t().flatten()


def _module(gm: fx.GraphModule, part: Part) -> nn.Module:
    return gm.get_submodule(part.member.target)


def _bn_rows(bn: nn.Module) -> list[str]:
    return [name for name in ("weight", "bias", "running_mean", "running_var")
            if getattr(bn, name, None) is not None]


def _dense(module: nn.Module) -> Tensor:
    """The weight of a grouped convolution as a dense ``(out, in, *k)`` block-diagonal one."""
    w, groups = module.weight.detach(), module.groups
    out, per = w.shape[0], w.shape[1]
    dense = w.new_zeros(out, per * groups, *w.shape[2:])
    block = out // groups
    for g in range(groups):
        dense[g * block:(g + 1) * block, g * per:(g + 1) * per] = w[g * block:(g + 1) * block]
    return dense


def read_rows(gm: fx.GraphModule, part: Part, fold: bool = False) -> Tensor:
    """The group's channels in ``part`` as rows ``(size, width)``, float64.

    Producers and depthwise convolutions: the flattened kernel and the bias of every output
    channel (with ``fold``, the producer's BatchNorm folded in, TropNNC §6); BatchNorm: its
    weight, bias, running mean and variance; consumers: every weight reading the channel (the
    column ``C_:,i`` of TropNNC §6, transposed); a Linear after a flatten reads ``spatial``
    features per channel. Through a channel shuffle, the rows are put back in the group's order.
    A joint group's part (:class:`Layout`) gives a row for every channel of the group, zero for
    the channels it does not hold.
    """
    rows = _member_rows(gm, part, fold)
    if part.index is not None:
        full = rows.new_zeros(part.joint.size, rows.shape[1])
        full[part.index] = rows
        return full
    if part.shuffle is None:
        return rows
    return rows[torch.argsort(_shuffled(part.size, part.shuffle))]


def _member_rows(gm: fx.GraphModule, part: Part, fold: bool) -> Tensor:
    m = part.member
    module = _module(gm, part)
    o, n = part.offset, part.size
    if m.role == "batchnorm":
        return torch.stack([getattr(module, k).detach()[o:o + n].double()
                            for k in _bn_rows(module)], 1)
    w = module.weight.detach().double()
    spec = layer_spec(module)
    if m.role in ("producer", "depthwise"):
        rows = (w.transpose(0, 1) if spec.transposed else w)[o:o + n].reshape(n, -1)
        bias = module.bias.detach().double()[o:o + n] if module.bias is not None \
            else rows.new_zeros(n)
        if fold and m.fold is not None:
            from tropfx.folding import batchnorm_affine

            bn = gm.get_submodule(m.fold.target)
            s, t = batchnorm_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
            s, t = s[o:o + n].to(rows.device), t[o:o + n].to(rows.device)
            rows, bias = rows * s[:, None], bias * s + t
        return torch.cat([rows, bias[:, None]], 1)
    if m.role != "consumer":
        raise ValueError(f"{m.node.name} ({m.role}) has no rows")
    if spec.transposed:
        return w[o:o + n].reshape(n, -1)
    if getattr(module, "groups", 1) > 1:
        w = _dense(module).double()
    s = m.spatial
    cols = w.reshape(w.shape[0], -1, s, *w.shape[2:])[:, o:o + n]  # (out, n, s, *k)
    return cols.transpose(0, 1).reshape(n, -1)


def _splice(t: Tensor, dim: int, o: int, n: int, new: Tensor) -> Tensor:
    before, after = t.narrow(dim, 0, o), t.narrow(dim, o + n, t.shape[dim] - o - n)
    return torch.cat([before, new.to(t.dtype), after], dim)


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


def _write_rows(gm: fx.GraphModule, part: Part, rows: Tensor) -> None:
    if part.shuffle is not None:  # the new channels, shuffled as the graph will shuffle them
        rows = rows[_shuffled(rows.shape[0], part.shuffle)]
    m = part.member
    module = _module(gm, part)
    o, n, k = part.offset, part.size, rows.shape[0]
    if m.role == "batchnorm":
        for i, name in enumerate(_bn_rows(module)):
            _set(module, name, _splice(getattr(module, name).detach(), 0, o, n, rows[:, i]))
        sync_sizes(module)
        return
    w = module.weight.detach()
    spec = layer_spec(module)
    if m.role in ("producer", "depthwise"):
        dim = 1 if spec.transposed else 0
        shape = list(w.shape)
        shape[dim] = k
        kernel = rows[:, :-1]
        new_w = (kernel.reshape(k, shape[0], *shape[2:]).transpose(0, 1) if spec.transposed
                 else kernel.reshape(k, *shape[1:]))
        _set(module, "weight", _splice(w, dim, o, n, new_w))
        bias = rows[:, -1]
        if module.bias is not None:
            _set(module, "bias", _splice(module.bias.detach(), 0, o, n, bias))
        elif bool((bias != 0).any()):  # e.g. a folded BatchNorm's shift
            full = _splice(w.new_zeros(w.shape[dim]), 0, o, n, bias)
            module.bias = nn.Parameter(full.to(w.dtype), module.weight.requires_grad)
        if m.role == "depthwise":
            module.groups = module.weight.shape[0]
        sync_sizes(module)
        return
    if spec.transposed:
        new_w = rows.reshape(k, *w.shape[1:])
        _set(module, "weight", _splice(w, 0, o, n, new_w))
        sync_sizes(module)
        return
    groups = getattr(module, "groups", 1)
    dense = _dense(module) if groups > 1 else w
    s = m.spatial
    out = dense.shape[0]
    cols = rows.reshape(k, out, s, *dense.shape[2:]).transpose(0, 1)
    grid = dense.reshape(out, -1, s, *dense.shape[2:])
    new = _splice(grid, 1, o, n, cols).reshape(out, -1, *dense.shape[2:])
    if groups > 1:  # back to (out, in / groups, *k); merges stayed inside the blocks
        per, block = new.shape[1] // groups, out // groups
        new = torch.cat([new[g * block:(g + 1) * block, g * per:(g + 1) * per]
                         for g in range(groups)])
    _set(module, "weight", new)
    sync_sizes(module)


def resize_channels(gm: fx.GraphModule, group: Group, rows: list[Tensor | None],
                    merge: Tensor | None = None) -> None:
    """Give every member of ``group`` new channels: ``rows[i]`` (``(K, width)``, as
    :func:`read_rows` lays them out) replaces ``group.parts[i]``'s channels, in the same new
    order everywhere. ``None`` for a BatchNorm part means it was folded into its producer (whose
    rows include it): the BatchNorm node is removed. Hard-coded flattening views become
    ``flatten``. A layer that reads the channels it produces (a residual block's layer inside
    the group) needs ``merge``, the ``(K, n)`` map from old to new channels that its consumer
    rows' output dim goes through. Mutates ``gm`` (the runner's private copy); call
    ``gm.recompile()`` after.

    A joint group (``group.layout``) is resized to the layout its last :meth:`Layout.plan` /
    :meth:`Layout.labels` chose: ``rows`` are then indexed by the new channel ids and every part
    takes the rows of the channels it reads there, in its order."""
    if group.frozen is not None:
        raise ValueError(f"group {group.name} is frozen: {group.frozen}")
    layout = group.layout
    if layout is not None and (layout.new is None or any(
            r is not None and r.shape[0] != sum(layout.chosen) for r in rows)):
        raise ValueError(f"group {group.name}: plan its new layout first (Layout.labels / plan) "
                         "and give rows for every new channel")
    place = {} if layout is None else {id(p): idx for p, idx in zip(group.parts, layout.new,
                                                                     strict=True)}
    producers = {p.member.node for p in group.role("producer")}
    todo = sorted(zip(group.parts, rows, strict=True), key=lambda pr: pr[0].member.role == "consumer")
    size = next(r.shape[0] for r in rows if r is not None)
    for part, new in todo:  # producers first: a consumer that is one sees its new output dim
        m = part.member
        if part.index is not None:
            size = len(place[id(part)])
            new = None if new is None else new[place[id(part)]]
        if m.role == "view":
            _unview(gm, m)
            continue
        if new is None:
            if m.role != "batchnorm" or m.node not in {p.member.fold for p in group.parts}:
                raise ValueError(f"no rows for {m.node.name} ({m.role})")
            if m.node in gm.graph.nodes:
                m.node.replace_all_uses_with(m.node.args[0])
                gm.graph.erase_node(m.node)
                gm.delete_submodule(m.target)  # called once: nothing else reads it
            m.segments[part.segment][1] = size
            continue
        if m.role == "consumer" and m.node in producers:
            if merge is None:
                raise ValueError(f"{m.node.name} reads the channels it produces; pass merge=")
            out = merge
            if layout is not None:  # its output dim holds its own channels only
                own = next(p for p in group.role("producer") if p.member.node is m.node)
                out = merge[place[id(own)]][:, own.index]
            new = torch.einsum("jor,ko->jkr", new.reshape(new.shape[0], out.shape[1], -1),
                               out.to(new.dtype)).reshape(new.shape[0], -1)
        _write_rows(gm, part, new)
        m.segments[part.segment][1] = new.shape[0]
    if layout is not None:  # the group now has the layout it was resized to
        for part in group.parts:
            part.index = place[id(part)]
        layout.sizes, layout.new = list(layout.chosen), None
        group.size = layout.size


def _unview(gm: fx.GraphModule, member: Member) -> None:
    """A hard-coded ``view(N, C*H*W)`` would no longer fit: replace it by ``flatten``."""
    view = member.node
    if view not in gm.graph.nodes or view.op != "call_method":
        return
    dim = len(tensor_shape(view)) - 1
    with gm.graph.inserting_after(view):
        flat = gm.graph.call_function(torch.flatten, (view.args[0], dim))
    flat.meta = dict(view.meta)
    view.replace_all_uses_with(flat)
    gm.graph.erase_node(view)
    member.node = flat
