"""The fast paths of the TropNNC K-means and merge (issue 19, item 4) against the plain forms they
replace: the same values, bit for bit where the arithmetic is the same.

Speed itself is measured in ``benchmarks/tropnnc_speed.py``, never here.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tropfx
from tropfx import passes as tp
from tropfx import tropnnc as T

DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def labelled_rows(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 9))
    k = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, d, generator=gen).to(draw(DTYPES))
    labels = torch.randint(-1, k, (n,), generator=gen)
    if draw(st.booleans()):
        values = values[:, 0]  # one value per row
    return values, labels, k


@settings(max_examples=60)
@given(case=labelled_rows())
def test_segment_sum_is_index_add_bit_for_bit(case):
    values, labels, k = case
    keep = labels >= 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # index_add_'s sequential path: rows added in index order
    try:
        expected = values.new_zeros((k, *values.shape[1:])).index_add_(0, labels[keep], values[keep])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(T._segment_sum(values, labels, k), expected)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**16), dtype=DTYPES, bad=st.sampled_from([None, "nan", "inf", "-inf"]))
def test_all_finite_is_isfinite_all(seed, dtype, bad):
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(seed)).to(dtype)
    if bad is not None:
        x[seed % 7, seed % 5] = float(bad)
    assert T.all_finite(x) == bool(torch.isfinite(x).all())


def test_all_finite_when_the_sum_overflows():
    big = torch.tensor([1e308, 1e308, -1e308], dtype=torch.float64)
    assert T.all_finite(big)  # the sum overflows to inf: settled by the mask
    assert not T.all_finite(torch.tensor([1e308, math.inf], dtype=torch.float64))


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 30), k=st.integers(1, 12), d=st.integers(1, 40))
def test_sampled_dots_are_the_candidates_dot_products(seed, n, k, d):
    gen = torch.Generator().manual_seed(seed)
    x, centers = torch.randn(n, d, generator=gen), torch.randn(k, d, generator=gen)
    c = min(3, k)
    cand = torch.stack([torch.randperm(k, generator=gen)[:c] for _ in range(n)])
    expected = torch.einsum("nd,ncd->nc", x.double(), centers[cand].double())
    torch.testing.assert_close(T._sampled_dots(x, centers, cand).double(), expected,
                               rtol=1e-5, atol=1e-5 * d)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 60), k=st.integers(1, 20),
       duplicates=st.booleans())
def test_seeding_table_chooses_the_same_centres(seed, n, k, duplicates):
    # small integers: every distance is exact in float32, so both ways compute the same numbers
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-4, 5, (n, 6), generator=gen).float()
    if duplicates:
        x = x[torch.randint(max(1, n // 4), (n,), generator=gen)]
    k = min(k, n)
    with_table = T._kmeans_plusplus(x, k, seed)
    rows, T._SEEDING_TABLE_ROWS = T._SEEDING_TABLE_ROWS, 0  # the step-by-step products
    try:
        without = T._kmeans_plusplus(x, k, seed)
    finally:
        T._SEEDING_TABLE_ROWS = rows
    assert torch.equal(with_table, without)
    assert len(set(with_table.tolist())) == k


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_mean_variance_is_the_mean_column_variance(offset):
    x = torch.randn(300, 17, generator=torch.Generator().manual_seed(0)) + offset
    xx = (x * x).sum(1)
    assert T._mean_variance(x, xx) == pytest.approx(float(x.double().var(0).mean()), rel=1e-4)
    assert T._mean_variance(x[:1], xx[:1]) == 0.0


def test_small_groups_run_on_one_thread_and_threads_come_back(monkeypatch):
    P = importlib.import_module("tropfx.passes.tropnnc")  # the module, not the factory
    seen = []
    compress = P.TropNNC._compress

    def spy(self, gm, group, ratio):
        seen.append(torch.get_num_threads())
        return compress(self, gm, group, ratio)

    monkeypatch.setattr(P.TropNNC, "_compress", spy)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tropfx.compile(model, [tp.tropnnc(ratio=0.5)], example_inputs=(torch.randn(3, 8),))
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_shared_projections_are_the_fresh_draws():
    fresh = {(s, d): T._projection(s, d) for s in (0, 1) for d in (300, 40, 700, 500)}
    with T.shared_projections():
        for (s, d), R in fresh.items():  # growing and shrinking, two seeds interleaved
            assert torch.equal(T._projection(s, d), R)
    assert T._PROJECTIONS.get() is None  # the draws are dropped with the block
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    with T.shared_projections():
        T._projection(0, 1000)
        shared = T.kmeans_labels(x, 20, 0)
    assert torch.equal(shared, T.kmeans_labels(x, 20, 0))
