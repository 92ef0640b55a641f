"""One compile for ab.py: python ab_run1.py base|new MODEL THREADS OUT.pt|-; prints one JSON line."""

import json
import sys
import time

which, name, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if which == "base":  # the code before the branch: drop the editable install's finder
    sys.meta_path = [f for f in sys.meta_path if "editable" not in str(f)]
    sys.path.insert(0, "/tmp/tspeed_base")

import torch  # noqa: E402

sys.path.insert(0, "/work/tspeed/benchmarks")
from tropnnc_zoo import load_torchvision  # noqa: E402

import tropfx  # noqa: E402
from tropfx import passes as tp  # noqa: E402

tv = load_torchvision()
torch.set_num_threads(threads)
torch.manual_seed(0)
model = getattr(tv.models, name)().eval()
x = torch.randn(1, 3, 224, 224)
t, c = time.perf_counter(), time.process_time()
cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, progress=False)], example_inputs=(x,), verify=False)
wall, cpu = time.perf_counter() - t, time.process_time() - c
assert tropfx.__file__.startswith("/tmp/tspeed_base" if which == "base" else "/work/tspeed")
if out != "-":
    torch.save({k: v.detach().clone() for k, v in cm.state_dict().items()}, out)
print(json.dumps({"which": which, "model": name, "wall": wall, "cpu": cpu,
                  "params": cm.report[-1].params}))
