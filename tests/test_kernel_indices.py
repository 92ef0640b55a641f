"""Every ``torch.ops.tropfx`` operator refuses out-of-range index, argmax and size arguments with a
``RuntimeError`` / ``IndexError`` that names the operator and the bad value, on the CPU kernels and
on the CUDA binding (through the CPU emulator, ``TROPFX_CUDA_EMULATION=1``, or on a GPU).

The calls run in a child process (``tests/index_cases.py``): before the checks, ``maxplus_backward``
with argmax ``2**30``, ``sparse_maxplus_backward`` with index ``10**12`` and ``dilation2d_backward``
with argmax ``2**30`` segfaulted, and argmax = in_features wrote past grad_x silently. A crash fails
its case and the child is restarted after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from index_cases import CASES

from tropfx.kernels import OPS, _build

SCRIPT = Path(__file__).with_name("index_cases.py")
ROOT = SCRIPT.parent.parent


def run_cases(backend: str) -> dict[int, dict]:
    """Each case's outcome; a case whose child died reports the exit status."""
    results: dict[int, dict] = {}
    first = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    while first < len(CASES):
        proc = subprocess.run([sys.executable, str(SCRIPT), backend, str(first)], capture_output=True,
                              text=True, env=env, timeout=1800, cwd=ROOT)
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["event"] == "start":
                started = event["case"]
            else:
                results[event["case"]] = event
                started = None
        if started is None:
            if len(results) < len(CASES) - first and proc.returncode != 0:
                pytest.fail(f"the {backend} child failed before its first case: {proc.stderr[-2000:]}")
            break
        results[started] = {"outcome": "crashed", "returncode": proc.returncode,
                            "stderr": proc.stderr[-1000:]}
        first = started + 1
    return results


@pytest.fixture(scope="module", params=["cpu", "emulated", "cuda"])
def outcomes(request) -> dict[int, dict]:
    backend = request.param
    if not _build.load():
        pytest.skip(f"C++ kernels unavailable: {_build.build_info()['error']}")
    if backend == "emulated" and os.environ.get("TROPFX_CUDA_EMULATION") != "1":
        pytest.skip("the CUDA emulation is opt-in: TROPFX_CUDA_EMULATION=1")
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return run_cases(backend)


def test_every_operator_has_cases():
    """Every operator of the library, with a valid call and at least one bad one."""
    valid = {c.op for c in CASES if c.expect is None}
    bad = {c.op for c in CASES if c.expect is not None}
    assert valid == bad == set(OPS)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c.id for c in CASES])
def test_out_of_range(outcomes, case):
    c = CASES[case]
    got = outcomes[case]
    if c.expect is None:
        assert got["outcome"] == "returned", f"{c.id}: a valid call failed: {got}"
        return
    assert got["outcome"] == "raised", f"{c.id}: expected an error, the call {got['outcome']}: {got}"
    assert got["type"] in ("RuntimeError", "IndexError"), got
    message = got["message"]
    assert f"tropfx::{c.op}" in message and c.expect in message, \
        f"{c.id}: the error must name the operator and say {c.expect!r}; got {message!r}"
