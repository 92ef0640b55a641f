"""lower_kernels: structure, exactness (bitwise), training, torch.compile, torch.export, refusals."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import kernels as K
from tropfx import passes as tp
from tropfx.nn import MaxPlus, MinPlus, SparseMaxPlus, SparseMinPlus
from tropfx.nn import functional as TF
from tropfx.nn import morphology as TM
from tropfx.nn.morphology import Dilation1d, Dilation2d, Erosion1d, Erosion2d
from tropfx.testing import assert_pass_preserves

BITWISE = {"rtol": 0.0, "atol": 0.0}
PIPELINE = (tp.relu_to_maxplus, tp.maxpool_to_dilation, tp.lower_kernels)


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if not K.load():
        pytest.skip(f"C++ kernels unavailable: {K.build_info()['error']}")


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                         nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 5))


class Tropical(nn.Module):
    """Every layer type the pass lowers, and the functional spellings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.dil = Dilation2d(3, kernel_size=3, padding=1)
        self.ero = Erosion2d(3, 4, kernel_size=(2, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True)
        self.d1 = Dilation1d(4, kernel_size=3, stride=2)
        self.e1 = Erosion1d(4, 2, kernel_size=2)
        self.mp = MaxPlus(12, 7)
        self.minp = MinPlus(7, 6, bias=False)
        self.sp = SparseMaxPlus(6, 5, k=2)
        self.smin = SparseMinPlus(5, 4, k=3, dim=1)

    def forward(self, x):
        x = self.ero(self.dil(x))  # (N, 4, H, W')
        x = x.flatten(2)[..., :14]  # (N, 4, 14)
        x = self.e1(self.d1(x))  # (N, 2, 5)
        x = TF.maxplus(x.flatten(1)[:, :8].repeat(1, 2)[:, :12], x.new_zeros(12, 12),
                       chunk_elements=64)  # functional, with the reference's own keyword
        x = self.sp(self.minp(self.mp(x)))
        x = self.smin(x[:, :, None].expand(-1, -1, 3))  # (N, 4, 3), product along dim 1
        index = torch.tensor([[0, 1]] * 4)
        return TM.dilation1d(x, x.new_zeros(4, 3), 1, 1) + TF.sparse_minplus(x, index, x.new_zeros(4, 2),
                                                                             dim=1)


def call_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def module_types(gm):
    return [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]


def test_every_tropical_node_becomes_a_kernel_call_bitwise():
    model, x = Tropical(), torch.randn(2, 3, 6, 9)
    cm = assert_pass_preserves(tp.lower_kernels(), model, (x,), **BITWISE)
    assert module_types(cm) == []
    targets = call_targets(cm)
    for fn in (K.dilation2d, K.erosion2d, K.dilation1d, K.erosion1d, K.maxplus, K.minplus,
               K.sparse_maxplus, K.sparse_minplus):
        assert fn in targets, fn.__name__
    assert not {TF.maxplus, TF.sparse_minplus, TM.dilation1d} & set(targets)
    row = cm.report[1]
    assert row.exact and len(row.rewritten) == 11 and row.info["kernels"] == "compiled"
    assert row.counts == cm.report[0].counts  # the same max-plus operation counts
    # the layers keep their parameters: same state_dict keys, still Parameters of the layers
    assert cm.state_dict().keys() == tropfx.trace(model)[0].state_dict().keys()
    assert set(model.state_dict()) <= set(cm.state_dict())
    assert isinstance(cm.get_submodule("mp").weight, nn.Parameter)


def test_float64_is_bitwise_too():
    assert_pass_preserves(tp.lower_kernels(), Tropical(), (torch.randn(2, 3, 6, 9),),
                          dtype=torch.float64, **BITWISE)


def lowered_cnn(x, seed=0):
    model = cnn(seed)
    cm = tropfx.compile(model, [p() for p in PIPELINE], example_inputs=(x,))
    return model, cm


def test_pipeline_result_is_exact_and_trains_like_the_reference():
    x, target = torch.randn(4, 3, 10, 10), torch.randint(0, 5, (4,))
    model, cm = lowered_cnn(x)
    assert [r.stage for r in cm.report.rows] == ["traced", "relu_to_maxplus", "maxpool_to_dilation",
                                                 "lower_kernels"]
    assert len(cm.report[3].rewritten) == 5 and module_types(cm) == ["Conv2d", "Conv2d", "Flatten",
                                                                       "Linear", "Linear"]
    ref = tropfx.compile(model, [tp.relu_to_maxplus(), tp.maxpool_to_dilation()], example_inputs=(x,))
    for m in (ref, cm):
        m.train()
        F.cross_entropy(m(x), target).backward()
    assert torch.equal(cm(x), ref(x))
    ref_params = dict(ref.named_parameters())
    for name, p in cm.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-6, atol=1e-7)
    # a step of SGD changes the lowered model's output like the reference's
    for m in (ref, cm):
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    torch.testing.assert_close(cm(x), ref(x), rtol=1e-5, atol=1e-6)


def test_torch_compile_traces_the_ops():
    x = torch.randn(2, 3, 10, 10)
    _, cm = lowered_cnn(x)
    seen = []

    def recording(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    assert torch.equal(torch.compile(cm, backend=recording)(x), cm(x))
    # a per-channel dilation is traced as the reference's shift-and-max, which inductor fuses
    # into one window loop, not an opaque op (torch.export keeps the op: the test below)
    assert not any("tropfx.dilation2d" in t for t in seen)
    # the exact ReLU rewrites are element-wise torch ops, which inductor can fuse, not opaque ops
    assert not any("tropfx.sparse_maxplus" in t for t in seen)
    assert any("where" in t for t in seen)
    # AOTAutograd (fake tensors, the autograd formulas) in training
    x.requires_grad_()
    out = torch.compile(cm, backend="aot_eager")(x)
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    cm(x).sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-6, atol=1e-7)


def test_torch_export_keeps_the_ops():
    x = torch.randn(2, 3, 10, 10)
    _, cm = lowered_cnn(x)
    ep = torch.export.export(cm, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"tropfx.dilation2d.default", "aten.where.self"} <= targets
    assert torch.equal(ep.module()(x), cm(x))
    buf = io.BytesIO()  # and the exported program saves and reloads with identical outputs
    torch.export.save(ep, buf)
    buf.seek(0)
    assert torch.equal(torch.export.load(buf).module()(x), cm(x))


def test_tropfx_save_and_load_a_lowered_model(tmp_path):
    x = torch.randn(2, 3, 10, 10)
    _, cm = lowered_cnn(x)
    tropfx.save(cm, tmp_path / "lowered")
    again = tropfx.load(tmp_path / "lowered")
    assert torch.equal(again(x), cm(x))
    assert [n.target for n in again.graph.nodes] == [n.target for n in cm.graph.nodes]


def test_half_precision_layers_are_declined():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), MaxPlus(4, 3)).to(torch.bfloat16)
    cm = tropfx.compile(model, [tp.lower_kernels()], example_inputs=(torch.randn(2, 4).bfloat16(),))
    (skip,) = cm.report[1].skipped
    assert "torch.bfloat16: the kernels support float32 and float64" in skip.reason
    assert not cm.report[1].modified and module_types(cm) == ["Linear", "ReLU", "MaxPlus"]


def test_registered_subclasses_and_new_types():
    class Shifted(MaxPlus):  # a subclass lowers like its base
        pass

    model = nn.Sequential(Shifted(5, 3), nn.Flatten())
    cm = assert_pass_preserves(tp.lower_kernels(), model, (torch.randn(2, 5),), **BITWISE)
    assert K.maxplus in call_targets(cm)

    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("se", torch.zeros(2, 2, 2))

        def forward(self, x):
            return F.max_pool2d(x, 2)

    from tropfx.passes.lower_kernels import MODULES, Lowering, register_lowering

    tropfx.tracing.register_leaf(Pool)
    register_lowering(Pool)(lambda m: Lowering(K.dilation2d, ("se",), (2,)))
    try:
        cm = assert_pass_preserves(tp.lower_kernels(), nn.Sequential(Pool()), (torch.randn(1, 2, 4, 4),),
                                   **BITWISE)
        assert call_targets(cm) == [K.dilation2d]
    finally:
        del MODULES[Pool]


def test_no_tropical_nodes_no_change():
    cm = tropfx.compile(nn.Sequential(nn.Linear(3, 3)), [tp.lower_kernels()],
                        example_inputs=(torch.randn(2, 3),))
    assert not cm.report[1].modified and cm.report[1].rewritten == []


def test_identity_maxplus_is_lowered_to_element_wise_ops_bitwise():
    """An exact ReLU rewrite's SparseMaxPlus(k=1) becomes diagonal_maxplus, not an opaque kernel
    call (torch.compile fuses it into the conv, as a ReLU); values, gradients, counts unchanged."""
    x = torch.randn(4, 3, 10, 10)
    model = cnn(2)
    cm = tropfx.compile(model, [tp.relu_to_maxplus(), tp.maxpool_to_dilation()], example_inputs=(x,))
    lowered = tropfx.compile(cm, [tp.lower_kernels()], example_inputs=(x,))
    targets = call_targets(lowered)
    assert targets.count(TF.diagonal_maxplus) == 3 and K.sparse_maxplus not in targets
    assert lowered.report[-1].counts == cm.report[-1].counts
    rows = lowered.report[-1].rewritten
    assert sum("diagonal_maxplus" in r for r in rows) == 3
    assert torch.equal(lowered(x), cm(x))
    up = torch.randint(-3, 4, (4, 5)).float()
    grads = []
    for m in (cm, lowered):
        a = x.clone().requires_grad_()
        m(a).backward(up)
        grads.append({"x": a.grad, **{k: p.grad for k, p in m.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    for key, want in grads[0].items():  # the pooling kernel sums its gradients in its own order
        torch.testing.assert_close(grads[1][key], want, rtol=1e-5, atol=1e-7)


def test_hooked_layers_are_not_lowered_but_skipped_with_the_reason():
    model = Tropical()
    model.mp.register_forward_hook(lambda m, i, o: o * 2)
    model.dil.register_forward_pre_hook(lambda m, i: None)
    x = torch.randn(2, 3, 6, 9)
    cm = tropfx.compile(model, [tp.lower_kernels()], example_inputs=(x,))
    skipped = {s.node: s.reason for s in cm.report[-1].skipped}
    assert "forward hooks" in skipped["mp"] and "forward pre hooks" in skipped["dil"]
    assert module_types(cm).count("MaxPlus") == 1
    torch.testing.assert_close(cm(x), model(x), rtol=0, atol=0)


def test_zero_width_layers_stay_references_and_empty_batches_run():
    model = nn.Sequential(MaxPlus(0, 3), nn.Unflatten(1, (3, 1, 1)), Dilation2d(3, kernel_size=1),
                          nn.Flatten(), SparseMaxPlus(3, 2, k=2))
    x = torch.zeros(4, 0)
    cm = tropfx.compile(model, [tp.lower_kernels()], example_inputs=(x,))
    assert [s.node for s in cm.report[-1].skipped] == ["_0"]
    assert torch.equal(cm(x), model(x)) and cm(torch.zeros(0, 0)).shape == (0, 2)
