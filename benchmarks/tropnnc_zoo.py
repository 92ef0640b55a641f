"""TropNNC on torchvision's CNNs: the share of conv output channels the pass compresses, and
``ratio=1`` as an exact identity (issue 19's acceptance).

For every model (random init, eval, one 224 x 224 image): the channel-dependency graph
(:class:`tropfx.channels.ChannelGraph`) maps every convolution's output channels to its group;
``tropfx.compile(model, [tp.tropnnc(ratio)])`` compresses the groups it can. A conv counts as
compressed when its group's row in the report has ``K < n``. Printed per model: conv output
channels in compressed groups / all (and / all but those that reach the model output, which no
structured pass can resize), groups compressed, outside the paper's conditions, skipped (with
the most common reason), the compressed model's relative output error ``|y~ - y| / |y|`` on the
image (the pass is lossy), the time, and whether ``ratio=1`` reproduces the model's output
exactly (``torch.equal``).

    python benchmarks/tropnnc_zoo.py [--ratio 0.5] [--models resnet18,mobilenet_v2] [--method l1]

Needs torchvision (not a tropfx dependency); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections import Counter

import torch
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.channels import ChannelGraph

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from zoo import import_zoo  # noqa: E402 - the script's own directory

MODELS = ("resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "shufflenet_v2_x0_5",
          "squeezenet1_1", "densenet121", "googlenet")


def load_torchvision() -> types.ModuleType | None:
    """torchvision, or None (:func:`zoo.import_zoo`)."""
    return import_zoo("torchvision")[0]


def build(torchvision: types.ModuleType, name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(**kwargs).eval()


def conv_groups(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, tuple[int, str]], set[str]]:
    """``{conv: (out_channels, group name)}`` and the groups frozen because they reach the
    model output."""
    gm = tropfx.compile(model, [], example_inputs=(x,), verify=False)
    graph = ChannelGraph(gm)
    owner = {}
    for group in graph.groups:
        for part in group.parts:
            if part.member.role in ("producer", "depthwise"):
                owner.setdefault(part.member.target, group.name)
    convs = {name: (m.out_channels, owner.get(name, "?")) for name, m in gm.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd)}
    output = {g.name for g in graph.groups if g.frozen and "model output" in g.frozen}
    return convs, output


def measure(torchvision: types.ModuleType, name: str, ratio: float, method: str) -> dict:
    model = build(torchvision, name)
    x = torch.randn(1, 3, 224, 224)
    convs, output = conv_groups(model, x)
    start = time.perf_counter()
    cm = tropfx.compile(model, [tp.tropnnc(ratio=ratio, method=method, progress=False)],
                        example_inputs=(x,), verify=False)
    seconds = time.perf_counter() - start
    row = cm.report[-1]
    layers = row.info.get("layers", [])
    done = {r["layer"] for r in layers if r["K"] < r["n"]}
    total = sum(c for c, _ in convs.values())
    inside = sum(c for c, g in convs.values() if g in done)
    reachable = total - sum(c for c, g in convs.values() if g in output)
    with torch.no_grad():
        ref, out = model(x), cm(x)
    ok = out.shape == ref.shape
    error = float((out - ref).norm() / ref.norm()) if ok else float("nan")
    identity = tropfx.compile(model, [tp.tropnnc(ratio=1.0, method=method)], example_inputs=(x,))
    with torch.no_grad():
        exact = bool(torch.equal(identity(x), model(x)))
    reasons = Counter(s.reason for s in row.skipped)
    return {"model": name, "share": inside / total, "share_hidden": inside / max(reachable, 1),
            "channels": (inside, total, reachable), "error": error,
            "groups": len(done), "outside": sum(not r["paper"] for r in layers if r["K"] < r["n"]),
            "skipped": len(row.skipped), "reason": reasons.most_common(1)[0][0] if reasons else "",
            "seconds": seconds, "runs": ok, "exact": exact,
            "params": (cm.report[0].params, row.params)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--method", default="multi")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args(argv)
    torchvision = load_torchvision()
    if torchvision is None:
        print("torchvision is not installed; nothing to measure (pip install torchvision)")
        return 0
    print(f"tropnnc ratio={args.ratio} method={args.method}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("'all': every conv's output channels; 'hidden': all but those that are the model "
          "output (a classifier conv's), which no structured pass can resize")
    print("| model | method | conv out channels in compressed groups: all | hidden | groups "
          "(outside the paper) | skipped | params | rel. output error | time | ratio=1 exact |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        r = measure(torchvision, name, args.ratio, args.method)
        skipped = f"{r['skipped']}" + (f" ({r['reason'][:70]})" if r["skipped"] else "")
        inside, total, hidden = r["channels"]
        print(f"| {name} | {args.method} | {100 * r['share']:.1f} % ({inside}/{total}) | "
              f"{100 * r['share_hidden']:.1f} % ({inside}/{hidden}) | "
              f"{r['groups']} ({r['outside']}) | {skipped} | "
              f"{r['params'][0] / 1e6:.2f}M -> {r['params'][1] / 1e6:.2f}M | {r['error']:.3g} | "
              f"{r['seconds']:.1f} s | {'yes' if r['exact'] else 'NO'}"
              f"{'' if r['runs'] else ' (output shape changed!)'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
