"""torch.autocast: max-plus and morphological layers compute in float32 (their policy), lowered or
not, and a lowered model trains under bf16 autocast exactly as the unlowered one does. The CPU
(bf16) cases always run; the CUDA ones (fp16, bf16) need a GPU (benchmarks/gpu_check.sh runs them)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import kernels as K
from tropfx import passes as tp
from tropfx.nn import MaxPlus, MinPlus, SparseMaxPlus, SparseMinPlus
from tropfx.nn.morphology import Dilation2d, Erosion1d

# (device, autocast dtype): what docs/training.md promises
MODES = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
         pytest.param("cuda", torch.float16, id="cuda-fp16"),
         pytest.param("cuda", torch.bfloat16, id="cuda-bf16")]
OPS = ("maxplus", "sparse_maxplus", "dilation2d", "erosion2d")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if not K.load():
        pytest.skip(f"C++ kernels unavailable: {K.build_info()['error']}")


def on(device: str):
    """Skip a CUDA case without a GPU or without the CUDA kernels."""
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        from tropfx.kernels.cuda_build import load_cuda
        if not load_cuda():
            pytest.fail("a GPU is visible but the CUDA kernels did not build or load")
    return torch.device(device)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("key", ["AutocastCPU", "AutocastCUDA"])
def test_every_op_has_the_float32_autocast_policy_registered(op, key):
    """Checked without a GPU too: a missing CUDA registration would cast nothing on a GPU and fail
    there with 'x is Half'."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tropfx::{op}", key)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 4))


def pipeline(lower: bool):
    passes = [tp.relu_to_maxplus(), tp.maxpool_to_dilation()]
    return passes + [tp.lower_kernels()] if lower else passes


@pytest.mark.parametrize("device,dtype", MODES)
def test_layers_compute_in_float32_under_autocast(device, dtype):
    device = on(device)
    x = torch.randn(2, 3, 6, 6).to(device, dtype)
    layers = [(Dilation2d(3, kernel_size=2), x), (Erosion1d(3, 2, kernel_size=2), x[..., 0]),
              (MaxPlus(6, 4), x[:, 0]), (MinPlus(6, 4), x[:, 0]), (SparseMaxPlus(6, 4, k=2), x[:, 0]),
              (SparseMinPlus(3, 3, k=1, dim=1), x)]
    for layer, inp in layers:
        layer = layer.to(device)
        lowered_layer = tropfx.compile(layer, [tp.lower_kernels()])
        with torch.autocast(device.type, dtype=dtype):
            y = layer(inp)
            lowered = lowered_layer(inp)
        assert y.dtype == torch.float32 and torch.equal(lowered, y), type(layer).__name__
        assert torch.equal(y, layer(inp.float()))  # the float32 computation of the low-precision input


@pytest.mark.parametrize("device,dtype", MODES)
def test_a_lowered_model_trains_under_autocast_like_the_unlowered_one(device, dtype):
    """Failed before: tropfx::sparse_maxplus: x is BFloat16."""
    device = on(device)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 12, 12, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    losses = []
    for lower in (False, True):
        model = tropfx.compile(net(), pipeline(lower), example_inputs=(x,))
        if lower:
            assert any(n.target is K.dilation2d for n in model.graph.nodes)
        model.to(device).train()
        xd, yd = x.to(device), y.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        run = []
        for _ in range(4):
            with torch.autocast(device.type, dtype=dtype):
                loss = F.cross_entropy(model(xd), yd)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0][-1] < losses[0][0]
    # the pooling kernel sums its SE gradients in its own order: equal up to float32 rounding
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert losses[1][0] == losses[0][0]  # the first forward is bitwise the same
