"""Acceptance on real model zoos: compile with the exact passes, ``tropfx.save``, ``tropfx.load``, compare.

For torchvision classification models and a few timm models (random init, eval mode, a small input),
each model is compiled with ``fuse_batchnorm``, ``relu_to_maxplus`` and ``maxpool_to_dilation``, saved
to memory, loaded, and the outputs compared bit for bit. The outcome per model is one of

* ``ok``: saved, loaded, outputs bitwise equal;
* ``ok after register_serializable(fn)``: ``tropfx.save`` refused, naming a function of the
  model's library to register (e.g. ``torchvision.ops.stochastic_depth``); the script registers it,
  as a user would, and the model then round-trips bitwise;
* ``refused at save``: refused again after that registration;
* ``FAILED ...``: anything else (saved but refused at load, outputs differ, another exception).
  The script exits 1 if any model fails.

Models that torch.fx cannot trace (or that the passes reject) are listed as ``skipped`` with the
reason: they never reach ``tropfx.save``. Local only: torchvision / timm are not dependencies, and the
script skips cleanly when they do not import.

    python benchmarks/zoo_serialize.py [--models resnet18,vit_b_32] [--inventory]

``--inventory`` also prints every call_function / call_method target and module class the compiled
graphs use (what the serialization tables must hold).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import re
import sys
import time

import torch
from torch import fx

import tropfx
from tropfx import passes as tp
from tropfx import serialize_gate as gate
from tropfx.serialize import SerializationError

# name -> (library, factory kwargs, input side)
TORCHVISION = {
    "resnet18": {}, "resnet50": {}, "mobilenet_v2": {}, "mobilenet_v3_small": {},
    "regnet_x_400mf": {}, "regnet_y_400mf": {}, "efficientnet_b0": {}, "squeezenet1_1": {},
    "shufflenet_v2_x0_5": {}, "mnasnet0_5": {}, "alexnet": {}, "googlenet": {"aux_logits": False,
                                                                             "init_weights": True},
    "densenet121": {}, "convnext_tiny": {}, "vit_b_32": {"image_size": 64}, "swin_t": {},
    "maxvit_t": {},
}
TIMM = {"resnet18": {}, "efficientnet_b0": {}, "mobilenetv3_small_100": {}}
SIDE = {"vit_b_32": 64, "alexnet": 96, "swin_t": 64, "maxvit_t": 224}


def zoo(models: list[str] | None):
    try:
        sys.path.insert(0, "/work")
        import tv  # local shim for the CPU torch build; plain imports elsewhere

        torchvision, timm = tv.load()
    except ImportError:
        try:
            import timm
            import torchvision
        except ImportError as exc:
            print(f"skipped: torchvision / timm do not import ({exc})")
            return
    for name, kwargs in TORCHVISION.items():
        if models is None or name in models or f"torchvision.{name}" in models:
            yield f"torchvision.{name}", lambda n=name, k=kwargs: getattr(
                torchvision.models, n)(weights=None, **k), SIDE.get(name, 96)
    for name, kwargs in TIMM.items():
        if models is None or name in models or f"timm.{name}" in models:
            yield f"timm.{name}", lambda n=name, k=kwargs: timm.create_model(
                n, pretrained=False, **k), 96


def _named_function(message: str):
    """The function a refusal says to register (``register_serializable(pkg.mod.fn)``), imported."""
    found = re.search(r"register_serializable\(([\w.]+)\)", message)
    if found is None:
        return None
    module, _, attr = found.group(1).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def inventory(gm: fx.GraphModule, seen: collections.Counter) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_function":
            t = node.target
            seen[f"function {getattr(t, '__module__', '?')}.{getattr(t, '__name__', t)}"] += 1
        elif node.op == "call_method":
            seen[f"method {node.target}"] += 1
    for m in gm.modules():
        seen[f"module {type(m).__module__}.{type(m).__qualname__}"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: all)")
    parser.add_argument("--inventory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    passes = [tp.fuse_batchnorm(), tp.relu_to_maxplus(), tp.maxpool_to_dilation()]
    seen: collections.Counter = collections.Counter()
    failed = 0
    rows = []
    for name, factory, side in zoo(args.models.split(",") if args.models else None):
        torch.manual_seed(0)
        start = time.perf_counter()
        try:
            model = factory().eval()
            x = torch.randn(1, 3, side, side)
            cm = tropfx.compile(model, passes, example_inputs=(x,), verify=False)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next model
            rows.append((name, f"skipped (compile: {type(exc).__name__}: {str(exc)[:100]})"))
            continue
        if args.inventory:
            inventory(cm, seen)
        buf, registered, refusal = io.BytesIO(), [], None
        for _ in range(5):  # each refusal names one function to register: do it, as a user would
            try:
                tropfx.save(cm, buf)
                refusal = None
                break
            except SerializationError as exc:
                refusal, fn = exc, _named_function(str(exc))
                if fn is None:
                    break
                tropfx.register_serializable(fn)
                registered.append(gate.qualified(fn))
                buf = io.BytesIO()
        after = f" after register_serializable({', '.join(registered)})" if registered else ""
        if refusal is not None:
            hint = "register_serializable" in str(refusal)
            failed += not hint
            rows.append((name, f"refused at save{after}{'' if hint else ' WITHOUT a hint'}: "
                               f"{refusal}"))
            continue
        size = buf.tell()
        buf.seek(0)
        try:
            loaded = tropfx.load(buf)
            with torch.no_grad():
                want, got = cm(x), loaded(x)
            same = torch.equal(want, got)
        except Exception as exc:  # noqa: BLE001
            failed += 1
            rows.append((name, f"FAILED: saved, then load/call raised {type(exc).__name__}: {exc}"))
            continue
        failed += not same
        outcome = f"ok (bitwise equal){after}" if same else "FAILED: outputs differ"
        rows.append((name, f"{outcome}; {size / 2**20:.1f} MiB, input {tuple(x.shape)}, "
                           f"{time.perf_counter() - start:.1f} s"))
        print(f"{name:36s} {rows[-1][1]}", flush=True)
    print("\nper model:")
    for name, outcome in rows:
        print(f"  {name:36s} {outcome}")
    if args.inventory:
        print("\ninventory:")
        for key, count in sorted(seen.items()):
            print(f"  {count:6d}  {key}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
