"""tropfx.save / tropfx.load: bitwise round trips without pickle, refusals, torch.export, state_dict."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import tropfx
from tropfx import passes as tp
from tropfx import serialize_gate as gate
from tropfx.demo import SmallCNN
from tropfx.nn import Maxout, MaxPlus, MinPlus, SparseMaxPlus
from tropfx.nn.morphology import Dilation2d, Erosion1d
from tropfx.serialize import FORMAT, SerializationError
from tropfx.testing.models import randomize_batchnorm_stats, resnet18
from tropfx.testing.strategies import models


def roundtrip(module, tmp_path=None):
    if tmp_path is None:
        buf = io.BytesIO()
        tropfx.save(module, buf)
        buf.seek(0)
        return tropfx.load(buf)
    path = tmp_path / "model.tropfx"
    tropfx.save(module, path)
    return tropfx.load(path)


def _kind(m):
    return ("GraphModule", type(m).__name__) if isinstance(m, fx.GraphModule) else type(m)


def assert_same_module(a, b, inputs):
    """Same outputs bit for bit, same code, same tree, same tensors (dtype, values, flags)."""
    a.eval()
    b.eval()
    with torch.no_grad():
        expected, actual = (m(*[x.clone() for x in inputs]) for m in (a, b))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    if isinstance(a, fx.GraphModule):
        assert a.code == b.code
        assert type(a).__name__ == type(b).__name__
    assert [(n, _kind(m)) for n, m in a.named_modules()] == \
           [(n, _kind(m)) for n, m in b.named_modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert [(n, p.requires_grad) for n, p in a.named_parameters()] == \
           [(n, p.requires_grad) for n, p in b.named_parameters()]
    assert [m.training for m in a.modules()] == [m.training for m in b.modules()]


# --- compiled models ------------------------------------------------------------------------

class Functional(nn.Module):
    """Functional spellings, a dense max-plus layer, min-plus, Maxout and an erosion."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.erode = Erosion1d(4, kernel_size=3, padding=1)
        self.fc = nn.Linear(4 * 4, 12)
        self.maxout = Maxout(pool=2)
        self.mp = MaxPlus(6, 5)
        self.minp = MinPlus(5, 3, bias=False)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.bn(self.conv(x))), 2)
        x = torch.flatten(self.erode(x), 1)
        y = self.maxout(self.fc(x).relu())
        return self.minp(self.mp(y)) + x[:, :3] * 0.5


def head(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, 5)).eval()


def cases():
    torch.manual_seed(0)
    yield "smallcnn-all-exact+prune", randomize_batchnorm_stats(SmallCNN()).eval(), \
        (torch.randn(4, 1, 8, 8),), [tp.fuse_batchnorm(), tp.relu_to_maxplus(),
                                     tp.maxpool_to_dilation(), tp.prune_l1(0.5, scope="layer")]
    yield "head-sparse-maxplus", head(), (torch.randn(3, 12),), \
        [tp.relu_to_maxplus(mode="sparse", k=3, seed=1)]
    yield "resnet-fuse+maxplus+dilation", randomize_batchnorm_stats(
        resnet18(num_classes=10, width=8)).eval(), (torch.randn(2, 3, 32, 32),), \
        [tp.fuse_batchnorm(), tp.relu_to_maxplus(), tp.maxpool_to_dilation()]
    yield "functional-global-prune", randomize_batchnorm_stats(Functional()).eval(), \
        (torch.randn(3, 2, 8),), [tp.fuse_batchnorm(), tp.relu_to_maxplus(),
                                  tp.maxpool_to_dilation(),
                                  tp.prune_l1(0.3, include=["conv", "fc", "mp"])]
    yield "float64", randomize_batchnorm_stats(SmallCNN()).double().eval(), \
        (torch.randn(2, 1, 8, 8, dtype=torch.float64),), [tp.fuse_batchnorm(),
                                                           tp.relu_to_maxplus()]


CASES = {name: (model, inputs, passes) for name, model, inputs, passes in cases()}


@pytest.fixture(scope="module")
def compiled():
    return {name: tropfx.compile(model, passes, example_inputs=inputs)
            for name, (model, inputs, passes) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_models_round_trip_bitwise(name, compiled, tmp_path):
    cm = compiled[name]
    loaded = roundtrip(cm, tmp_path)
    assert_same_module(cm, loaded, CASES[name][1])
    assert [r.stage for r in loaded.report.rows] == [r.stage for r in cm.report.rows]
    assert loaded.report.to_dict()["rows"] == json.loads(cm.report.to_json())["rows"]
    assert str(loaded.report) == str(cm.report)


def test_loaded_model_keeps_node_facts_and_trains(compiled):
    cm = compiled["smallcnn-all-exact+prune"]
    loaded = roundtrip(cm)
    facts = {n.name: n.meta.get("tropfx") for n in loaded.graph.nodes}
    assert facts == {n.name: n.meta.get("tropfx") for n in cm.graph.nodes}
    shapes = [tuple(n.meta["tensor_meta"].shape) for n in loaded.graph.nodes if n.op != "output"]
    assert shapes == [tuple(n.meta["tensor_meta"].shape) for n in cm.graph.nodes
                      if n.op != "output"]
    loaded.train()
    F.cross_entropy(loaded(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    maxplus = next(m for m in loaded.modules() if isinstance(m, SparseMaxPlus))
    assert maxplus.value.grad is not None and maxplus.bias.grad is not None


def test_loaded_model_compiles_again(compiled):
    """A loaded module is an ordinary GraphModule: it can go through more passes."""
    x = CASES["head-sparse-maxplus"][1]
    loaded = roundtrip(compiled["head-sparse-maxplus"])
    again = tropfx.compile(loaded, [tp.fuse_batchnorm(), tp.prune_l1(0.5)], example_inputs=x)
    assert len(again.report["fuse_batchnorm"].rewritten) == 1
    assert roundtrip(again)(*x).equal(again(*x))


def test_state_dict_round_trips(compiled):
    name = "smallcnn-all-exact+prune"
    cm, (model, inputs, passes) = compiled[name], CASES[name]
    loaded = roundtrip(cm)
    fresh = tropfx.compile(model, passes[:3], example_inputs=inputs)  # same structure, unpruned
    fresh.load_state_dict(loaded.state_dict())
    assert torch.equal(fresh(*inputs), cm(*inputs))
    loaded.load_state_dict(torch.load(_saved_state(cm), weights_only=True))
    assert torch.equal(loaded(*inputs), cm(*inputs))


def _saved_state(module):
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return buf


def test_plain_modules_of_allowed_layers_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), Dilation2d(3, 4, kernel_size=2),
                          nn.Flatten(), nn.Linear(4 * 5 * 5, 6), SparseMaxPlus(6, 6, k=2),
                          nn.Dropout(0.3), nn.LayerNorm(6, bias=False))
    loaded = roundtrip(model)
    assert_same_module(model, loaded, (torch.randn(2, 2, 8, 8),))
    assert loaded[-1].bias is None and loaded[0].bias is None


def test_shared_modules_and_tied_parameters_stay_shared():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # tied weights
            self.alias = self.a  # one module under two names

        def forward(self, x):
            return self.b(self.a(self.a(x))) + self.alias(x)

    torch.manual_seed(0)
    cm = tropfx.compile(Tied(), [], example_inputs=(torch.randn(2, 4),))
    loaded = roundtrip(cm)
    assert loaded.b.weight is loaded.a.weight
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), cm(x))
    tied = dict(loaded.named_parameters(remove_duplicate=False))
    assert tied["a.weight"] is tied["b.weight"]


def test_buffers_persistence_and_plain_attributes_survive():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    model[0].register_buffer("scratch", torch.arange(3.0), persistent=False)
    model[1].note = {"k": (1, 2.5, float("inf")), "dtype": torch.float16}
    loaded = roundtrip(model)
    assert "0.scratch" not in loaded.state_dict() and torch.equal(loaded[0].scratch,
                                                                  torch.arange(3.0))
    assert loaded[1].note == {"k": (1, 2.5, float("inf")), "dtype": torch.float16}
    assert int(loaded[0].num_batches_tracked) == int(model[0].num_batches_tracked)


# --- what is refused, and how it says so -----------------------------------------------------

class Scale(nn.Module):
    """A user layer: not allowed until registered."""

    def __init__(self, width, gain=2.0):
        super().__init__()
        self.width, self.gain = width, gain
        self.weight = nn.Parameter(torch.full((width,), gain))

    def forward(self, x):
        return x * self.weight


class Odd(nn.Module):
    """A user layer whose constructor argument is not stored under its own name."""

    def __init__(self, n):
        super().__init__()
        self.size = n
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x + self.weight


def double(x):
    return x * 2


fx.wrap("double")


class UsesDouble(nn.Module):
    def forward(self, x):
        return double(x) + 1


@pytest.fixture
def fresh_tables(monkeypatch):
    """Registrations made by a test are undone after it."""
    tables = gate.tables()
    for registry in ("functions", "function_names", "modules", "module_names"):
        monkeypatch.setattr(tables, registry, dict(getattr(tables, registry)))
    return tables


def test_unknown_layer_class_is_refused_with_a_hint_then_registered(fresh_tables):
    tropfx.tracing.register_leaf(Scale)  # keep it a call_module node
    cm = tropfx.compile(nn.Sequential(nn.Linear(3, 3), Scale(3)), [],
                        example_inputs=(torch.randn(2, 3),))
    with pytest.raises(SerializationError, match=r"module '1' \(.*Scale\).*"
                       r"tropfx.register_serializable\(Scale\)"):
        tropfx.save(cm, io.BytesIO())
    tropfx.register_serializable(Scale)
    buf = io.BytesIO()
    tropfx.save(cm, buf)
    loaded_bytes = buf.getvalue()
    x = torch.randn(2, 3)
    assert torch.equal(tropfx.load(io.BytesIO(loaded_bytes))(x), cm(x))
    # The loading process must know the class too: without the registration, a clear refusal.
    del fresh_tables.modules[f"{Scale.__module__}.Scale"]
    with pytest.raises(SerializationError, match=r"class .*Scale is not allowed.*"
                       r"register_serializable\(Scale\) before tropfx.load"):
        tropfx.load(io.BytesIO(loaded_bytes))


def test_a_config_that_does_not_rebuild_is_refused_at_save(fresh_tables):
    tropfx.register_serializable(Odd)
    with pytest.raises(SerializationError, match=r"Odd.__init__ needs 'n'.*config="):
        tropfx.save(nn.Sequential(Odd(3)), io.BytesIO())
    tropfx.register_serializable(Odd, config=lambda m: {"n": m.size})
    x = torch.randn(2, 3)
    model = nn.Sequential(Odd(3))
    assert torch.equal(roundtrip(model)(x), model(x))


def test_unknown_function_is_refused_with_a_hint_then_registered(fresh_tables):
    cm = tropfx.compile(UsesDouble(), [], example_inputs=(torch.randn(2),))
    with pytest.raises(SerializationError, match=r"node double of the root module: its function "
                       r".*double is not in tropfx's tables.*register_serializable\(.*double\)"):
        tropfx.save(cm, io.BytesIO())
    tropfx.register_serializable(double)
    x = torch.randn(3)
    assert torch.equal(roundtrip(cm)(x), cm(x))


def test_hooks_are_code_and_are_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(SerializationError, match="forward_hooks registered"):
        tropfx.save(model, io.BytesIO())


def _tampered(module, edit):
    """A saved file whose recipe was edited by ``edit(recipe)``, as an attacker could."""
    buf = io.BytesIO()
    tropfx.save(module, buf)
    buf.seek(0)
    blob = torch.load(buf, weights_only=True)
    recipe = json.loads(blob["recipe"])
    edit(recipe)
    blob["recipe"] = json.dumps(recipe)
    out = io.BytesIO()
    torch.save(blob, out)
    out.seek(0)
    return out


def _node(recipe, op):
    return next(n for n in recipe["root"]["nodes"] if n["op"] == op)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(3, 3))

    def forward(self, x):
        return torch.relu(self.lin(x)).sum(1)


def _set(kind, **changes):
    return lambda recipe: _node(recipe, kind).update(changes)


def _set_class(name):
    return lambda recipe: recipe["root"]["children"]["0"].update({"class": name})


@pytest.mark.parametrize("edit, message", [
    (_set_class("os.system"), "class os.system is not allowed"),
    (_set_class("subprocess.Popen"), "class subprocess.Popen is not allowed"),
    (_set_class("torch.nn.modules.module.Module.__init__"), "class .*__init__ is not allowed"),
    (_set("call_function", target="os:system"), "function 'os:system' is not in tropfx's tables"),
    (_set("call_function", target="builtins:eval"), "'builtins:eval' is not in tropfx's tables"),
    (_set("call_function", target="torch:load"), "'torch:load' is not in tropfx's tables"),
    (_set("call_function", target="torch.ops:os.system"), "torch.ops.os.system is not allowed"),
    (_set("call_function", target="torch:_C._nn"), "'torch:_C._nn' is not in tropfx's tables"),
    (_set("call_method", target="__reduce__"), "method '__reduce__' is not allowed"),
    (_set("call_module", op="exec"), "unknown op 'exec'"),
    (_set("call_module", target="lin.__class__"), "attribute '__class__' is not a valid"),
    (lambda r: r["root"]["children"]["lin"]["children"]["0"].update(
        {"attrs": {"$": "dict", "v": [["_parameters", 1]]}}), "reserved attributes"),
])
def test_tampered_files_are_refused_without_running_anything(edit, message):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 3)) if "class " in message else tropfx.compile(Net(), [])
    with pytest.raises(SerializationError, match=message):
        tropfx.load(_tampered(module, edit))


def test_private_getattr_in_a_graph_is_refused():
    class Shape(nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1)

    cm = tropfx.compile(Shape(), [])
    assert roundtrip(cm)(torch.ones(2, 3, 1)).shape == (2, 3)

    def edit(recipe):
        node = next(n for n in recipe["root"]["nodes"] if n["target"] == "builtins:getattr")
        node["args"]["v"][1] = "__class__"

    with pytest.raises(SerializationError, match="getattr of '__class__' is not allowed"):
        tropfx.load(_tampered(cm, edit))


def test_files_that_are_not_tropfx_modules_are_refused(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(SerializationError, match="not a tropfx module file.*load_state_dict"):
        tropfx.load(path)
    with pytest.raises(SerializationError, match="no such file"):
        tropfx.load(tmp_path / "missing.tropfx")
    torch.save({"format": FORMAT, "version": 99, "recipe": "{}", "tensors": {}}, path)
    with pytest.raises(SerializationError, match="format version 99.*upgrade tropfx"):
        tropfx.load(path)
    (tmp_path / "junk").write_bytes(b"not a zip")
    with pytest.raises(SerializationError, match="not a tropfx module file"):
        tropfx.load(tmp_path / "junk")


def test_uncompiled_user_models_are_refused_with_what_to_do():
    with pytest.raises(SerializationError, match=r"the root module \(tropfx.demo.SmallCNN\).*"
                       r"tropfx.compile"):
        tropfx.save(SmallCNN(), io.BytesIO())


# --- torch.export ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, passes", [
    ("smallcnn-all-exact+prune", [tp.fuse_batchnorm(), tp.prune_l1(0.5, scope="layer")]),
    ("smallcnn-all-exact+prune", [tp.fuse_batchnorm(), tp.relu_to_maxplus(),
                                  tp.maxpool_to_dilation()]),
])
def test_torch_export_of_loaded_compiled_models_saves_and_reloads(name, passes):
    model, inputs, _ = CASES[name]
    loaded = roundtrip(tropfx.compile(model, passes, example_inputs=inputs)).eval()
    exported = torch.export.export(loaded, inputs)
    buf = io.BytesIO()
    torch.export.save(exported, buf)
    buf.seek(0)
    reloaded = torch.export.load(buf)
    with torch.no_grad():
        assert torch.equal(reloaded.module()(*inputs), loaded(*inputs))


# --- property over random models ------------------------------------------------------------

PASSES = {
    "fuse_batchnorm": tp.fuse_batchnorm(),
    "relu_to_maxplus": tp.relu_to_maxplus(),
    "relu_to_maxplus_sparse": tp.relu_to_maxplus(mode="sparse", k=1),
    "maxpool_to_dilation": tp.maxpool_to_dilation(),
    "prune_l1": tp.prune_l1(0.4, scope="layer"),
}


@settings(max_examples=50)
@given(models(), st.lists(st.sampled_from(sorted(PASSES)), max_size=4))
def test_random_compiled_models_reload_bitwise(case, names):
    cm = tropfx.compile(case.model, [PASSES[n] for n in names], example_inputs=case.inputs,
                        verify=False)
    assert_same_module(cm, roundtrip(cm), case.inputs)
