"""The CPU operators' cache of output buffers (kernels/csrc/output_cache.h): a freed output of
>= 16 KiB is handed to the next request that fits it, stale contents never show through, the
limit and ``clear`` hold, and a cached tensor is an ordinary one (resizable, thread-safe)."""

import os
import subprocess
import sys
import threading

import pytest
import torch

from tropfx import kernels as K
from tropfx.errors import InputError
from tropfx.kernels import reference as R

MIB = 1 << 20
DEFAULT_LIMIT = 512 * MIB


@pytest.fixture
def ops():
    if not K.load():
        pytest.skip(f"C++ kernels unavailable: {K.build_info()['error']}")
    K.output_cache(DEFAULT_LIMIT, clear=True)
    yield torch.ops.tropfx
    K.output_cache(DEFAULT_LIMIT, clear=True)


def sparse_args(rows: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=gen)
    index = torch.rand(n, n, generator=gen).topk(2, dim=1).indices.sort(dim=1).values
    value = torch.randn(n, 2, generator=gen)
    return x, index, value


def test_freed_output_is_reused_and_fully_rewritten(ops):
    x, index, value = sparse_args(512, 1024)  # y: 2 MiB, argmax: 2 MiB
    y1, a1 = ops.sparse_maxplus(x, index, value, None, -1, False, True)
    ptr = y1.data_ptr()
    before = K.output_cache()
    y1.fill_(float("nan"))  # stale contents the next output must overwrite
    a1.fill_(7)
    del y1, a1
    assert K.output_cache()["cached_blocks"] == before["cached_blocks"] + 2
    x2, _, _ = sparse_args(512, 1024, seed=1)
    y2, a2 = ops.sparse_maxplus(x2, index, value, None, -1, False, True)
    after = K.output_cache()
    assert after["hits"] == before["hits"] + 2 and after["misses"] == before["misses"]
    assert ptr in (y2.data_ptr(), a2.data_ptr())
    ry, ra = R.sparse_maxplus_reference(x2, index, value, None, -1, False, True)
    assert torch.equal(y2, ry) and torch.equal(a2, ra)


def test_zero_filled_gradients_ignore_stale_blocks(ops):
    """The backward's zero-filled grad_x comes from the cache: it must start at zero."""
    x, index, value = sparse_args(512, 1024)
    _, arg = ops.sparse_maxplus(x, index, value, None, -1, False, True)
    junk = ops.sparse_maxplus(x, index, value, None, -1, False, False)[0].fill_(1e30)
    del junk  # a 2 MiB block full of 1e30, now idle in the cache
    grad = torch.randint(-3, 4, (512, 1024)).float()
    gx, gv, _ = ops.sparse_maxplus_backward(grad, arg, index, 1024, -1, False, False)
    rx, rv, _ = R.sparse_maxplus_backward_reference(grad, arg, index, 1024, -1, False, False)
    assert torch.equal(gx, rx) and torch.equal(gv, rv)
    assert K.output_cache()["hits"] >= 1


def test_small_outputs_bypass_the_cache(ops):
    x, index, value = sparse_args(8, 256)  # 8 KiB outputs
    before = K.output_cache()
    ops.sparse_maxplus(x, index, value, None, -1, False, True)  # freed at once
    after = K.output_cache()
    assert after["cached_blocks"] == 0
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_best_fit_serves_at_most_an_eighth_larger(ops):
    x, index, value = sparse_args(1024, 1024)  # 4 MiB
    ops.sparse_maxplus(x, index, value, None, -1, False, False)  # freed at once
    # 912 rows (3.56 MiB): the 4 MiB block is at most 1/8 larger, it serves; 512 rows: a new block
    hits = K.output_cache()["hits"]
    y = ops.sparse_maxplus(x[:912], index, value, None, -1, False, False)[0]
    assert K.output_cache()["hits"] == hits + 1
    assert torch.equal(y, R.sparse_maxplus_reference(x[:912], index, value, None, -1, False, False)[0])
    del y  # the 4 MiB block is idle again
    z = ops.sparse_maxplus(x[:512], index, value, None, -1, False, False)[0]
    assert K.output_cache()["hits"] == hits + 1 and K.output_cache()["cached_blocks"] == 1
    assert torch.equal(z, R.sparse_maxplus_reference(x[:512], index, value, None, -1, False, False)[0])


def test_limit_eviction_and_clear(ops):
    x, index, value = sparse_args(512, 1024)  # 2 MiB outputs
    K.output_cache(3 * MIB)
    outs = [ops.sparse_maxplus(x, index, value, None, -1, False, False)[0] for _ in range(3)]
    del outs  # three 2 MiB blocks freed; only one fits under 3 MiB
    stats = K.output_cache()
    assert stats["cached_blocks"] == 1 and stats["cached_bytes"] == 2 * MIB
    assert K.output_cache(clear=True)["cached_bytes"] == 0
    K.output_cache(0)  # off: nothing is kept
    ops.sparse_maxplus(x, index, value, None, -1, False, False)  # freed at once
    assert K.output_cache()["cached_blocks"] == 0
    with pytest.raises(InputError, match="limit_bytes must be >= 0"):
        K.output_cache(-1)


def test_cached_tensor_is_ordinary(ops):
    """Resizable (the storage keeps the cache as its allocator), saveable, shareable, writable."""
    import io

    x, index, value = sparse_args(512, 1024)
    y = ops.sparse_maxplus(x, index, value, None, -1, False, False)[0]
    expected = y.clone()
    buffer = io.BytesIO()
    torch.save(y, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), expected)
    shared = ops.sparse_maxplus(x, index, value, None, -1, False, False)[0].share_memory_()
    assert shared.is_shared() and torch.equal(shared, expected)
    y.resize_(1024, 1024)
    assert torch.equal(y[:512], expected)
    y[512:] = 1.0
    assert y.untyped_storage().resizable() and float(y[1000, 3]) == 1.0
    del y
    assert K.output_cache()["cached_blocks"] >= 1


def test_threads_share_the_cache(ops):
    x, index, value = sparse_args(512, 1024)
    expected = R.sparse_maxplus_reference(x, index, value, None, -1, False, False)[0]
    failures = []

    def work():
        for _ in range(20):
            y = ops.sparse_maxplus(x, index, value, None, -1, False, False)[0]
            if not torch.equal(y, expected):
                failures.append(1)
            del y

    before = K.output_cache()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    stats = K.output_cache()
    calls = stats["hits"] + stats["misses"] - before["hits"] - before["misses"]
    assert calls == 80 and stats["cached_blocks"] <= 4


def test_environment_sets_the_limit():
    code = ("import torch; from tropfx import kernels as K; K.load(); "
            "print(K.output_cache()['limit'])")
    env = {**os.environ, "TROPFX_OUTPUT_CACHE_MIB": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    if not K.load():
        pytest.skip("C++ kernels unavailable")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == 3 * MIB


def test_mid_size_bit_outputs_reuse_stale_blocks_exactly(ops):
    """bool_conv2d's packed output (here 32 KiB) comes from the cache and is written in full."""
    gen = torch.Generator().manual_seed(3)
    xb = torch.rand(2, 64, 32, 32, generator=gen) > 0.5
    weight = torch.randint(0, 2, (64, 64, 3, 3), generator=gen)
    threshold = weight.sum((1, 2, 3)) // 2
    packed = ops.pack_bits(xb)
    pos, neg = K.pack_conv_weight(weight)
    args = (packed, pos, neg, threshold, (1, 1), (1, 1), (1, 1))
    first = ops.bool_conv2d(*args)
    assert first.nbytes >= 16 << 10
    first.fill_(0x5555)  # stale bits in the block the next call gets
    del first
    hits = K.output_cache()["hits"]
    again = ops.bool_conv2d(*args)
    assert K.output_cache()["hits"] == hits + 1
    assert torch.equal(again, R.bool_conv2d_reference(*args))


def _child_equal(_):
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's thread pool does not survive a fork
    x, index, value = sparse_args(512, 1024)
    y = torch.ops.tropfx.sparse_maxplus(x, index, value, None, -1, False, False)[0]
    return torch.equal(y, R.sparse_maxplus_reference(x, index, value, None, -1, False, False)[0])


def test_forked_children_use_the_cache_while_the_parent_allocates(ops):
    """Forked children (DataLoader workers) use the cache they inherit, forked while another thread
    allocates and frees outputs. (A fork at the moment that thread holds the cache's lock, which
    the pthread_atfork handlers are for, is too rare to provoke here.)"""
    import multiprocessing

    x, index, value = sparse_args(512, 1024)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            ops.sparse_maxplus(x, index, value, None, -1, False, False)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            equal = pool.map_async(_child_equal, range(8)).get(timeout=120)
    finally:
        stop.set()
        worker.join()
    assert equal == [True] * 8
