import sys; sys.path.insert(0, 'benchmarks')
import torch, tropnnc_vs_torchpruning as b
from tropfx.data import load_mnist_splits, normalize_mnist
torch.set_num_threads(1)
xtr, ytr, xte, yte, _ = load_mnist_splits(b.SHARED_MNIST)
sub = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(1234))[:30000]
xtr, ytr, xte = normalize_mnist(xtr[sub]), ytr[sub], normalize_mnist(xte)
torch.manual_seed(0); m = b.ResCNN(); b.train(m, xtr, ytr, 0)
print("base", b.accuracy(m, xte, yte), flush=True)
for r in (0.9, 0.75, 0.625, 0.5):
    row = [r]
    for meth in ("multi", "l1", "neural_path_kmeans"):
        c = b.tropnnc(m, xte[:1], r, meth); row += [meth, b.n_params(c), round(b.accuracy(c, xte, yte), 4)]
    p = b.torchpruning(m, xte[:1], 1 - r); row += ["tp", b.n_params(p), round(b.accuracy(p, xte, yte), 4)]
    print(*row, flush=True)
