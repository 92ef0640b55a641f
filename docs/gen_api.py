"""Generate docs/api.md from the docstrings of tropfx's public modules.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is not up to date
    python docs/gen_api.py --out X    # write elsewhere

For every module in MODULES: its docstring, then each name in its ``__all__`` (or, for the
top-level package, the names it re-exports) with its signature and docstring; for classes, also
their public methods and properties defined in the class itself. Output is deterministic.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "api.md"

# In reading order. Modules that do not import (an optional part missing) are listed as such.
MODULES = [
    "tropfx",
    "tropfx.passes",
    "tropfx.nn",
    "tropfx.nn.functional",
    "tropfx.nn.morphology",
    "tropfx.kernels",
    "tropfx.kernels.binary",
    "tropfx.serialize",
    "tropfx.summary",
    "tropfx.plot",
    "tropfx.progress",
    "tropfx.measure",
    "tropfx.report",
    "tropfx.pass_base",
    "tropfx.ops",
    "tropfx.errors",
    "tropfx.testing",
    "tropfx.data",
]
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
QUOTED_ANNOTATION = re.compile(r"(: |-> )'([^']*)'")  # postponed annotations print as strings


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    return QUOTED_ANNOTATION.sub(r"\1\2", ADDRESS.sub("", text))


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__) if getattr(obj, "__doc__", None) else ""


def _public_names(module: object) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return sorted(names, key=lambda n: (not n[0].isupper(), n.lower()))


def _members(cls: type) -> list[tuple[str, object]]:
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            found.append((name, value))
    return sorted(found)


def _entry(qualname: str, obj: object, home: str) -> list[str]:
    defined_in = getattr(obj, "__module__", None)
    where = f" *(from `{defined_in}`)*" if defined_in and defined_in != home else ""
    if inspect.isclass(obj):
        lines = [f"### class `{qualname}{_signature(obj)}`{where}", ""]
    elif callable(obj):
        lines = [f"### `{qualname}{_signature(obj)}`{where}", ""]
    elif inspect.ismodule(obj):
        return [f"### module `{qualname}`", "", f"See `{obj.__name__}`.", ""]
    else:
        value = ADDRESS.sub("", repr(obj))
        value = value if len(value) <= 100 else value[:97] + "..."
        return [f"### `{qualname}` = `{value}`", ""]
    doc = _doc(obj)
    if doc:
        lines += [doc, ""]
    if inspect.isclass(obj):
        for name, member in _members(obj):
            if isinstance(member, property):
                head = f"- property `{name}`"
                text = _doc(member)
            else:
                head = f"- `{name}{_signature(member)}`"
                text = _doc(member)
            first = text.split("\n\n")[0].replace("\n", " ") if text else ""
            lines.append(f"{head}: {first}" if first else head)
        if lines[-1] != "":
            lines.append("")
    return lines


def generate() -> str:
    out = ["# API reference", "",
           "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.", ""]
    out += [f"- [`{name}`](#{name.replace('.', '')})" for name in MODULES] + [""]
    for name in MODULES:
        out += [f"## `{name}`", ""]
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            out += [f"*Not importable here: {exc}.*", ""]
            continue
        doc = _doc(module)
        if doc:
            out += [doc, ""]
        for public in _public_names(module):
            obj = getattr(module, public, None)
            if obj is None or (inspect.ismodule(obj) and obj.__name__ in MODULES):
                continue
            out += _entry(f"{name}.{public}", obj, name)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
