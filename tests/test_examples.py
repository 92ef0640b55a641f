"""Every example script runs to completion (long experiments in their --smoke form)."""

import pathlib
import runpy
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", [str(path), "--smoke", "--out", str(tmp_path)])
    runpy.run_path(str(path), run_name="__main__")
    assert "tropfx report" in capsys.readouterr().out


def test_bimonn_mnist_bce_is_the_cross_entropy_of_the_thresholded_output():
    """``--loss bce`` scores xi(u) = tanh(u) / 2 + 1 / 2 against the one-hot target (computed
    through sigmoid(2 u), which must be the same function)."""
    import torch
    import torch.nn.functional as F

    path = pathlib.Path(__file__).parent.parent / "examples" / "bimonn_mnist.py"
    data_loss = runpy.run_path(str(path))["data_loss"]
    u = torch.randn(7, 10, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (7,))
    direct = F.binary_cross_entropy(torch.tanh(u) / 2 + 0.5, F.one_hot(y, 10).double())
    torch.testing.assert_close(data_loss(u, y, "bce"), direct)
    torch.testing.assert_close(data_loss(u, y, "ce"), F.cross_entropy(u, y))
