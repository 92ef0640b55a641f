"""``tropfx kernels build`` and ``tropfx kernels info``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tropfx.cli import main
from tropfx.kernels import _build


def tropfx(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tropfx", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


@pytest.fixture
def built():
    if not _build.load():
        pytest.skip(f"C++ kernels unavailable: {_build.build_info()['error']}")


def test_build_loads_the_cached_kernels(built, capsys):
    assert main(["kernels", "build"]) == 0
    out = capsys.readouterr().out
    path = _build.build_info()["path"]
    assert f"cached in {path}" in out and Path(path, f"{_build.NAME}.so").is_file()


def test_build_fails_loudly(tmp_path):
    """A build that cannot happen exits 1 and says why; nothing is written to the cache."""
    proc = tropfx("kernels", "build", env={"TROPFX_CACHE": str(tmp_path),
                                           "TROPFX_KERNELS_CFLAGS": "--use_fast_math"})
    assert proc.returncode == 1 and "--use_fast_math" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())


def test_info(built, tmp_path, capsys):
    assert main(["kernels", "info", "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["cache_dir"] == str(_build.cache_dir()) and info["cache_dir"] in out
    assert info["isa"] in ("AVX-512", "AVX2", "NEON", "scalar") and info["isa"] in out
    assert info["cpu"]["built"] and info["cpu"]["loaded"]
    assert info["cpu"]["path"] == _build.build_info()["path"]
    assert info["cpu"]["fp_state"]["fast_math"] is False
    assert "loaded: yes" in out and "-fno-fast-math" in out


def test_info_builds_nothing(tmp_path):
    """With an empty cache: not built, not loaded, and still nothing compiled."""
    proc = tropfx("kernels", "info", "--json", str(tmp_path / "info.json"),
                  env={"TROPFX_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "info.json").read_text())
    assert not info["cpu"]["built"] and not info["cpu"]["loaded"]
    assert "tropfx kernels build" in proc.stdout
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("action", ["build", "info"])
def test_help(action, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["kernels", action, "--help"])
    assert exit_.value.code == 0 and f"usage: tropfx kernels {action}" in capsys.readouterr().out
