"""`tropfx demo` trains a fixed number of epochs (deterministic for a seed, under a time cap), and
its report labels the lossy stage."""

import torch

from tropfx.cli import main
from tropfx.demo import run_demo


def test_the_demo_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    a = run_demo(epochs=2, max_seconds=None, seed=1)
    after = torch.rand(2)
    b = run_demo(epochs=2, max_seconds=None, seed=1)
    assert a.epochs == b.epochs == 2 and not a.capped
    assert a.accuracy == b.accuracy
    assert [r.metrics for r in a.compiled.report.rows] == [r.metrics for r in b.compiled.report.rows]
    torch.manual_seed(123)
    assert torch.equal(torch.rand(2), after)


def test_the_time_cap_stops_training_and_says_so():
    result = run_demo(epochs=10_000, max_seconds=0.2)
    assert result.capped and 1 <= result.epochs < 10_000


def test_the_lossy_stage_is_labelled(capsys):
    assert main(["demo", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "for 1 epochs (seed 0)" in out and "trained 1 epochs, test accuracy" in out
    assert "lossy: prune_l1 (declared not exact: the error is recorded, not held to a tolerance)" in out
