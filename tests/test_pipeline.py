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
