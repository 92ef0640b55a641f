"""The main job, `tropfx demo`, end to end on a short training budget."""

import json

import pytest

from tropfx.cli import main
from tropfx.demo import run_demo


def test_demo_trains_compiles_verifies_and_reports():
    result = run_demo(seconds=0.5)
    report = result.compiled.report
    assert [r.stage for r in report.rows] == ["traced", "fuse_batchnorm"]
    assert len(report["fuse_batchnorm"].rewritten) == 3  # two conv + BN, one Linear + BN1d
    assert report[1].params < report[0].params and report[0].macs > 0
    # Exact pass: the compiled model classifies the test set exactly as the trained one.
    assert report[0].metrics["test acc"] == report[1].metrics["test acc"] == result.accuracy
    assert result.accuracy > 0.5  # it learned something in half a second


def test_cli_demo_prints_the_report_and_writes_json(tmp_path, capsys):
    path = tmp_path / "report.json"
    assert main(["demo", "--seconds", "0.2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fuse_batchnorm" in out and "test acc" in out
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
