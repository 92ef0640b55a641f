"""The cost of tropfx.load's gate: load time of a ResNet-50-size file, this tropfx vs a baseline.

A torchvision ResNet-50 (or, without torchvision, tropfx.testing's resnet18 at width 64, a smaller
file) is compiled with the exact passes and saved by this tropfx (format 2), and copied as format 1
(no declared tensor shapes), which older tropfx versions read. Then ``--baseline-python`` (another
checkout's interpreter, e.g. the main branch's .venv/bin/python) loads the format-1 file, and this
interpreter both files, in turns (A, B, C, A, B, C ...), each timing ``tropfx.load`` ``--repeat``
times in a fresh process; the medians and the ratios to A are printed. Times are CPU times of
the loading process (``time.process_time``, one thread): on a shared machine wall times mostly
measure the wait for a core.

    python benchmarks/bench_serialize_load.py --baseline-python /work/main/.venv/bin/python
    python benchmarks/bench_serialize_load.py --time FILE   # one process: median load time
    python benchmarks/bench_serialize_load.py --in-process /work/main/tropfx/serialize.py

``--in-process OLD_SERIALIZE_PY`` imports that older ``tropfx/serialize.py`` next to this one and
alternates ``old.load(format-1 file)``, ``tropfx.load(format-1 file)`` and ``tropfx.load(format-2
file)`` in one process, one call each per turn: the least noisy comparison on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAVE = """
import sys, torch, tropfx
from tropfx import passes as tp
try:
    sys.path.insert(0, "/work"); import tv; torchvision, _ = tv.load()
    model = torchvision.models.resnet50().eval()
except ImportError:
    from tropfx.testing.models import resnet18
    model = resnet18(num_classes=1000, width=64).eval()
torch.manual_seed(0)
cm = tropfx.compile(model, [tp.fuse_batchnorm(), tp.relu_to_maxplus(), tp.maxpool_to_dilation()],
                    example_inputs=(torch.randn(1, 3, 64, 64),), verify=False)
tropfx.save(cm, sys.argv[1])
"""


# CPU time of this process (one thread): on a shared machine, wall time mostly measures the wait
# for a core.
CLOCK = time.process_time


def _as_format_1(src: str, dst: str) -> None:
    import json

    import torch

    blob = torch.load(src, weights_only=True)
    recipe = json.loads(blob["recipe"])
    del recipe["tensors"]
    blob.update(version=1, recipe=json.dumps(recipe))
    torch.save(blob, dst)


def time_loads(path: str, repeat: int) -> float:
    import torch

    import tropfx

    torch.set_num_threads(1)
    tropfx.load(path)  # warm: imports, tables, allocator
    times = []
    for _ in range(repeat):
        start = CLOCK()
        tropfx.load(path)
        times.append(CLOCK() - start)
    return statistics.median(times)


def in_process(old_path: str, turns: int) -> int:
    import importlib.util

    import torch

    import tropfx

    spec = importlib.util.spec_from_file_location("tropfx_old_serialize", old_path)
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # its dataclasses look their module up
    spec.loader.exec_module(old)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        v2, v1 = str(Path(tmp) / "resnet50.tropfx"), str(Path(tmp) / "resnet50-format1.tropfx")
        subprocess.run([sys.executable, "-c", SAVE, v2], check=True)
        _as_format_1(v2, v1)
        print(f"file: {Path(v2).stat().st_size / 2**20:.1f} MiB; {turns} turns")
        runs = {"A old load, format 1": (old.load, v1), "B this load, format 1": (tropfx.load, v1),
                "C this load, format 2": (tropfx.load, v2)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn, path in runs.values():
            fn(path)  # warm
        for _ in range(turns):
            for label, (fn, path) in runs.items():
                start = CLOCK()
                fn(path)
                times[label].append(CLOCK() - start)
    base = statistics.median(times["A old load, format 1"])
    for label, values in times.items():
        m = statistics.median(values)
        print(f"{label:22s} median {m * 1e3:7.1f} ms  ratio to A {m / base:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-python", help="interpreter of the baseline tropfx")
    parser.add_argument("--time", metavar="FILE", help="print the median load time of FILE")
    parser.add_argument("--in-process", metavar="OLD_SERIALIZE_PY")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.time:
        print(f"{time_loads(args.time, args.repeat):.6f}")
        return 0
    if args.in_process:
        return in_process(args.in_process, args.repeat * args.rounds)
    if not args.baseline_python:
        parser.error("--baseline-python, --in-process or --time")
    with tempfile.TemporaryDirectory() as tmp:
        v2, v1 = str(Path(tmp) / "resnet50.tropfx"), str(Path(tmp) / "resnet50-format1.tropfx")
        subprocess.run([sys.executable, "-c", SAVE, v2], check=True)
        _as_format_1(v2, v1)
        print(f"file: {Path(v2).stat().st_size / 2**20:.1f} MiB")
        runs = {"A baseline, format 1": (args.baseline_python, v1),
                "B this, format 1": (sys.executable, v1), "C this, format 2": (sys.executable, v2)}
        medians: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for label, (python, path) in runs.items():
                out = subprocess.run([python, __file__, "--time", path, "--repeat",
                                      str(args.repeat)], check=True, capture_output=True, text=True)
                medians[label].append(float(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(medians["A baseline, format 1"])
    for label, values in medians.items():
        m = statistics.median(values)
        print(f"{label:22s} median load {m * 1e3:7.1f} ms  ratio to A {m / base:.3f}  "
              f"(round medians: {', '.join(f'{v * 1e3:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
