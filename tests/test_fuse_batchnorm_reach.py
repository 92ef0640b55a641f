"""fuse_batchnorm folds through metadata reads and never drops a hook silently."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.testing import assert_pass_preserves
from tropfx.testing.models import randomize_batchnorm_stats


class ReadsMetadata(nn.Module):
    """A conv whose output is read for its metadata (as timm's BatchNormAct2d does) before BN."""

    def __init__(self, read: str):
        super().__init__()
        self.read = read
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        if self.read == "ndim-assert":
            torch._assert(y.ndim == 4, "expected a 4-D input")
        elif self.read == "shape":
            torch._assert(y.shape[1] == 4, "expected 4 channels")
        elif self.read == "size":
            torch._assert(y.size(1) == 4, "expected 4 channels")
        elif self.read == "dim":
            torch._assert(y.dim() == 4, "expected a 4-D input")
        elif self.read == "dtype-device":
            torch._assert(y.dtype == torch.float32, "float only")
            torch._assert(str(y.device) != "meta", "not on meta")
        out = self.bn(y)
        if self.read == "view-by-shape":  # a later data user reads the *metadata* of y
            out = out.reshape(y.shape[0], -1)
        return out


@pytest.mark.parametrize("read", ["ndim-assert", "shape", "size", "dim", "dtype-device",
                                  "view-by-shape"])
def test_folds_through_metadata_reads(read):
    model = randomize_batchnorm_stats(ReadsMetadata(read)).eval()
    cm = assert_pass_preserves(tp.fuse_batchnorm(), model, torch.randn(2, 3, 5, 5))
    row = cm.report[1]
    assert row.rewritten == ["bn -> conv"] and row.skipped == []


def test_a_data_user_still_blocks_the_fold():
    class Both(ReadsMetadata):
        def forward(self, x):
            y = self.conv(x)
            torch._assert(y.ndim == 4, "4-D")
            return self.bn(y) + y.mean()

    cm = tropfx.compile(randomize_batchnorm_stats(Both("")).eval(), [tp.fuse_batchnorm()],
                        example_inputs=(torch.randn(2, 3, 5, 5),))
    (skip,) = cm.report[1].skipped
    assert "also used by ['mean']" in skip.reason


def hooked(where: str, kind: str):
    model = randomize_batchnorm_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                                                    nn.ReLU())).eval()
    seen = []
    module = model[1] if where == "bn" else model[0]
    if kind == "forward":
        module.register_forward_hook(lambda m, i, o: seen.append(o.sum().item()))
    elif kind == "forward_pre":
        module.register_forward_pre_hook(lambda m, i: seen.append(i[0].sum().item()))
    else:
        module.register_full_backward_hook(lambda m, gi, go: seen.append(1))
    return model, seen


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "backward"])
@pytest.mark.parametrize("where", ["bn", "conv"])
def test_a_hooked_batchnorm_or_layer_is_skipped_with_the_reason(where, kind):
    model, seen = hooked(where, kind)
    x = torch.randn(2, 3, 6, 6, requires_grad=kind == "backward")
    cm = assert_pass_preserves(tp.fuse_batchnorm(), model, x)
    (skip,) = cm.report[1].skipped
    name = "1 (BatchNorm2d)" if where == "bn" else "0 (Conv2d)"
    assert f"{name} has 1 {kind.replace('_', '-')} hook" in skip.reason
    assert "would drop it" in skip.reason
    # The hook still runs in the compiled model and sees what it saw in the original.
    seen.clear()
    expected = model(x)
    before = list(seen)
    seen.clear()
    actual = cm(x)
    if kind == "backward":
        expected.sum().backward()
        actual.sum().backward()
        assert len(seen) == 2
    else:
        assert seen == before and len(seen) == 1


def test_functional_batchnorm_in_timm_style_block_folds():
    """timm's BatchNormAct2d: _assert on ndim, then F.batch_norm on the stored statistics."""

    class BatchNormAct(nn.BatchNorm2d):
        def forward(self, x):
            torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
            x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training, 0.1, self.eps)
            return F.silu(x)

    model = randomize_batchnorm_stats(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False),
                                                    BatchNormAct(8))).eval()
    cm = assert_pass_preserves(tp.fuse_batchnorm(), model, torch.randn(2, 3, 7, 7))
    assert len(cm.report[1].rewritten) == 1 and cm.report[1].skipped == []
