"""binarize_bise and the binarized layers (tropfx.nn.binary): structure, exactness, methods, report,
bad input, saving.

The central property (BiSE Theorem 2.3 with the deviation propagated through the network, §3.3):
when the pass reports every neuron exact, the binarized network equals the float network thresholded
at 1/2 on *every* binary input -- checked by enumerating all 2^9 (3x3) or 2^16 (4x4) binary images
on random models whose neurons are made activated by construction.
"""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import bise_math
from tropfx import passes as tp
from tropfx.errors import InputError, ParameterError, PassError
from tropfx.nn import LUI, BinaryLinear, BinaryMorphology2d, BiSE, BiSEL, DenseLUI, ThresholdedConv2d
from tropfx.nn.binary import NonBinaryInputWarning
from tropfx.nn.bise import BiSEModule

IDENTITY = {"weight_reparam": "identity", "bias_reparam": "identity"}
BINARY = (BinaryMorphology2d, ThresholdedConv2d, BinaryLinear)
FLOAT_LAYERS = (BiSE, LUI, BiSEL, DenseLUI)
# torch notes that an even kernel with padding="same" copies the input: expected here.
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
              pytest.mark.usefixtures("one_thread")]




def all_images(h: int, w: int) -> torch.Tensor:
    """Every binary (h, w) image, as a float batch (2^(h w), 1, h, w)."""
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=h * w)))
    return bits.view(-1, 1, h, w)


def make_activated(model: nn.Module, seed: int, complement: bool = True) -> nn.Module:
    """Give every BiSE layer of ``model`` (identity reparametrizations) random activated neurons
    with a margin: ``W = 1_S`` plus small weights outside ``S``, the bias in the middle of the
    activation interval for inputs within 0.01 of {0, 1} (Eqs. 4-8), ``|p|`` in [20, 40] (negative
    at random when ``complement``): every output lies within about 1e-6 of {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if not isinstance(layer, BiSEModule):
            continue
        n, fan = layer.omega.shape[0], layer.fan
        se = torch.rand(n, fan, generator=g) < 0.5
        se[torch.arange(n), torch.randint(fan, (n,), generator=g)] = True
        erosion = torch.rand(n, generator=g) < 0.5
        w = se.double() + ~se * torch.rand(n, fan, generator=g, dtype=torch.float64) / (16 * fan)
        bounds = bise_math.bise_bounds(w, torch.zeros(n, dtype=torch.float64), se, delta=0.01)
        low = torch.where(erosion, bounds.lower_erosion, bounds.lower_dilation)
        up = torch.where(erosion, bounds.upper_erosion, bounds.upper_dilation)
        p = 20 + 20 * torch.rand(n, generator=g, dtype=torch.float64)
        if complement:
            p = torch.where(torch.rand(n, generator=g) < 0.5, -p, p)
        with torch.no_grad():
            layer.omega.copy_(w.view_as(layer.omega))
            layer.beta.copy_((low + up) / 2)
            layer.scale.copy_(p)
    return model


ARCHITECTURES = {
    "bise_lui": lambda: nn.Sequential(BiSE(3, **IDENTITY), LUI(1, 2, **IDENTITY),
                                      BiSE(3, channels=2, **IDENTITY), LUI(2, 1, **IDENTITY)),
    "bisel": lambda: nn.Sequential(BiSEL(1, 2, 3, **IDENTITY), BiSEL(2, 2, (2, 3), **IDENTITY)),
    "bisel_identity_lui": lambda: nn.Sequential(BiSEL(1, 2, 3, identity_lui=True, **IDENTITY),
                                                BiSEL(2, 2, (2, 3), **IDENTITY)),
    "bisel_dense": lambda: nn.Sequential(BiSEL(1, 2, 3, **IDENTITY), nn.Flatten(),
                                         DenseLUI(18, 4, **IDENTITY), DenseLUI(4, 3, **IDENTITY)),
}


def compile_binarized(model, x, **options):
    return tropfx.compile(model, passes=[tp.binarize_bise(**options)], example_inputs=(x,))


def module_types(gm):
    return [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]


# --- the property: activated everywhere -> bit-exact on every binary input --------------------------

@settings(max_examples=12)
@given(st.sampled_from(sorted(ARCHITECTURES)), st.integers(0, 2**31),
       st.sampled_from(["exact", "activable", "constant"]))
def test_activated_networks_binarize_exactly_on_every_binary_input(arch, seed, method):
    model = make_activated(ARCHITECTURES[arch](), seed)
    x = all_images(3, 3)
    cm = compile_binarized(model, x, method=method, inputs=(x,))
    info = cm.report[-1].info
    assert info["all_exact"], [r for r in info["neurons"] if not r["exact"]]
    out = cm(x)
    assert out.dtype == torch.bool
    with torch.no_grad():
        assert torch.equal(out, model(x) > 0.5)
    assert info["agreement"] == 1.0 and info["agreement_bits"] == out.numel()
    assert all(r["distance"] == 0 and r["activated"] for r in info["neurons"])


def test_exhaustive_on_4x4_images_every_layer_type():
    x = all_images(4, 4)  # 65,536 images
    for i, arch in enumerate(sorted(ARCHITECTURES)):
        if arch == "bisel_dense":
            model = make_activated(nn.Sequential(BiSEL(1, 2, 3, **IDENTITY), nn.Flatten(),
                                                 DenseLUI(32, 3, **IDENTITY)), seed=i)
        else:
            model = make_activated(ARCHITECTURES[arch](), seed=i)
        cm = compile_binarized(model, x[:8])
        assert cm.report[-1].info["all_exact"]
        with torch.no_grad():
            assert torch.equal(cm(x), model(x) > 0.5), arch


def test_a_neuron_on_the_closed_end_is_activated_but_not_exact_downstream():
    # morphological_params puts a dilation's bias at L = 0: activated for binary inputs, but its
    # float output is exactly 1/2 on empty windows, so the next layer sees a value 1/2 away from {0, 1}.
    first = BiSE(3, **IDENTITY)
    second = BiSE(3, **IDENTITY)
    se = torch.zeros(9, dtype=torch.bool)
    se[4] = se[5] = True
    w, b = bise_math.morphological_params(se, "dilation")
    with torch.no_grad():
        for layer in (first, second):
            layer.omega.copy_(w.view_as(layer.omega).double())
            layer.beta.fill_(float(b))
            layer.scale.fill_(5.0)
    info = compile_binarized(nn.Sequential(first, second), all_images(3, 3)).report[-1].info
    assert [(r["activated"], r["exact"]) for r in info["neurons"]] == [(True, True), (True, False)]
    assert [layer["delta_out"] for layer in info["layers"]] == [0.5, 0.5]
    assert not info["all_exact"]


# --- structure -------------------------------------------------------------------------------------

def test_every_layer_type_is_replaced_and_the_network_is_boolean():
    torch.manual_seed(0)
    model = ARCHITECTURES["bisel_dense"]()
    x = (torch.rand(5, 1, 3, 3) < 0.5).float()
    cm = compile_binarized(model, x)
    types = module_types(cm)
    assert not any(issubclass(t, FLOAT_LAYERS) for t in types)
    assert types == [BinaryMorphology2d, ThresholdedConv2d, nn.Flatten, BinaryLinear, BinaryLinear]
    assert [n.target for n in cm.graph.nodes if n.op == "call_method"] == ["repeat"]  # no casts
    assert cm(x).dtype == torch.bool and cm(x).shape == (5, 3)
    assert not any(isinstance(p, nn.Parameter) and p.is_floating_point() for p in cm.parameters())
    assert cm.report[-1].rewritten[0].startswith("_0 -> .repeat(), _0_bise_binary, _0_lui_binary")
    assert model[0].bise.omega.dtype == torch.float32  # the caller's model is untouched


def test_last_layer_float_keeps_the_last_bise_layers_and_casts_their_input():
    torch.manual_seed(1)
    model = ARCHITECTURES["bisel_dense"]()
    x = (torch.rand(5, 1, 3, 3) < 0.5).float()
    cm = compile_binarized(model, x, last_layer="float")
    types = module_types(cm)
    assert types[-1] is DenseLUI and types[-2] is BinaryLinear
    casts = [n for n in cm.graph.nodes if n.op == "call_method" and n.target == "to"]
    assert len(casts) == 1 and casts[0].args[1] == torch.float32
    out = cm(x)
    assert out.dtype == torch.float32
    row = cm.report[-1]
    assert [s.reason for s in row.skipped] == ["kept in float (last_layer='float'): no BiSE layer "
                                               "follows it"]
    assert row.info["kept_float"] == ["_3"] and row.info["total_neurons"] == 2 + 2 + 4


def test_a_non_moving_op_between_layers_gets_float_bits_and_breaks_the_guarantee():
    model = make_activated(nn.Sequential(BiSEL(1, 2, 3, **IDENTITY), nn.MaxPool2d(2),
                                         BiSEL(2, 1, 3, **IDENTITY)), seed=3)
    x = all_images(4, 4)[::97]
    cm = compile_binarized(model, x)
    code = cm.code
    assert ".to(torch.float32)" in code
    info = cm.report[-1].info
    first, second = info["layers"][0], info["layers"][2]
    assert first["exact"] == first["neurons"] and second["delta_in"] == 0.5 and second["exact"] == 0
    with torch.no_grad():  # still right: max pooling of bits is a max of their float values
        assert torch.equal(cm(x), model(x) > 0.5)


# --- methods ---------------------------------------------------------------------------------------

def trained_like(seed: int) -> nn.Module:
    """A fresh model (Appendix B initialization): most neurons are not activated."""
    torch.manual_seed(seed)
    return nn.Sequential(BiSEL(1, 3, 3, weight_reparam="dual"),
                         BiSEL(3, 1, 3, weight_reparam="positive", bias_reparam="projected"))


@pytest.mark.parametrize("method", ["exact", "activable"])
def test_activable_methods_use_the_activable_projection(method):
    model = trained_like(4)
    x = (torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    cm = compile_binarized(model, x, method=method)
    morph = [m for m in cm.modules() if isinstance(m, BinaryMorphology2d)]
    for layer, binary in zip((model[0].bise, model[1].bise), morph, strict=True):
        with torch.no_grad():
            w, b, p = layer.neurons()
        expected = bise_math.project_activable(w.double(), b.double(), p=p.double())
        assert torch.equal(binary.se.flatten(1), expected.se)
        assert binary.operations == expected.operation
        assert torch.equal(binary.complement, expected.complemented)
    info = cm.report[-1].info
    dist = [r["distance"] for r in info["neurons"] if r["layer"].endswith(".bise")]
    assert all(d >= 0 for d in dist) and any(d > 0 for d in dist)
    assert info["method"] == method


def test_constant_method_is_the_neuron_with_constant_weights_and_its_own_bias():
    # Eq. 28 projects the weights onto theta 1_S; the bias is kept, so a neuron becomes the count
    # threshold 1[theta |x & S| > b]: the float neuron with the projected weights, on every input.
    model = trained_like(4)
    x = (torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    cm = compile_binarized(model, x, method="constant")
    g = torch.Generator().manual_seed(1)
    rows = cm.report[-1].info["neurons"]
    assert any(r["operation"] == "threshold" for r in rows)  # neither a dilation nor an erosion
    for name, layer in [("_0_bise", model[0].bise), ("_0_lui", model[0].lui),
                        ("_1_bise", model[1].bise), ("_1_lui", model[1].lui)]:
        with torch.no_grad():
            w, b, p = (t.double() for t in layer.neurons())
        projected = bise_math.project_constant(w, b, p=p).weight.view(layer.omega.shape)
        if isinstance(layer, LUI):
            bits = torch.rand(16, layer.in_channels, 5, 5, generator=g) < 0.5
            sums = F.conv2d(bits.double(), projected, groups=layer.groups)
        else:
            bits = torch.rand(16, layer.channels, 5, 5, generator=g) < 0.5
            sums = F.conv2d(bits.double(), projected, padding=layer.padding, groups=layer.channels)
        expected = p.view(1, -1, 1, 1) * (sums - b.view(1, -1, 1, 1)) > 0
        assert torch.equal(cm.get_submodule(f"{name}_binary")(bits), expected), name


def test_exact_and_activable_build_the_same_network():
    model = trained_like(5)
    x = (torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    a, b = (compile_binarized(model, x, method=m) for m in ("exact", "activable"))
    assert torch.equal(a(x), b(x))
    assert a.report[-1].info["neurons"] == b.report[-1].info["neurons"]


# --- the report ------------------------------------------------------------------------------------

def se_size(row: dict) -> int:
    """|S| from a report row: kernel rows "010/111" for a BiSE, index ranges "0-2,5" otherwise."""
    if row["layer"].endswith(".bise"):
        return row["se"].count("1")
    spans = [part.split("-") for part in row["se"].split(",")]
    return sum(int(span[-1]) - int(span[0]) + 1 for span in spans)


def test_report_has_one_row_per_neuron_and_the_agreement():
    model = trained_like(6)
    x = (torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    cm = compile_binarized(model, x, inputs=x)
    info = cm.report[-1].info
    rows = info["neurons"]
    assert len(rows) == info["total_neurons"] == 3 + 3 + 3 + 1
    assert [r["layer"] for r in rows] == ["0.bise"] * 3 + ["0.lui"] * 3 + ["1.bise"] * 3 + ["1.lui"]
    for r in rows:
        assert set(r) == {"node", "layer", "neuron", "exact", "activated", "distance", "operation",
                          "threshold", "complement", "se"}
        assert r["operation"] in ("dilation", "erosion")
        assert r["threshold"] == (1 if r["operation"] == "dilation" else se_size(r))
        assert (r["distance"] == 0) == r["activated"] and (r["activated"] or not r["exact"])
    kernel_se = rows[0]["se"].split("/")
    assert len(kernel_se) == 3 and all(len(s) == 3 and set(s) <= {"0", "1"} for s in kernel_se)
    assert rows[-1]["se"] in ("0", "1", "2", "0-1", "1-2", "0-2", "0,2")
    assert info["exact_neurons"] + info["approximated_neurons"] == info["total_neurons"]
    assert sum(layer["neurons"] for layer in info["layers"]) == info["total_neurons"]
    with torch.no_grad():
        ref, new = model(x) > 0.5, cm(x)
    assert info["agreement"] == pytest.approx((ref == new).float().mean().item())
    assert list(info["layer_agreement"]) == ["_0", "_1"]
    assert info["layer_agreement"]["_1"] == info["agreement"]  # the last layer is the output
    assert info["agreement_inputs"].startswith("inputs=")
    assert "tropfx report" in str(cm.report)


def test_agreement_defaults_to_random_binary_inputs_or_is_none():
    model = trained_like(7)
    x = torch.rand(2, 1, 5, 5)
    info = compile_binarized(model, (x > 0.5).float()).report[-1].info
    assert info["agreement_inputs"].startswith("random binary tensor(2, 1, 5, 5)")
    assert 0 <= info["agreement"] <= 1
    gm, _ = tropfx.trace(model)
    result = tp.binarize_bise()(gm)  # no example inputs: shapes unknown
    assert result.stats.info["agreement"] is None and "unknown" in result.stats.info["agreement_inputs"]


def test_no_bise_layer_is_a_no_op():
    cm = tropfx.compile(nn.Sequential(nn.Linear(3, 2)), passes=[tp.binarize_bise()],
                        example_inputs=(torch.rand(2, 3),))
    assert not cm.report[-1].modified and "no BiSE" in cm.report[-1].info["note"]


# --- the binarized layers against brute-force oracles ---------------------------------------------

def shifted_or_and(x: torch.Tensor, se: torch.Tensor, erosion: bool, pads) -> torch.Tensor:
    """Binary morphology by hand: loop over output pixels of the zero-padded image."""
    left, right, top, bottom = pads
    xp = F.pad(x.bool(), (left, right, top, bottom))
    kh, kw = se.shape
    h, w = xp.shape[-2] - kh + 1, xp.shape[-1] - kw + 1
    out = torch.zeros(x.shape[0], h, w, dtype=torch.bool)
    for i, j in itertools.product(range(h), range(w)):
        window = xp[:, i:i + kh, j:j + kw][:, se]
        out[:, i, j] = window.all(1) if erosion else window.any(1)
    return out


@pytest.mark.parametrize("kernel,padding,pads", [((3, 3), "same", (1, 1, 1, 1)),
                                                 ((2, 4), "same", (1, 2, 0, 1)),
                                                 ((3, 2), (1, 0), (0, 0, 1, 1))])
def test_binary_morphology_is_or_and_over_the_zero_padded_window(kernel, padding, pads):
    g = torch.Generator().manual_seed(0)
    se = torch.rand(4, *kernel, generator=g) < 0.5
    se[:, 0, 0] = True
    ops = ["dilation", "erosion", "erosion", "dilation"]
    complement = torch.tensor([False, False, True, True])
    layer = BinaryMorphology2d(se, ops, complement, padding=padding)
    x = torch.rand(3, 4, 5, 6, generator=g) < 0.6
    out = layer(x)
    for c in range(4):
        expected = shifted_or_and(x[:, c], se[c], ops[c] == "erosion", pads) ^ bool(complement[c])
        assert torch.equal(out[:, c], expected)
    assert torch.equal(layer(x.float()), out) and torch.equal(layer(x.to(torch.uint8)), out)


def test_thresholded_layers_are_integer_sums_against_a_threshold():
    g = torch.Generator().manual_seed(1)
    weight = torch.randint(-3, 4, (6, 2, 3, 3), generator=g)
    threshold = torch.randint(-2, 5, (6,), generator=g)
    complement = torch.rand(6, generator=g) < 0.5
    conv = ThresholdedConv2d(weight, threshold, complement, groups=2, padding=1)
    x = torch.rand(3, 4, 5, 5, generator=g) < 0.5
    sums = F.conv2d(x.double(), weight.double(), padding=1, groups=2)
    assert torch.equal(conv(x), (sums >= threshold.view(1, -1, 1, 1)) ^ complement.view(1, -1, 1, 1))
    assert conv.binary_params == () and conv.weight.dtype == torch.int8 and conv.bit_planes == 2
    linear = BinaryLinear(weight.flatten(1)[:, :7] * 100, threshold * 100)
    xv = torch.rand(9, 7, generator=g) < 0.5
    sums = xv.double() @ (weight.flatten(1)[:, :7] * 100).double().t()
    assert torch.equal(linear(xv), sums >= threshold * 100) and linear.weight.dtype == torch.int32
    big = BinaryLinear(torch.full((1, 3), 2**23), 3 * 2**23 + 1)
    assert big.sum_dtype == torch.float64  # float32 rounds 3 * 2**23 + 1 down to 3 * 2**23
    assert torch.equal(big(torch.ones(1, 3)), torch.tensor([[False]]))


def test_morphology_as_thresholded_sums():
    se = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    layer = BinaryLinear.from_morphology(se, ["dilation", "erosion"], [False, True])
    x = torch.tensor(list(itertools.product((False, True), repeat=3)))
    union = (x & se[0]).any(1)
    intersection = (x | ~se[1]).all(1)
    assert torch.equal(layer(x), torch.stack([union, ~intersection], 1))
    assert layer.threshold.tolist() == [1, 2] and layer.binary_params == ("weight",)


# --- bad input -------------------------------------------------------------------------------------

def test_non_binary_input_is_thresholded_at_one_half_with_one_warning():
    layer = BinaryMorphology2d(torch.ones(1, 3, 3, dtype=torch.bool))
    x = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    with pytest.warns(NonBinaryInputWarning, match="thresholded at 1/2"):
        out = layer(x)
    assert torch.equal(out, layer(x > 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonBinaryInputWarning)
        layer(x)  # warned once per layer


@pytest.mark.parametrize("x,match", [
    (torch.full((1, 1, 3, 3), float("nan")), "NaN"),
    (torch.zeros(1, 2, 3, 3), "expected 1 input channels"),
    (torch.zeros(1, 3, 3), r"\(N, 1, H, W\)"),
    (torch.zeros(1, 1, 3, 3, dtype=torch.complex64), "bool or real"),
])
def test_bad_inputs_are_named(x, match):
    with pytest.raises(InputError, match=match):
        BinaryMorphology2d(torch.ones(1, 3, 3, dtype=torch.bool))(x)


def test_an_input_smaller_than_the_window_is_named():
    for layer in (BinaryMorphology2d(torch.ones(1, 3, 3, dtype=torch.bool), padding=0),
                  ThresholdedConv2d(torch.ones(1, 1, 3, 3, dtype=torch.int8), 1)):
        with pytest.raises(InputError, match=f"{type(layer).__name__}: the input .* is smaller"):
            layer(torch.zeros(1, 1, 2, 5, dtype=torch.bool))


def test_bad_layer_parameters_are_named():
    with pytest.raises(ParameterError, match=r"BinaryMorphology2d: the structuring element of "
                                             r"channel\(s\) \[1\] is empty"):
        BinaryMorphology2d(torch.tensor([[[True]], [[False]]]))
    with pytest.raises(ParameterError, match=r"BinaryLinear: the structuring element of output"):
        BinaryLinear.from_morphology(torch.zeros(2, 3, dtype=torch.bool), "erosion")
    with pytest.raises(InputError, match="weight must hold integers"):
        ThresholdedConv2d(torch.full((1, 1, 1, 1), 0.5), 1)
    with pytest.raises(ParameterError, match="NaN"):
        BinaryLinear(torch.full((1, 2), float("nan")), 1)
    with pytest.raises(InputError, match="operation must be"):
        BinaryMorphology2d(torch.ones(2, 1, 1, dtype=torch.bool), ["dilation"])


def test_nan_weights_fail_the_pass_naming_the_layer():
    model = trained_like(8)
    with torch.no_grad():
        model[1].bise.omega[2, 0, 1, 1] = float("nan")
    x = (torch.rand(2, 1, 5, 5) < 0.5).float()
    gm, _ = tropfx.trace(model)
    with pytest.raises(ParameterError, match=r"binarize_bise: 1.bise \(BiSE\) has NaN or infinite "
                                             r"parameters in neuron\(s\) \[2\].*reset_parameters"):
        tp.binarize_bise(inputs=x)(gm)
    assert any(isinstance(m, BiSEL) for m in gm.modules())  # checked before anything changed
    with pytest.raises(PassError, match="1.bise"):  # without example inputs: the float model fails
        tropfx.compile(model, passes=[tp.binarize_bise()])


@pytest.mark.parametrize("options,match", [
    ({"method": "stochastic"}, "method='stochastic'"),
    ({"last_layer": "half"}, "last_layer='half'"),
    ({"method": "constant", "solver": "osqp"}, "method='constant' .* solves no QP"),
    ({"solver": "cvx"}, "solver='cvx'"),
    ({"inputs": [1, 2]}, "inputs= must be a tensor"),
])
def test_unsupported_options_are_refused(options, match):
    with pytest.raises(InputError, match=match):
        tp.binarize_bise(**options)


# --- an ordinary module: runs, saves, loads, summarizes ---------------------------------------------

def test_binarized_module_saves_loads_and_summarizes(tmp_path):
    model = trained_like(9)
    x = (torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    cm = compile_binarized(model, x)
    path = tmp_path / "binary.pt"
    tropfx.save(cm, path)
    loaded = tropfx.load(path)
    assert torch.equal(loaded(x), cm(x))
    assert module_types(loaded) == module_types(cm)
    assert loaded.report[-1].info["total_neurons"] == 10
    again = tropfx.compile(loaded, passes=[tp.binarize_bise()], example_inputs=(x,))
    assert torch.equal(again(x), cm(x)) and not again.report[-1].modified  # leaves, nothing to do
    s = tropfx.summary(cm, x)
    se_entries = 3 * 9 + 3 * 9  # two BinaryMorphology2d layers
    lui_entries = 3 * 1 + 1 * 3
    assert s.total.binary_params == se_entries + lui_entries and s.total.float_params == 0
    assert s.total.bitops > 0 and s.total.macs == 0
