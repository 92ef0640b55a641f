"""Binary denoising with a BiMoNN, then exact binarization (Aouad & Talbot, BiSE paper §5.1).

The task: images of randomly oriented sticks (width 3, length 12-15, 15 per 50x50 image, angles
``linspace(0, 180, 10)``) with Bernoulli salt noise (each pixel set to 1 with probability 0.1); the
target is the clean image. A morphologist would filter it with a union of openings by short line
segments. The model is the paper's: two BiSEL layers, kernel 5, 3 hidden channels, dual weights and
positive bias (§2.4), trained with the MSE loss by Adam (lr 0.01, halved after 700 iterations
without improvement, stopped after 2100, at most 6000 iterations), no regularization. It is then
binarized with ``tp.binarize_bise(method="activable")`` (the paper's projection onto activable
parameters, Eq. 20) into a network of boolean dilations and erosions.

Besides the paper's protocol (``none``: no regularization), ``--regularizers`` can add
``c * L_acti`` (Eqs. 30, 40: the squared distance to the activable set, with the exact fast
solver, cheap for 10 neurons; ``acti``) or ``c * L_exact`` (Eq. 41; ``exact``) after a delay.

Reported: DICE of the float network (thresholded at 1/2) and of the binarized one on fresh images
(the paper: 97.5 %), how many of the 6 BiSE neurons are activated (the paper: 4), the pass's
agreement, and the learned structuring elements, drawn with ``tropfx.plot.structuring_elements``.

Usage::

    python examples/bimonn_denoising.py                 # the experiment -> examples/results/
    python examples/bimonn_denoising.py --smoke         # seconds; writes into a temp dir
    python examples/bimonn_denoising.py --regularizers none --iterations 3000 --out DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx.nn import BinaryMorphology2d, BiSEL, BiSERegularizer, ThresholdedConv2d
from tropfx.nn.bise import REGULARIZERS, loss_acti

REPO = Path(__file__).resolve().parents[1]
PAPER_DICE = 97.5  # %, binarized network, §5.1
PAPER_ACTIVATED = (4, 6)  # BiSE neurons activated after training
# L_acti with the exact fast projection instead of OSQP: the registry takes new losses by name.
REGULARIZERS.setdefault("acti_fast", functools.partial(loss_acti, solver="fast"))
KINDS = {"none": None, "acti": "acti_fast", "exact": "exact"}


# --- data ------------------------------------------------------------------------------------------

def sticks(n: int, size: int, rng: np.random.Generator, *, count: int = 15, lengths=(12, 15),
           width: int = 3, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy inputs and clean targets (n, 1, size, size) in {0., 1.}.

    Each image holds ``count`` filled rectangles (sticks) of a random length in ``lengths``, the
    given ``width``, centred anywhere in the image, at an angle from ``linspace(0, 180, 10)``; the
    input adds salt noise: every pixel is set to 1 with probability ``noise``.
    """
    angles = np.deg2rad(np.linspace(0, 180, 10))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    clean = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        cy, cx = rng.uniform(0, size, count), rng.uniform(0, size, count)
        length = rng.integers(lengths[0], lengths[1] + 1, count)
        theta = angles[rng.integers(0, len(angles), count)]
        # A pixel belongs to a stick when its centre lies within the rotated rectangle.
        dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
        along = dx * np.cos(theta)[:, None, None] + dy * np.sin(theta)[:, None, None]
        across = -dx * np.sin(theta)[:, None, None] + dy * np.cos(theta)[:, None, None]
        inside = (np.abs(along) <= length[:, None, None] / 2) & (np.abs(across) <= width / 2)
        clean[i] = inside.any(0)
    noisy = clean | (rng.random(clean.shape) < noise)
    as_tensor = lambda a: torch.from_numpy(a[:, None].astype(np.float32))  # noqa: E731
    return as_tensor(noisy), as_tensor(clean)


def dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """``2 |P & T| / (|P| + |T|)`` over the whole set, in %, both read as bits (``> 1/2``)."""
    p, t = prediction.float() > 0.5, target > 0.5
    return 100.0 * 2 * float((p & t).sum()) / max(float(p.sum() + t.sum()), 1.0)


# --- model and training ----------------------------------------------------------------------------

def bimonn(input_mean: float) -> nn.Sequential:
    """Two BiSEL layers, kernel 5, 3 hidden channels; dual weights, positive bias (§5.1)."""
    options = {"weight_reparam": "dual", "bias_reparam": "positive"}
    return nn.Sequential(BiSEL(1, 3, 5, input_mean=input_mean, **options), BiSEL(3, 1, 5, **options))


def train(model: nn.Module, rng: np.random.Generator, kind: str, args: argparse.Namespace) -> dict:
    """Adam with the paper's schedule: lr halved after ``patience`` iterations without a new best
    loss, stopped after ``3 * patience`` (700 / 2100 in the paper). Fresh images every batch.
    With ``kind`` other than ``none``, ``c * L_kind`` is added from ``reg_start * iterations`` on
    (the schedule then watches the data loss only)."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    reg = None
    if KINDS[kind] is not None:
        reg = BiSERegularizer(model, KINDS[kind], weight=args.reg_weight,
                              start=int(args.reg_start * args.iterations))
    best, since_best, since_halved, losses = math.inf, 0, 0, []
    start = time.perf_counter()
    for it in range(args.iterations):
        x, y = sticks(args.batch, args.size, rng)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        (loss if reg is None else loss + reg(it)).backward()
        opt.step()
        value = loss.item()
        losses.append(value)
        if value < best:
            best, since_best, since_halved = value, 0, 0
        else:
            since_best, since_halved = since_best + 1, since_halved + 1
        if since_halved >= args.patience:
            for group in opt.param_groups:
                group["lr"] /= 2
            since_halved = 0
        if since_best >= 3 * args.patience:
            break
        if (it + 1) % max(args.iterations // 10, 1) == 0:
            recent = float(np.mean(losses[-100:]))
            print(f"  {kind}: iteration {it + 1}: loss {recent:.5f} (lr "
                  f"{opt.param_groups[0]['lr']:.2g})", flush=True)
    return {"iterations": len(losses), "final_loss": float(np.mean(losses[-100:])),
            "best_loss": best, "lr_final": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start}


# --- binarization and results ----------------------------------------------------------------------

def binarize(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, method: str) -> dict:
    cm = tropfx.compile(model, passes=[tp.binarize_bise(method, inputs=(x_test,))],
                        example_inputs=(x_test[:8],))
    info = cm.report[-1].info
    with torch.no_grad():
        out = cm(x_test)
    return {"compiled": cm, "method": method, "dice": dice(out, y_test),
            "agreement": info["agreement"], "activated": info["activated_neurons"],
            "exact": info["exact_neurons"], "neurons": info["total_neurons"],
            "rows": info["neurons"], "report": str(cm.report)}


def draw(model: nn.Module, binary: nn.Module, out: Path, x: torch.Tensor, y: torch.Tensor,
         kind: str) -> list[str]:
    """The learned BiSE weights, the binarized SEs, and an input / target / outputs example."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from tropfx import plot
    except ImportError:
        print("matplotlib is not installed (pip install tropfx[plot]): no pictures")
        return []
    with torch.no_grad():
        weights = torch.cat([layer.bise.effective_weight()[:, 0] for layer in model])
    morph = [m for m in binary.modules() if isinstance(m, BinaryMorphology2d)]
    luis = [m for m in binary.modules() if isinstance(m, ThresholdedConv2d)]
    ops = [f"{'not ' if c else ''}{op[:3]}" for m in morph
           for op, c in zip(m.operations, m.complement, strict=True)]
    se = torch.cat([m.se for m in morph]).float()
    lui_ops = ", ".join(f"{'not ' if bool(c) else ''}{'union' if int(t) == 1 else 'inter'}"
                        f"({int(w.sum())})" for m in luis for w, t, c in
                        zip(m.weight.flatten(1), m.threshold, m.complement, strict=True))
    paths = [out / f"bimonn_denoising_{kind}_{what}.png" for what in ("se_float", "se_binary",
                                                                        "example")]
    plot.structuring_elements(weights, path=paths[0], columns=3,
                              title=f"{kind}: learned BiSE weights W(omega) (rows: layer 1, layer 2)")
    plot.structuring_elements(se, path=paths[1], columns=3, binary=True,
                              title=f"{kind}: binarized SEs: {', '.join(ops)}\nLUIs: {lui_ops}")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        panels = [x[0, 0], y[0, 0], model(x[:1])[0, 0] > 0.5, binary(x[:1])[0, 0]]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    for ax, image, title in zip(axes, panels, ["input", "target", "float > 1/2", "binarized"],
                                strict=True):
        ax.imshow(image.float().numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return [p.name for p in paths]


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [
        "# BiMoNN binary denoising (BiSE paper §5.1)",
        "",
        f"Generated by `{c['command']}` ({c['date']}); {c['machine']}, torch {c['torch']}, "
        f"{c['threads']} thread(s).",
        "",
        f"Data: {c['size']}x{c['size']} images, 15 sticks each (length 12-15, width 3, angles "
        "linspace(0, 180, 10)), salt noise p = 0.1; fresh images every batch of "
        f"{c['batch']}; test set {c['test_images']} images (seed {c['seed'] + 1}).",
        f"Model: BiSEL(1, 3, 5) -> BiSEL(3, 1, 5), dual weights, positive bias; MSE, Adam lr "
        f"{c['lr']}, halved after {c['patience']} iterations without a new best loss, stop after "
        f"{3 * c['patience']}, at most {c['iterations']} iterations. Regularizers (ours, not the "
        f"paper's protocol): c * L from iteration {c['reg_start']:.0%} on, c = {c['reg_weight']}.",
        "",
        "| training | network | DICE (%) | activated BiSE neurons (of 6) | agreement with float > 1/2 |",
        "| --- | --- | --- | --- | --- |",
        f"| paper, no regularization | binarized (activable projection) | {PAPER_DICE} | "
        f"{PAPER_ACTIVATED[0]} | - |",
    ]
    for kind, run in result["runs"].items():
        label = f"ours, {'no regularization' if kind == 'none' else 'L_' + kind}"
        lines.append(f"| {label} | float, thresholded at 1/2 | {run['float_dice']:.2f} | - | - |")
        for b in run["binarized"]:
            lines.append(f"| {label} | binarized ({b['method']}) | {b['dice']:.2f} | "
                         f"{b['activated_bise']} | {100 * b['agreement']:.2f} % |")
    lines += ["", "Training runs:", ""]
    for kind, run in result["runs"].items():
        t = run["training"]
        lines.append(f"* {kind}: {t['iterations']} iterations in {t['seconds']:.0f} s, final data "
                     f"loss {t['final_loss']:.4f}, final lr {t['lr_final']:.2g}.")
    for kind, run in result["runs"].items():
        lines += [
            "",
            f"Neurons binarized by the activable projection, training `{kind}` (SE rows top to "
            "bottom, `1` = in S; a LUI's SE lists the channels it reads):",
            "",
            "| layer | neuron | activated | exact | distance | operation | complement | SE |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in run["binarized"][0]["rows"]:
            lines.append(f"| {r['layer']} | {r['neuron']} | {r['activated']} | {r['exact']} | "
                         f"{r['distance']:.3g} | {r['operation']} | {r['complement']} | `{r['se']}` |")
    pictures = [p for run in result["runs"].values() for p in run["pictures"]]
    lines += ["", "Pictures: " + (", ".join(f"`{p}`" for p in pictures) or "none"), "",
              f"Total runtime {c['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6000, help="at most (default 6000)")
    parser.add_argument("--patience", type=int, default=700, help="lr halving patience (700)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--size", type=int, default=50, help="image side (default 50)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--regularizers", nargs="+", choices=list(KINDS), default=["none", "acti"],
                        help="one training per entry (default: none acti)")
    parser.add_argument("--reg-weight", type=float, default=0.01, help="c of c * L (0.01)")
    parser.add_argument("--reg-start", type=float, default=0.25,
                        help="fraction of the iterations before the regularization starts (0.25)")
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default examples/results; a temp dir with --smoke)")
    parser.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                        help="skip training: binarize the models saved in an earlier results JSON")
    parser.add_argument("--smoke", action="store_true", help="seconds: 40 iterations, 8 test images")
    return parser.parse_args(argv)


def run(kind: str, x_test: torch.Tensor, y_test: torch.Tensor, out: Path,
        args: argparse.Namespace, saved: dict | None = None) -> dict:
    """Train one model (regularizer ``kind``) -- or take the one ``saved`` in an earlier results
    JSON -- binarize it both ways, draw it."""
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model = bimonn(input_mean=float(x_test.mean()))
    if saved is not None:
        model.load_state_dict({k: torch.tensor(v) for k, v in saved["state"].items()})
        training = saved["training"]
    else:
        print(f"{kind}: training BiSEL(1, 3, 5) -> BiSEL(3, 1, 5) on {args.size}x{args.size} "
              f"sticks, at most {args.iterations} iterations of {args.batch} images", flush=True)
        training = train(model, rng, kind, args)
    model.eval()
    with torch.no_grad():
        float_dice = dice(model(x_test), y_test)
    results = [binarize(model, x_test, y_test, m) for m in ("activable", "constant")]
    print(results[0]["report"])
    for r in results:
        r["activated_bise"] = sum(row["activated"] for row in r["rows"] if row["layer"].endswith(".bise"))
        print(f"{kind}: DICE float {float_dice:.2f} %, binarized ({r['method']}) {r['dice']:.2f} %",
              flush=True)
    pictures = draw(model, results[0]["compiled"], out, x_test, y_test, kind)
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    return {"training": training, "float_dice": float_dice, "pictures": pictures, "state": state,
            "binarized": [{k: v for k, v in r.items() if k not in ("compiled", "report")}
                          for r in results]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.iterations, args.patience, args.batch, args.size, args.test_images = 40, 20, 8, 32, 8
    out = args.out or (Path(tempfile.mkdtemp(prefix="bimonn_denoising_")) if args.smoke
                       else REPO / "examples" / "results")
    out.mkdir(parents=True, exist_ok=True)
    x_test, y_test = sticks(args.test_images, args.size, np.random.default_rng(args.seed + 1))
    saved = json.loads(args.from_json.read_text())["runs"] if args.from_json else {}
    runs = {kind: run(kind, x_test, y_test, out, args, saved.get(kind)) for kind in args.regularizers}
    config = {
        "command": "python examples/bimonn_denoising.py " + " ".join(sys.argv[1:] if argv is None
                                                                     else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
        "iterations": args.iterations, "patience": args.patience, "batch": args.batch,
        "size": args.size, "lr": args.lr, "seed": args.seed, "test_images": args.test_images,
        "regularizers": args.regularizers, "reg_weight": args.reg_weight,
        "reg_start": args.reg_start,
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPU cores",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - start,
    }
    result = {"config": config, "runs": runs,
              "paper": {"dice_binarized": PAPER_DICE, "activated": list(PAPER_ACTIVATED)}}
    (out / "bimonn_denoising.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "bimonn_denoising.md").write_text(text)
    print("\n" + text)
    print(f"wrote {out / 'bimonn_denoising.json'} and .md")
    return 0


if __name__ == "__main__":
    main()
