"""Just-in-time build and loading of the C++ kernels.

``torch.utils.cpp_extension.load`` compiles ``csrc/`` with ninja, on first use (``import tropfx``
compiles nothing), into ``$TROPFX_CACHE`` (default ``~/.cache/tropfx``), one directory per
fingerprint of the sources, flags, compiler target, torch and Python: a later process, or another
checkout with the same sources, loads the cached library in well under a second. ``-march=native``
targets the machine that builds (AVX2 / AVX-512 code paths), and the CPU's feature flags are part
of the fingerprint, so a cache shared between different machines never loads code one cannot run.

A machine that cannot build (no compiler, no ninja, a compile error) falls back to the pure-torch
reference: one :class:`KernelBuildWarning` says why, nothing crashes. ``TROPFX_KERNELS=0`` skips the
build quietly (the reference is used); ``TROPFX_KERNELS_CFLAGS`` adds compiler flags (e.g.
``-DTROPFX_VEC_BYTES=64`` to test the AVX-512-width code on an AVX2 machine); ``TROPFX_VERBOSE_BUILD=1``
shows the compiler's output.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = ["KernelBuildWarning", "available", "build_info", "cache_dir", "load"]

CSRC = Path(__file__).resolve().parent / "csrc"
# ops.cpp holds the schemas and the thin CPU bindings; the kernels' own translation units are
# torch-free, so ninja compiles them in parallel with the (slower) torch-including ones.
SOURCES = ("ops.cpp", "maxplus.cpp", "morphology.cpp", "boolean.cpp", "ranges.cpp")
NAME = "tropfx_kernels"


class KernelBuildWarning(UserWarning):
    """The C++ kernels could not be built or loaded; tropfx uses the pure-torch reference."""


class _State:
    lock = threading.Lock()
    loaded = False
    tried = False
    error: str | None = None
    seconds: float | None = None
    path: str | None = None


def cache_dir() -> Path:
    """Where builds are cached: ``$TROPFX_CACHE``, else ``$XDG_CACHE_HOME/tropfx``, else
    ``~/.cache/tropfx``."""
    root = os.environ.get("TROPFX_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tropfx"


def _arch_flags() -> list[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return ["-march=native"]
    if machine in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return []


def _cflags() -> list[str]:
    # -ffp-contract=off: no fused multiply-adds (none are wanted; results must be the reference's
    # bit for bit); never -ffast-math, which would break NaN and signed-zero semantics.
    flags = ["-O3", "-ffp-contract=off", "-fopenmp", "-Wno-psabi", *_arch_flags()]
    return flags + os.environ.get("TROPFX_KERNELS_CFLAGS", "").split()


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), so that a -march=native build is never loaded elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".h", ".cpp"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    # The source list too: two processes that compile different lists must not share a directory
    # (torch's lock lets the second one load what the first one built).
    for part in (NAME, " ".join(SOURCES), torch.__version__, sys.version, platform.machine(),
                 " ".join(_cflags()), _cpu_features(), os.environ.get("CXX", "")):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _build() -> str:
    from torch.utils.cpp_extension import load as jit_load

    directory = cache_dir() / f"kernels-{_fingerprint()}"
    directory.mkdir(parents=True, exist_ok=True)
    jit_load(
        name=NAME,
        sources=[str(CSRC / s) for s in SOURCES],
        extra_cflags=_cflags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        is_python_module=False,
        verbose=os.environ.get("TROPFX_VERBOSE_BUILD", "") not in ("", "0"),
    )
    return str(directory)


def load() -> bool:
    """Build (or load the cached build of) the kernels once per process; True if they are usable.

    Never raises for a build failure: it warns once (:class:`KernelBuildWarning`) and returns False.
    """
    if _State.tried:
        return _State.loaded
    with _State.lock:
        if _State.tried:
            return _State.loaded
        if os.environ.get("TROPFX_KERNELS", "1") == "0":
            _State.error = "disabled by TROPFX_KERNELS=0"
        else:
            start = time.perf_counter()
            try:
                _State.path = _build()
                from tropfx.kernels import ops  # the Python side: fake impls, autograd

                ops._register()
                _State.loaded = True
            except (ImportError, OSError, RuntimeError) as exc:
                _State.error = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    "tropfx: the C++ kernels could not be built or loaded, so the pure-torch "
                    f"reference is used (same results, slower). Cause: {_State.error.strip()[:2000]}. "
                    "A C++17 compiler with OpenMP and ninja (pip install ninja) are needed; set "
                    "TROPFX_VERBOSE_BUILD=1 to see the build, or TROPFX_KERNELS=0 to silence this.",
                    KernelBuildWarning,
                    stacklevel=3,
                )
            _State.seconds = time.perf_counter() - start
        _State.tried = True
    return _State.loaded


def available() -> bool:
    """Whether the compiled kernels are loaded, building them on the first call."""
    return _State.loaded if _State.tried else load()


def build_info() -> dict:
    """What :func:`load` did: ``loaded``, ``error`` (why not), ``seconds`` (build or load time),
    ``path`` (the build directory) and the compiler ``cflags``."""
    return {"loaded": _State.loaded, "error": _State.error, "seconds": _State.seconds,
            "path": _State.path, "cflags": _cflags()}
