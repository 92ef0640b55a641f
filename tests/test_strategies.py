"""Tests for the random-model strategies in tropfx.testing.strategies."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from tropfx.testing.strategies import (
    BN_EPS,
    BN_VAR_RANGE,
    MAXPOOL_SPELLINGS,
    RELU_SPELLINGS,
    BatchNormStats,
    ModelCase,
    SpecNet,
    batchnorm_stats,
    build_case,
    conv_models,
    mlp_models,
    models,
    random_batchnorm_stats,
    randomize_batchnorm_,
)

PROPERTY = settings(max_examples=100, deadline=None)
QUICK = settings(max_examples=30, deadline=None)


def run(module: nn.Module, case: ModelCase) -> torch.Tensor:
    """Forward on fresh copies of the inputs: some ReLU spellings modify their input in place."""
    return module(*(t.clone() for t in case.inputs))


def draw_fixed(strategy: SearchStrategy[ModelCase], count: int) -> list[ModelCase]:
    """``count`` cases from a derandomized run: the same list every time."""
    cases: list[ModelCase] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None)
    @given(strategy)
    def collect(case: ModelCase) -> None:
        cases.append(case)

    collect()
    return cases


@functools.cache
def sample() -> list[tuple[ModelCase, fx.GraphModule]]:
    """A fixed sample of a few hundred cases with their traced modules, shared by the structure
    checks so that it is drawn and traced once."""
    return [(case, fx.symbolic_trace(case.model)) for case in draw_fixed(models(), 300)]


def walk(tokens: list | tuple) -> Iterator[tuple]:
    """Every token of a spec or sub-chain, nested ones included."""
    for token in tokens:
        yield token
        for part in token[1:]:
            if isinstance(part, tuple) and part and isinstance(part[0], tuple):
                yield from walk(part)  # a sub-chain (residual inner, concat branch)
            elif isinstance(part, tuple) and part and isinstance(part[0], str):
                yield from walk([part])  # a single token (shared / multi_user layer and bn)


def spec_spellings(case: ModelCase) -> set[str]:
    """The relu/bn/maxpool spellings a spec asks for, as "kind:spelling"."""
    return {f"{t[0]}:{t[1]}" for t in walk(case.spec[2:]) if t[0] in ("relu", "bn", "maxpool")}


def features(case: ModelCase) -> set[str]:
    """Labels for the structures a case exercises, for the coverage check."""
    found = spec_spellings(case)
    found.add("root:Sequential" if type(case.model) is nn.Sequential else "root:SpecNet")
    found.add(f"input_rank:{len(case.spec[1][1])}")
    for token in walk(case.spec[2:]):
        kind = token[0]
        found.add(kind)
        if kind in ("flatten", "residual"):
            found.add(f"{kind}:{token[1]}")
        elif kind == "conv":
            _, _, _, _, _, stride, _, groups, _, padding_mode = token
            found.add(f"conv:{padding_mode}")
            found |= {"conv:groups"} if groups > 1 else set()
            found |= {"conv:stride2"} if stride == 2 else set()
        elif kind == "maxpool":
            found |= {"maxpool:dilation"} if token[6] > 1 else set()
            found |= {"maxpool:ceil"} if token[7] else set()
        elif kind == "concat" and () in token[1:]:
            found.add("concat:identity")
    return found


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# --------------------------------------------------------------------------- properties of each case


@PROPERTY
@given(models())
def test_models_are_eval_float32_cpu_and_finite(case: ModelCase) -> None:
    assert not any(m.training for m in case.model.modules())
    for tensor in (*case.model.parameters(), *case.model.buffers()):
        assert tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.int64)
    assert all(t.dtype == torch.float32 for t in case.inputs)
    out = run(case.model, case)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@PROPERTY
@given(models())
def test_symbolic_trace_matches_bitwise(case: ModelCase) -> None:
    traced = fx.symbolic_trace(case.model)
    assert torch.equal(run(traced, case), run(case.model, case))


@PROPERTY
@given(models())
def test_spec_replays_to_the_same_case(case: ModelCase) -> None:
    again = build_case(case.spec)
    assert type(again.model) is type(case.model)
    assert_same_state(again.model, case.model)
    assert all(torch.equal(a, b) for a, b in zip(again.inputs, case.inputs, strict=True))
    # The repr is short (no tensors) and carries the spec, so a failure report can be replayed.
    text = repr(case)
    assert text.startswith(f"ModelCase({type(case.model).__name__}, spec=") and "tensor" not in text
    assert eval(text.split("spec=", 1)[1][:-1]) == case.spec


def test_same_draws_give_same_models() -> None:
    first, second = draw_fixed(models(), 30), draw_fixed(models(), 30)
    assert [c.spec for c in first] == [c.spec for c in second]
    for a, b in zip(first, second, strict=True):
        assert_same_state(a.model, b.model)


@QUICK
@given(st.data())
def test_drawing_leaves_global_rng_alone(data: st.DataObject) -> None:
    before = torch.get_rng_state()
    data.draw(models())
    assert torch.equal(torch.get_rng_state(), before)


@QUICK
@given(conv_models(dims=(1,)))
def test_conv_models_respect_dims(case: ModelCase) -> None:
    assert case.inputs[0].dim() == 3


@QUICK
@given(mlp_models(max_blocks=1))
def test_mlp_models_respect_max_blocks(case: ModelCase) -> None:
    assert case.inputs[0].dim() == 2
    assert len(case.spec) <= 4  # the header, then one block: a layer and its BN at most


# --------------------------------------------------------------------------- structure over a sample


def test_sample_covers_every_structure() -> None:
    counts = Counter(f for case, _ in sample() for f in features(case))
    expected = {
        *(f"relu:{s}" for s in RELU_SPELLINGS),
        *(f"maxpool:{s}" for s in MAXPOOL_SPELLINGS),
        "bn:module",
        "bn:F.batch_norm",
        "bn:torch.batch_norm",
        "residual:+",
        "residual:torch.add",
        "concat",
        "concat:identity",
        "shared",
        "multi_user",
        "flatten:module",
        "flatten:torch.flatten",
        "flatten:method",
        "linear",
        "conv:zeros",
        "conv:reflect",
        "conv:circular",
        "conv:groups",
        "conv:stride2",
        "maxpool:ceil",
        "maxpool:dilation",
        "root:Sequential",
        "root:SpecNet",
        "input_rank:2",
        "input_rank:3",
        "input_rank:4",
    }
    assert not expected - set(counts), (sorted(expected - set(counts)), counts)


def test_batchnorm_usually_follows_a_layer() -> None:
    placement = Counter()
    for case, _ in sample():
        blocks = case.spec[2:]
        for before, token in zip(blocks, blocks[1:], strict=False):
            if token[0] == "bn":
                placement["layer" if before[0] in ("conv", "linear", "shared") else "other"] += 1
    assert placement["layer"] > placement["other"] > 0, placement


_FUNCTION_SPELLINGS: dict[Callable, str] = {
    torch.relu: "relu:torch.relu",
    torch.relu_: "relu:torch.relu_",
    F.batch_norm: "bn:F.batch_norm",
    torch.batch_norm: "bn:torch.batch_norm",
    F.max_pool1d: "maxpool:functional",
    F.max_pool2d: "maxpool:functional",
}


def graph_spellings(traced: fx.GraphModule) -> set[str]:
    """The relu/bn/maxpool spellings found in a traced graph, named as in the spec."""
    found = set()
    for node in traced.graph.nodes:
        if node.op == "call_module":
            module = traced.get_submodule(node.target)
            if isinstance(module, nn.ReLU):
                found.add("relu:module_inplace" if module.inplace else "relu:module")
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                found.add("bn:module")
            elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
                found.add("maxpool:module")
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            found.add(f"relu:method{node.target[4:]}")
        elif node.target is F.relu:
            found.add("relu:F.relu_inplace" if node.kwargs.get("inplace") else "relu:F.relu")
        elif node.op == "call_function" and node.target in _FUNCTION_SPELLINGS:
            found.add(_FUNCTION_SPELLINGS[node.target])
    return found


def test_spec_spellings_show_in_traced_graph() -> None:
    for case, traced in sample():
        assert graph_spellings(traced) == spec_spellings(case), case


def test_shared_and_multi_user_layers_show_in_traced_graph() -> None:
    layer_types = (nn.Conv1d, nn.Conv2d, nn.Linear)
    for case, traced in sample():
        kinds = {token[0] for token in walk(case.spec[2:])}
        calls = [n for n in traced.graph.nodes if n.op == "call_module"]
        targets = Counter(n.target for n in calls)
        layers = [n for n in calls if isinstance(traced.get_submodule(n.target), layer_types)]
        assert ("shared" in kinds) <= (max(targets.values(), default=0) >= 2), case
        assert ("multi_user" in kinds) <= any(len(n.users) >= 2 for n in layers), case


def test_activations_stay_small() -> None:
    for case, traced in sample():
        ShapeProp(traced).propagate(*(t.clone() for t in case.inputs))
        mlp = case.inputs[0].dim() == 2
        for node in traced.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if node.op == "get_attr" or meta is None:  # parameters and buffers are no activations
                continue
            shape = tuple(meta.shape)
            assert shape[0] == case.inputs[0].shape[0] <= 3, (case, node)
            if len(shape) > 2:
                assert shape[1] <= 8 and all(1 <= s <= 12 for s in shape[2:]), (case, node, shape)
            elif mlp:  # a conv net's flattened activations are wider than its features
                assert shape[1] <= 16, (case, node, shape)


# --------------------------------------------------------------------------- building and arguments


def test_sequential_and_specnet_roots() -> None:
    plain = build_case([("seed", 0), ("input", (1, 3)), ("linear", 3, 2, True), ("relu", "module")])
    assert type(plain.model) is nn.Sequential
    custom = build_case([("seed", 0), ("input", (1, 3)), ("linear", 3, 2, True), ("relu", "method_")])
    assert type(custom.model) is SpecNet
    assert torch.equal(run(plain.model, plain), run(custom.model, custom))


def test_build_case_needs_the_header() -> None:
    with pytest.raises(ValueError, match="seed"):
        build_case([("input", (1, 3)), ("seed", 0), ("linear", 3, 2, True)])


@pytest.mark.parametrize(
    "make",
    [
        lambda: conv_models(dims=(3,)),
        lambda: conv_models(dims=()),
        lambda: conv_models(max_blocks=0),
        lambda: mlp_models(max_blocks=0),
    ],
    ids=["dims=(3,)", "dims=()", "conv max_blocks=0", "mlp max_blocks=0"],
)
def test_bad_arguments_fail_when_the_strategy_is_made(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------- BatchNorm statistics


def test_randomize_batchnorm_is_nasty_but_finite() -> None:
    model = nn.Sequential(nn.BatchNorm2d(256), nn.Conv2d(256, 4, 1), nn.BatchNorm1d(4, affine=False))
    model[0].num_batches_tracked.fill_(7)
    randomize_batchnorm_(model, torch.Generator().manual_seed(0))
    bn, plain_bn = model[0], model[2]
    assert bn.num_batches_tracked.item() == 7
    assert bn.eps in BN_EPS and plain_bn.eps in BN_EPS and plain_bn.weight is None
    for tensor in (bn.running_mean, bn.running_var, bn.weight, bn.bias, plain_bn.running_var):
        assert torch.isfinite(tensor).all()
    low, high = BN_VAR_RANGE
    assert ((bn.running_var >= low) & (bn.running_var <= high)).all()
    assert (bn.running_var < 1e-6).any()
    assert (bn.weight == 0).any() and (bn.weight < 0).any() and (bn.bias == 0).any()


def test_randomize_batchnorm_can_keep_eps() -> None:
    bn = randomize_batchnorm_(nn.BatchNorm1d(4, eps=0.5), torch.Generator(), keep_eps=True)
    assert bn.eps == 0.5


def test_random_batchnorm_stats_is_deterministic() -> None:
    a, b = (random_batchnorm_stats(5, torch.Generator().manual_seed(3)) for _ in range(2))
    assert a.eps == b.eps
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4], strict=True))


@QUICK
@given(batchnorm_stats(6))
def test_batchnorm_stats_strategy(stats: BatchNormStats) -> None:
    assert all(t.shape == (6,) and torch.isfinite(t).all() for t in stats[:4])
    assert (stats.running_var > 0).all() and stats.eps in BN_EPS


# --------------------------------------------------------------------------- boundary input values


def test_input_values_draw_ties_signed_zeros_and_infinities() -> None:
    from tropfx.testing.strategies import INPUT_VALUES

    seen = {v: [] for v in INPUT_VALUES}
    for case in draw_fixed(models(specials=True), 120):
        header = case.spec[1]
        seen[header[2] if len(header) > 2 else "normal"].append(case.inputs[0])
    assert all(seen.values()), {k: len(v) for k, v in seen.items()}
    grid = torch.cat([x.flatten() for x in seen["grid"]])
    assert torch.equal(grid * 2, (grid * 2).round())  # halves: ties everywhere
    assert ((grid == 0) & grid.signbit()).any() and ((grid == 0) & ~grid.signbit()).any()
    special = torch.cat([x.flatten() for x in seen["specials"]])
    assert torch.isposinf(special).any() and torch.isneginf(special).any()
    assert all(torch.isfinite(x).all() for x in seen["grid"] + seen["normal"])
    # without specials=True no infinity is drawn (the default for passes that are not exact on them)
    assert all(torch.isfinite(c.inputs[0]).all() for c in draw_fixed(models(), 60))


def test_the_values_token_replays() -> None:
    spec = [("seed", 3), ("input", (2, 6), "specials"), ("linear", 6, 4, True)]
    assert torch.equal(build_case(spec).inputs[0], build_case(spec).inputs[0])
    with pytest.raises(ValueError, match="values"):
        build_case([("seed", 3), ("input", (2, 6), "huge"), ("linear", 6, 4, True)])
