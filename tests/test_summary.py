"""tropfx.summary (counts by kind, memory, packed memory, ops) and tropfx.progress."""

import json

import pytest
import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.demo import SmallCNN
from tropfx.measure import count_params, register_cost
from tropfx.nn import SparseMaxPlus
from tropfx.progress import is_quiet, progress
from tropfx.summary import LayerSummary
from tropfx.testing import state_checksum
from tropfx.testing.strategies import build_case


class BinaryGate(nn.Module):
    """A stand-in for a binarized layer: binary weights (as float) and a bool mask buffer."""

    binary_params = ("weight",)

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 9))  # 9 entries per row: packs into 2 bytes
        self.register_buffer("mask", torch.ones(n, 9, dtype=torch.bool))

    def forward(self, x):
        return x * self.weight.sum(1)


tropfx.tracing.register_leaf(BinaryGate)


@register_cost(BinaryGate)
def _gate_cost(module, args, kwargs, out):
    return {"bitops": out.numel() * 9, "popcount": out.numel()}


def hybrid():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), SparseMaxPlus(3, 3, k=2), BinaryGate(3)).eval()


def test_counts_memory_and_ops_per_layer_by_hand():
    s = tropfx.summary(hybrid(), torch.randn(2, 4))
    lin, smp, gate = s.layers
    assert (lin.name, lin.type, lin.output_shape) == ("0", "Linear", (2, 3))
    assert (lin.float_params, lin.maxplus_params, lin.binary_params) == (15, 0, 0)
    assert lin.memory_bytes == lin.packed_bytes == 15 * 4
    assert (lin.macs, lin.maxplus_ops, lin.bitops) == (2 * 4 * 3, 0, 0)
    # SparseMaxPlus: value (3, 2) and bias (3,) are max-plus parameters; the int64 index is memory.
    assert (smp.float_params, smp.maxplus_params) == (0, 9)
    assert smp.memory_bytes == 9 * 4 + 6 * 8
    assert smp.maxplus_ops == 2 * 3 * (2 + 1) and smp.macs == 0
    # Binary: 27 weights at 1 bit (ceil(27 / 8) = 4 bytes), the bool mask likewise.
    assert gate.binary_params == 27 and gate.memory_bytes == 27 * 4 + 27
    assert gate.packed_bytes == 4 + 4
    assert gate.bitops == 2 * 3 * 9 and gate.ops == {"popcount": 6}
    total = s.total
    assert total.params == count_params(hybrid()) == 15 + 9 + 27
    assert total.memory_bytes == sum(r.memory_bytes for r in s.layers)
    assert (total.macs, total.maxplus_ops, total.bitops) == (24, 18, 54)
    text = str(s)
    assert "popcount" in text and "params: 51 (float 15, max-plus 9, binary 27)" in text
    assert "x smaller" in text


def test_totals_match_the_compile_report_and_the_model_is_untouched():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    cm = tropfx.compile(SmallCNN().eval(), [tp.fuse_batchnorm(), tp.relu_to_maxplus(),
                                            tp.maxpool_to_dilation()], example_inputs=(x,))
    before = state_checksum(cm)
    meta = [dict(n.meta.get("tropfx", {})) for n in cm.graph.nodes]
    s = tropfx.summary(cm, x)
    row = cm.report[-1]
    assert s.total.params == row.params
    assert s.total.macs == row.macs and s.total.maxplus_ops == row.counts["maxplus"]
    assert {r.type for r in s.layers} >= {"Conv2d", "SparseMaxPlus", "Dilation2d", "Linear"}
    assert s.total.maxplus_params == sum(
        m.value.numel() + m.bias.numel() for m in cm.modules() if isinstance(m, SparseMaxPlus)
    ) + sum(m.weight.numel() for n, m in cm.named_modules() if n.endswith("dilation"))
    assert all(torch.equal(before[k], v) for k, v in state_checksum(cm).items())
    assert meta == [dict(n.meta.get("tropfx", {})) for n in cm.graph.nodes]


def test_shared_tensors_count_once_and_functional_tensors_get_a_row():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    s = tropfx.summary(Tied(), torch.randn(1, 3))
    assert s.total.params == 9 and [r.float_params for r in s.layers] == [9, 0]
    case = build_case([("seed", 0), ("input", (2, 3, 4, 4)),
                       ("conv", 2, 3, 4, 3, 1, 1, 1, True, "zeros"),
                       ("bn", "F.batch_norm", 2, 4, True, 1e-5)])
    s = tropfx.summary(case.model, case.inputs)
    bn = next(r for r in s.layers if r.type == "batch_norm")
    assert bn.float_params == 8 and bn.memory_bytes == 16 * 4  # weight, bias; mean, var buffers
    assert s.total.params == count_params(case.model)


def test_without_inputs_there_are_no_op_counts():
    s = tropfx.summary(hybrid())
    assert s.total.macs is None and all(r.macs is None and r.output_shape is None
                                        for r in s.layers)
    assert s.total.params == 51 and "no example inputs" in str(s)


def test_an_untraceable_root_is_summarized_per_module():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    s = tropfx.summary(Branchy(), torch.randn(1, 2))
    assert [r.name for r in s.layers] == ["fc"] and s.total.params == 6
    assert "not traceable" in s.note and s.total.macs is None


def test_to_dict_and_json():
    s = tropfx.summary(hybrid(), torch.randn(2, 4))
    data = json.loads(s.to_json())
    assert data["total"]["params"] == 51 and data["inputs"] == "tensor(2, 4)"
    assert [r["name"] for r in data["layers"]] == ["0", "1", "2"]
    assert data["layers"][1]["maxplus_params"] == 9
    assert set(data["total"]) >= {f for f in LayerSummary.__dataclass_fields__}


# --- progress ---------------------------------------------------------------------------------

def test_progress_is_quiet_off_a_terminal_and_iterates_the_same(monkeypatch):
    monkeypatch.delenv("TROPFX_QUIET", raising=False)
    assert is_quiet()  # pytest captures stderr: not a terminal
    items = [3, 1, 2]
    bar = progress(items, desc="work")
    assert list(bar) == items and len(bar) == 3
    with progress(total=5) as manual:
        manual.update(2)
        manual.set_postfix(loss=1.0)
        assert manual.n == 2


@pytest.mark.parametrize("value, quiet", [("1", True), ("true", True), ("yes", True),
                                          ("0", False), ("off", False)])
def test_progress_env_switch(monkeypatch, value, quiet):
    monkeypatch.setenv("TROPFX_QUIET", value)
    assert is_quiet() is quiet
    assert is_quiet(quiet=not quiet) is (not quiet)  # the argument wins


def test_progress_forced_on_uses_tqdm(monkeypatch, capsys):
    monkeypatch.setenv("TROPFX_QUIET", "1")
    bar = progress(range(3), desc="forced", quiet=False, mininterval=0)
    assert type(bar).__module__.startswith("tqdm")
    assert list(bar) == [0, 1, 2]
    assert "forced" in capsys.readouterr().err
