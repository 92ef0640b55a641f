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


def test_bimonn_mnist_keeps_the_best_validation_epoch_and_stops_early():
    """``train`` with a validation split: the weights of the epoch with the lowest binarized
    validation error come back, and training stops ``--early-stop`` epochs after the best."""
    import argparse
    import importlib.util

    import torch

    path = pathlib.Path(__file__).parent.parent / "examples" / "bimonn_mnist.py"
    spec = importlib.util.spec_from_file_location("bimonn_mnist_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # (runpy would hand back a copy of the globals)
    errors, states = iter([5.0, 3.0, 4.0, 4.5, 6.0, 7.0]), []

    def scripted(model, x, y):  # stands for the binarized validation error of each epoch
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(errors)

    module.validate = scripted  # train() looks it up in the module's globals
    torch.manual_seed(0)
    x, y = (torch.rand(64, 1, 28, 28) > 0.5).float(), torch.randint(0, 10, (64,))
    model = module.BiMoNN(8, "positive", input_mean=0.5, scale_init=0.0, bias_noise=0.01)
    args = argparse.Namespace(epochs=6, batch=16, reg_start=0.0, lr=0.01, seed=0, loss="bce",
                              plateau=0, early_stop=2, max_steps=None)
    log = module.train(model, x, y, "unif", args, val=(x[:8], y[:8]))
    assert log["best_epoch"] == 2 and log["best_val_error"] == 3.0
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4]  # 2 epochs past the best
    final = model.state_dict()
    assert all(torch.equal(final[k], states[1][k]) for k in final)
    assert not all(torch.equal(final[k], states[3][k]) for k in final)


def test_bimonn_denoising_restarts_keep_the_best_binarized_validation(tmp_path):
    """``--restarts 3``: three models from the seeds 0, 1000, 2000; the one kept and reported is
    the one whose binarized validation MSE is the lowest (here the second), not the last."""
    import importlib.util
    import json

    import torch

    path = pathlib.Path(__file__).parent.parent / "examples" / "bimonn_denoising.py"
    spec = importlib.util.spec_from_file_location("bimonn_denoising_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores, states = iter([0.3, 0.1, 0.2]), []

    def scripted(model, x, y):  # stands for the binarized validation MSE of each restart
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    module.binarized_loss = scripted  # run() looks it up in the module's globals
    module.main(["--smoke", "--regularizers", "none", "--restarts", "3", "--out", str(tmp_path)])
    run = json.loads((tmp_path / "bimonn_denoising.json").read_text())["runs"]["none"]
    tried = run["training"]["restarts"]
    assert [t["seed"] for t in tried] == [0, 1000, 2000]
    assert [t["validation_binary_loss"] for t in tried] == [0.3, 0.1, 0.2]
    assert run["training"]["seed"] == 1000
    kept = {k: torch.tensor(v) for k, v in run["state"].items()}
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], states[2][k]) for k in kept)
    assert "Best of 3 restarts (seed 1000)" in (tmp_path / "bimonn_denoising.md").read_text()
