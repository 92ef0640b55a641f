"""benchmarks/tropnnc_mnist.py runs end to end in its --smoke form and writes every number."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "tropnnc_mnist.py"


def test_smoke_run_writes_results(tmp_path):
    env = {**os.environ, "TROPFX_CACHE": str(tmp_path / "cache")}  # never the user's model cache
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    raw = json.loads((tmp_path / "tropnnc_mnist.json").read_text())
    assert sorted(raw["parts"]) == ["a", "b", "c", "d"]
    assert raw["configs"]["a"]["smoke"] is True
    for key in "abcd":
        assert (tmp_path / f"tropnnc_mnist_{key}.md").read_text().startswith(f"## Part {key}")
        assert (tmp_path / f"tropnnc_mnist_{key}.json").is_file()
        (run,) = raw["parts"][key]["runs"]  # one seed
        assert 0 <= run["acc"] <= 1 and run["params"] > 0 and run["macs"] > 0
        assert run["results"], f"part {key} compressed nothing"
        for method, per_setting in run["results"].items():
            assert len(per_setting) == 1, (key, method)  # one ratio / budget in a smoke run
            for facts in per_setting.values():
                assert 0 <= facts["acc"] <= 1
                assert facts["skipped"] == [], (key, method, facts["skipped"])
                assert facts["params_before"] == run["params"]
                if key != "d":  # uniform: every selected layer is compressed
                    assert facts["params"] < run["params"] and facts["macs"] < run["macs"]
                    assert all(k < n for n, k in facts["layers"].values()), facts["layers"]

    a = raw["parts"]["a"]["runs"][0]["results"]
    assert set(a) == {"tropnnc", "tropnnc_iter", "npkmeans", "thinet", "l1", "random"}
    # 5 % of the 1000 hidden neurons of fc1, and nothing else
    assert a["tropnnc"]["5"]["layers"] == {"fc1": [1000, 50]}
    assert a["l1"]["5"]["layers"] == {"fc1": [1000, 50]}
    b = raw["parts"]["b"]["runs"][0]["results"]["tropnnc"]["5"]["layers"]
    assert b == {"fc1": [512, 26], "fc2": [256, 13], "fc3": [128, 6]}
    c = raw["parts"]["c"]["runs"][0]["results"]["thinet"]["10"]["layers"]
    assert c == {"conv1": [20, 2], "conv2": [50, 5]}
    d = raw["parts"]["d"]["runs"][0]
    assert set(d["results"]) == {"tropnnc_v1", "tropnnc_v2", "cup"}
    for method, facts in d["results"].items():
        assert facts["60"]["threshold"] >= 0 and d["probes"][method], method
    assert (tmp_path / "tropnnc_mnist.md").read_text().startswith("# TropNNC on MNIST")
