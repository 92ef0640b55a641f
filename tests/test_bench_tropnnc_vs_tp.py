"""benchmarks/tropnnc_vs_torchpruning.py: its BatchNorm folding is exact, and a --smoke run writes
every method's numbers and the plot."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import torch
from torch import nn

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "tropnnc_vs_torchpruning.py"


def _bench():
    spec = importlib.util.spec_from_file_location("tropnnc_vs_torchpruning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fold_batchnorm_keeps_the_function_and_drops_every_batchnorm():
    bench = _bench()
    torch.manual_seed(0)
    model = bench.ResCNN().eval()
    for bn in model.modules():  # trained-looking statistics, not the identity of a fresh BN
        if isinstance(bn, nn.BatchNorm2d):
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.data.normal_()
            bn.running_var.data.uniform_(0.5, 2.0)
    folded = bench.fold_batchnorm(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept
    channels = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # BN's weight and bias per channel become one conv bias
    assert bench.n_params(folded) == bench.n_params(model) - channels


def test_smoke_run_writes_every_method_and_the_plot(tmp_path):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out_json),
                           "--plot", str(out_png)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = json.loads(out_json.read_text())
    (run,) = raw["runs"]
    rows = run["ratios"]["0.5"]
    expected = {"tropnnc-multi", *(f"tropnnc-{m}" for m in _bench().TROP_OTHERS)}
    has_tp = importlib.util.find_spec("torch_pruning") is not None
    if has_tp:
        expected |= {"torch-pruning", "torch-pruning-folded"}
    assert set(rows) == expected
    multi = rows["tropnnc-multi"]["params"]
    assert multi < raw["params"] and rows["tropnnc-multi"]["skipped"] == []
    assert rows["tropnnc-l1"]["params"] == multi  # the same K in every group
    # Alg. 1's zonotope K-means needs a single output: every group is skipped, with a reason
    assert rows["tropnnc-zonotope_kmeans"]["params"] == raw["params"]
    assert rows["tropnnc-zonotope_kmeans"]["skipped"]
    if has_tp:
        assert abs(rows["torch-pruning-folded"]["params"] - multi) <= 0.05 * multi
    for name, row in rows.items():
        assert 0 <= row["acc"] <= 1, name
    tuned = {name for name, row in rows.items() if row["acc_ft"] is not None}
    assert tuned == {"tropnnc-multi", "tropnnc-multi-keep", raw["best"]["0.5"],
                     *(("torch-pruning", "torch-pruning-folded") if has_tp else ())}
    assert rows["tropnnc-multi-keep"]["params"] > multi  # BatchNorm's 2 parameters per channel
    assert "| 0.5 | tropnnc-multi |" in proc.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert 0 < out_png.stat().st_size < 200_000
    else:
        assert "no plot" in proc.stdout
