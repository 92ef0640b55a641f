"""The main job, `tropfx demo`, end to end on a short training budget."""

import json

import pytest
import torch

from tropfx.cli import main
from tropfx.demo import run_demo
from tropfx.errors import InputError


def test_demo_trains_compiles_verifies_and_reports():
    result = run_demo(epochs=8)
    report = result.compiled.report
    assert [r.stage for r in report.rows] == ["traced", "fuse_batchnorm", "relu_to_maxplus",
                                              "maxpool_to_dilation", "prune_l1"]
    assert len(report["fuse_batchnorm"].rewritten) == 3  # two conv + BN, one Linear + BN1d
    assert len(report["relu_to_maxplus"].rewritten) == 3
    assert len(report["maxpool_to_dilation"].rewritten) == 2
    assert report[1].params < report[0].params and report[0].macs > 0
    assert report[3].counts["maxplus"] > report[2].counts["maxplus"] > 0
    # Exact passes: the compiled model classifies the test set exactly as the trained one.
    assert all(r.metrics["test acc"] == result.accuracy for r in report.rows[:4])
    assert report["relu_to_maxplus"].max_abs_err == report["maxpool_to_dilation"].max_abs_err == 0
    # The lossy pass: half the conv / linear weights are gone, and the report says what it cost.
    assert report[4].active_params < 0.6 * report[3].active_params
    assert report[4].exact is False and report[4].max_abs_err > 0
    assert result.accuracy > 0.5  # it learned something in 8 epochs
    assert result.epochs == 8 and not result.capped


def test_demo_is_deterministic_for_a_seed_and_the_time_cap_is_reported():
    a, b = run_demo(epochs=2, seed=3), run_demo(epochs=2, seed=3)
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert a.compiled.report.rows[-1].metrics == b.compiled.report.rows[-1].metrics
    capped = run_demo(epochs=50, max_seconds=0.0)
    assert capped.epochs == 1 and capped.requested_epochs == 50 and capped.capped
    with pytest.raises(InputError, match="epochs=0"):
        run_demo(epochs=0)


def test_cli_demo_prints_the_report_and_writes_json(tmp_path, capsys):
    path = tmp_path / "report.json"
    assert main(["demo", "--epochs", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prune_l1" in out and "test acc" in out
    assert "lossy: prune_l1 (declared not exact" in out and "stopped by" not in out
    assert "prune_l1 cost: test acc " in out and "(50 % of the conv / linear weights pruned" in out
    assert main(["demo", "--epochs", "3", "--max-seconds", "0"]) == 0
    assert "trained 1 epochs (stopped by --max-seconds 0 before 3" in capsys.readouterr().out
    assert json.loads(path.read_text())["rows"][1]["stage"] == "fuse_batchnorm"


def test_cli_reports_tropfx_errors_without_traceback(monkeypatch, capsys):
    from tropfx.errors import InputError

    def fail(**kwargs):
        raise InputError("nope")

    monkeypatch.setattr("tropfx.demo.run_demo", fail)
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == "tropfx: error: nope\n"
    with pytest.raises(InputError):
        main(["--debug", "demo"])
