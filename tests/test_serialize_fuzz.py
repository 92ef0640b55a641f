"""Fuzzing tropfx.load: Hypothesis mutates the recipes of valid files (names, targets, args, kwargs
keys, structure) and every variant must give a clean SerializationError, or a model that is itself
an allowed recipe (it saves, and loads back to the same code) -- never another exception at load,
never a file written or a process setting changed, whether the model is loaded or called.

TROPFX_FUZZ_EXAMPLES sets the number of variants (default 200); the counts are printed with -s."""

import copy
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.serialize import SerializationError

EXAMPLES = int(os.environ.get("TROPFX_FUZZ_EXAMPLES", "200"))
WITNESS = Path(tempfile.gettempdir()) / f"tropfx-fuzz-witness-{os.getpid()}"
COUNTS = {"variants": 0, "refused": 0, "loaded": 0, "called": 0}


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Sequential(nn.Linear(12, 4))
        self.register_buffer("scale", torch.full((4,), 0.5))

    def forward(self, x):
        y = self.pool(torch.relu(self.bn(self.conv(x))))
        y = self.fc(y.flatten(1)) * self.scale
        return torch.add(y, y.mean(dim=1, keepdim=True), alpha=2).view(x.shape[0], -1)


def _legit_files():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 4)
    plain = tropfx.compile(Small(), [], example_inputs=(x,))
    exact = tropfx.compile(Small(), [tp.fuse_batchnorm(), tp.relu_to_maxplus(),
                                     tp.maxpool_to_dilation()], example_inputs=(x,))
    files = []
    for cm in (plain, exact):
        buf = io.BytesIO()
        tropfx.save(cm, buf)
        blob = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        files.append((blob, json.loads(blob["recipe"])))
    return files, x


FILES, X = _legit_files()
NAMES = sorted({n["name"] for _, r in FILES for n in r["root"]["nodes"]})
TARGETS = sorted({str(n["target"]) for _, r in FILES for n in r["root"]["nodes"]})
EVIL = ["__import__('os').system('x')", "x; y", "a\"b", "os:system", "torch:set_num_threads",
        "torch:from_file", "operator:setitem", "operator:call", "builtins:exec", "tofile", "numpy",
        "__class__", "scale.__dict__", "self", "if", "", "out", "lin..0", "torch.ops:aten.set_",
        "torch.ops:tropfx.maxplus_backward", "torch:save", str(WITNESS)]
IDENTS = st.text(alphabet="abcxyz_019-. \"'()", min_size=0, max_size=8)
NAME_LIKE = st.one_of(st.sampled_from(NAMES + TARGETS + EVIL), IDENTS)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-4, 8), st.floats(-2, 2),
                    st.sampled_from(NAMES + EVIL), IDENTS)
TAGS = st.sampled_from(["tuple", "dict", "node", "float", "slice", "ellipsis", "torch", "device",
                        "tensor_meta", "exec", "alias"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.builds(lambda k, v: {"$": k, "v": v}, TAGS, st.one_of(inner, st.lists(inner, max_size=3))),
        st.builds(lambda k, v: {"$": "dict", "v": [[k, v]]}, NAME_LIKE, inner),
        st.builds(lambda v: {"$": "node", "v": v}, st.sampled_from(NAMES + EVIL))),
    max_leaves=6)


def _nodes(recipe):
    return recipe["root"]["nodes"]


def _modules(recipe):
    out, todo = [], [recipe["root"]]
    while todo:
        m = todo.pop()
        out.append(m)
        todo.extend(c for c in m.get("children", {}).values() if isinstance(c, dict))
    return out


@st.composite
def mutation(draw):
    """One edit an attacker could make to a recipe (a function of the recipe, in place)."""
    kind = draw(st.sampled_from(["node field", "args", "kwargs key", "kwargs value", "drop node",
                                 "duplicate node", "swap nodes", "module field", "child name",
                                 "alias", "tensor spec", "drop key"]))
    i, j = draw(st.integers(0, 30)), draw(st.integers(0, 30))
    field = draw(st.sampled_from(["name", "target", "op", "type", "meta"]))
    name, value = draw(NAME_LIKE), draw(VALUES)
    mfield = draw(st.sampled_from(["class", "kind", "config", "attrs", "params", "buffers",
                                   "non_persistent", "training", "class_name"]))

    def edit(recipe):
        nodes, modules = _nodes(recipe), _modules(recipe)
        n, m = nodes[i % len(nodes)], modules[j % len(modules)]
        if kind == "node field":
            n[field] = name if field != "meta" else value
        elif kind == "args":
            n["args"] = {"$": "tuple", "v": [value, *n["args"]["v"][1:]]}
        elif kind == "kwargs key":
            n["kwargs"] = {"$": "dict", "v": [[name, value], *n["kwargs"]["v"]]}
        elif kind == "kwargs value":
            n["kwargs"] = {"$": "dict", "v": [[k, value] for k, _ in n["kwargs"]["v"]]}
        elif kind == "drop node":
            nodes.remove(n)
        elif kind == "duplicate node":
            nodes.insert(j % len(nodes), copy.deepcopy(n))
        elif kind == "swap nodes":
            a, b = i % len(nodes), j % len(nodes)
            nodes[a], nodes[b] = nodes[b], nodes[a]
        elif kind == "module field":
            m[mfield] = value if mfield != "class" else name
        elif kind == "child name" and m.get("children"):
            key = sorted(m["children"])[i % len(m["children"])]
            m["children"][name if isinstance(name, str) else key] = m["children"].pop(key)
        elif kind == "alias" and m.get("children"):
            key = sorted(m["children"])[i % len(m["children"])]
            m["children"][key] = {"alias": name}
        elif kind == "tensor spec":
            key = sorted(recipe["tensors"])[i % len(recipe["tensors"])]
            recipe["tensors"][key] = value
        elif kind == "drop key":
            target = n if i % 2 else m
            if target:
                target.pop(sorted(target)[j % len(target)])

    return kind, edit


def _state():
    return (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
            torch.are_deterministic_algorithms_enabled())


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nserialize fuzz: {COUNTS}")


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(FILES) - 1), st.lists(mutation(), min_size=1, max_size=3))
def test_mutated_recipes_are_refused_or_allowed_models(which, edits):
    blob, recipe = FILES[which]
    recipe = copy.deepcopy(recipe)
    for _, edit in edits:
        edit(recipe)
    data = io.BytesIO()
    torch.save({**blob, "recipe": json.dumps(recipe)}, data)
    before = _state()
    COUNTS["variants"] += 1
    try:
        model = tropfx.load(io.BytesIO(data.getvalue()))
    except SerializationError:
        COUNTS["refused"] += 1
        assert _state() == before and not WITNESS.exists()
        return
    COUNTS["loaded"] += 1
    # Loaded: it is an allowed recipe -- it saves again and loads back to the same code.
    again = io.BytesIO()
    tropfx.save(model, again)
    again.seek(0)
    reloaded = tropfx.load(again)
    if hasattr(model, "code"):
        assert reloaded.code == model.code
    try:
        with torch.no_grad():
            model(X)
        COUNTS["called"] += 1
    except Exception:  # noqa: BLE001 - a mutated model may compute nothing sensible; never code
        pass
    assert _state() == before and not WITNESS.exists()
