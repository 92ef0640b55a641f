"""No CUDA kernel spills registers on sm_80 or sm_90 (ptxas ``-v``), on machines without a GPU.

Each ``kernels/cuda/*.cu`` is compiled once for both architectures with ``-Xptxas -v``; the log is
parsed into one row per function (entry kernels, and the non-inlined device functions they call):
registers, shared memory, stack frame and spill bytes. A spill is local-memory traffic in the inner
loops the tiles were sized to keep in registers, so any spill fails. The table is printed (``-s``
shows it; ``python tests/test_ptxas.py`` prints it alone). Logs are cached under
``~/.cache/tropfx/ptxas`` by a hash of the sources, the flags and nvcc's version, so only a change
recompiles. Skipped where nvcc is not installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tropfx.kernels._build import NVCC_FP_FLAGS
from tropfx.kernels.cuda_build import find_nvcc

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "kernels" / "cuda"
ARCHS = ("80", "90")
KERNELS = sorted(CUDA_DIR.glob("*.cu"))
# The flags of the real build that shape code generation (cuda_build.load_cuda: -O3, no fast math).
FLAGS = ["-std=c++17", "-O3", *NVCC_FP_FLAGS]


NVCC = find_nvcc()


@dataclass
class Function:
    """One function in a ptxas log, for one architecture."""
    name: str           # demangled, without tropfx's namespaces
    arch: str
    entry: bool         # a __global__ kernel (else a non-inlined device function)
    registers: int = -1
    smem: int = 0       # static shared memory, bytes
    stack: int = 0      # stack frame, bytes
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\d+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> list[Function]:
    """Rows of a ``-Xptxas -v`` log: each entry function, and each callee's properties as its own row
    (ptxas reports a non-inlined device function after the entry that calls it)."""
    rows: list[Function] = []
    arch = "?"
    entry: Function | None = None
    pending: Function | None = None  # the function whose "N bytes stack frame" line comes next
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            arch = m.group(2)
            entry = Function(m.group(1), arch, True)
            rows.append(entry)
        elif m := _PROPS.search(line):
            name = m.group(1)
            if entry is not None and name == entry.name:
                pending = entry
            else:
                pending = Function(name, arch, False)
                rows.append(pending)
        elif (m := _FRAME.search(line)) and pending is not None:
            pending.stack, pending.spill_stores, pending.spill_loads = map(int, m.groups())
            pending = None
        elif (m := _USED.search(line)) and entry is not None:
            entry.registers = int(m.group(1))
            if s := _SMEM.search(line):
                entry.smem = int(s.group(1))
    names = _demangle([r.name for r in rows])
    for row, name in zip(rows, names, strict=True):
        row.name = name
    return rows


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    lines = out.splitlines()
    if len(lines) != len(names):
        return names
    tidy = [re.sub(r"(_INTERNAL_\w+::)?tropfx::cuda::(\(anonymous namespace\)::)?", "", s) for s in lines]
    return [re.sub(r"\(.*\)$", "", s) for s in tidy]  # the parameter list is long and adds nothing


def _fingerprint(source: Path) -> str:
    h = hashlib.sha256()
    version = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    h.update(version.encode())
    h.update(" ".join(FLAGS + list(ARCHS)).encode())
    # A kernel file includes common.cuh, kernels.h and ../csrc's headers: hash them all.
    for path in [source, *sorted(CUDA_DIR.glob("*.cuh")), *sorted(CUDA_DIR.glob("*.h")),
                 *sorted((CUDA_DIR.parent / "csrc").glob("*.h"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("TROPFX_CACHE", os.path.join(cache, "tropfx"))) / "ptxas"


def ptxas_log(source: Path) -> str:
    """ptxas's report for ``source``, both architectures in one nvcc call (cached)."""
    cached = _cache_dir() / f"{source.stem}-{_fingerprint(source)}.log"
    if cached.is_file():
        return cached.read_text()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [NVCC, "-c", *FLAGS, *gencode, "-Xptxas", "-v", "-o", os.devnull, str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    log = proc.stdout + proc.stderr
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(log)
    tmp.replace(cached)  # atomic: parallel runs never read half a log
    return log


def ptxas_rows() -> dict[str, list[Function]]:
    """Every kernel file's rows, the files compiled in parallel."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        logs = list(pool.map(ptxas_log, KERNELS))
    return {source.name: parse_ptxas(log) for source, log in zip(KERNELS, logs, strict=True)}


def table(rows: dict[str, list[Function]]) -> str:
    lines = [f"{'file':<19} {'arch':<6} {'regs':>4} {'smem':>6} {'stack':>5} {'spill st/ld':>11}  function"]
    for name, functions in rows.items():
        for f in functions:
            regs = str(f.registers) if f.entry else "-"
            spill = f"{f.spill_stores}/{f.spill_loads}"
            lines.append(f"{name:<19} sm_{f.arch:<3} {regs:>4} {f.smem:>6} {f.stack:>5} {spill:>11}  "
                         f"{f.name}")
    return "\n".join(lines)


pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set NVCC or CUDA_HOME); "
                                                     "ptxas reports need it")


@pytest.fixture(scope="module")
def rows() -> dict[str, list[Function]]:
    found = ptxas_rows()
    print("\n" + table(found))
    return found


def test_parser_reads_spills_and_callees():
    """The parser on a log of the shape ptxas 13 prints (a kernel calling a noinline function)."""
    log = """ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'
ptxas info    : Function properties for _Z1kv
    48 bytes stack frame, 108 bytes spill stores, 464 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 48 bytes cumulative stack size, 34820 bytes smem
ptxas info    : Function properties for _Z1fv
    0 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads
ptxas info    : Compiling entry function '_Z1gv' for 'sm_80'
ptxas info    : Function properties for _Z1gv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, used 0 barriers, 408 bytes cmem[0]
"""
    k, f, g = parse_ptxas(log)
    assert (k.name, k.arch, k.entry, k.registers, k.smem, k.spill_stores, k.spill_loads) == \
        ("k", "90", True, 128, 34820, 108, 464)
    assert (f.name, f.arch, f.entry, f.spills) == ("f", "90", False, 24)
    assert (g.name, g.arch, g.registers, g.smem, g.spills) == ("g", "80", 22, 0, 0)


@pytest.mark.parametrize("source", [p.name for p in KERNELS])
def test_no_spills(rows, source):
    functions = rows[source]
    assert {f.arch for f in functions if f.entry} == set(ARCHS), f"{source}: no kernel for some arch"
    spilled = [f for f in functions if f.spills > 0]
    assert not spilled, f"{source} spills:\n" + table({source: spilled})


@pytest.mark.parametrize("source", [p.name for p in KERNELS])
def test_kernels_fit_a_block(rows, source):
    """Every kernel was compiled (registers reported, at most ptxas's 255) and its static shared
    memory fits the 48 KiB a launch gets without an opt-in."""
    for f in rows[source]:
        if f.entry:
            assert 0 < f.registers <= 255 and f.smem <= 48 * 1024, f"{source}: {f}"


if __name__ == "__main__":
    if NVCC is None:
        sys.exit("nvcc not found")
    print(table(ptxas_rows()))
