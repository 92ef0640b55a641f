"""Round trips of the model kinds real zoos hold, after the exact passes: a ViT-style block with
torch._assert, a timm-style BatchNormAct with a shape assert, modules named like RegNet's `block1-0`;
and files of format 1 (before declared tensor shapes) still load."""

import io
import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.serialize import SerializationError


def exact_passes():
    return [tp.fuse_batchnorm(), tp.relu_to_maxplus(), tp.maxpool_to_dilation()]


def roundtrip(module):
    buf = io.BytesIO()
    tropfx.save(module, buf)
    buf.seek(0)
    return tropfx.load(buf)


def assert_bitwise(cm, loaded, x):
    with torch.no_grad():
        assert torch.equal(loaded(x), cm(x))
    assert loaded.code == cm.code
    assert list(loaded.state_dict()) == list(cm.state_dict())


class ViTBlock(nn.Module):
    """torchvision's ViT in small: patch embedding, class token, torch._assert on the sequence
    length, pre-norm attention (nn.MultiheadAttention) and a ReLU MLP, residual adds."""

    def __init__(self, dim=16, patch=4, side=8):
        super().__init__()
        self.seq = (side // patch) ** 2
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, self.seq + 1, dim))
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        torch._assert(x.shape[1] == self.seq, f"expected {self.seq} patches")
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        torch._assert(x.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {x.shape}")
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return self.head(x[:, 0])


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: batch norm and activation in one layer, asserting its input rank."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.act = nn.ReLU()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(x)


class TimmStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.bn1(self.conv_stem(x))), 1))


def regnet_style():
    """Module names that are not identifiers, as torchvision's RegNet has (`block1-0`)."""
    trunk = nn.Sequential()
    for i in range(2):
        block = nn.Sequential()
        block.add_module(f"block{i + 1}-0", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1),
                                                          nn.BatchNorm2d(4), nn.ReLU()))
        block.add_module(f"block{i + 1}-1", nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()))
        trunk.add_module(f"block{i + 1}", block)
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3, padding=1), trunk=trunk,
                                     pool=nn.MaxPool2d(2), flatten=nn.Flatten(),
                                     fc=nn.Linear(4 * 4 * 4, 3)))


def _randomized(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("name, factory", [("vit-block", ViTBlock), ("timm-bnact", TimmStyle),
                                           ("regnet-names", regnet_style)])
@pytest.mark.parametrize("passes", [[], "exact"], ids=["traced", "exact-passes"])
def test_zoo_style_models_round_trip_bitwise(name, factory, passes):
    torch.manual_seed(0)
    model = _randomized(factory())
    x = torch.randn(2, 3, 8, 8)
    cm = tropfx.compile(model, exact_passes() if passes else [], example_inputs=(x,))
    if passes and name != "vit-block":  # the exact passes rewrote something
        assert any(row.rewritten for row in cm.report.rows)
    loaded = roundtrip(cm)
    assert_bitwise(cm, loaded, x)
    if name == "vit-block":
        assert any(n.target is torch._assert for n in loaded.graph.nodes)
    if name == "regnet-names":
        assert "trunk.block1.block1-0.0" in dict(loaded.named_modules())
        assert 'getattr(self.trunk.block1, "block1-0")' in loaded.code


def test_names_torch_fx_cannot_write_are_refused_at_save():
    """add_module accepts a quote; torch.fx would paste it into code unescaped: save refuses."""
    model = nn.Sequential()
    model.add_module('a"b', nn.Linear(2, 2))
    cm = tropfx.compile(nn.Sequential(nn.Linear(2, 2)), [])
    for bad in (model, cm):
        if bad is cm:
            cm.add_module('x"y', nn.ReLU())
        with pytest.raises(SerializationError, match="cannot save .* is not a valid module"):
            tropfx.save(bad, io.BytesIO())


def test_a_module_containing_its_ancestor_is_refused_at_save():
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].loop = model  # not in _modules: a plain attribute, refused as not plain data
    inner = nn.Sequential(nn.Linear(2, 2))
    outer = nn.Sequential(inner)
    inner._modules["back"] = outer
    with pytest.raises(SerializationError, match="its own ancestor"):
        tropfx.save(outer, io.BytesIO())


def test_format_1_files_still_load():
    torch.manual_seed(0)
    model = _randomized(TimmStyle())
    x = torch.randn(2, 3, 8, 8)
    cm = tropfx.compile(model, exact_passes(), example_inputs=(x,))
    buf = io.BytesIO()
    tropfx.save(cm, buf)
    blob = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    recipe = json.loads(blob["recipe"])
    del recipe["tensors"]  # what format 1 wrote
    blob.update(version=1, recipe=json.dumps(recipe))
    old = io.BytesIO()
    torch.save(blob, old)
    old.seek(0)
    assert_bitwise(cm, tropfx.load(old), x)
