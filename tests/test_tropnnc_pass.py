"""The tropnnc pass: structure, exactness where the math allows it, coupled channels, bad input."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx import tropnnc as T
from tropfx.errors import InputError
from tropfx.testing import assert_pass_preserves, state_checksum
from tropfx.testing.strategies import models, randomize_batchnorm_

METHODS = ["multi", "iterative", "single", "zonotope_kmeans", "neural_path_kmeans", "l1", "random",
           "cup"]


def mlp(widths=(12, 16, 10), seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


class LeNet(nn.Module):
    """Conv -> BN -> ReLU -> pool -> Conv -> ReLU -> pool -> hard-coded view -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2, 20), nn.Linear(20, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(-1, 8 * 2 * 2)
        return self.fc2(F.relu(self.fc1(x)))


def lenet(seed=0):
    torch.manual_seed(seed)
    m = LeNet().eval()
    randomize_batchnorm_(m, torch.Generator().manual_seed(seed))
    return m


def layer_rows(cm):
    return {row["layer"]: row for row in cm.report[-1].info["layers"]}


# --- structure ----------------------------------------------------------------------------------

def test_linear_relu_linear_becomes_physically_smaller_and_matches_alg2():
    model, x = mlp(), torch.randn(5, 12)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    fc1, fc2 = cm.get_submodule("0"), cm.get_submodule("2")
    assert (fc1.out_features, fc2.in_features) == (8, 8)
    assert fc1.weight.shape == (8, 12) and fc2.weight.shape == (10, 8)
    assert cm.report[-1].params < cm.report[0].params and cm.report[-1].macs < cm.report[0].macs
    ref = T.compress_multi(model[0].weight, model[0].bias, model[2].weight, 8, seed=0)
    expected = F.linear(F.relu(F.linear(x, ref.A, ref.b)), ref.C, model[2].bias)
    torch.testing.assert_close(cm(x), expected)
    assert layer_rows(cm)["0"] == {**layer_rows(cm)["0"], "n": 16, "K": 8, "consumers": ["2"]}
    assert "0: 16 -> 8 into 2" in str(cm.report)


def test_conv_bn_pool_flatten_chain_compresses_every_layer_and_replaces_the_hard_coded_view():
    model, x = lenet(), torch.randn(3, 1, 12, 12)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    assert {r: (v["n"], v["K"]) for r, v in layer_rows(cm).items()} == {
        "conv1": (6, 3), "conv2": (8, 4), "fc1": (20, 10)}
    assert cm.conv2.in_channels == 3 and cm.fc1.in_features == 4 * 4
    assert not any(n.target == "view" for n in cm.graph.nodes)  # view(-1, 32) -> flatten(1)
    assert not any("bn" in str(n.target) for n in cm.graph.nodes)  # folded (TropNNC §6)
    assert cm(torch.randn(7, 1, 12, 12)).shape == (7, 10)
    cm.train()
    cm(x).sum().backward()  # still an ordinary trainable module
    assert all(p.grad is not None for p in cm.parameters())


@pytest.mark.parametrize("method", ["multi", "iterative", "neural_path_kmeans", "l1", "random", "cup"])
@pytest.mark.parametrize("batchnorm", ["prefusion", "fuse"])
def test_every_method_and_batchnorm_mode_runs_and_shrinks(method, batchnorm):
    model, x = lenet(1), torch.randn(2, 1, 12, 12)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method=method, batchnorm=batchnorm)],
                        example_inputs=(x,))
    assert cm.report[-1].params < cm.report[0].params / 1.5
    assert all(v["K"] <= math.ceil(v["n"] / 2) for v in layer_rows(cm).values())


def test_prefusion_clusters_on_pre_fusion_weights_and_builds_from_fused_ones():
    model, x = lenet(2), torch.randn(2, 1, 12, 12)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, include=["conv1"])], example_inputs=(x,))
    conv1, bn, conv2 = model.conv1, model.bn1, model.conv2
    A, b, C = T.flatten_kernels(conv1.weight, conv1.bias, conv2.weight)
    labels = T.compress_multi(A, b, C, 3).labels
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - bn.running_mean * s
    fused = T.merge_clusters(A * s[:, None], b * s + t, C, labels)
    torch.testing.assert_close(cm.conv1.weight.reshape(3, -1), fused.A)
    torch.testing.assert_close(cm.conv1.bias, fused.b)


def test_several_consumers_are_compressed_together():
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 10), nn.Linear(10, 3), nn.Linear(10, 5)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h), self.c(h)

    torch.manual_seed(0)
    cm = tropfx.compile(Fork().eval(), [tp.tropnnc(ratio=0.4)], example_inputs=(torch.randn(2, 4),))
    assert (cm.a.out_features, cm.b.in_features, cm.c.in_features) == (4, 4, 4)
    assert layer_rows(cm)["a"]["consumers"] == ["b", "c"]


def test_include_exclude_and_per_layer_ratios():
    model, x = lenet(), torch.randn(2, 1, 12, 12)
    only = tropfx.compile(model, [tp.tropnnc(ratio=0.5, include=["fc*"])], example_inputs=(x,))
    assert list(layer_rows(only)) == ["fc1"] and only.conv1.out_channels == 6
    excl = tropfx.compile(model, [tp.tropnnc(ratio=0.5, exclude=["conv*"])], example_inputs=(x,))
    assert list(layer_rows(excl)) == ["fc1"]
    mapped = tropfx.compile(model, [tp.tropnnc(ratio={"conv2": 0.25, "fc1": 0.1})],
                            example_inputs=(x,))
    assert {r: v["K"] for r, v in layer_rows(mapped).items()} == {"conv2": 2, "fc1": 2}


def test_nonuniform_thresholds_pick_k_per_layer():
    model, x = lenet(), torch.randn(2, 1, 12, 12)
    counts = []
    for t in (0.0, 0.3, 1.0, 100.0):
        cm = tropfx.compile(model, [tp.tropnnc(threshold=t, nonuniform="v2")], example_inputs=(x,))
        counts.append(sum(v["K"] for v in layer_rows(cm).values()))
    assert counts[0] == 6 + 8 + 20 and counts[-1] == 3  # 0: nothing merges; huge: one each
    assert counts == sorted(counts, reverse=True)
    for variant in (None, "v1"):
        for method in ("multi", "iterative", "cup"):
            cm = tropfx.compile(model, [tp.tropnnc(threshold=0.5, nonuniform=variant, method=method)],
                                example_inputs=(x,))
            assert cm(x).shape == (2, 10)


def test_thinet_uses_calibration_and_keeps_the_selected_neurons_with_rescaled_outputs():
    model, x = mlp((6, 12, 4)), torch.randn(64, 6)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method="thinet", calibration=x)],
                        example_inputs=(x[:2],))
    kept = [int(torch.nonzero((model[0].weight == w).all(1))) for w in cm.get_submodule("0").weight]
    assert len(kept) == 6 and kept == sorted(kept)  # rows are original neurons, kept unchanged
    # on the calibration data ThiNet beats keeping the same number of neurons at random
    err = (cm(x) - model(x)).norm()
    rnd = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method="random")], example_inputs=(x[:2],))
    assert err < (rnd(x) - model(x)).norm()


def test_single_output_methods_and_the_theorem11_bound_holds_on_the_ball():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).eval()
    for method in ("single", "zonotope_kmeans", "multi"):
        cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method=method, bound_radius=2.0)],
                            example_inputs=(torch.randn(2, 3),))
        bound = layer_rows(cm)["0"]["bound"]
        assert bound is not None and bound > 0
        x = torch.randn(20000, 3, dtype=torch.float64)
        x = 2.0 * x / x.norm(dim=1, keepdim=True) * torch.rand(20000, 1, dtype=torch.float64) ** (1 / 3)
        err = (cm.double()(x) - model.double()(x)).abs().sum(1).max()
        model.float()
        assert err <= bound * (1 + 1e-6), (method, float(err), bound)


# --- exactness ----------------------------------------------------------------------------------

def test_ratio_one_is_an_exact_identity_on_random_models():
    @settings(max_examples=40)
    @given(case=models(), method=st.sampled_from(METHODS))
    def check(case, method):
        cm = assert_pass_preserves(tp.tropnnc(ratio=1.0, method=method), case.model, case.inputs,
                                   rtol=0.0, atol=0.0)
        assert cm.report[-1].exact and not cm.report[-1].modified

    check()


@st.composite
def duplicated_models(draw):
    """A random ReLU network in which every hidden neuron / channel appears twice (same input
    weights, bias and BatchNorm statistics; the next layer reads each copy with half the
    weight). Merging the copies is lossless, so Alg. 2 / 3 at ratio 0.5 must be exact."""
    conv = draw(st.booleans())
    depth = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    width = [draw(st.integers(1, 4)) for _ in range(depth)]
    layers, c_in = [], 2
    for i, w in enumerate(width):
        layer = nn.Conv2d(c_in, w, 3, padding=1) if conv else nn.Linear(c_in, w)
        layers.append(layer)
        if conv and draw(st.booleans()):
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU())
        if conv and i == 0 and draw(st.booleans()):
            layers.append(nn.MaxPool2d(2))
        c_in = w
    layers += [nn.Flatten() if conv else nn.Identity(), nn.Linear(c_in * (16 if conv else 1) // (4 if conv and
               any(isinstance(m, nn.MaxPool2d) for m in layers) else 1), 3)]
    model = nn.Sequential(*layers).eval()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g)
    randomize_batchnorm_(model, g)
    # duplicate: every compressible layer's outputs twice, every reader's inputs halved
    dup = copy.deepcopy(model)
    mods = list(dup)
    layer_idx = [i for i, m in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.Linear))]
    for a, b in zip(layer_idx[:-1], layer_idx[1:], strict=False):
        p, q = mods[a], mods[b]
        p.weight = nn.Parameter(p.weight.data.repeat_interleave(2, 0))
        p.bias = nn.Parameter(p.bias.data.repeat_interleave(2, 0))
        for m in mods[a:b]:
            if isinstance(m, nn.BatchNorm2d):
                for name in ("weight", "bias"):
                    setattr(m, name, nn.Parameter(getattr(m, name).data.repeat_interleave(2)))
                m.running_mean = m.running_mean.repeat_interleave(2)
                m.running_var = m.running_var.repeat_interleave(2)
        n = p.weight.shape[0] // 2
        if isinstance(p, nn.Linear):
            p.out_features, q.in_features = 2 * n, q.in_features * 2
        else:
            p.out_channels = 2 * n
            if isinstance(q, nn.Linear):
                q.in_features *= 2
            else:
                q.in_channels = 2 * n
        if isinstance(q, nn.Linear) and conv:
            w = q.weight.data.reshape(q.out_features, n, -1).repeat_interleave(2, 1) / 2
            q.weight = nn.Parameter(w.reshape(q.out_features, -1))
        else:
            q.weight = nn.Parameter(q.weight.data.repeat_interleave(2, 1) / 2)
    x = torch.randn((3, 2, 4, 4) if conv else (3, 2), generator=g)
    return dup, x


@settings(max_examples=30)
@given(data=duplicated_models(), method=st.sampled_from(["multi", "iterative"]),
       batchnorm=st.sampled_from(["prefusion", "fuse"]))
def test_merging_duplicated_neurons_is_exact(data, method, batchnorm):
    model, x = data
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5, method=method, batchnorm=batchnorm), model,
                               (x,), rtol=1e-5, atol=1e-5)
    assert all(v["K"] == v["n"] // 2 for v in layer_rows(cm).values())


@settings(max_examples=60)
@given(case=models(), method=st.sampled_from(METHODS), ratio=st.sampled_from([0.25, 0.5, 0.9]))
def test_random_models_stay_valid_and_never_grow(case, method, ratio):
    model = case.model
    before = state_checksum(model)
    cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio, method=method)], example_inputs=case.inputs)
    assert state_checksum(model).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in state_checksum(model).items())
    out, ref = cm(*case.inputs), model(*case.inputs)
    assert out.shape == ref.shape
    row = cm.report[-1]
    assert row.params <= cm.report[0].params
    for layer in row.info.get("layers", []):
        assert 1 <= layer["K"] <= layer["n"] and layer["params"][1] <= layer["params"][0]
    for skip in row.skipped:
        assert skip.reason  # declined with a reason, never silently


# --- coupled channels and refusals --------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(h) + h))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 2)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


class NoRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("model, node, reason", [
    (Shared(), "a", "shared"),
])
def test_shared_layers_are_skipped_with_the_reason(model, node, reason):
    cm = assert_pass_preserves(tp.tropnnc(ratio=0.5), model.eval(), (torch.randn(2, 4),),
                               rtol=0.0, atol=0.0)
    skips = {s.node: s.reason for s in cm.report[-1].skipped}
    assert reason in skips[node], skips
    assert "layers" not in cm.report[-1].info or not cm.report[-1].info["layers"]


@pytest.mark.parametrize("model, group, paper, reason", [
    (Residual(), "a", False, "joined by add"),
    (Concat(), "a", True, None),
    (NoRelu(), "a", False, "not a ReLU (tanh)"),
])
def test_coupled_groups_are_compressed_and_marked_outside_the_paper(model, group, paper, reason):
    x = torch.randn(2, 4)
    cm = tropfx.compile(model.eval(), [tp.tropnnc(ratio=0.5)], example_inputs=(x,))
    row = layer_rows(cm)[group]
    assert row["K"] < row["n"] and row["paper"] is paper
    assert (row["outside"] is None) if paper else reason in row["outside"], row
    assert not cm.report[-1].skipped
    strict = tropfx.compile(model.eval(), [tp.tropnnc(ratio=0.5, strict=True)], example_inputs=(x,))
    skips = {s.node: s.reason for s in strict.report[-1].skipped}
    if paper:
        assert group in layer_rows(strict) and not skips
    else:
        assert "strict=True" in skips[group] and reason in skips[group], skips


def test_a_residual_group_merges_every_member():
    """Residual: a's channels and b's outputs are one group (an add joins them); b reads and
    writes it. At ratio 0.5 every member shrinks and the result is the merge of the group."""
    model = Residual().eval()
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(torch.randn(2, 4),))
    assert (cm.a.out_features, cm.b.in_features, cm.b.out_features, cm.c.in_features) == (2,) * 4
    assert layer_rows(cm)["a"]["producers"] == ["a", "b"]
    assert layer_rows(cm)["a"]["consumers"] == ["b", "c"]


def test_single_method_on_a_multi_output_layer_and_nan_weights_are_skipped_with_reasons():
    model = mlp()
    cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method="single")],
                        example_inputs=(torch.randn(2, 12),))
    assert "single output" in cm.report[-1].skipped[0].reason
    bad = mlp()
    with torch.no_grad():
        bad[0].weight[0, 0] = math.nan
    cm = tropfx.compile(bad, [tp.tropnnc(ratio=0.5)], verify=False)
    assert "NaN" in cm.report[-1].skipped[0].reason
    torch.manual_seed(0)
    one = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).eval()
    with torch.no_grad():
        one[2].weight.copy_(torch.tensor([[1.0, -1.0, 2.0, -2.0]]))
    cm = tropfx.compile(one, [tp.tropnnc(ratio=0.25, method="single")], verify=False)
    assert "K >= 2" in cm.report[-1].skipped[0].reason


def test_flatten_without_example_inputs_is_skipped_with_the_reason():
    cm = tropfx.compile(lenet(), [tp.tropnnc(ratio=0.5)], verify=False)
    assert "example_inputs" in {s.node: s.reason for s in cm.report[-1].skipped}["conv2"]
    assert cm.conv1.out_channels == 3  # conv -> conv needs no shapes


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.0}, "(0, 1]"),
    ({"ratio": 1.5}, "(0, 1]"),
    ({"ratio": {"fc*": -1}}, "'fc*'"),
    ({}, "ratio="),
    ({"ratio": 0.5, "method": "kmeans"}, "method='kmeans'"),
    ({"ratio": 0.5, "threshold": 1.0}, "not both"),
    ({"ratio": 0.5, "nonuniform": "v1"}, "needs threshold"),
    ({"threshold": 1.0, "method": "l1"}, "'multi'"),
    ({"threshold": -1.0}, ">= 0"),
    ({"threshold": 1.0, "nonuniform": "v3"}, "'v1' or 'v2'"),
    ({"ratio": 0.5, "method": "thinet"}, "calibration"),
    ({"ratio": 0.5, "batchnorm": "after"}, "'prefusion' or 'fuse'"),
    ({"ratio": 0.5, "include": "fc1"}, "lists of globs"),
    ({"ratio": 0.5, "restarts": 0}, "restarts=0"),
])
def test_bad_options_raise_input_errors(kwargs, message):
    with pytest.raises(InputError, match=None) as err:
        tp.tropnnc(**kwargs)
    assert message in str(err.value)


def test_deterministic_for_a_seed_and_the_model_is_not_mutated():
    model, x = lenet(), torch.randn(2, 1, 12, 12)
    before = state_checksum(model)
    a = tropfx.compile(model, [tp.tropnnc(ratio=0.5, seed=7)], example_inputs=(x,))
    b = tropfx.compile(model, [tp.tropnnc(ratio=0.5, seed=7)], example_inputs=(x,))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in state_checksum(model).items())


def test_progress_bar_can_be_forced(capsys):
    tropfx.compile(lenet(), [tp.tropnnc(ratio=0.5, progress=True)],
                   example_inputs=(torch.randn(2, 1, 12, 12),))
    assert "tropnnc" in capsys.readouterr().err


def test_kmeans_restarts_never_increase_the_inertia():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)

    def inertia(labels):
        return sum(float(((X[labels == k] - X[labels == k].mean(0)) ** 2).sum())
                   for k in range(int(labels.max()) + 1))

    one = T.kmeans_labels(X, 8, seed=3)
    assert torch.equal(one, T.kmeans_labels(X, 8, seed=3, n_init=1))
    assert inertia(T.kmeans_labels(X, 8, seed=3, n_init=5)) <= inertia(one) + 1e-9
    cm = tropfx.compile(mlp(), [tp.tropnnc(ratio=0.5, restarts=3)],
                        example_inputs=(torch.randn(2, 12),))
    assert cm.get_submodule("0").out_features == 8


def test_all_zero_output_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1)).eval()
    with torch.no_grad():
        model[2].weight.zero_()
    single = tropfx.compile(model, [tp.tropnnc(ratio=0.5, method="single")],
                            example_inputs=(torch.randn(2, 3),))
    assert "every output weight c_i is 0" in single.report[-1].skipped[0].reason
    # Alg. 2 merges the neurons; the output does not depend on them, so nothing changes
    multi = tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(torch.randn(2, 3),))
    assert multi.report[-1].max_abs_err == 0 and multi.get_submodule("0").out_features == 3
