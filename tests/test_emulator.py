"""The CUDA emulator (kernels/cuda/emulation) fails where a GPU would.

Each check is proven by a deliberately broken tiny kernel (tests/emulator_cases.cu) run through the
emulator, next to its fixed twin, which must pass: barrier divergence, static shared memory read
before it is written, dynamic shared memory over 48 KiB without the opt-in, a race, launch bounds,
a failed device check, and the random thread order. The cases are built without torch (the same
source rewrite as build_emulation, a host compiler), plain and with AddressSanitizer + UBSan where
the compiler has them; then a subset of tests/test_cuda_kernels.py runs on the real kernels built
with the sanitizers (in a subprocess: an ASan library needs libasan preloaded into python).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tropfx.kernels.cuda_build import CUDA_DIR, _emulated_kernels

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).resolve().parent / "emulator_cases.cu"
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ucontext fibers: Linux"),
              pytest.mark.skipif(CXX is None, reason="no host C++ compiler")]


def _build(out: Path, flags: list[str]) -> Path | None:
    source = out / "emulator_cases.cpp"
    source.write_text(_emulated_kernels(CASES.read_text()))
    exe = out / "emulator_cases"
    cmd = [CXX, "-std=c++17", "-O1", "-g", *flags, f"-I{CUDA_DIR / 'emulation'}", str(source),
           str(CUDA_DIR / "emulation" / "runtime.cpp"), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        if flags:
            return None  # no sanitizer runtime here
        raise AssertionError(f"$ {' '.join(cmd)}\n{proc.stderr}")
    return exe


@pytest.fixture(scope="module", params=["plain", "sanitized"])
def cases(request, tmp_path_factory) -> Path:
    exe = _build(tmp_path_factory.mktemp(request.param), SANITIZE if request.param == "sanitized" else [])
    if exe is None:
        pytest.skip("the compiler cannot build with -fsanitize=address,undefined")
    return exe


def run(exe: Path, case: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", **env}
    return subprocess.run([str(exe), case], capture_output=True, text=True, timeout=60, env=environ)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("error: no error"), proc.stdout
    return proc.stdout.splitlines()[0]


def aborted(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0, f"expected the emulator to abort; it printed {proc.stdout!r}"
    assert message in proc.stderr, proc.stderr


def test_barrier_divergence(cases):
    """A ``continue`` before a ``__syncthreads``: the thread that skips it exits while the others
    wait at their fourth barrier."""
    aborted(run(cases, "divergence"), "barrier divergence")
    assert ok(run(cases, "divergence_fixed")).split() == ["3"] * 64


def test_static_shared_memory_is_poisoned_per_block(cases):
    """Block 1 reads its static shared array without writing it: poison (NaN), not zeros and not
    block 0's values (static storage gave both before)."""
    out = [float(v) for v in ok(run(cases, "uninit")).split()]
    assert out[:64] == [1.0] * 64
    assert all(v != v for v in out[64:]), out[64:]


def test_dynamic_shared_memory_limit(cases):
    """64 KiB of dynamic shared memory: refused without cudaFuncSetAttribute (the kernel does not
    run), run with it."""
    proc = run(cases, "smem")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["-1.000000 ", "error: invalid argument"]
    out = run(cases, "smem_optin")
    assert out.returncode == 0 and out.stdout.splitlines() == ["attribute: no error", "16383.000000 ",
                                                               "error: no error"], out.stdout
    # more than the device allows (TROPFX_EMU_SMEM) cannot be opted in to
    assert "attribute: invalid argument" in run(cases, "smem_optin", TROPFX_EMU_SMEM="49152").stdout


@pytest.mark.parametrize("case", ["race", "race_nobarrier"])
def test_race(cases, case):
    """Two threads write different values to one shared word between two barriers (then read it,
    after a barrier or not): a write-write race, whatever order the threads run in."""
    for seed in ("1", "2", "3"):
        aborted(run(cases, case, TROPFX_EMU_SEED=seed), "race")
    assert ok(run(cases, "race_fixed")).split() == ["1"] * 64


def test_thread_order_is_random_and_seeded(cases):
    """A read-write race (no barrier between thread 0's write and the others' reads) gives results
    that change with TROPFX_EMU_SEED, and repeat with it."""
    outs = {seed: ok(run(cases, "order", TROPFX_EMU_SEED=str(seed))) for seed in range(1, 5)}
    assert len(set(outs.values())) > 1, outs
    assert ok(run(cases, "order", TROPFX_EMU_SEED="1")) == outs[1]
    for out in outs.values():  # some threads ran before thread 0 and read the poison
        assert set(out.split()) == {"-1", "1"}, out


def test_launch_bounds(cases):
    """64 threads for a __launch_bounds__(32) kernel: the launch fails and nothing runs."""
    proc = run(cases, "bounds")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["0 " * 64, "error: too many resources requested for launch"]
    assert ok(run(cases, "bounds_fixed")).split() == ["7"] * 32 + ["0"] * 32


def test_trap(cases):
    aborted(run(cases, "trap"), "__trap()")
    assert ok(run(cases, "trap_fixed")).split() == ["3"] * 64


def test_overrun_is_found_by_asan(cases):
    """Reading one float past the dynamic shared memory: each shared array is its own heap block, so
    AddressSanitizer reports it."""
    if "sanitized" not in str(cases.parent.name):
        pytest.skip("AddressSanitizer build only")
    aborted(run(cases, "overrun"), "heap-buffer-overflow")


# --- the real kernels under AddressSanitizer + UBSan ------------------------------------------------

# A subset that reaches every kernel and launch path (the whole file takes several minutes with
# the sanitizers).
SANITIZED_SUBSET = ("emulated and (test_maxplus_forward and (130-33-129 or 5-300-3) or "
                    "test_maxplus_backward and 3-5-7 or test_sparse_maxplus or test_sparse_paths or "
                    "test_morphology and not large or test_pack_unpack and int32 or test_bool_conv2d or "
                    "test_binary_morphology)")


def _libasan() -> str | None:
    out = subprocess.run([CXX, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


@pytest.mark.skipif(os.environ.get("TROPFX_CUDA_EMULATION") != "1",
                    reason="the CUDA emulation is opt-in: TROPFX_CUDA_EMULATION=1")
def test_kernels_under_sanitizers():
    libasan = _libasan()
    if libasan is None:
        pytest.skip("no libasan to preload")
    env = {**os.environ, "TROPFX_EMU_SANITIZE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    # One python with libasan preloaded builds (cached) and runs the subset; it drops LD_PRELOAD from
    # its environment first, so that the compilers it starts do not run under ASan.
    script = ("import os, sys, pytest; os.environ.pop('LD_PRELOAD'); "
              "sys.exit(pytest.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "-q", "-x", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_cuda_kernels.py"), "-k", SANITIZED_SUBSET],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed[1]) >= 50 and "failed" not in proc.stdout, tail


# --- a bad index never returns silently --------------------------------------------------------------

_BAD_INDEX = """
import sys, torch
from tropfx.kernels import _build
from tropfx.kernels.cuda_build import build_emulation
_build.load(); build_emulation()
ops = torch.ops.tropfx_emu
x, value = torch.randn(4, 10, 6), torch.zeros(3, 2)
index = torch.tensor([[0, 1], [2, {bad}], [3, 4]])
try:
    if "{op}" == "forward":
        ops.sparse_maxplus(x, index, value, None, {dim}, False, True)
    else:
        shape = [4, 3, 6] if {dim} == 1 else [4, 10, 3]
        arg = torch.ones(shape, dtype=torch.int32)
        ops.sparse_maxplus_backward(torch.ones(shape), arg, index, x.shape[{dim}], {dim}, False, False)
except (RuntimeError, IndexError) as exc:
    print("raised:", exc)
    sys.exit(0)
print("returned")
sys.exit(3)
"""


@pytest.mark.skipif(os.environ.get("TROPFX_CUDA_EMULATION") != "1",
                    reason="the CUDA emulation is opt-in: TROPFX_CUDA_EMULATION=1")
@pytest.mark.parametrize("op", ["forward", "backward"])
@pytest.mark.parametrize("dim,bad", [(-1, 6), (-1, -1), (1, 10)])
def test_bad_index_is_never_silent(op, dim, bad):
    """An out-of-range index in sparse_maxplus: a Python exception (host-side validation) or the
    kernels' device check (__trap, which on a GPU loses the context) -- never a result."""
    script = _BAD_INDEX.format(op=op, dim=dim, bad=bad)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if proc.returncode == 0:
        assert proc.stdout.startswith("raised:"), proc.stdout
    else:
        assert "__trap()" in proc.stderr, (proc.returncode, proc.stdout, proc.stderr[-3000:])
