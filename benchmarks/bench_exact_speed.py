"""Speed of the exact max-plus rewrite, unlowered and lowered, against eager PyTorch (issue 18, item 3).

For resnet18, squeezenet1_1 and densenet121 (torchvision's, random init, eval mode; where torchvision
does not import, the in-repo ``tropfx.testing.models`` ones that exist) at batch 1 and 8:

* ``eager``: the original model;
* ``exact``: ``tropfx.compile(model, [fuse_batchnorm, relu_to_maxplus, maxpool_to_dilation])``, the
  pure-torch layers (identity ``SparseMaxPlus(k=1)`` as one element-wise max, dilations by a flat SE
  as max pooling plus a constant);
* ``lowered``: the same plus ``lower_kernels`` (the C++ kernels; identity max-plus nodes as
  element-wise torch ops; under ``torch.compile`` a per-channel dilation is traced as torch ops,
  which inductor fuses, instead of the opaque kernel call).

Goals: exact <= 1.2x eager, lowered <= 1.0x eager. Then ``torch.compile`` (inductor) of the original
vs of the exact rewrite, lowered and not (and lowered with ``relu_to_maxplus`` alone, "relu only":
the max pools kept), for the models in ``--compile-models`` at ``--compile-batch``: goal <= 1.05x.

Every ratio is measured in one run, the variants interleaved (A, B, C, A, B, C, ...), medians of
``--repeats`` forwards under ``torch.inference_mode``; the thread count is set explicitly
(``--threads``). The outputs of every variant are checked against eager first.

    python benchmarks/bench_exact_speed.py [--threads 2] [--repeats 9] [--size 224]
        [--models resnet18 squeezenet1_1 densenet121] [--batches 1 8]
        [--compile-models resnet18] [--compile-batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn

import tropfx
from tropfx import kernels as K
from tropfx import passes as tp

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from zoo import import_zoo, interleaved  # noqa: E402 - the script's own directory

MODELS = ("resnet18", "squeezenet1_1", "densenet121")


def builders() -> dict[str, Callable[[], nn.Module]]:
    tv, why = import_zoo("torchvision")
    if why:
        print(f"{why}: in-repo models only")
    if tv is not None:
        return {name: (lambda name=name: getattr(tv.models, name)(weights=None)) for name in MODELS}
    from tropfx.testing import models as zoo

    found = {name: getattr(zoo, name) for name in MODELS if hasattr(zoo, name)}
    for name in sorted(set(MODELS) - set(found)):
        print(f"skipped {name}: neither torchvision nor tropfx.testing.models has it")
    return found


def exact(model: nn.Module, x: torch.Tensor, lower: bool, pools: bool = True) -> nn.Module:
    passes = [tp.fuse_batchnorm(), tp.relu_to_maxplus()] + ([tp.maxpool_to_dilation()] if pools else [])
    with warnings.catch_warnings():  # random init: verification may be inconclusive, that is fine
        warnings.simplefilter("ignore")
        return tropfx.compile(model, passes + ([tp.lower_kernels()] if lower else []),
                              example_inputs=(x,))


def check(reference: torch.Tensor, others: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs difference to eager (the folded BatchNorms round differently; max is exact)."""
    out = {}
    for name, y in others.items():
        torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-4)
        out[name] = float((y - reference).abs().max())
    return out


def compile_parts(args) -> list[dict]:
    """Which rewrite costs what under torch.compile: conv + ReLU (relu_to_maxplus) and conv + max
    pool (maxpool_to_dilation) blocks at batch --compile-batch, 64 x 56 x 56, unlowered and lowered,
    ratios to the compiled block; and the max pool alone on a channels-last input (the layout
    inductor gives a conv's output), where the window loop is all there is to time."""
    x = torch.randn(args.compile_batch, 64, 56, 56, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    blocks = {
        "conv+relu x2": (nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()), tp.relu_to_maxplus),
        "conv+maxpool": (nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.MaxPool2d(3, 2, 1)),
                         tp.maxpool_to_dilation),
        "maxpool alone": (nn.Sequential(nn.MaxPool2d(3, 2, 1)), tp.maxpool_to_dilation),
    }
    print(f"\ntorch.compile of one rewritten block, batch {args.compile_batch}, ratios to the compiled "
          "block")
    rows = []
    for name, (block, rewrite) in blocks.items():
        if name == "maxpool alone":
            x = x.contiguous(memory_format=torch.channels_last)
        block.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variants = {"original": block,
                        "exact": tropfx.compile(block, [rewrite()], example_inputs=(x,)),
                        "lowered": tropfx.compile(block, [rewrite(), tp.lower_kernels()],
                                                  example_inputs=(x,))}
        torch._dynamo.reset()
        compiled = {k: torch.compile(m) for k, m in variants.items()}
        t = interleaved({k: (lambda m=m, x=x: m(x)) for k, m in compiled.items()}, args.compile_repeats)
        rows.append({"block": name, "compiled_original_ms": t["original"] * 1e3,
                     "exact": t["exact"] / t["original"], "lowered": t["lowered"] / t["original"]})
        print(f"{name:<14} original {t['original'] * 1e3:.1f} ms, exact "
              f"{t['exact'] / t['original']:.2f}x, lowered {t['lowered'] / t['original']:.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--compile-models", nargs="*", default=["resnet18"])
    parser.add_argument("--compile-batch", type=int, default=8)
    parser.add_argument("--compile-repeats", type=int, default=7)
    parser.add_argument("--compile-parts", action="store_true",
                        help="torch.compile of conv+ReLU and conv+max pool blocks, each rewritten")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    kernels = K.load()
    print(f"torch {torch.__version__}, {args.threads} threads, kernels "
          f"{'compiled' if kernels else 'unavailable: ' + str(K.build_info()['error'])}, "
          f"{platform.processor() or platform.machine()}")
    build = builders()
    results: dict = {"threads": args.threads, "size": args.size, "eager": [], "compiled": []}

    print(f"\n{'model':<14}{'batch':>6}{'eager ms':>10}{'exact':>8}{'lowered':>9}   max |diff|")
    for name in args.models:
        if name not in build:
            continue
        torch.manual_seed(0)
        model = build[name]().eval()
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
            unlowered, lowered = exact(model, x, False), exact(model, x, True)
            with torch.inference_mode():
                diffs = check(model(x), {"exact": unlowered(x), "lowered": lowered(x)})
            t = interleaved({"eager": lambda m=model, x=x: m(x), "exact": lambda m=unlowered, x=x: m(x),
                             "lowered": lambda m=lowered, x=x: m(x)}, args.repeats)
            row = {"model": name, "batch": batch, "eager_ms": t["eager"] * 1e3,
                   "exact": t["exact"] / t["eager"], "lowered": t["lowered"] / t["eager"],
                   "max_abs_diff": diffs}
            results["eager"].append(row)
            print(f"{name:<14}{batch:>6}{row['eager_ms']:>10.1f}{row['exact']:>7.2f}x"
                  f"{row['lowered']:>8.2f}x   {max(diffs.values()):.1e}")

    if args.compile_models:
        print(f"\ntorch.compile (inductor), batch {args.compile_batch}, ratios to the compiled original")
        print(f"{'model':<14}{'compiled original ms':>22}{'exact':>8}{'lowered':>9}{'relu only':>11}"
              f"{'eager':>8}")
    for name in args.compile_models:
        if name not in build:
            continue
        torch.manual_seed(0)
        model = build[name]().eval()
        x = torch.randn(args.compile_batch, 3, args.size, args.size,
                        generator=torch.Generator().manual_seed(1))
        variants = {"original": model, "exact": exact(model, x, False), "lowered": exact(model, x, True),
                    "lowered_relu_only": exact(model, x, True, pools=False)}
        torch._dynamo.reset()
        compiled = {k: torch.compile(m) for k, m in variants.items()}
        with torch.inference_mode():
            check(model(x), {k: m(x) for k, m in compiled.items()})  # also compiles each
        fns = {k: (lambda m=m, x=x: m(x)) for k, m in compiled.items()}
        fns["eager"] = lambda m=model, x=x: m(x)
        t = interleaved(fns, args.compile_repeats)
        row = {"model": name, "batch": args.compile_batch, "compiled_original_ms": t["original"] * 1e3,
               "exact": t["exact"] / t["original"], "lowered": t["lowered"] / t["original"],
               "lowered_relu_only": t["lowered_relu_only"] / t["original"],
               "eager": t["eager"] / t["original"]}
        results["compiled"].append(row)
        print(f"{name:<14}{row['compiled_original_ms']:>22.1f}{row['exact']:>7.2f}x"
              f"{row['lowered']:>8.2f}x{row['lowered_relu_only']:>10.2f}x{row['eager']:>7.2f}x")
    if args.compile_parts:
        results["parts"] = compile_parts(args)
    print("\nratios: time / time of the baseline in the same run (eager, or the compiled original); "
          "goals: exact <= 1.2x, lowered <= 1.0x, compiled <= 1.05x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
