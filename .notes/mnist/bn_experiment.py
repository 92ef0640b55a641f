"""One-off experiment (issue 19 item 5, fairness): how TropNNC treats BatchNorm.

Three variants of ``tp.tropnnc(ratio=r, method="multi")``:

* ``folded``: as shipped -- a producer's BatchNorm is folded into it (prefusion clustering);
  the depthwise conv's BatchNorm on a group's path is merged as raw parameters (mean);
* ``BN kept``: no BatchNorm folded; every one merged as raw parameters (mean), see below;
* ``fuse first``: ``[tp.fuse_batchnorm(), tp.tropnnc(...)]`` -- every BatchNorm, the depthwise
  conv's included, folded before TropNNC sees the model (so it clusters fused weights).

tp.tropnnc has no such option: it always folds a producer's BatchNorm into it (batchnorm="prefusion"
or "fuse", TropNNC §6). The pass already merges the parameters of BatchNorms that it cannot fold
(mean of weight, bias, running mean and variance per cluster, as for the producers' rows). This
script makes every BatchNorm such a one by clearing ``Member.fold`` on the groups the pass sees
(a monkeypatch of ``ChannelGraph`` in the pass module -- NOT a supported option), and compares it
with the usual folded TropNNC on the cached trained models of benchmarks/tropnnc_vs_torchpruning.py.

    OMP_NUM_THREADS=1 .venv/bin/python .notes/mnist/bn_experiment.py [--seeds 5] [--finetune]
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

P = sys.modules["tropfx.passes.tropnnc"]
_Graph = P.ChannelGraph


class KeptBN:
    """ChannelGraph whose producers fold no BatchNorm: every BN is a 'batchnorm' member whose
    rows are merged (mean) like the producers'."""

    def __init__(self, gm):
        self.groups = _Graph(gm).groups
        for g in self.groups:
            for p in g.parts:
                p.member.fold = None


VARIANTS = ("folded", "BN kept (merged)", "fuse_batchnorm first")


def run(model, example, r, variant):
    if variant == VARIANTS[2]:
        cm = tropfx.compile(model, [tp.fuse_batchnorm(), tp.tropnnc(ratio=r)],
                            example_inputs=(example,))
        return cm, cm.report.rows[-1].skipped
    P.ChannelGraph = KeptBN if variant == VARIANTS[1] else _Graph
    try:
        return B.tropnnc(model, example, ratio=r, method="multi")
    finally:
        P.ChannelGraph = _Graph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.75, 0.5, 0.25])
    ap.add_argument("--finetune", action="store_true")
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
            for variant in VARIANTS:
                m, skipped = run(model, x[:1], r, variant)
                a0 = B.accuracy(m, x, y)
                a1 = None
                if args.finetune:
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
