"""tropfx.plot: figures written as PNG without pyplot, and a clear error without matplotlib."""

import math
import sys

import pytest
import torch
from torch import nn

from tropfx import plot
from tropfx.errors import TropfxError
from tropfx.nn.morphology import Dilation2d, Erosion1d

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_compression_curve_with_error_bars(mpl, tmp_path):
    results = {"relu": {100: [0.99, 0.98], 30: [0.90, 0.93], 5: [0.40, 0.50]},
               "sparse-morph": {100: 0.98, 30: 0.95, 5: 0.80}}
    fig = plot.compression_curve(results, path=tmp_path / "curve.png", reference=0.985,
                                 title="MNIST")
    assert is_png(tmp_path / "curve.png")
    (ax,) = fig.axes
    assert ax.xaxis_inverted() and [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["uncompressed", "relu", "sparse-morph"]
    line = ax.containers[0][0]  # the relu means, 100 % first
    assert list(line.get_xdata()) == [100, 30, 5]
    assert line.get_ydata()[0] == pytest.approx(0.985)


def test_structuring_elements_of_layers_and_tensors(mpl, tmp_path):
    torch.manual_seed(0)
    layer = Dilation2d(3, 4, kernel_size=3)
    with torch.no_grad():
        layer.weight[0, 0, 0, 0] = -math.inf  # inactive entry
    fig = plot.structuring_elements(layer, path=tmp_path / "se.png")
    assert is_png(tmp_path / "se.png")
    assert len([ax for ax in fig.axes if ax.images]) == 12  # 4 x 3 kernels
    fig = plot.structuring_elements((torch.rand(5, 3, 3) > 0.5).float(), max_kernels=4)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4 and images[0].get_clim() == (0.0, 1.0)  # binary: black and white
    fig = plot.structuring_elements(Erosion1d(2, kernel_size=5), path=tmp_path / "e1.png")
    assert fig.axes[0].images[0].get_array().shape == (1, 5)
    with pytest.raises(TropfxError, match="expected 2-D kernels"):
        plot.structuring_elements(torch.zeros(3))


def test_weight_histograms_count_pruned_entries(mpl, tmp_path):
    model = nn.Sequential(nn.Linear(10, 20), Dilation2d(2, kernel_size=2))
    with torch.no_grad():
        model[0].weight[:5] = 0
        model[1].weight[0, 0, 0] = -math.inf
    fig = plot.weight_histograms(model, path=tmp_path / "hist.png", bins=10)
    assert is_png(tmp_path / "hist.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["0.weight\n50/200 pruned", "1.weight\n1/8 pruned"]
    fig = plot.weight_histograms({"w": torch.randn(100)}, layers=["w"])
    assert fig.axes[0].get_title() == "w\n0/100 pruned"
    with pytest.raises(TropfxError, match="no weights to plot"):
        plot.weight_histograms(model, layers=["nope"])


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(plot.MissingDependency, match=r"pip install 'tropfx\[plot\]'"):
        plot.compression_curve({"a": {100: 1.0}})
    assert issubclass(plot.MissingDependency, ImportError)
