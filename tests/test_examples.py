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
