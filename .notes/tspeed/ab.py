"""Interleaved before/after of tropfx.compile(model, [tp.tropnnc(ratio=0.5)]) (issue 19, item 4).

    rm -rf /tmp/tspeed_base && mkdir -p /tmp/tspeed_base /tmp/tspeed_ab
    git archive 1880676 | tar -x -C /tmp/tspeed_base     # the code before this branch
    ln -s ../passes /tmp/tspeed_base/tropfx/passes; ln -s ../kernels /tmp/tspeed_base/tropfx/kernels
    python .notes/tspeed/ab.py resnet50,alexnet,vgg16,vgg11_bn 1 2   # models, repeats, threads

Each compile runs in its own process (ab_run1.py), base and new alternating; the compiled state
dicts of the first repeat are compared with torch.equal.
"""

import json
import pathlib
import statistics
import subprocess
import sys

import torch

models, reps, threads = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
runner = str(pathlib.Path(__file__).with_name("ab_run1.py"))
env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin", "HOME": "/root"}
for m in models:
    res = {"base": [], "new": []}
    for r in range(reps):
        for w in ("base", "new"):
            out = f"/tmp/tspeed_ab/{m}_{w}.pt" if r == 0 else "-"
            p = subprocess.run([sys.executable, runner, w, m, str(threads), out],
                               capture_output=True, text=True, env=env)
            if p.returncode:
                sys.exit(p.stderr[-3000:])
            res[w].append(json.loads(p.stdout.strip().splitlines()[-1]))
    a, b = torch.load(f"/tmp/tspeed_ab/{m}_base.pt"), torch.load(f"/tmp/tspeed_ab/{m}_new.pt")
    same = a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k])
                                        for k in a)
    med = {w: (statistics.median(x["wall"] for x in v), statistics.median(x["cpu"] for x in v))
           for w, v in res.items()}
    print(f"{m}: base {med['base'][0]:.1f} ({med['base'][1]:.1f}) new {med['new'][0]:.1f} "
          f"({med['new'][1]:.1f}) wall x{med['base'][0] / med['new'][0]:.2f} "
          f"cpu x{med['base'][1] / med['new'][1]:.2f}; weights bitwise equal: {same}", flush=True)
