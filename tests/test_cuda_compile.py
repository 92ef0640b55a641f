"""The hand-written CUDA kernels compile, on machines without a GPU.

Every torch-free kernel file ``kernels/cuda/*.cu`` is compiled (compile only, no link) by nvcc for
sm_80 and sm_90 in one call each, warnings as errors, the files in parallel; the torch-free host API
``kernels.h`` must compile with the host compiler alone, and the torch binding ``ops_cuda.cpp`` must
pass the host compiler's syntax check against torch's and the CUDA toolkit's headers (a CPU build of
torch ships the c10/cuda headers it uses). Skipped where nvcc is not installed; runtime checks of the
kernels are in test_cuda_kernels.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tropfx.kernels.cuda_build import find_nvcc

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "kernels" / "cuda"
ARCHS = ("80", "90")  # Ampere and Hopper: the targets of the tuning; sm_80 is the oldest
KERNELS = sorted(CUDA_DIR.glob("*.cu"))


NVCC = find_nvcc()
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set NVCC or CUDA_HOME); the CUDA "
                                                     "kernels are compile-checked only where it is installed")


def _cuda_include() -> Path | None:
    """The toolkit's headers (cuda_runtime_api.h): next to nvcc, under CUDA_HOME, or where
    ``nvcc --dryrun`` says (nvcc may be a wrapper script)."""
    roots = [Path(NVCC).resolve().parent.parent]
    roots += [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    dryrun = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", "/dev/null"], capture_output=True,
                            text=True).stderr
    roots += [Path(line.split("=", 1)[1].strip()).parent for line in dryrun.splitlines()
              if line.startswith("#$ TOP=")]
    roots.append(Path("/usr/local/cuda"))
    found = [p for root in roots for p in (root / "include", *sorted(root.glob("targets/*/include")))]
    return next((p for p in found if (p / "cuda_runtime_api.h").is_file()), None)


def _run(cmd: list[str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc.returncode, f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"


def _nvcc_command(source: Path, out_dir: Path) -> list[str]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    return [NVCC, "-c", "-std=c++17", "-O3", *gencode, "-Werror", "all-warnings",
            "-Xcompiler", "-Wall,-Wextra,-Werror", "-o", str(out_dir / f"{source.stem}.o"), str(source)]


def _binding_command(cuda_include: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    includes = [flag for path in [*include_paths(), str(cuda_include)] for flag in ("-isystem", path)]
    # A CPU build of torch lacks c10/cuda's generated macro header; the syntax check needs none of it.
    return [CXX, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
            "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", *includes, str(CUDA_DIR / "ops_cuda.cpp")]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Every compilation, run in parallel once for the module: name -> (exit code, output)."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    jobs = {source.name: _nvcc_command(source, out_dir) for source in KERNELS}
    include = _cuda_include()
    if CXX is not None and include is not None:
        user = out_dir / "uses_kernels_h.cpp"
        user.write_text(f'#include "{CUDA_DIR / "kernels.h"}"\n')
        jobs["kernels.h"] = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                             "-isystem", str(include), str(user)]
        try:
            jobs["ops_cuda.cpp"] = _binding_command(include)
        except ImportError:
            pass
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(jobs, pool.map(_run, jobs.values()), strict=True))


def test_kernel_files_exist():
    names = {p.name for p in KERNELS}
    assert {"maxplus.cu", "sparse_maxplus.cu", "morphology.cu", "boolean.cu"} <= names, names


@pytest.mark.parametrize("source", [p.name for p in KERNELS])
def test_kernels_compile(results, source):
    code, output = results[source]
    assert code == 0, output


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
def test_host_api_is_torch_free(results):
    if "kernels.h" not in results:
        pytest.skip("the CUDA toolkit's headers were not found")
    code, output = results["kernels.h"]
    assert code == 0, output


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
def test_binding_parses(results):
    if "ops_cuda.cpp" not in results:
        pytest.skip("torch.utils.cpp_extension or the CUDA toolkit's headers are unavailable")
    code, output = results["ops_cuda.cpp"]
    assert code == 0, output
