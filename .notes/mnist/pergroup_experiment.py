"""One-off diagnostic (issue 19 item 5): which group makes the compressed ResCNN collapse?

Each of the 8 channel groups of benchmarks/tropnnc_vs_torchpruning.py's ResCNN is compressed
ALONE to half its channels (every other group kept), data-free, no fine-tuning, on the cached
trained models: TropNNC-multi (``ratio={group: 0.5}``) and Torch-Pruning's MagnitudePruner +
GroupMagnitudeImportance(p=1) (``pruning_ratio_dict={conv: 0.5}``), on the model with BatchNorm
and on the BN-folded copy.

    OMP_NUM_THREADS=1 .venv/bin/python .notes/mnist/pergroup_experiment.py [--seeds 5]
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tropnnc_vs_torchpruning as B  # noqa: E402

# TropNNC names a group after its first producer; Torch-Pruning is given that conv
GROUPS = {"stem": "stem + b1b + b2b (residual adds)", "b1a": "b1a", "b2a": "b2a",
          "down": "down + d2 (add; depthwise dw on the path)", "d1": "d1", "pw": "pw",
          "cat_a": "cat_a (concat)", "cat_b": "cat_b (concat)"}


def torchpruning(model, example, conv, ratio):
    pruned = copy.deepcopy(model)
    pruner = B.torch_pruning.pruner.MagnitudePruner(
        pruned, example, importance=B.torch_pruning.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.0, pruning_ratio_dict={getattr(pruned, conv)[0]: ratio},
        ignored_layers=[pruned.fc])
    pruner.step()
    return pruned


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bargs = B.argparse.Namespace(epochs=3, lr=3e-3, retrain=False, smoke=False, data_dir=None,
                                 train_size=60000, test_size=10000, width=1)
    data = B.load_data(bargs)
    x, y = data["x_test"], data["y_test"]
    res = {}
    for seed in range(args.seeds):
        model, _ = B.trained(seed, data, bargs)
        folded = B.fold_batchnorm(model)
        for g in GROUPS:
            m, _ = B.tropnnc(model, x[:1], ratio={f"{g}.0": args.ratio}, method="multi")
            got = {"tropnnc-multi": m, "torch-pruning": torchpruning(model, x[:1], g, args.ratio),
                   "torch-pruning-folded": torchpruning(folded, x[:1], g, args.ratio)}
            for name, m in got.items():
                res.setdefault((g, name), []).append(B.accuracy(m, x, y))
            print(seed, g, {k: round(v[-1], 4) for (gg, k), v in res.items() if gg == g},
                  flush=True)
    names = ["tropnnc-multi", "torch-pruning", "torch-pruning-folded"]
    print(f"| group compressed alone to {args.ratio} | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---" for _ in names) + " |")
    for g, desc in GROUPS.items():
        print(f"| {desc} | " + " | ".join(B.fmt(res[(g, n)]) for n in names) + " |")


if __name__ == "__main__":
    main()
