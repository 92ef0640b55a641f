"""Binarized layers (tropfx.nn.binary) and their packed twin (PackedBinaryConv2d) in saved files:
they round-trip bit for bit, and a file whose config names a huge shape is refused without
allocating it (the layers are built on the meta device as skeletons; docs/serialization.md)."""

import io
import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tropfx
from tropfx import passes as tp
from tropfx.kernels.binary import PackedBinaryConv2d
from tropfx.nn import BinaryLinear, BinaryMorphology2d, ThresholdedConv2d
from tropfx.serialize import SerializationError, register_serializable
from tropfx.serialize_gate import default_max_bytes

HUGE = 1 << 40  # elements: a terabyte if anything is allocated


def model() -> nn.Module:
    gen = torch.Generator().manual_seed(5)
    se = torch.rand(4, 3, 3, generator=gen) > 0.4
    se[:, 1, 1] = True
    weight = torch.randint(-300, 300, (6, 2, 2, 3), generator=gen)  # int32 storage, groups
    return nn.Sequential(
        BinaryMorphology2d(se, ["dilation", "erosion", "dilation", "erosion"],
                           complement=[True, False, False, True]),
        ThresholdedConv2d(weight, torch.randint(-5, 5, (6,), generator=gen), [False, True] * 3,
                          groups=2, padding="same"),
        nn.Flatten(),
        BinaryLinear(torch.randint(0, 2, (5, 6 * 5 * 6), generator=gen), 7, True))


def inputs() -> torch.Tensor:
    return torch.rand(3, 4, 5, 6, generator=torch.Generator().manual_seed(6)) > 0.5


def saved(lower: bool) -> tuple[nn.Module, bytes]:
    passes = [tp.lower_kernels()] if lower else []
    cm = tropfx.compile(model(), passes, example_inputs=(inputs(),))
    buf = io.BytesIO()
    tropfx.save(cm, buf)
    return cm, buf.getvalue()


def load(data: bytes, **kwargs) -> nn.Module:
    return tropfx.load(io.BytesIO(data), **kwargs)


def plain_attrs(m: nn.Module) -> dict:
    internal = set(vars(nn.Module()))
    return {k: v for k, v in vars(m).items() if k not in internal}


@pytest.mark.parametrize("lower", [False, True], ids=["binary", "packed"])
def test_binary_layers_round_trip_bitwise(lower):
    cm, data = saved(lower)
    types = {PackedBinaryConv2d} if lower else {BinaryMorphology2d, ThresholdedConv2d, BinaryLinear}
    assert types <= {type(m) for m in cm.modules()}
    loaded = load(data)
    x = inputs()
    assert torch.equal(loaded(x), cm(x))
    want, got = cm.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for k, t in want.items():
        assert got[k].dtype == t.dtype and got[k].device.type == "cpu" and torch.equal(got[k], t), k
    for (name, m), (_, m2) in zip(cm.named_modules(), loaded.named_modules(), strict=True):
        if type(m) in types:
            assert type(m2) is type(m) and plain_attrs(m2) == plain_attrs(m), name


class BigAllocation(BaseException):
    """Raised by AllocationProbe; a BaseException, so that load's error handling lets it through."""


class AllocationProbe(TorchDispatchMode):
    """Stops any torch operation that would create more than ``limit`` bytes of real (non-meta)
    tensors, before it runs (its size is taken from a meta run)."""

    def __init__(self, limit: int = 1 << 20):
        super().__init__()
        self.limit = limit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tree = torch.utils._pytree
        if not any(isinstance(t, torch.Tensor) and t.is_meta for t in tree.tree_leaves(args)) \
                and kwargs.get("device") != torch.device("meta"):
            try:
                out = func(*tree.tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor)
                                          else t, args), **{**kwargs, "device": "meta"}
                           if "device" in kwargs else kwargs)
                size = sum(t.numel() * t.element_size() for t in tree.tree_leaves(out)
                           if isinstance(t, torch.Tensor))
            except Exception:  # noqa: BLE001 - no meta kernel: a scalar read, small
                size = 0
            if size > self.limit:
                raise BigAllocation(f"{func} would allocate {size:,} bytes")
        return func(*args, **kwargs)


def tamper(data: bytes, cls_name: str, edit) -> bytes:
    blob = torch.load(io.BytesIO(data), weights_only=True)
    recipe = json.loads(blob["recipe"])
    hits = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("kind") == "module" and node.get("class", "").endswith(cls_name):
                hits.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(recipe["root"])
    assert hits, cls_name
    for node in hits:
        config = dict(node["config"]["v"])
        edit(config)
        node["config"]["v"] = [[k, v] for k, v in config.items()]
    blob["recipe"] = json.dumps(recipe)
    out = io.BytesIO()
    torch.save(blob, out)
    return out.getvalue()


def huge_tuple(*dims):
    return {"$": "tuple", "v": list(dims)}


EDITS = {
    "BinaryMorphology2d": (False, lambda c: c.update(channels=HUGE)),
    "BinaryMorphology2d-kernel": (False, lambda c: c.update(kernel_size=huge_tuple(1 << 20, 1 << 20))),
    "ThresholdedConv2d": (False, lambda c: c.update(shape=huge_tuple(1 << 20, 1 << 10, 1 << 5, 1 << 5))),
    "BinaryLinear": (False, lambda c: c.update(shape=huge_tuple(1 << 20, 1 << 20))),
    "PackedBinaryConv2d": (True, lambda c: c.update(shape=huge_tuple(1 << 20, 1 << 20, 3, 3))),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_huge_shape_in_a_config_is_refused_without_allocating(case):
    lower, edit = EDITS[case]
    _, data = saved(lower)
    bad = tamper(data, case.split("-")[0], edit)
    with AllocationProbe(), pytest.raises(SerializationError, match="config implies"):
        load(bad)


def test_a_shape_that_disagrees_with_the_record_is_refused():
    _, data = saved(False)
    bad = tamper(data, "BinaryLinear", lambda c: c.update(shape=huge_tuple(5, 181)))
    with pytest.raises(SerializationError, match=r"'weight' of shape \[5, 181\].*\[5, 180\]"):
        load(bad)


class NeedsValues(nn.Module):
    """A user layer that cannot be built on the meta device (its constructor reads a value)."""

    def __init__(self, n: int):
        super().__init__()
        w = torch.ones(n)
        self.total = float(w.sum().item())
        self.weight = nn.Parameter(w)

    def forward(self, x):
        return x * self.weight


register_serializable(NeedsValues, config=lambda m: {"n": m.weight.shape[0]})


def test_a_cpu_build_is_held_to_max_bytes():
    cm = nn.Sequential(NeedsValues(3))
    buf = io.BytesIO()
    tropfx.save(cm, buf)
    data = buf.getvalue()
    assert torch.equal(load(data)(torch.ones(2, 3)), cm(torch.ones(2, 3)))
    bad = tamper(data, "NeedsValues", lambda c: c.update(n=HUGE))
    with AllocationProbe(), pytest.raises(SerializationError, match="NeedsValues|max_bytes") as e:
        load(bad)
    assert "max_bytes" in str(e.value) and "'0'" in str(e.value)
    # Within the budget (max_bytes=1 MiB for this small file) a CPU build is allowed ...
    assert default_max_bytes(len(data)) == 1 << 20
    fits = tamper(data, "NeedsValues", lambda c: c.update(n=1000))
    with pytest.raises(SerializationError, match="config implies"):  # ... and then checked
        load(fits)
