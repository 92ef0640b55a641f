"""Just-in-time build and loading of the C++ kernels, and the one cache policy of every build
(CPU kernels here, CUDA kernels and their CPU emulator in :mod:`tropfx.kernels.cuda_build`).

``torch.utils.cpp_extension.load`` compiles ``csrc/`` with ninja, on first use (``import tropfx``
compiles nothing; the first build prints one line: what, where, about how long), into
``$TROPFX_CACHE`` (default ``~/.cache/tropfx``), one directory per :func:`fingerprint` of the
sources, flags and toolchain (compiler version, torch, Python, CPU features): a later process, or
another checkout with the same sources, loads the cached library in well under a second; two
checkouts with different sources never share one. ``-march=native`` targets the machine that builds
(AVX2 / AVX-512 code paths), and the CPU's feature flags are part of the fingerprint, so a cache
shared between different machines never loads code one cannot run. ``tropfx kernels build``
prebuilds (for images and CI), ``tropfx kernels info`` shows the cache and the loaded state.

Floating-point flags are fixed and explicit (:data:`FP_CFLAGS`, :data:`NVCC_FP_FLAGS`: no fast-math,
no flush-to-zero, no contraction): the kernels' results are the reference's bit for bit, and
fast-math's flush-to-zero changes denormal ``x + w`` sums. :func:`build_info` reads them back from
the build (its ``build.ninja`` and the library's own compile-time and run-time state); extra flags
that would undo them are refused (:class:`KernelFlagsError`).

A machine that cannot build (no compiler, no ninja, a compile error) falls back to the pure-torch
reference: one :class:`KernelBuildWarning` says why, nothing crashes. ``TROPFX_KERNELS=0`` skips the
build quietly (the reference is used); ``TROPFX_KERNELS_CFLAGS`` adds compiler flags (e.g.
``-DTROPFX_VEC_BYTES=64`` to test the AVX-512-width code on an AVX2 machine); ``TROPFX_VERBOSE_BUILD=1``
shows the compiler's output.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

__all__ = ["FP_CFLAGS", "NVCC_FP_FLAGS", "KernelBuildWarning", "KernelFlagsError", "available",
           "build_directory", "build_info", "cache_dir", "check_flags", "fingerprint", "isa", "load",
           "ninja_flags", "status"]

CSRC = Path(__file__).resolve().parent / "csrc"
# ops.cpp holds the schemas and the thin CPU bindings; the kernels' own translation units are
# torch-free, so ninja compiles them in parallel with the (slower) torch-including ones.
SOURCES = ("ops.cpp", "maxplus.cpp", "morphology.cpp", "boolean.cpp", "ranges.cpp")
NAME = "tropfx_kernels"


# Host compiler (CPU kernels, the CUDA binding, the emulator): IEEE semantics, no contraction of
# a * b + c into one rounding (-ffp-contract=off; GCC's default for C++ is "fast").
FP_CFLAGS = ("-fno-fast-math", "-ffp-contract=off")
# nvcc, device code: denormals kept (--ftz=false), IEEE division and square root, and no fused
# multiply-add. x + w is one rounding with or without --fmad (there is no product to fuse), so
# the max-plus values do not depend on it; it is off so that any product in a kernel rounds as on
# the CPU (-ffp-contract=off). These are nvcc's defaults except --fmad, spelled out so that they
# are read back from the build and cannot be undone silently.
NVCC_FP_FLAGS = ("--ftz=false", "--prec-div=true", "--prec-sqrt=true", "--fmad=false")
# Flags that break the bit-exact contract: fast-math and its parts, flush-to-zero, contraction.
UNSAFE_FLAGS = ("-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-ffinite-math-only",
                "-fassociative-math", "-freciprocal-math", "-fno-signed-zeros", "-ffp-contract=fast",
                "-ffp-contract=on", "-mdaz-ftz", "-fcx-limited-range", "--use_fast_math",
                "-use_fast_math", "--ftz=true", "-ftz=true", "--prec-div=false", "-prec-div=false",
                "--prec-sqrt=false", "-prec-sqrt=false", "--fmad=true", "-fmad=true")


class KernelBuildWarning(UserWarning):
    """The C++ kernels could not be built or loaded; tropfx uses the pure-torch reference."""


class KernelFlagsError(RuntimeError):
    """Extra compiler flags would undo the fixed floating-point flags (fast-math, flush-to-zero)."""


def check_flags(flags: Sequence[str], where: str) -> list[str]:
    """``flags`` as a list, or :class:`KernelFlagsError` naming the first unsafe one (also inside
    ``-Xcompiler a,b`` lists)."""
    for flag in flags:
        parts = [flag, *re.split(r"[,]", flag.split("=", 1)[1] if flag.startswith("-X") else flag)]
        bad = next((p for p in parts if p in UNSAFE_FLAGS), None)
        if bad is not None:
            raise KernelFlagsError(
                f"tropfx: {where} holds {bad!r}, which changes floating-point results (fast-math "
                f"flushes denormal x + w sums to zero, contraction fuses roundings); the kernels "
                f"must match the reference bit for bit. Remove it (the build uses "
                f"{' '.join(FP_CFLAGS)} and, for CUDA, {' '.join(NVCC_FP_FLAGS)}).")
    return list(flags)


# --- the cache policy -------------------------------------------------------------------------


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


@functools.cache
def toolchain(compiler: str) -> str:
    """The first line of ``compiler --version`` ("" where it does not run): part of every
    fingerprint, so that a compiler upgrade rebuilds."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else ""


def host_compiler() -> str:
    """The C++ compiler torch.utils.cpp_extension uses."""
    return os.environ.get("CXX", "c++")


def fingerprint(name: str, files: Iterable[Path], flags: Sequence[str], *extra: str) -> str:
    """The cache key of one build: the sources' names and bytes, the flags, the toolchain and the
    torch / Python / machine it is for (``extra``: compilers' versions, CPU features, CUDA arch)."""
    h = hashlib.sha256()
    for path in sorted(set(files)):
        h.update(f"{path.parent.name}/{path.name}\0".encode())
        h.update(path.read_bytes())
    for part in (name, " ".join(flags), torch.__version__, sys.version, platform.machine(), *extra):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def build_directory(name: str, key: str) -> Path:
    """Where a build with this fingerprint lives: ``cache_dir() / f"{name}-{key}"``."""
    return cache_dir() / f"{name}-{key}"


def ninja_flags(directory: Path | str) -> dict[str, list[str]]:
    """The flags a build really used, read back from its ``build.ninja`` (``cflags``,
    ``cuda_cflags``, ``ldflags``); empty where there is no build."""
    path = Path(directory) / "build.ninja"
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key in ("cflags", "cuda_cflags", "post_cflags", "cuda_post_cflags", "ldflags"):
            found[key] = shlex.split(value)
    return found


def _arch_flags() -> list[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return ["-march=native"]
    if machine in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return []


def _cflags() -> list[str]:
    """-O3, the fixed floating-point flags (FP_CFLAGS) and $TROPFX_KERNELS_CFLAGS, refused if it
    would undo them (KernelFlagsError)."""
    extra = check_flags(os.environ.get("TROPFX_KERNELS_CFLAGS", "").split(), "TROPFX_KERNELS_CFLAGS")
    return ["-O3", *FP_CFLAGS, "-fopenmp", "-Wno-psabi", *_arch_flags(), *extra]


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


def isa() -> str:
    """The widest vector ISA the CPU kernels use here: AVX-512, AVX2, NEON or scalar."""
    flags = set(_cpu_features().split())
    if "avx512f" in flags and "avx512bw" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "asimd" in flags or platform.machine().lower() in ("aarch64", "arm64"):
        return "NEON"
    return "scalar"


def _fingerprint() -> str:
    # The source list too: two processes that compile different lists must not share a directory
    # (torch's lock lets the second one load what the first one built).
    files = [p for p in CSRC.iterdir() if p.suffix in (".h", ".cpp")]
    return fingerprint(NAME, files, _cflags(), " ".join(SOURCES), _cpu_features(),
                       host_compiler(), toolchain(host_compiler()))


def _directory() -> Path:
    return build_directory("kernels", _fingerprint())


def _library(directory: Path) -> Path:
    return directory / f"{NAME}.so"


def announce(what: str, directory: Path, duration: str) -> None:
    """The one line a first build prints (stderr): what, where it is cached, about how long."""
    print(f"tropfx: building {what} into {directory} (first use; about {duration}, cached after)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold an OS lock on ``directory`` while ``torch.utils.cpp_extension`` builds or loads into it.

    torch's own lock is a file (``lock``) that it deletes when it is done: a build killed on the way
    (Ctrl-C, a CI timeout) leaves it behind, and every later build or load of the same sources then
    waits on it forever, silently. This lock (``flock``) is released by the OS when its process
    dies, so its holder knows that a torch lock file it finds belongs to no live tropfx build: it
    removes it and says so. Without ``fcntl`` (Windows) torch's lock alone is used.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(directory / "tropfx.flock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process builds here
        try:
            stale = directory / "lock"
            if stale.exists():
                print(f"tropfx: removing {stale}, left by an interrupted build (no build holds it)",
                      file=sys.stderr, flush=True)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build() -> str:
    from torch.utils.cpp_extension import load as jit_load

    directory = _directory()
    directory.mkdir(parents=True, exist_ok=True)
    if not _library(directory).exists():
        announce("the C++ kernels", directory, "1 minute")
    with build_lock(directory):
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


def _library_fp_state() -> dict:
    """The loaded library's floating-point state, read from the library: whether its kernels'
    translation unit was compiled with fast-math (``__FAST_MATH__``) or finite-math-only, and
    whether the calling thread flushes denormals (x86 MXCSR FTZ / DAZ; always False elsewhere)."""
    fast, finite, ftz, daz = torch.ops.tropfx._fp_state()
    return {"fast_math": bool(fast), "finite_math_only": bool(finite), "flush_to_zero": bool(ftz),
            "denormals_are_zero": bool(daz)}


def build_info() -> dict:
    """What :func:`load` did: ``loaded``, ``error`` (why not), ``seconds`` (build or load time),
    ``path`` (the build directory), the compiler ``cflags`` it asks for, ``fp_cflags`` (the fixed
    floating-point flags) and, read back from the build, ``built_cflags`` (its ``build.ninja``)
    and ``fp_state`` (the library's fast-math macros and the thread's flush-to-zero mode)."""
    info = {"loaded": _State.loaded, "error": _State.error, "seconds": _State.seconds,
            "path": _State.path, "fp_cflags": list(FP_CFLAGS)}
    try:
        info["cflags"] = _cflags()
    except KernelFlagsError as exc:
        info["cflags"] = None
        info["error"] = info["error"] or str(exc)
    info["built_cflags"] = ninja_flags(_State.path).get("cflags", []) if _State.path else []
    info["fp_state"] = _library_fp_state() if _State.loaded else None
    return info


def status() -> dict:
    """Where the kernels are cached and whether they are built and loaded, without building:
    ``cache_dir``, ``path`` (this machine's and sources' build directory), ``built``, ``loaded``
    (in this process), ``isa``, ``compiler``."""
    try:
        directory = _directory()
    except KernelFlagsError as exc:
        return {"cache_dir": str(cache_dir()), "path": None, "built": False,
                "loaded": _State.loaded, "isa": isa(), "compiler": toolchain(host_compiler()),
                "error": str(exc)}
    return {"cache_dir": str(cache_dir()), "path": str(directory),
            "built": _library(directory).exists(), "loaded": _State.loaded, "isa": isa(),
            "compiler": toolchain(host_compiler()), "error": _State.error}
