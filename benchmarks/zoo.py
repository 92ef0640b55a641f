"""Every exact pass on the real torchvision / timm classification models (random init, 224 x 224).

Per model: BatchNorms folded / listed, activations rewritten / listed (with the kinds that have no
exact tropical form), max pools rewritten / listed, candidates no pass reported (must be 0), the
largest error of a stage declared bitwise (must be 0), the eager and compiled forward times (the
exact rewrite *not* lowered; medians of interleaved runs, so both see the same machine load),
and whether ``torch.export`` takes the compiled model.

Candidates are counted with this script's own recognizers (module types and function names of
torch), not with ``tropfx.ops``, so that a spelling the passes miss shows up as "unreported".

Needs torchvision and / or timm; a zoo that does not import is skipped with a line saying why.

    python benchmarks/zoo.py [--models resnet18,timm:efficientnet_b0] [--repeats 5] [--no-export]
                             [--out table.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.testing.candidates import exact_pass_candidates
from tropfx.testing.models import randomize_batchnorm_stats

TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "densenet121",
               "googlenet", "shufflenet_v2_x1_0", "resnext50_32x4d", "regnet_y_400mf",
               "efficientnet_b0", "vgg11_bn", "inception_v3", "vit_b_16"]
TIMM = ["efficientnet_b0", "mobilenetv3_small_100", "resnet18", "regnety_002", "vit_tiny_patch16_224"]
INPUT_SIZE = {"inception_v3": 299}
PASSES = (tp.fuse_batchnorm, tp.relu_to_maxplus, tp.maxpool_to_dilation)
BITWISE = ("relu_to_maxplus", "maxpool_to_dilation")


def import_zoo(name: str) -> tuple[types.ModuleType | None, str]:
    """(torchvision or timm, "") or (None, why it does not import). Benchmarks only: never in tests.

    torchvision wheels built for another torch fail in their C++ op registrations (torchvision::nms
    meta / autograd kernels); the classification models never call those ops, so stand-in modules
    let the rest import."""
    for stub in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(stub, types.ModuleType(stub))
    try:
        return __import__(name), ""
    except Exception as exc:  # any import failure: skip this zoo, say why
        return None, f"{name} not available ({type(exc).__name__}: {exc}); its models skipped"


def load_zoos() -> tuple[types.ModuleType | None, types.ModuleType | None, list[str]]:
    """(torchvision, timm, why not): each None when it does not import."""
    (tv, tv_note), (timm, timm_note) = import_zoo("torchvision"), import_zoo("timm")
    return tv, timm, [note for note in (tv_note, timm_note) if note]


def build(zoo: str, name: str, tv, timm) -> tuple[nn.Module, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if zoo == "timm":
            model = timm.create_model(name, pretrained=False)
        else:
            kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") \
                else {}
            model = getattr(tv.models, name)(weights=None, **kwargs)
    randomize_batchnorm_stats(model)
    size = INPUT_SIZE.get(name, 224)
    return model.eval(), torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                context: Callable = torch.inference_mode) -> dict[str, float]:
    """Median seconds of each function, run A, B, A, B, ... after one warm-up each, under
    ``context()``."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with context():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for key, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run_model(zoo: str, name: str, tv, timm, repeats: int, export: bool) -> dict:
    model, x = build(zoo, name, tv, timm)
    row = {"model": f"{zoo}:{name}"}
    expected = exact_pass_candidates(tropfx.compile(model, [], example_inputs=(x,)))
    t0 = time.perf_counter()
    cm = tropfx.compile(model, [p() for p in PASSES], example_inputs=(x,))
    row["compile_s"] = time.perf_counter() - t0
    unreported, bitwise_err = 0, 0.0
    for stage in cm.report.rows[1:]:
        row[stage.stage] = (len(stage.rewritten), len(stage.skipped))
        unreported += expected[stage.stage] - len(stage.rewritten) - len(stage.skipped)
        if stage.stage in BITWISE:
            bitwise_err = max(bitwise_err, stage.max_abs_err or 0.0)
    row["not_tropical"] = cm.report["relu_to_maxplus"].info.get("not_tropical", {})
    row["unreported"], row["bitwise_err"] = unreported, bitwise_err
    row["max_rel_err"] = max(r.max_rel_err or 0.0 for r in cm.report.rows[1:])
    timing = interleaved({"eager": lambda: model(x), "tropfx": lambda: cm(x)}, repeats,
                         torch.no_grad)  # (the export below reuses the layers' cached checks)
    row["eager_ms"], row["tropfx_ms"] = timing["eager"] * 1e3, timing["tropfx"] * 1e3
    row["export"] = "-"
    if export:
        try:
            torch.export.export(cm, (x,))
            row["export"] = "ok"
        except Exception as exc:  # report, do not stop the sweep
            row["export"] = f"fails ({type(exc).__name__})"
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | BN folded / listed | act. rewritten / listed (not tropical) | max pools rewritten "
            "/ listed | unreported | bitwise err | max rel err | eager ms | tropfx ms (not lowered) | "
            "ratio | export | compile s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |" + " |" * (head.count("|") - 3))
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["not_tropical"].items()))
        b, a, p = r["fuse_batchnorm"], r["relu_to_maxplus"], r["maxpool_to_dilation"]
        lines.append(
            f"| {r['model']} | {b[0]} / {b[1]} | {a[0]} / {a[1]}{f' ({kinds})' if kinds else ''} | "
            f"{p[0]} / {p[1]} | {r['unreported']} | {r['bitwise_err']:.1g} | {r['max_rel_err']:.1e} | "
            f"{r['eager_ms']:.1f} | {r['tropfx_ms']:.1f} | {r['tropfx_ms'] / r['eager_ms']:.2f}x | "
            f"{r['export']} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated; timm models as timm:name")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--out", default="", help="also write the markdown table here")
    args = parser.parse_args(argv)
    tv, timm, notes = load_zoos()
    wanted = [m for m in args.models.split(",") if m] or (
        [f"torchvision:{m}" for m in TORCHVISION] + [f"timm:{m}" for m in TIMM])
    rows = []
    for spec in wanted:
        zoo, _, name = spec.rpartition(":")
        zoo = zoo or "torchvision"
        if (tv if zoo == "torchvision" else timm) is None:
            continue
        print(f"{zoo}:{name} ...", file=sys.stderr, flush=True)
        try:
            rows.append(run_model(zoo, name, tv, timm, args.repeats, not args.no_export))
        except Exception as exc:  # one model failing must not hide the others
            rows.append({"model": f"{zoo}:{name}", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    text = table(rows)
    print("\n".join(notes + [text]))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
