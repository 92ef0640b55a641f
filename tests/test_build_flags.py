"""The kernel builds: fixed floating-point flags read back from the build, fast-math refused, one
cache policy (source + flags + toolchain fingerprint) for the CPU kernels, the CUDA kernels and
the CUDA emulator, and the one line a first build prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tropfx.kernels import _build, cuda_build

UNSAFE = ["--use_fast_math", "-ffast-math", "-Ofast", "-Xcompiler=-O2,-ffast-math", "--ftz=true",
          "--prec-div=false", "--fmad=true", "-ffp-contract=fast", "-funsafe-math-optimizations"]


@pytest.fixture
def library():
    if not _build.load():
        pytest.skip(f"C++ kernels unavailable: {_build.build_info()['error']}")


def test_cpu_flags_are_read_back_from_the_build(library):
    info = _build.build_info()
    built = info["built_cflags"]
    assert built, f"no build.ninja in {info['path']}"
    for flag in _build.FP_CFLAGS:
        assert flag in built, f"{flag} missing from the build's flags {built}"
    assert not set(built) & set(_build.UNSAFE_FLAGS), built
    # from the library itself: its kernels were compiled without fast-math, and the calling
    # thread keeps denormals
    assert info["fp_state"] == {"fast_math": False, "finite_math_only": False,
                                "flush_to_zero": False, "denormals_are_zero": False}


def test_denormal_sums_survive(library):
    """What fast-math's flush-to-zero would break: x + w with denormal results, bit for bit."""
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([[tiny / 4, -tiny / 2]])
    w = torch.tensor([[tiny / 8, tiny / 8]])
    y = torch.ops.tropfx.maxplus(x, w, None, False, False)[0]
    assert y.item() == (x + w).max().item() != 0.0


@pytest.mark.parametrize("flag", UNSAFE)
def test_unsafe_extra_flags_are_refused(monkeypatch, flag):
    monkeypatch.setenv("TROPFX_KERNELS_CFLAGS", f"-DX=1 {flag}")
    with pytest.raises(_build.KernelFlagsError, match="TROPFX_KERNELS_CFLAGS"):
        _build._cflags()
    monkeypatch.setenv("TROPFX_CUDA_CFLAGS", flag)
    with pytest.raises(_build.KernelFlagsError, match="TROPFX_CUDA_CFLAGS"):
        cuda_build.cuda_cflags()


def test_safe_extra_flags_pass(monkeypatch):
    monkeypatch.setenv("TROPFX_KERNELS_CFLAGS", "-DTROPFX_VEC_BYTES=64 -g")
    assert _build._cflags()[-2:] == ["-DTROPFX_VEC_BYTES=64", "-g"]


def test_cuda_flags_are_fixed():
    host, device = cuda_build.cuda_cflags()
    assert set(_build.FP_CFLAGS) <= set(host)
    assert set(_build.NVCC_FP_FLAGS) <= set(device)


def test_load_with_fast_math_falls_back_and_says_why(tmp_path):
    """A refused flag builds nothing: the reference runs, and the warning names the flag."""
    code = ("import warnings, tropfx.kernels as K\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    print(K.load()); print(w[0].message)\n")
    env = {**os.environ, "TROPFX_KERNELS_CFLAGS": "--use_fast_math", "TROPFX_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out.startswith("False\n") and "--use_fast_math" in out, out
    assert not any(tmp_path.iterdir()), "nothing may be built"


def test_emulator_flags_are_read_back():
    if os.environ.get("TROPFX_CUDA_EMULATION") != "1":
        pytest.skip("the CUDA emulation is opt-in: TROPFX_CUDA_EMULATION=1")
    cuda_build.build_emulation()
    built = _build.ninja_flags(cuda_build.emulation_directory())["cflags"]
    assert set(_build.FP_CFLAGS) <= set(built) and not set(built) & set(_build.UNSAFE_FLAGS)


# --- one cache policy -----------------------------------------------------------------------------

def test_fingerprint_covers_sources_flags_and_toolchain(tmp_path):
    a, b = tmp_path / "a.cu", tmp_path / "b.h"
    a.write_text("x")
    b.write_text("y")
    key = _build.fingerprint("n", [a, b], ["-O3"], "nvcc 13")
    assert key == _build.fingerprint("n", [b, a], ["-O3"], "nvcc 13")
    a.write_text("z")
    changed = _build.fingerprint("n", [a, b], ["-O3"], "nvcc 13")
    assert len({key, changed, _build.fingerprint("n", [a, b], ["-O2"], "nvcc 13"),
                _build.fingerprint("n", [a, b], ["-O3"], "nvcc 12")}) == 4


def test_every_build_lives_in_the_one_cache(monkeypatch, tmp_path):
    """CPU, CUDA and emulator builds sit under $TROPFX_CACHE, keyed by their sources: two
    checkouts with different CUDA sources get different directories."""
    monkeypatch.setenv("TROPFX_CACHE", str(tmp_path))
    assert _build._directory().parent == tmp_path
    assert cuda_build.build_directory().parent == tmp_path
    assert cuda_build.emulation_directory().parent == tmp_path
    source = tmp_path / "src" / "kernel.cu"
    source.parent.mkdir()
    source.write_text("one checkout")
    monkeypatch.setattr(cuda_build, "_all_files", lambda: [source])
    first = (cuda_build.build_directory(), cuda_build.emulation_directory())
    source.write_text("another checkout")
    second = (cuda_build.build_directory(), cuda_build.emulation_directory())
    assert first[0] != second[0] and first[1] != second[1]


def test_first_build_prints_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TROPFX_CACHE", str(tmp_path))
    built = []

    def fake_load(name, build_directory, **kwargs):
        built.append(build_directory)
        (tmp_path / build_directory / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr("torch.utils.cpp_extension.load", fake_load)
    directory = _build._build()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "building the C++ kernels into" in err and directory in err
    assert "minute" in err
    _build._build()  # cached: silent
    assert capsys.readouterr().err == "" and len(built) == 2


# --- a build killed on the way ----------------------------------------------------------------------

def test_the_build_lock_removes_a_lock_file_no_live_build_holds(tmp_path, capfd):
    (tmp_path / "lock").write_text("")  # what torch's FileBaton leaves when its process is killed
    probe = [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
             "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / "tropfx.flock")]
    with _build.build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
        assert "interrupted build" in capfd.readouterr().err
        assert subprocess.run(probe, capture_output=True).returncode != 0  # held: others wait
    assert subprocess.run(probe, capture_output=True).returncode == 0  # released


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_load(library):
    """Failed before: torch waits forever on the lock file of a build that was killed."""
    stale = Path(_build.build_info()["path"]) / "lock"
    stale.write_text("")
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from tropfx.kernels import _build; "
                               "sys.exit(0 if _build.load() else 1)"],
                              capture_output=True, text=True, timeout=300)
    finally:
        stale.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "interrupted build" in done.stderr
