"""tropfx.compile: the public API, the pass runner, verification, the report, bad input."""

import copy
import json

import pytest
import torch
import torch.fx.passes.infra.pass_base as fx_pass_base
from torch import fx, nn

import tropfx
from tropfx import passes as tp
from tropfx.errors import InputError, PassError, TropfxError, VerificationError
from tropfx.testing import state_checksum


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 5))
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


# Seeded here: a module-level draw from the global RNG would depend on which tests ran first.
X = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def scale_output(factor: float):
    """A pass that multiplies the graph output by ``factor`` (inexact unless factor == 1)."""

    def run(gm: fx.GraphModule) -> tropfx.PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            scaled = gm.graph.call_function(torch.mul, (out.args[0], factor))
        out.args = (scaled,)
        return tropfx.PassResult(gm, True, tropfx.PassStats(rewritten=["output"]))

    return run


def test_compile_returns_a_graph_module_with_a_report():
    model = small_net()
    cm = tropfx.compile(model, passes=[tp.fuse_batchnorm()], example_inputs=(X,), verify=True)
    assert isinstance(cm, nn.Module) and isinstance(cm.graph, fx.Graph)
    torch.testing.assert_close(cm(X), model(X))
    assert [r.stage for r in cm.report.rows] == ["traced", "fuse_batchnorm"]
    row = cm.report["fuse_batchnorm"]
    assert row.exact and row.modified and row.rewritten == ["_1 -> 0"]
    assert row.params == cm.report[0].params - 8  # the BatchNorm's weight and bias are gone
    assert row.macs == cm.report[0].macs == 2 * (4 * 27 * 9 + 36 * 5)
    assert 0 <= row.max_abs_err < 1e-5 and row.max_rel_err < 1e-5
    assert sum(p.numel() for p in cm.parameters()) == row.params


def test_report_table_and_dict():
    cm = tropfx.compile(small_net(), [tp.fuse_batchnorm()], example_inputs=(X,),
                        evaluate=lambda m: {"acc": 0.5})
    lines = str(cm.report).splitlines()
    assert lines[0].startswith("tropfx report: Sequential") and "tensor(2, 3, 5, 5)" in lines[0]
    header, traced, fused = lines[1:4]
    for column in ("stage", "params", "MACs", "max abs err", "time", "acc"):
        # aligned: every row has its cell starting where the header's column starts
        assert column in header
    assert traced.index("traced") == fused.index("fuse_batchnorm") == header.index("stage")
    assert header.index("params") == fused.index(f"{cm.report[1].params:,}")
    data = json.loads(cm.report.to_json())
    assert data == json.loads(json.dumps(cm.report.to_dict(), default=str))
    assert [r["stage"] for r in data["rows"]] == ["traced", "fuse_batchnorm"]
    assert data["rows"][1]["metrics"] == {"acc": 0.5}
    assert {"rewritten", "skipped", "params", "macs", "max_abs_err", "max_rel_err",
            "seconds"} <= set(data["rows"][1])


def test_compile_never_mutates_the_model_even_in_training_mode():
    for model in (small_net(), small_net().train()):
        before = state_checksum(model)
        ids = [id(p) for p in model.parameters()]
        tropfx.compile(model, [tp.fuse_batchnorm()], example_inputs=(X,))
        after = state_checksum(model)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert ids == [id(p) for p in model.parameters()]


def test_example_inputs_are_not_mutated_by_in_place_models():
    x = X.clone()
    tropfx.compile(nn.Sequential(nn.ReLU(inplace=True)), [], example_inputs=(x,))
    assert torch.equal(x, X)


def test_an_exact_pass_that_changes_outputs_fails_verification_naming_it():
    bad = tropfx.graph_pass("scale_by_1.01", exact=True)(scale_output(1.01))
    named = r"pass scale_by_1\.01 \(after \[fuse_batchnorm\]\) is declared exact"
    with pytest.raises(VerificationError, match=named):
        tropfx.compile(small_net(), [tp.fuse_batchnorm(), bad], example_inputs=(X,))
    # Without verification the same pipeline runs: the check is what caught it.
    cm = tropfx.compile(small_net(), [bad], example_inputs=(X,), verify=False)
    assert cm.report[1].max_abs_err is None


def test_a_lossy_pass_records_its_error():
    cm = tropfx.compile(small_net(), [scale_output(1.01)], example_inputs=(X,))
    row = cm.report["run"]
    assert row.exact is False and row.rewritten == ["output"]
    assert row.max_rel_err == pytest.approx(0.01, rel=1e-3)


def test_a_plain_function_and_torchs_pass_result_work_as_passes():
    def noop(gm):
        return fx_pass_base.PassResult(gm, False)

    cm = tropfx.compile(small_net(), [noop, scale_output(1.0)], example_inputs=(X,))
    assert [r.stage for r in cm.report.rows] == ["traced", "noop", "run"]
    assert cm.report["noop"].modified is False and cm.report["run"].max_abs_err == 0


def test_an_exception_inside_a_pass_names_it_and_the_passes_before():
    def explode(gm):
        raise ValueError("boom")

    with pytest.raises(PassError, match=r"pass explode failed after \[fuse_batchnorm, noop\]: "
                                         r"ValueError: boom") as info:
        tropfx.compile(small_net(), [tp.fuse_batchnorm(),
                                     tropfx.graph_pass("noop")(lambda gm: tropfx.PassResult(
                                         gm, False)), explode])
    assert isinstance(info.value.__cause__, ValueError)


def test_a_pass_must_return_a_pass_result_and_a_valid_graph():
    with pytest.raises(PassError, match="returned a GraphModule; a pass must return"):
        tropfx.compile(small_net(), [lambda gm: gm])

    def corrupt(gm):
        node = next(n for n in gm.graph.nodes if n.op == "call_module")
        node.target = "no_such_module"
        return tropfx.PassResult(gm, True)

    with pytest.raises(PassError, match="pass corrupt failed after .*invalid graph"):
        tropfx.compile(small_net(), [corrupt])


@pytest.mark.parametrize("bad_model", [lambda x: x, [nn.ReLU()], None])
def test_not_a_module(bad_model):
    with pytest.raises(InputError, match="expects an nn.Module"):
        tropfx.compile(bad_model, [])


def test_passes_must_be_configured():
    with pytest.raises(InputError, match=r"passes\[0\].*fuse_batchnorm\(\)"):
        tropfx.compile(small_net(), ["fuse_batchnorm"])


def test_example_inputs_of_the_wrong_shape_name_the_node():
    wrong_channels = r"node _0 \(call_module 0\) raised RuntimeError.*tensor\(2, 5, 5, 5\)"
    with pytest.raises(InputError, match=wrong_channels):
        tropfx.compile(small_net(), [], example_inputs=(torch.randn(2, 5, 5, 5),))
    with pytest.raises(InputError, match=r"node _4 \(call_module 4\) raised RuntimeError: mat1 and mat2"):
        tropfx.compile(small_net(), [], example_inputs=(torch.randn(2, 3, 6, 6),))


def test_verify_needs_inputs_and_inputs_must_be_tensors_or_tuples():
    with pytest.raises(InputError, match="verify=True needs example_inputs"):
        tropfx.compile(small_net(), [], verify=True)
    with pytest.raises(InputError, match="example_inputs must be"):
        tropfx.compile(small_net(), [], example_inputs={"x": X})


def test_errors_are_tropfx_errors():
    assert all(issubclass(e, TropfxError) for e in (InputError, PassError, VerificationError,
                                                    tropfx.TracingError))


def test_without_example_inputs_no_measurement_and_no_verification():
    cm = tropfx.compile(small_net(), [tp.fuse_batchnorm()])
    # Conv2d + BatchNorm2d folds without shapes: BatchNorm2d itself enforces 4-D input.
    assert cm.report[1].rewritten == ["_1 -> 0"]
    assert cm.report[1].macs is None and cm.report[1].max_abs_err is None


def test_structured_outputs_are_verified_leaf_by_leaf():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_net()

        def forward(self, x):
            y = self.body(x)
            return {"logits": y, "aux": (y.sum(), 3)}

    cm = tropfx.compile(TwoHeads().eval(), [tp.fuse_batchnorm()], example_inputs=(X,))
    row = cm.report[1]
    # Every leaf (logits, the scalar sum, the int) was compared; float32 rounding of the folded
    # conv is all that differs. The sum is a single leaf, so its relative error is per-element.
    assert row.exact and row.max_abs_err < 1e-5 and row.max_rel_err < 1e-4
    bad = tropfx.graph_pass(exact=True)(scale_output(2.0))
    with pytest.raises(VerificationError):
        tropfx.compile(small_net(), [bad], example_inputs=(X,))


class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


def test_registered_cost_counters_add_report_columns():
    tropfx.register_cost(Doubler)(lambda m, args, kwargs, out: {"maxplus": out.numel()})
    model = nn.Sequential(nn.Linear(4, 4), Doubler())
    cm = tropfx.compile(model, [], example_inputs=(torch.randn(3, 4),),
                        leaf_modules=[Doubler])
    assert cm.report[0].counts == {"maxplus": 12}
    assert cm.report[0].macs == 48
    assert "maxplus" in str(cm.report).splitlines()[1]
    node = next(n for n in cm.graph.nodes if n.target == "1")
    assert node.meta["tropfx"]["cost"] == {"macs": 0, "maxplus": 12}


def test_the_compiled_module_copies_saves_and_loads_with_its_report(tmp_path):
    model = small_net()
    cm = tropfx.compile(model, [tp.fuse_batchnorm()], example_inputs=(X,))
    twin = copy.deepcopy(cm)
    assert torch.equal(twin(X), cm(X)) and twin.report.to_dict() == cm.report.to_dict()
    torch.save(cm, tmp_path / "cm.pt")
    loaded = torch.load(tmp_path / "cm.pt", weights_only=False)
    assert torch.equal(loaded(X), cm(X)) and loaded.report[1].stage == "fuse_batchnorm"
    fresh = tropfx.compile(model, [tp.fuse_batchnorm()])
    fresh.load_state_dict(cm.state_dict())
    assert torch.equal(fresh(X), cm(X))


class FrozenAtTrace(nn.Module):
    """Tracing records the branch taken for the tracing-time state, not the run-time one."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


def test_tracing_itself_is_verified_against_the_eager_model():
    with pytest.raises(VerificationError, match="tracing with torch.fx changed the outputs.*leaf"):
        tropfx.compile(nn.Sequential(nn.Linear(3, 3), FrozenAtTrace()), [],
                       example_inputs=(torch.randn(2, 3),))
    cm = tropfx.compile(small_net(), [], example_inputs=(X,))
    assert cm.report[0].max_abs_err == 0.0


# --- element-wise verification, pinned at the default tolerances --------------------------------

def perturb(rel: float, abs_: float):
    """An "exact" pass that maps the output y to y * (1 + rel) + abs_."""

    def run(gm: fx.GraphModule) -> tropfx.PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            scaled = gm.graph.call_function(torch.mul, (out.args[0], 1.0 + rel))
            shifted = gm.graph.call_function(torch.add, (scaled, abs_))
        out.args = (shifted,)
        return tropfx.PassResult(gm, True)

    return tropfx.graph_pass("perturb", exact=True)(run)


def wide_relu(dtype, scale):
    """Outputs with exact zeros (ReLU) and entries up to ~``scale``: each tolerance term shows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU()).to(dtype)
    with torch.no_grad():
        model[0].weight.mul_(scale)
        model[0].bias.mul_(scale)
    return model, torch.randn(8, 4, dtype=dtype, generator=torch.Generator().manual_seed(2))


# Literal values: a default tolerance 10x looser than these fails one of the cases below.
PINS = [(torch.float32, 1e-5, 1e-7, 1e-6), (torch.float64, 1e-10, 1e-12, 1e-12)]


@pytest.mark.parametrize("dtype,rtol,atol,ntol", PINS)
def test_default_tolerances_are_pinned_at_their_boundary(dtype, rtol, atol, ntol):
    small, x = wide_relu(dtype, 1e-3)
    large, _ = wide_relu(dtype, 100.0)
    top = large(x).detach().abs().max().item()
    assert (small(x) == 0).any() and small(x).abs().max() < 1e-2 and top > 10
    cases = [(small, 0.0, atol),  # atol: the exact zeros of a small-scale output
             (large, rtol, 0.0),  # rtol: the largest entries
             (large, 0.0, ntol * top)]  # ntol: the zeros of a large-scale output
    for model, rel, abs_ in cases:
        tropfx.compile(model, [perturb(rel / 2, abs_ / 2)], example_inputs=(x,))  # inside
        with pytest.raises(VerificationError, match=r"output\[\d+, \d+\]: .* \(reference "):
            tropfx.compile(model, [perturb(2 * rel, 2 * abs_)], example_inputs=(x,))


def test_a_small_entry_wrong_by_a_large_relative_amount_fails():
    """Normwise (atol + rtol * max|ref|) accepted this: one tiny entry doubled."""
    model, x = wide_relu(torch.float32, 100.0)

    def double_the_smallest(gm):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            fixed = gm.graph.call_function(_double_smallest, (out.args[0],))
        out.args = (fixed,)
        return tropfx.PassResult(gm, True)

    with pytest.raises(VerificationError, match="double_the_smallest"):
        tropfx.compile(model, [tropfx.graph_pass(exact=True)(double_the_smallest)],
                       example_inputs=(x,))


@torch.fx.wrap
def _double_smallest(y):
    nonzero = y[y > 1e-3]
    smallest = nonzero.min()
    return torch.where(y == smallest, 2 * y, y)  # about 1e-3 off, where max|y| is ~100


# --- inconclusive verification -------------------------------------------------------------------

class Constant(nn.Module):
    """Output independent of the input, as a random-init net whose activations collapsed."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.relu(x) * 0.0 - 1.0)


def test_outputs_that_ignore_the_inputs_make_verification_inconclusive():
    x = torch.randn(4, 3)
    with pytest.warns(tropfx.verify.VerificationWarning, match="inconclusive.*output row") as seen:
        cm = tropfx.compile(Constant(), [tp.fuse_batchnorm(), tp.relu_to_maxplus()],
                            example_inputs=(x,))
    assert len(seen) == 1  # once per compile, not per stage
    assert cm.report[0].info["verification"].startswith("inconclusive: every output row")
    assert "verification:\n  traced: inconclusive" in str(cm.report)
    # a batch of one: decided by a second, random draw of the input
    with pytest.warns(tropfx.verify.VerificationWarning, match="redrawn at random"):
        tropfx.compile(Constant(), [], example_inputs=(x[:1],))


def test_outputs_that_depend_on_the_inputs_are_conclusive(recwarn):
    for x in (X, X[:1]):
        cm = tropfx.compile(small_net(), [tp.fuse_batchnorm()], example_inputs=(x,))
        assert "verification" not in cm.report[0].info
    assert not [w for w in recwarn if issubclass(w.category, tropfx.verify.VerificationWarning)]


# --- the global RNG -------------------------------------------------------------------------------

def test_compile_leaves_the_global_rng_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(2, 3, 4, 4)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    tropfx.compile(model, [tp.relu_to_maxplus(), tp.maxpool_to_dilation(),
                           tp.relu_to_maxplus("sparse")], example_inputs=(x,))
    assert torch.equal(torch.rand(5), expected)


# --- bad input ------------------------------------------------------------------------------------

def test_too_many_example_inputs_is_an_input_error():
    with pytest.raises(InputError, match=r"2 positional input\(s\).*Sequential\.forward"):
        tropfx.compile(small_net(), [], example_inputs=(X, X))


def test_meta_and_lazy_models_are_input_errors():
    with pytest.raises(InputError, match=r"'weight' on the meta device.*to_empty"):
        tropfx.compile(nn.Sequential(nn.Linear(3, 4, device="meta")), [], example_inputs=(X,))
    with pytest.raises(InputError, match=r"module '1' \(LazyLinear\) has uninitialized"):
        tropfx.compile(nn.Sequential(nn.ReLU(), nn.LazyLinear(4)), [],
                       example_inputs=(torch.randn(2, 3),))


@pytest.mark.parametrize("factory,args,kwargs,match", [
    (tp.fuse_batchnorm, (), {"foo": 1}, r"fuse_batchnorm\(\): got an unexpected keyword argument 'foo'"),
    (tp.relu_to_maxplus, ("exact", 2, 0, 5), {}, "too many positional arguments.*mode, k, seed"),
    (tp.prune_l1, (), {"amount": 0.5}, "options of prune_l1 are ratio"),
    (tp.lower_kernels, (1,), {}, "too many positional"),
    (tp.maxpool_to_dilation, (), {"x": 1}, "unexpected keyword"),
    (tp.tropnnc, (), {"ratios": 0.5}, "unexpected keyword"),
    (tp.binarize_bise, (), {"mode": "x"}, "unexpected keyword"),
])
def test_bad_pass_options_are_input_errors_naming_the_pass(factory, args, kwargs, match):
    with pytest.raises(InputError, match=match):
        factory(*args, **kwargs)


# --- hooks ------------------------------------------------------------------------------------------

def test_a_pass_that_drops_a_hooked_module_is_a_pass_error():
    model = small_net()
    model[1].register_forward_hook(lambda m, i, o: o + 1)  # the BatchNorm that fusion folds away

    @tropfx.graph_pass("fold_naively", exact=False)
    def fold_naively(gm):  # removes the BN call without looking at hooks
        bn = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "1")
        bn.replace_all_uses_with(bn.args[0])
        gm.graph.erase_node(bn)
        return tropfx.PassResult(gm, True)

    with pytest.raises(PassError, match=r"pass fold_naively .*module '1' \(forward hooks\)"):
        tropfx.compile(model, [fold_naively], example_inputs=(X,))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_hooked_custom_submodules_stay_leaves_so_their_hooks_run():
    model = nn.Sequential(Block(), nn.Flatten())
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    cm = tropfx.compile(model, [tp.relu_to_maxplus()], example_inputs=(X,))
    seen.clear()
    cm(X)
    assert seen == [torch.Size([2, 4, 3, 3])]  # tracing through Block would have dropped it


def test_a_pass_that_carries_the_hooks_over_to_a_replacement_is_fine():
    model = small_net()
    model[2].register_forward_hook(lambda m, i, o: o * 2)

    @tropfx.graph_pass("swap_relu", exact=True)
    def swap_relu(gm):
        new = nn.ReLU()
        old = gm.get_submodule("2")
        new._forward_hooks.update(old._forward_hooks)
        gm.add_submodule("2", new)
        return tropfx.PassResult(gm, True)

    cm = tropfx.compile(model, [swap_relu], example_inputs=(X,))
    torch.testing.assert_close(cm(X), model(X))


def test_the_models_own_hooks_are_carried_over_to_the_compiled_module():
    """Tracing calls forward directly, so the root's hooks were not in the graph: they are carried
    over, also through a pass that returns a new GraphModule."""
    model = small_net()
    calls = []
    model.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
    model.register_forward_hook(lambda m, i, o: o + 3)
    grads = []
    model.register_full_backward_hook(lambda m, gin, gout: grads.append(gout[0].clone()))
    model.register_forward_hook(lambda m, args, kwargs, o: calls.append(kwargs) or None,
                                with_kwargs=True)

    @tropfx.graph_pass("rebuild", exact=True)
    def rebuild(gm):  # a new GraphModule object, as a pass that rebuilds its graph returns
        return tropfx.PassResult(fx.GraphModule(gm, copy.deepcopy(gm.graph)), True)

    cm = tropfx.compile(model, [tp.fuse_batchnorm(), rebuild], example_inputs=(X,))
    calls.clear()
    x = X.clone().requires_grad_()
    y = cm(x)
    torch.testing.assert_close(y, model(X))
    assert len(calls) == 2  # the compiled call and the model's
    y.sum().backward()
    assert len(grads) == 1 and torch.equal(grads[0], torch.ones_like(y))


def test_the_models_own_hooks_are_verified_with_it():
    """A root hook that changes the output is part of the model: tracing verifies with it."""
    model = small_net()
    model.register_forward_hook(lambda m, i, o: o * 100)
    cm = tropfx.compile(model, [], example_inputs=(X,), verify=True)
    torch.testing.assert_close(cm(X), model(X))
