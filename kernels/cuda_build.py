"""Build and load tropfx's hand-written CUDA kernels (``kernels/cuda``) as a JIT extension.

:func:`load_cuda` compiles ``kernels/cuda/ops_cuda.cpp`` (the thin torch binding) and the torch-free
``kernels/cuda/*.cu`` kernels with ``torch.utils.cpp_extension.load`` (ninja, nvcc) into a cache
directory, and loads the library: it registers the CUDA implementations of the ``torch.ops.tropfx``
operators, whose schemas come with the CPU extension (``kernels/csrc/ops.cpp``), so load that first.
The first call on a machine compiles for the visible GPU's architecture (or ``TORCH_CUDA_ARCH_LIST``)
and takes a few minutes (one line says so); later processes reuse the cache.

The cache policy is the CPU kernels' (:mod:`tropfx.kernels._build`): ``$TROPFX_CACHE``, one directory
per fingerprint of the sources (``kernels/cuda``, ``kernels/csrc``'s headers), the flags and the
toolchain (nvcc's and the host compiler's versions, torch, CUDA, the target architectures), so two
checkouts never share a build. The floating-point flags are fixed (``_build.NVCC_FP_FLAGS``,
``_build.FP_CFLAGS``); ``TROPFX_CUDA_CFLAGS`` adds nvcc flags, and is refused where it would undo
them (``--use_fast_math``).

Without a CUDA build of torch or a visible GPU it returns False after one warning; no
``torch.ops.tropfx`` operator then has a CUDA implementation. ``TROPFX_CUDA=0`` skips the build silently.

:func:`build_emulation` compiles the same kernels and binding for a CPU emulator
(``kernels/cuda/emulation``) as ``torch.ops.tropfx_emu.*`` on CPU tensors, so that the CUDA code's
index math and semantics can be tested against the CPU kernels on machines without a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import torch

from tropfx.kernels import _build

__all__ = ["CUDA_DIR", "build_directory", "build_emulation", "cuda_cflags", "cuda_sources",
           "emulation_directory", "find_nvcc", "load_cuda", "status"]

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
EXTENSION_NAME = "tropfx_cuda"
EMULATION_NAMESPACE = "tropfx_emu"

_loaded: bool | None = None  # the outcome of the first call, for every later one


def cuda_sources() -> list[Path]:
    """The binding and the kernels, in a stable order."""
    return [CUDA_DIR / "ops_cuda.cpp", *sorted(CUDA_DIR.glob("*.cu"))]


def _all_files() -> list[Path]:
    """Everything a CUDA or emulator build reads: kernels/cuda (emulation included) and the
    csrc headers the binding includes (contract.h, schemas.h, ...)."""
    csrc = CUDA_DIR.parent / "csrc"
    return [p for p in (*CUDA_DIR.rglob("*"), *csrc.glob("*.h"))
            if p.suffix in (".cu", ".cuh", ".h", ".cpp")]


def find_nvcc() -> str | None:
    """An executable nvcc: ``$NVCC``, then ``PATH``, ``$CUDA_HOME`` / ``$CUDA_PATH``, and
    ``/usr/local/cuda``; ``None`` when there is none (compile checks are then skipped)."""
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    candidates += [os.path.join(os.environ[v], "bin", "nvcc") for v in ("CUDA_HOME", "CUDA_PATH")
                   if os.environ.get(v)]
    candidates.append("/usr/local/cuda/bin/nvcc")
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def _nvcc() -> str:
    from torch.utils.cpp_extension import CUDA_HOME

    return os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else "nvcc"


def cuda_cflags() -> tuple[list[str], list[str]]:
    """(host flags, nvcc flags): -O3, the fixed floating-point flags and $TROPFX_CUDA_CFLAGS
    (refused with _build.KernelFlagsError where it would undo them)."""
    extra = _build.check_flags(os.environ.get("TROPFX_CUDA_CFLAGS", "").split(), "TROPFX_CUDA_CFLAGS")
    return ["-O3", *_build.FP_CFLAGS], ["-O3", *_build.NVCC_FP_FLAGS, *extra]


def _arch() -> str:
    """The architectures the build targets (as torch.utils.cpp_extension picks them)."""
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if not arch and torch.cuda.is_available():
        arch = ";".join(sorted({"{}.{}".format(*torch.cuda.get_device_capability(i))
                                for i in range(torch.cuda.device_count())}))
    return arch


def build_directory() -> Path:
    """Where the CUDA extension is built: one directory per fingerprint of its sources, flags and
    toolchain (the cache policy of :mod:`tropfx.kernels._build`)."""
    host, device = cuda_cflags()
    key = _build.fingerprint(EXTENSION_NAME, _all_files(), [*host, "|", *device],
                             str(torch.version.cuda), _arch(), _build.toolchain(_nvcc()),
                             _build.host_compiler(), _build.toolchain(_build.host_compiler()))
    return _build.build_directory("cuda", key)


def status() -> dict:
    """Whether torch has CUDA and sees a GPU, and whether the extension is built and loaded,
    without building it."""
    info = {"torch_cuda": torch.version.cuda, "device": None, "path": None, "built": False,
            "loaded": bool(_loaded)}
    if torch.version.cuda is not None and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        directory = build_directory()
        info["path"] = str(directory)
        info["built"] = (directory / f"{EXTENSION_NAME}.so").exists()
    return info


def load_cuda(*, verbose: bool = False) -> bool:
    """Build (once per machine) and load the CUDA kernels; True when they are registered.

    Returns False, with one warning per process, when torch has no CUDA, no GPU is visible or the
    build fails (the message says why); with ``TROPFX_CUDA=0`` it returns False without a warning.
    Later calls return the first call's outcome.
    """
    global _loaded
    if _loaded is None:
        _loaded = _load(verbose)
    return _loaded


def _load(verbose: bool) -> bool:
    if os.environ.get("TROPFX_CUDA", "1") == "0":
        return False
    if torch.version.cuda is None:
        return _decline("this torch is a CPU-only build")
    if not torch.cuda.is_available():
        return _decline("torch sees no CUDA device")
    from torch.utils import cpp_extension

    try:
        host, device = cuda_cflags()
        build = build_directory()
    except _build.KernelFlagsError as exc:
        return _decline(str(exc))
    build.mkdir(parents=True, exist_ok=True)
    if not (build / f"{EXTENSION_NAME}.so").exists():
        _build.announce("the CUDA kernels", build, "3 minutes")
    try:
        with _build.build_lock(build):
            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(path) for path in cuda_sources()],
                extra_include_paths=[str(CUDA_DIR)],
                extra_cflags=host,
                extra_cuda_cflags=device,
                build_directory=str(build),
                is_python_module=False,  # a plain library: loading it registers the operators
                verbose=verbose,
            )
    # cpp_extension raises OSError without CUDA_HOME / nvcc, RuntimeError when ninja or the
    # compiler fails; loading the library raises OSError (or ImportError).
    except (OSError, ImportError, RuntimeError) as exc:
        return _decline(f"building or loading the extension in {build} failed: {exc}")
    return True


def _decline(reason: str) -> bool:
    warnings.warn(f"tropfx: the CUDA kernels are not loaded ({reason})", RuntimeWarning,
                  stacklevel=4)
    return False


# --- CPU emulation ----------------------------------------------------------------------------------

def build_emulation(*, verbose: bool = False) -> str:
    """Compile the CUDA kernels and their binding for the CPU emulator and load them as
    ``torch.ops.tropfx_emu.<op>`` (CPU tensors in and out; the schemas of ``kernels/csrc``'s
    ``TORCH_LIBRARY(tropfx, m)``, copied).

    A test harness, not a backend: a launch runs its blocks one by one, a block's threads as fibers
    (Linux ``ucontext``). Returns the library's path; raises ``OSError`` / ``RuntimeError`` where it
    cannot be built (no compiler, not Linux).
    """
    if not sys.platform.startswith("linux"):
        raise OSError("the CUDA emulation needs Linux (ucontext fibers)")
    from torch.utils import cpp_extension

    # TROPFX_EMU_SANITIZE=1: built with AddressSanitizer and UBSan (its own library; the flags are
    # part of the fingerprint, so its own folder); loading it needs libasan preloaded
    # (tests/test_emulator.py runs it in a subprocess).
    sanitize = _sanitize_flags()
    name = f"{EXTENSION_NAME}_emulation" + ("_asan" if sanitize else "")
    cflags = _emulation_cflags()
    build = emulation_directory(cflags)
    sources = _emulation_sources(build / "src")
    if not (build / f"{name}.so").exists():
        _build.announce("the CUDA kernels for the CPU emulator", build, "1 minute")
    with _build.build_lock(build):
        return cpp_extension.load(
            name=name,
            sources=[str(path) for path in sources],
            extra_include_paths=[str(CUDA_DIR / "emulation"), str(build / "src" / "cuda")],
            extra_cflags=cflags,
            extra_ldflags=sanitize,
            build_directory=str(build),
            is_python_module=False,
            verbose=verbose,
        )


def _sanitize_flags() -> list[str]:
    """AddressSanitizer and UBSan flags when ``TROPFX_EMU_SANITIZE=1``, else none."""
    if os.environ.get("TROPFX_EMU_SANITIZE") != "1":
        return []
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _emulation_cflags() -> list[str]:
    """The emulator's host flags: -O1, the fixed floating-point flags (the emulated kernels must
    round as the device's --ftz=false --fmad=false code), and the sanitizers when asked for."""
    return ["-O1", "-fno-strict-aliasing", *_build.FP_CFLAGS, *_sanitize_flags()]


def emulation_directory(cflags: list[str] | None = None) -> Path:
    """Where the emulator's library is built (the cache policy of :mod:`tropfx.kernels._build`)."""
    cflags = _emulation_cflags() if cflags is None else cflags
    key = _build.fingerprint(f"{EXTENSION_NAME}_emulation", _all_files(), cflags,
                             _build.host_compiler(), _build.toolchain(_build.host_compiler()))
    return _build.build_directory("cuda-emulation", key)


def _emulation_sources(root: Path) -> list[Path]:
    """Rewritten copies of the kernels (as C++) and the binding (CPU dispatch key, namespace
    tropfx_emu) and the schemas' registration (csrc/schemas.h, included: the one schema source),
    under ``root``; files are rewritten only when they change."""
    csrc = CUDA_DIR.parent / "csrc"
    texts: dict[Path, str] = {}
    for path in csrc.glob("*.h"):  # the kernels include ../csrc/semantics.h
        texts[root / "csrc" / path.name] = path.read_text()
    sources = []
    for path in sorted(CUDA_DIR.iterdir()):
        if path.suffix in (".cu", ".cuh", ".h"):
            target = root / "cuda" / (path.stem + ".cpp" if path.suffix == ".cu" else path.name)
            texts[target] = _emulated_kernels(path.read_text())
            if path.suffix == ".cu":
                sources.append(target)
    binding = (CUDA_DIR / "ops_cuda.cpp").read_text()
    binding = re.sub(r"#include <c10/cuda/[^>]*>\n", "", binding)
    binding = re.sub(r"const c10::cuda::CUDAGuard guard\([^;]*\);", "", binding)
    binding = binding.replace("c10::cuda::getCurrentCUDAStream().stream()", "nullptr")
    binding = binding.replace(".is_cuda()", ".is_cpu()")
    binding = binding.replace("TORCH_LIBRARY_IMPL(tropfx, CUDA, m)",
                              f"TORCH_LIBRARY_IMPL({EMULATION_NAMESPACE}, CPU, m)")
    texts[root / "cuda" / "ops_cuda.cpp"] = binding
    texts[root / "schemas.cpp"] = (
        '#include <torch/library.h>\n\n#include "csrc/schemas.h"\n\n'
        f"TORCH_LIBRARY({EMULATION_NAMESPACE}, m) {{\n"
        "  for (const char* schema : tropfx::kSchemas) m.def(schema);\n}\n")
    texts[root / "runtime.cpp"] = (CUDA_DIR / "emulation" / "runtime.cpp").read_text()
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return [*sources, root / "cuda" / "ops_cuda.cpp", root / "schemas.cpp", root / "runtime.cpp"]


def _emulated_kernels(text: str) -> str:
    """A .cu file as emulator C++ (see kernels/cuda/emulation/emu.h)."""
    text = re.sub(r"extern __shared__ (?:__align__\(\d+\) )?(\w+) (\w+)\[\];",
                  r"\1* \2 = static_cast<\1*>(emu::dyn_smem());", text)
    # __shared__ T name[n]; -> a per-block, poisoned allocation (emu::shared)
    text = re.sub(r"__shared__\s+(?:__align__\((\d+)\)\s+)?([^;]+?)\s+(\w+)\s*((?:\[[^\];]*\])*)\s*;",
                  lambda m: f"auto& {m[3]} = emu::shared<{m[2]}{m[4]}, __LINE__>({m[1] or 0});", text)
    # __launch_bounds__(b) kernel(params) { -> kernel(params) { emu::launch_bounds(b); (checked)
    text = re.sub(r"__launch_bounds__\(((?:[^()]|\([^()]*\))*)\)\s*(\w+)\s*\(([^{]*?)\)\s*\{",
                  r"\2(\3) { emu::launch_bounds(\1);", text, flags=re.S)
    # kernel<<<config>>>(args) -> emu::launch(emu::Cfg{config}, kernel, args)
    return re.sub(r"([A-Za-z_][\w:]*(?:<[^;(){}]*?>)?)<<<(.*?)>>>\(",
                  r"emu::launch(emu::Cfg{\2}, \1, ", text, flags=re.S)
