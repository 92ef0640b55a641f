"""One-off experiment (issue 19 item 5, fairness): how TropNNC treats BatchNorm.

Three variants of ``tp.tropnnc(ratio=r, method="multi")``:

* ``folded``: as shipped -- a producer's BatchNorm is folded into it (prefusion clustering);
  the depthwise conv's BatchNorm on a group's path is merged as raw parameters (mean);
* ``BN kept``: no BatchNorm folded; every one merged as raw parameters (mean), see below;
* ``fuse first``: ``[tp.fuse_batchnorm(), tp.tropnnc(...)]`` -- every BatchNorm, the depthwise
  conv's included, folded before TropNNC sees the model (so it clusters fused weights).

``batchnorm="keep"`` is the option added to the pass on this branch (it gives the same numbers
as the monkeypatch of ChannelGraph this experiment first used: every producer's ``Member.fold``
cleared, so each BatchNorm is merged like the ones the pass cannot fold). Compared on the cached
trained models of benchmarks/tropnnc_vs_torchpruning.py.

    OMP_NUM_THREADS=1 .venv/bin/python .notes/mnist/bn_experiment.py                # no fine-tuning
    OMP_NUM_THREADS=1 .venv/bin/python .notes/mnist/bn_experiment.py --ratios 0.5 0.25 \
        --variants "BN kept (merged)" --finetune "BN kept (merged)"
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tropnnc_vs_torchpruning as B  # noqa: E402

import tropfx  # noqa: E402
from tropfx import passes as tp  # noqa: E402

VARIANTS = ("folded", "BN kept (merged)", "fuse_batchnorm first")


def run(model, example, r, variant):
    if variant == VARIANTS[2]:
        cm = tropfx.compile(model, [tp.fuse_batchnorm(), tp.tropnnc(ratio=r)],
                            example_inputs=(example,))
        return cm, cm.report.rows[-1].skipped
    return B.tropnnc(model, example, ratio=r, method="multi",
                     batchnorm="keep" if variant == VARIANTS[1] else "prefusion")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.75, 0.5, 0.25])
    ap.add_argument("--finetune", nargs="*", default=[], choices=VARIANTS,
                    help="variants to fine-tune for one epoch (as the benchmark does)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bargs = B.argparse.Namespace(epochs=3, lr=3e-3, retrain=False, smoke=False, data_dir=None,
                                 train_size=60000, test_size=10000, width=1)
    data = B.load_data(bargs)
    x, y = data["x_test"], data["y_test"]
    res = {}
    for seed in range(args.seeds):
        model, _ = B.trained(seed, data, bargs)
        for r in args.ratios:
            for variant in args.variants:
                m, skipped = run(model, x[:1], r, variant)
                a0 = B.accuracy(m, x, y)
                a1 = None
                if variant in args.finetune:
                    B.train(m, data["x_train"], data["y_train"], seed + 1000, 1, 1e-3, "cosine")
                    a1 = B.accuracy(m, x, y)
                res.setdefault((r, variant), []).append((B.n_params(m), a0, a1))
                print(seed, r, variant, B.n_params(m), a0, a1, len(skipped), flush=True)
    print("| kept r | TropNNC-multi | params | acc, no fine-tuning (%) | acc, 1 epoch fine-tuning (%) |")
    print("| --- | --- | --- | --- | --- |")
    for (r, variant), rows in res.items():
        ft = [a1 for _, _, a1 in rows if a1 is not None]
        print(f"| {r} | {variant} | {rows[0][0]} | "
              f"{B.fmt([a0 for _, a0, _ in rows])} | {B.fmt(ft)} |")


if __name__ == "__main__":
    main()
