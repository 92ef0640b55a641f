"""The ``tropfx`` command line (also ``python -m tropfx``).

::

    tropfx demo                                   train, compile and report a small CNN
    tropfx passes                                 the passes and their options
    tropfx compile MODEL --passes SPECS --example-shape 1,3,32,32 --out m.tropfx --report r.json
    tropfx summary MODEL|FILE [--example-shape 1,3,32,32]
    tropfx bench [SCRIPT [-- ARGS]]               list or run the scripts in benchmarks/
    tropfx bench MODEL --passes SPECS --example-shape ...   time forward before / after compile
    tropfx kernels build [--cuda] [--emulation]   prebuild the C++ (and CUDA) kernels into the cache
    tropfx kernels info [--json PATH]             cache path, ISA, flags, built / loaded

``MODEL`` is ``MODULE:FACTORY`` (``tropfx.demo:SmallCNN``, ``pkg.models:resnet18(num_classes=10)``,
``path/to/model.py:build``): the factory is called (with the literal arguments given) and must
return an ``nn.Module``. Pass specs are described in :func:`parse_pass_specs`.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tropfx.errors import InputError, TropfxError

PASS_SYNTAX = """\
pass specs: NAME[:KEY=VALUE[:KEY=VALUE...]], several separated by commas, e.g.
  --passes "fuse_batchnorm,relu_to_maxplus:mode='sparse':k=2,prune_l1:ratio=0.5:scope=layer"
or one per --pass flag (both may be mixed; order is kept). VALUEs are Python literals (0.5, True,
None, 'text', ["head.*", "fc"]); a bare word is a string. Commas and colons inside brackets or
quotes do not split. `tropfx passes` lists the passes and their options."""

BARE_WORD = re.compile(r"[A-Za-z_][\w.*?/\-]*")


# --------------------------------------------------------------------------------------------------
# Pass specs.


def available_passes() -> dict[str, Callable]:
    """Pass factories by name: the functions listed in ``tropfx.passes.__all__``."""
    from tropfx import passes

    names = getattr(passes, "__all__", [n for n in dir(passes) if not n.startswith("_")])
    found = {}
    for name in names:
        obj = getattr(passes, name, None)
        if inspect.isfunction(obj):
            found[name] = obj
    return dict(sorted(found.items()))


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets and quotes."""
    parts, current, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quote or depth:
        raise InputError(f"unbalanced {'quote' if quote else 'brackets'} in {text!r}")
    parts.append("".join(current).strip())
    return parts


def _wants_sequence(param: inspect.Parameter) -> bool:
    annotation = param.annotation if isinstance(param.annotation, str) else \
        getattr(param.annotation, "__name__", str(param.annotation))
    return str(annotation).startswith(("Sequence", "list", "tuple", "Iterable", "Collection"))


def _parse_value(text: str, param: inspect.Parameter, where: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if not BARE_WORD.fullmatch(text):
            raise InputError(f"{where}: cannot read {text!r}; use a Python literal, e.g. 0.5, "
                             "True, 'text' or [\"a\", \"b\"]") from None
        value = text
    if isinstance(value, str) and _wants_sequence(param):
        value = [value]  # include=head.* means include=["head.*"]
    return value


def _describe_options(factory: Callable) -> str:
    options = []
    for p in inspect.signature(factory).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        options.append(f"{p.name} (required)" if p.default is p.empty
                       else f"{p.name}={p.default!r}")
    return ", ".join(options) or "none"


def parse_pass_specs(texts: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """``["fuse_batchnorm,prune_l1:ratio=0.5:scope=layer"]`` -> ``[(name, kwargs), ...]``.

    Grammar: specs separated by ``,``; a spec is ``NAME`` then ``:KEY=VALUE`` options; values
    are Python literals or bare words (strings). Names and options are checked against the pass
    factories' signatures, and an error lists the valid ones.
    """
    factories = available_passes()
    specs = []
    for text in texts:
        for spec in _split(text, ","):
            if not spec:
                continue
            name, *options = _split(spec, ":")
            if "=" in name:
                raise InputError(f"pass spec {spec!r}: separate options with ':', and passes with "
                                 "',' (e.g. prune_l1:ratio=0.5:scope=layer)")
            if name not in factories:
                raise InputError(f"unknown pass {name!r}; valid passes: {', '.join(factories)}")
            params = {p.name: p for p in inspect.signature(factories[name]).parameters.values()}
            kwargs: dict[str, Any] = {}
            for option in options:
                key, eq, value = option.partition("=")
                key = key.strip()
                if not eq or key not in params:
                    what = f"option {key!r}" if eq else f"{option!r} (expected KEY=VALUE)"
                    raise InputError(f"pass {name}: unknown {what}; options: "
                                     f"{_describe_options(factories[name])}")
                kwargs[key] = _parse_value(value.strip(), params[key], f"pass {name}, option {key}")
            missing = [p.name for p in params.values()
                       if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                       and p.name not in kwargs]
            if missing:
                raise InputError(f"pass {name} needs {', '.join(f'{m}=...' for m in missing)}; "
                                 f"options: {_describe_options(factories[name])}")
            specs.append((name, kwargs))
    return specs


def build_passes(texts: Sequence[str]) -> list[Callable]:
    """The configured passes for ``--passes`` / ``--pass`` values (see :func:`parse_pass_specs`)."""
    factories = available_passes()
    built = []
    for name, kwargs in parse_pass_specs(texts):
        try:
            built.append(factories[name](**kwargs))
        except TropfxError:
            raise
        except (TypeError, ValueError) as exc:
            raise InputError(f"pass {name}: {exc}") from exc
    return built


# --------------------------------------------------------------------------------------------------
# Models, checkpoints and example inputs.


def _import(module: str) -> Any:
    if module.endswith(".py") or os.sep in module or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise InputError(f"no such file: {module}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, mod)
        spec.loader.exec_module(mod)
        return mod
    if os.getcwd() not in sys.path:  # as `python -m` does: models in the current directory
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise InputError(f"cannot import {module!r}: {exc}; give a module on the Python path "
                         "(pkg.models) or a file (path/to/model.py)") from exc


def _attr_path(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [*_attr_path(node.value), node.attr]
    raise ValueError("not a name")


def load_model(spec: str) -> Any:
    """Build the model ``MODULE:FACTORY`` or ``MODULE:FACTORY(literal args)`` names."""
    from torch import nn

    head = spec.split("(", 1)[0]
    colon = head.rfind(":")
    if colon <= 0:
        raise InputError(f"model {spec!r}: expected MODULE:FACTORY, e.g. tropfx.demo:SmallCNN, "
                         "pkg.models:resnet18(num_classes=10) or path/to/model.py:build")
    module_name, call = spec[:colon], spec[colon + 1:]
    try:
        expr = ast.parse(call.strip(), mode="eval").body
        func = expr.func if isinstance(expr, ast.Call) else expr
        path = _attr_path(func)
        args = [ast.literal_eval(a) for a in expr.args] if isinstance(expr, ast.Call) else []
        kwargs = {k.arg: ast.literal_eval(k.value) for k in expr.keywords} \
            if isinstance(expr, ast.Call) else {}
        if None in kwargs:
            raise ValueError("**kwargs")
    except (SyntaxError, ValueError) as exc:
        raise InputError(f"model {spec!r}: FACTORY must be a name, optionally called with "
                         "literal arguments, e.g. resnet18(num_classes=10)") from exc
    obj = _import(module_name)
    for part in path:
        if not hasattr(obj, part):
            raise InputError(f"model {spec!r}: {module_name} has no attribute "
                             f"{'.'.join(path)}")
        obj = getattr(obj, part)
    model = obj(*args, **kwargs) if callable(obj) else obj
    if not isinstance(model, nn.Module):
        raise InputError(f"model {spec!r} gave a {type(model).__name__}, not an nn.Module")
    return model


def load_checkpoint(model: Any, path: str) -> None:
    """Load a state dict into ``model``: a plain one, or under "model" / "state_dict" /
    "model_state_dict" in a training checkpoint; a DDP "module." prefix is dropped."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise InputError(f"no such checkpoint: {path}") from exc
    except Exception as exc:
        raise InputError(f"cannot read checkpoint {path} with weights_only=True: "
                         f"{str(exc).splitlines()[0]}") from exc
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} holds no state dict (a dict of tensors, possibly "
                         "under 'model' or 'state_dict')")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"checkpoint {path} does not fit {type(model).__name__}: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]} "
                         "(was it saved from another model, or from a compiled one? load a "
                         "compiled module saved with tropfx.save as FILE instead)")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in re.split(r"[,x\s]+", text.strip().strip("()[]")) if s)
    except ValueError:
        shape = ()
    if not shape or any(s < 0 for s in shape):
        raise InputError(f"--example-shape {text!r}: expected sizes like 1,3,32,32")
    return shape


def _dtype(name: str | None) -> Any:
    import torch

    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"--dtype {name!r} is not a torch dtype (float32, float64, bfloat16, ...)")
    return dtype


def example_inputs(shapes: Sequence[tuple[int, ...]], dtype: Any, seed: int) -> tuple | None:
    import torch

    if not shapes:
        return None
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=gen).to(dtype or torch.float32) for s in shapes)


def _shapes_from_report(module: Any) -> list[tuple[int, ...]]:
    report = getattr(module, "report", None)
    text = getattr(report, "inputs", "") or ""
    tensor = r"tensor\(([\d,\s]*)\)"
    if not text or re.search(r"\w", re.sub(tensor, "", text)):  # empty, or not all tensors
        return []
    return [tuple(int(s) for s in found.split(",") if s.strip())
            for found in re.findall(tensor, text)]


def _model_and_inputs(args: argparse.Namespace) -> tuple[Any, tuple | None]:
    """The model TARGET names (a saved file or MODULE:FACTORY) and its example inputs."""
    import tropfx

    target = args.target
    if os.path.isfile(target) and not target.endswith(".py"):
        if getattr(args, "checkpoint", None):
            raise InputError("--checkpoint is for MODULE:FACTORY models; a saved file holds its "
                             "weights")
        model = tropfx.load(target)
        shapes = [parse_shape(s) for s in args.example_shape] or _shapes_from_report(model)
    else:
        if ":" not in target:
            raise InputError(f"{target!r} is neither a file (a module saved by tropfx compile "
                             "--out) nor MODULE:FACTORY (e.g. tropfx.demo:SmallCNN, "
                             "pkg.models:resnet18(num_classes=10), path/to/model.py:build)")
        model = load_model(target)
        if getattr(args, "checkpoint", None):
            load_checkpoint(model, args.checkpoint)
        shapes = [parse_shape(s) for s in args.example_shape]
    dtype = _dtype(args.dtype)
    if dtype is not None and dtype.is_floating_point:
        model = model.to(dtype)
    return model.eval(), example_inputs(shapes, dtype, args.seed)


# --------------------------------------------------------------------------------------------------
# Commands.


def _demo(args: argparse.Namespace) -> int:
    from tropfx.demo import LOSSY_STAGE, run_demo

    print(f"training SmallCNN on scikit-learn's 8x8 digits for {args.epochs} epochs (seed {args.seed}) ...",
          flush=True)
    result = run_demo(epochs=args.epochs, seed=args.seed, max_seconds=args.max_seconds)
    cap = (f" (stopped by --max-seconds {args.max_seconds:g} before {result.requested_epochs}: "
           "results differ from an uncapped run)" if result.capped else "")
    print(f"trained {result.epochs} epochs{cap}, test accuracy {result.accuracy:.4f}\n")
    print(result.compiled.report)
    rows = result.compiled.report.rows
    lossy = [r.stage for r in rows].index(LOSSY_STAGE)
    before, after = rows[lossy - 1].metrics["test acc"], rows[lossy].metrics["test acc"]
    # the report's last line names the lossy stage; say what it cost on the metric that matters
    print(f"{LOSSY_STAGE} cost: test acc {before:.4f} -> {after:.4f} (50 % of the conv / linear weights "
          "pruned, no fine-tuning)")
    if args.json:
        with open(args.json, "w") as f:
            f.write(result.compiled.report.to_json())
        print(f"\nreport written to {args.json}")
    return 0


def _pass_summary(factory: Callable) -> str:
    """First line of the pass class's docstring (the factory's own says "see class")."""
    try:
        returned = typing.get_type_hints(factory).get("return")
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: use the factory's doc
        returned = None
    doc = inspect.getdoc(returned) if isinstance(returned, type) else None
    doc = (doc or inspect.getdoc(factory) or "").split("\n\n")[0].replace("\n", " ")
    return re.split(r"(?<=\.)\s", doc.replace("``", ""))[0]


def _passes(args: argparse.Namespace) -> int:
    factories = available_passes()
    print("passes in tropfx.passes (use as tropfx compile --passes NAME:KEY=VALUE,...):\n")
    for name, factory in factories.items():
        print(f"  {name}")
        for text in (_pass_summary(factory), f"options: {_describe_options(factory)}"):
            print(textwrap.fill(text, width=100, initial_indent=" " * 6,
                                subsequent_indent=" " * 8))
    print(f"\n{PASS_SYNTAX}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    import tropfx

    passes = build_passes(args.passes or [])
    model, inputs = _model_and_inputs(args)
    if inputs is None and not args.no_verify:
        print("note: no --example-shape: no verification, shapes or MACs (passes that need "
              "shapes will skip)", file=sys.stderr)
    compiled = tropfx.compile(model, passes, example_inputs=inputs,
                              verify=False if args.no_verify else None, leaf_modules=args.leaf)
    if not args.quiet:
        print(compiled.report)
    if args.report:
        Path(args.report).write_text(compiled.report.to_json())
        print(f"report written to {args.report}")
    if args.out:
        tropfx.save(compiled, args.out)
        print(f"compiled module saved to {args.out} ({os.path.getsize(args.out) / 1024:.1f} KiB); "
              f"load it with tropfx.load({str(args.out)!r})")
    return 0


def _summary(args: argparse.Namespace) -> int:
    import tropfx

    model, inputs = _model_and_inputs(args)
    if args.report and getattr(model, "report", None) is not None:
        print(model.report, end="\n\n")
    result = tropfx.summary(model, inputs)
    print(result)
    if args.json:
        Path(args.json).write_text(result.to_json())
        print(f"summary written to {args.json}")
    return 0


# --- bench ------------------------------------------------------------------------------------

def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_scripts() -> dict[str, Path]:
    folder = benchmarks_dir()
    return {p.stem.removeprefix("bench_"): p for p in sorted(folder.glob("bench_*.py"))} \
        if folder.is_dir() else {}


def _first_line(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except SyntaxError:
        doc = None
    return (doc or "").split("\n\n")[0].replace("\n", " ")


def _run_script(name: str, extra: list[str]) -> int:
    scripts = benchmark_scripts()
    key = Path(name).stem.removeprefix("bench_")
    if key not in scripts:
        where = f"in {benchmarks_dir()}" if scripts else \
            f"({benchmarks_dir()} is missing: benchmarks ship with the source checkout)"
        raise InputError(f"no benchmark {name!r} {where}; benchmarks: "
                         f"{', '.join(scripts) or 'none'}. To time a model, give MODULE:FACTORY")
    command = [sys.executable, str(scripts[key]), *extra]
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command)


def _list_scripts() -> int:
    scripts = benchmark_scripts()
    if not scripts:
        print(f"no benchmark scripts in {benchmarks_dir()} (they ship with the source checkout)")
        return 0
    print(f"benchmarks in {benchmarks_dir()} (run one with: tropfx bench NAME [-- ARGS]):\n")
    for name, path in scripts.items():
        print(f"  {name:<12}  {_first_line(path)}")
    print("\nor time a model before / after compiling: tropfx bench MODULE:FACTORY "
          "--example-shape 1,3,32,32 --passes ...")
    return 0


def time_modules(variants: dict[str, Any], inputs: tuple, repeats: int, warmup: int,
                 backward: bool = False, quiet: bool | None = None) -> dict[str, list[float]]:
    """Seconds per call of each module on ``inputs``, measured in interleaved rounds (every
    round runs every variant once), so that load changes on a shared machine hit all alike."""
    import torch

    from tropfx.measure import clone_inputs
    from tropfx.progress import progress

    def run(module: Any) -> None:
        x = clone_inputs(inputs)
        if backward:
            module.zero_grad(set_to_none=True)
            out = module(*x)
            (out if isinstance(out, torch.Tensor) else out[0]).float().sum().backward()
        else:
            with torch.no_grad():
                module(*x)

    for module in variants.values():
        module.eval()
    for _ in range(warmup):
        for module in variants.values():
            run(module)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in progress(range(repeats), desc="timing", quiet=quiet):
        for name, module in variants.items():
            start = time.perf_counter()
            run(module)
            times[name].append(time.perf_counter() - start)
    return times


def _bench_model(args: argparse.Namespace) -> int:
    import torch

    import tropfx

    if args.threads:
        torch.set_num_threads(args.threads)
    passes = build_passes(args.passes or ["fuse_batchnorm"])
    model, inputs = _model_and_inputs(args)
    if inputs is None:
        raise InputError("tropfx bench MODEL needs --example-shape to run the model on")
    traced = tropfx.compile(model, [], example_inputs=inputs)
    compiled = tropfx.compile(model, passes, example_inputs=inputs)
    times = time_modules({"eager": model, "traced": traced, "compiled": compiled}, inputs,
                         args.repeats, args.warmup, args.backward)
    base = statistics.median(times["eager"])
    rows = []
    stages = {"eager": traced.report[0], "traced": traced.report[0], "compiled": compiled.report[-1]}
    for name, samples in times.items():
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        stage = stages[name]
        rows.append({"variant": name, "median_ms": 1e3 * statistics.median(samples),
                     "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2],
                     "speedup": base / statistics.median(samples), "params": stage.params,
                     "macs": stage.macs, "maxplus": stage.counts.get("maxplus", 0)})
    what = "forward + backward" if args.backward else "forward"
    print(f"tropfx bench: {type(model).__name__} on {compiled.report.inputs}, {what}, "
          f"{args.repeats} interleaved rounds, {torch.get_num_threads()} threads")
    print(f"passes: {', '.join(r.stage for r in compiled.report.rows[1:]) or '-'}")
    header = ["variant", "median", "IQR", "speedup", "params", "MACs", "max-plus ops"]
    table = [header] + [[r["variant"], f"{r['median_ms']:.3f} ms",
                         f"{r['q1_ms']:.3f}-{r['q3_ms']:.3f}", f"{r['speedup']:.2f}x",
                         f"{r['params']:,}", f"{r['macs']:,}", f"{r['maxplus']:,}"] for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("speedup = eager median / variant median (> 1 is faster); timings on a busy machine "
          "vary: compare ratios from one run")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": what, "repeats": args.repeats,
                                               "threads": torch.get_num_threads(),
                                               "passes": [r.stage for r in compiled.report.rows[1:]],
                                               "rows": rows}, indent=2))
        print(f"results written to {args.json}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.list or args.target is None:
        if args.extra:
            raise InputError("arguments after -- need a benchmark name: tropfx bench NAME -- ARGS")
        return _list_scripts()
    if ":" not in args.target and not os.path.isfile(args.target):
        return _run_script(args.target, args.extra)
    if args.extra:
        raise InputError("arguments after -- are for benchmark scripts, not for timing a model")
    return _bench_model(args)


# --------------------------------------------------------------------------------------------------
# tropfx kernels: prebuild the kernels, and say where they are and whether they load.


def _kernels_build(args: argparse.Namespace) -> int:
    from tropfx.kernels import _build, cuda_build

    failed = 0
    start = time.perf_counter()
    if _build.load():
        info = _build.build_info()
        print(f"C++ kernels: ready in {time.perf_counter() - start:.1f} s, cached in {info['path']}")
    else:
        print(f"C++ kernels: not built: {_build.build_info()['error']}", file=sys.stderr)
        failed = 1
    if args.cuda:
        start = time.perf_counter()
        if cuda_build.load_cuda():
            print(f"CUDA kernels: ready in {time.perf_counter() - start:.1f} s, cached in "
                  f"{cuda_build.build_directory()}")
        else:
            print("CUDA kernels: not built (see the warning above)", file=sys.stderr)
            failed = 1
    if args.emulation:
        start = time.perf_counter()
        try:
            cuda_build.build_emulation()
            print(f"CUDA emulator: ready in {time.perf_counter() - start:.1f} s, cached in "
                  f"{cuda_build.emulation_directory()}")
        except (OSError, RuntimeError, ImportError) as exc:
            print(f"CUDA emulator: not built: {exc}", file=sys.stderr)
            failed = 1
    return failed


def _kernels_info(args: argparse.Namespace) -> int:
    from tropfx.kernels import _build, cuda_build

    cpu = _build.status()
    if cpu["built"]:
        _build.load()  # a cached build loads in well under a second; nothing is compiled
        cpu = _build.status()
    fp = _build.build_info().get("fp_state") if cpu["loaded"] else None
    emulator = cuda_build.emulation_directory()
    info = {"cache_dir": cpu["cache_dir"], "isa": cpu["isa"], "compiler": cpu["compiler"],
            "cpu": {"path": cpu["path"], "built": cpu["built"], "loaded": cpu["loaded"],
                    "error": cpu["error"], "fp_state": fp},
            "fp_cflags": list(_build.FP_CFLAGS), "nvcc_fp_flags": list(_build.NVCC_FP_FLAGS),
            "cuda": cuda_build.status(),
            "emulator": {"path": str(emulator),
                         "built": (emulator / f"{cuda_build.EXTENSION_NAME}_emulation.so").exists()}}
    yes = {True: "yes", False: "no"}
    print(f"cache        {info['cache_dir']}  ($TROPFX_CACHE)")
    print(f"ISA          {info['isa']} (-march=native), compiler: {info['compiler'] or '?'}")
    print(f"CPU kernels  built: {yes[cpu['built']]}, loaded: {yes[cpu['loaded']]}  ({cpu['path']})"
          + ("" if cpu["built"] else "; run `tropfx kernels build`"))
    if cpu["error"] and not cpu["loaded"]:
        print(f"             {cpu['error']}")
    print(f"FP flags     {' '.join(_build.FP_CFLAGS)}; nvcc {' '.join(_build.NVCC_FP_FLAGS)}"
          + (f"; library: fast-math {yes[fp['fast_math']]}, flush-to-zero "
             f"{yes[fp['flush_to_zero']]}" if fp else ""))
    cuda = info["cuda"]
    if cuda["torch_cuda"] is None:
        print("CUDA         this torch is a CPU-only build")
    elif cuda["device"] is None:
        print(f"CUDA         torch {cuda['torch_cuda']}, but no visible GPU")
    else:
        print(f"CUDA         {cuda['device']}: built: {yes[cuda['built']]}, loaded: "
              f"{yes[cuda['loaded']]}  ({cuda['path']})")
    print(f"CUDA emulator built: {yes[info['emulator']['built']]}  ({emulator})")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------------------------------
# Parser.


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _model_options(parser: argparse.ArgumentParser, shapes_help: str) -> None:
    parser.add_argument("--example-shape", action="append", default=[], metavar="SHAPE",
                        help=f"{shapes_help}; repeat for several inputs")
    parser.add_argument("--dtype", default=None,
                        help="dtype of the example inputs (and the model): float32, float64, ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random example inputs")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="state dict to load into a MODULE:FACTORY model (torch.load with "
                             "weights_only=True; 'model' / 'state_dict' entries are found)")


def _pass_options(parser: argparse.ArgumentParser, default: str = "") -> None:
    parser.add_argument("--passes", "--pass", dest="passes", action="append", metavar="SPECS",
                        help="passes to run, in order (see below)" + default)


def build_parser() -> argparse.ArgumentParser:
    from tropfx import __version__

    parser = argparse.ArgumentParser(
        prog="tropfx", formatter_class=_Formatter,
        description="Compile PyTorch models into tropical / morphological form with torch.fx passes.",
        epilog="examples:\n"
               "  tropfx demo\n"
               "  tropfx passes\n"
               "  tropfx compile tropfx.demo:SmallCNN --example-shape 8,1,8,8 \\\n"
               "      --passes fuse_batchnorm,relu_to_maxplus,prune_l1:ratio=0.5 --out cnn.tropfx\n"
               "  tropfx summary cnn.tropfx\n"
               "  tropfx bench tropfx.demo:SmallCNN --example-shape 64,1,8,8 --passes "
               "fuse_batchnorm\n\n"
               "run `tropfx COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tropfx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=textwrap.fill(description, 90),
                           epilog=epilog or None, formatter_class=_Formatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
        return p

    demo = command("demo", "train a small CNN on bundled data, compile it, verify and report",
                   "Train SmallCNN on scikit-learn's bundled 8x8 digits for a fixed number of epochs "
                   "(the same model for the same seed), compile it through tropfx's passes with "
                   "verification, and print the report.")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (default 30, ~2 s)")
    demo.add_argument("--max-seconds", type=float, default=60.0,
                      help="stop training after this many seconds on a slow machine (default 60)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    demo.set_defaults(func=_demo)

    passes = command("passes", "list the passes and their options",
                     "List the passes in tropfx.passes with their options.")
    passes.set_defaults(func=_passes)

    model_help = ("MODULE:FACTORY, e.g. tropfx.demo:SmallCNN, pkg.models:resnet18(num_classes=10) "
                  "or path/to/model.py:build; the factory returns an nn.Module")
    comp = command(
        "compile", "compile a model with a list of passes; save it and its report",
        "Build MODEL, load --checkpoint, compile it with the passes on random example inputs "
        "(verifying every pass), print the report, and save the compiled module (tropfx.save: "
        "no pickle, reload with tropfx.load) and the report as JSON.",
        PASS_SYNTAX + "\n\nexample:\n  tropfx compile tropfx.demo:SmallCNN --example-shape 8,1,8,8 \\\n"
        "      --passes \"fuse_batchnorm,relu_to_maxplus,prune_l1:ratio=0.5:scope=layer\" \\\n"
        "      --out cnn.tropfx --report report.json")
    comp.add_argument("target", metavar="MODEL",
                      help=f"{model_help}; or a module saved by tropfx compile --out")
    _pass_options(comp)
    _model_options(comp, "shape of a random example input, e.g. 1,3,32,32 (needed for "
                         "verification, MACs, and passes that need shapes)")
    comp.add_argument("--leaf", action="append", default=[], metavar="NAME",
                      help="submodule to keep as an opaque leaf (repeatable)")
    comp.add_argument("--no-verify", action="store_true",
                      help="do not compare each stage's outputs with the previous one")
    comp.add_argument("--out", metavar="PATH", help="save the compiled module here (tropfx.save)")
    comp.add_argument("--report", metavar="PATH", help="write the compile report as JSON here")
    comp.add_argument("--quiet", action="store_true", help="do not print the report")
    comp.set_defaults(func=_compile)

    summ = command(
        "summary", "parameters, memory and operations per layer",
        "Print tropfx.summary of a model: per layer and in total, float / max-plus / binary "
        "parameters, memory (as stored and with binary weights packed at 1 bit), MACs, max-plus "
        "ops and bit ops on the example inputs.")
    summ.add_argument("target", metavar="MODEL|FILE",
                      help=f"{model_help}; or a compiled module saved by tropfx compile --out")
    _model_options(summ, "shape of a random example input (default for a saved module: the "
                         "shapes it was compiled with); without it, no operation counts")
    summ.add_argument("--report", action="store_true",
                      help="also print the compile report stored in a saved module")
    summ.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    summ.set_defaults(func=_summary)

    bench = command(
        "bench", "list / run the benchmarks, or time a model before and after compiling",
        "Without arguments, list the scripts in benchmarks/. With a NAME, run that script "
        "(arguments after -- go to it). With a MODEL, time its forward (or forward + backward) "
        "eager, traced, and compiled with the passes, in interleaved rounds on the same inputs, "
        "and print medians, spread and speedups.",
        "examples:\n  tropfx bench\n  tropfx bench maxplus -- --repeats 1\n"
        "  tropfx bench tropfx.demo:SmallCNN --example-shape 64,1,8,8 \\\n"
        "      --passes fuse_batchnorm,relu_to_maxplus,maxpool_to_dilation --repeats 50\n\n"
        + PASS_SYNTAX)
    bench.add_argument("target", nargs="?", metavar="NAME|MODEL",
                       help="a benchmark script (maxplus, compile, ...) or " + model_help)
    bench.add_argument("--list", action="store_true", help="list the benchmark scripts")
    _pass_options(bench, " (default: fuse_batchnorm)")
    _model_options(bench, "shape of a random example input, e.g. 64,3,32,32")
    bench.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    bench.add_argument("--backward", action="store_true", help="time forward + backward")
    bench.add_argument("--json", metavar="PATH", help="also write the timings as JSON")
    bench.set_defaults(func=_bench)

    kern = command(
        "kernels", "prebuild the C++ / CUDA kernels, or show where they are cached",
        "The compiled kernels are built on first use into $TROPFX_CACHE (~/.cache/tropfx), one "
        "directory per fingerprint of sources, flags and toolchain. `build` prebuilds them (for "
        "images and CI); `info` shows the cache, the ISA, the floating-point flags and whether the "
        "kernels are built and load, without compiling anything.",
        "examples:\n  tropfx kernels build\n  tropfx kernels build --cuda\n  tropfx kernels info")
    kern_sub = kern.add_subparsers(dest="action", required=True, metavar="ACTION")
    kbuild = kern_sub.add_parser("build", help="build (or load the cached build of) the kernels")
    kbuild.add_argument("--cuda", action="store_true", help="also the CUDA kernels (needs a GPU)")
    kbuild.add_argument("--emulation", action="store_true",
                        help="also the CUDA kernels for the CPU emulator (tests)")
    kbuild.set_defaults(func=_kernels_build)
    kinfo = kern_sub.add_parser("info", help="cache path, ISA, flags, built / loaded")
    kinfo.add_argument("--json", metavar="PATH", help="also write the information as JSON")
    kinfo.set_defaults(func=_kernels_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after -- goes to a benchmark script
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.extra = extra
    if extra and args.command != "bench":
        parser.error("arguments after -- are for `tropfx bench NAME -- ARGS`")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tropfx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, TropfxError):
            print(f"tropfx: error: {exc}", file=sys.stderr)
        else:
            print(f"tropfx: error: {type(exc).__name__}: {exc} (run with --debug for the "
                  "traceback)", file=sys.stderr)
        return 1
