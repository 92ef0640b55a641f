"""one compile: python run1.py base|new model threads out.pt"""
import sys, time, json
which, name, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if which == "base":
    sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') and 'editable' not in str(f)]
    sys.path.insert(0, '/tmp/tspeed_base')
import torch
sys.path.insert(0, "/work/tspeed/benchmarks")
from tropnnc_zoo import load_torchvision
import tropfx
from tropfx import passes as tp
tv = load_torchvision()
torch.set_num_threads(threads)
torch.manual_seed(0)
model = getattr(tv.models, name)().eval()
x = torch.randn(1, 3, 224, 224)
t, c = time.perf_counter(), time.process_time()
cm = tropfx.compile(model, [tp.tropnnc(ratio=0.5, progress=False)], example_inputs=(x,), verify=False)
wall, cpu = time.perf_counter() - t, time.process_time() - c
assert tropfx.__file__.startswith("/tmp/tspeed_base" if which == "base" else "/work/tspeed"), tropfx.__file__
sd = {k: v.detach().clone() for k, v in cm.state_dict().items()} if hasattr(cm, "state_dict") else None
if sd is None:
    sd = {k: v.detach().clone() for k, v in cm.graph_module.state_dict().items()}
if out != "-":
    torch.save(sd, out)
print(json.dumps({"which": which, "model": name, "wall": wall, "cpu": cpu, "params": cm.report[-1].params}))
