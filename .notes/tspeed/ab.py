"""interleaved A/B: python ab.py models repeats threads"""
import sys, subprocess, json, statistics, torch
models, reps, threads = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
py = "/work/tspeed/.venv/bin/python"
for m in models:
    res = {"base": [], "new": []}
    for r in range(reps):
        for w in ("base", "new"):
            out = f"/tmp/tspeed_ab/{m}_{w}.pt" if r == 0 else "-"
            p = subprocess.run([py, "/tmp/tspeed_run1.py", w, m, str(threads), out], capture_output=True, text=True,
                               env={"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin", "HOME": "/root"})
            if p.returncode:
                print(p.stderr[-3000:]); sys.exit(1)
            res[w].append(json.loads(p.stdout.strip().splitlines()[-1]))
    a = torch.load(f"/tmp/tspeed_ab/{m}_base.pt"); b = torch.load(f"/tmp/tspeed_ab/{m}_new.pt")
    same = a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    diff = max((float((a[k].double() - b[k].double()).abs().max()) for k in a if k in b and a[k].shape == b[k].shape and a[k].is_floating_point() and a[k].numel()), default=0)
    shapes = all(k in b and a[k].shape == b[k].shape for k in a) and a.keys() == b.keys()
    med = {w: (statistics.median(x["wall"] for x in v), statistics.median(x["cpu"] for x in v)) for w, v in res.items()}
    print(f"{m}: base {med['base'][0]:.1f} ({med['base'][1]:.1f}) new {med['new'][0]:.1f} ({med['new'][1]:.1f}) "
          f"wall x{med['base'][0]/med['new'][0]:.2f} cpu x{med['base'][1]/med['new'][1]:.2f}; "
          f"weights bitwise equal: {same}, same shapes: {shapes}, max |diff| {diff:.3g}; raw {res}", flush=True)
