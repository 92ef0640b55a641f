"""Packaging: passes/ and kernels/ ship as tropfx.passes / tropfx.kernels, never top-level."""

import subprocess
import sys


def test_subpackages_import_and_no_top_level_passes_or_kernels(tmp_path):
    # Run from an empty directory so that the repository root is not on sys.path.
    code = (
        "import importlib.util, tropfx, tropfx.passes, tropfx.kernels\n"
        "from tropfx import passes as tp\n"
        "assert callable(tp.fuse_batchnorm)\n"
        "assert importlib.util.find_spec('passes') is None\n"
        "assert importlib.util.find_spec('kernels') is None\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_python_dash_m_tropfx_help(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tropfx", "--help"], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    assert "demo" in out
