"""The ``tropfx`` command line (also ``python -m tropfx``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tropfx.errors import TropfxError


def _demo(args: argparse.Namespace) -> int:
    from tropfx.demo import run_demo

    print(f"training SmallCNN on scikit-learn's 8x8 digits for {args.seconds:g} s ...", flush=True)
    result = run_demo(seconds=args.seconds, seed=args.seed)
    print(f"trained {result.epochs} epochs, test accuracy {result.accuracy:.4f}\n")
    print(result.compiled.report)
    if args.json:
        with open(args.json, "w") as f:
            f.write(result.compiled.report.to_json())
        print(f"\nreport written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tropfx import __version__

    parser = argparse.ArgumentParser(
        prog="tropfx",
        description="Compile PyTorch models into tropical / morphological form with torch.fx passes.",
    )
    parser.add_argument("--version", action="version", version=f"tropfx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a small CNN on bundled data, compile it, verify and print the report",
        description="Train SmallCNN on scikit-learn's bundled 8x8 digits for a few seconds, "
        "compile it through tropfx's passes with verification, and print the report.",
    )
    demo.add_argument("--seconds", type=float, default=3.0, help="training time (default 3)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TropfxError as exc:
        if args.debug:
            raise
        print(f"tropfx: error: {exc}", file=sys.stderr)
        return 1
