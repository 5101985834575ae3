"""eexit.timing: the early-exit wall-clock comparison returns consistent figures."""
import math

import torch

from eexit.timing import all_exits, compare_early_exit, full_network, median_ms
from test_runner import toy


def test_compare_early_exit_reports_all_three_and_the_exit_fractions():
    stages, exits, x = toy("mlp", 0)
    res = compare_early_exit(stages, exits, x, [0.0, 0.5, 0.5], reps=3)  # everyone leaves at exit 0
    assert res["exit_fractions"] == [1.0, 0.0, 0.0]
    assert all(res[k] > 0 for k in ("infer_ms", "full_ms", "simulate_ms"))
    res = compare_early_exit(stages, exits, x, [math.inf, math.inf, 0.5], reps=2)  # all at the end
    assert res["exit_fractions"] == [0.0, 0.0, 1.0]


def test_full_network_and_all_exits():
    stages, exits, x = toy("multiscale", 1)
    with torch.no_grad():
        every = all_exits(stages, exits, x)
        assert len(every) == 3
        torch.testing.assert_close(full_network(stages, exits, x), every[-1])


def test_median_ms_calls_the_function():
    calls = []
    assert median_ms(lambda: calls.append(1), reps=5, warmup=2) >= 0 and len(calls) == 7
