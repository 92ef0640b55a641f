"""The BatchNorm folding math, against torch's own modules in float64."""

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tropfx.folding import batchnorm_affine, fold_affine


@given(st.integers(1, 6), st.booleans(), st.sampled_from([1e-5, 1e-3, 0.0]), st.integers(0, 2**31))
def test_batchnorm_affine_is_eval_mode_batchnorm(channels, affine, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(channels, eps=eps, affine=affine).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) * 3 + 1e-9)
        if affine:
            bn.weight.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
            bn.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
    x = torch.randn(5, channels, generator=gen, dtype=torch.float64)
    scale, shift = batchnorm_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, eps)
    torch.testing.assert_close(scale * x + shift, bn(x), rtol=1e-12, atol=1e-12)


@given(
    transposed=st.booleans(), groups=st.sampled_from([1, 2, 3]), in_per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**31),
)
def test_fold_affine_into_grouped_conv_and_conv_transpose(transposed, groups, in_per_group,
                                                          out_per_group, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    cin, cout = groups * in_per_group, groups * out_per_group
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    layer = cls(cin, cout, 3, groups=groups, bias=bias).double()
    scale = torch.randn(cout, generator=gen, dtype=torch.float64)
    shift = torch.randn(cout, generator=gen, dtype=torch.float64)
    w, b = fold_affine(layer.weight, layer.bias, scale, shift, transposed=transposed,
                       groups=groups)
    x = torch.randn(2, cin, 4, 4, generator=gen, dtype=torch.float64)
    conv = F.conv_transpose2d if transposed else F.conv2d
    expected = scale.view(1, -1, 1, 1) * layer(x) + shift.view(1, -1, 1, 1)
    torch.testing.assert_close(conv(x, w, b, groups=groups), expected, rtol=1e-12, atol=1e-12)


def test_fold_affine_into_linear_keeps_dtype():
    layer = nn.Linear(3, 4, bias=False)
    scale, shift = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    w, b = fold_affine(layer.weight, None, scale, shift)
    assert w.dtype == b.dtype == torch.float32
    x = torch.randn(2, 3)
    torch.testing.assert_close(F.linear(x, w, b), (scale * layer(x).double() + shift).float())
