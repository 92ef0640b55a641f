"""benchmarks/gpu_check.sh without a GPU: it says so, writes its summary and exits 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TROPFX_GPU_CHECK_EMULATE": "0"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA GPU visible" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "none" and summary["verdict"] == "no GPU: nothing checked"
    assert summary["steps"] == [] and summary["figures"] == {}


def test_every_step_has_a_time_budget():
    """The budgets stated in the header are the ones the steps run under, and sum to <= 480 s."""
    text = SCRIPT.read_text()
    budgets = {"probe": 10, "build": 170, "tests": 90, "memcheck": 50, "racecheck": 50,
               "synccheck": 30, "bench": 60}
    header = ", ".join(f"{k} {v}" for k, v in budgets.items())
    assert header in text.replace("\n#  ", " ").replace("\n#   ", " ")
    for name, seconds in budgets.items():
        if name in ("memcheck", "racecheck", "synccheck"):
            assert f"{name}:{seconds}" in text
        else:
            assert f"step {name} {seconds} " in text
    assert sum(budgets.values()) <= 480
