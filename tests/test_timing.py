"""eexit.timing: the early-exit wall-clock comparison returns consistent figures; the spread of
repetitions and the noisy-machine warning."""
import math

import pytest

from eexit import reference, timing
from eexit.timing import compare_early_exit, interleaved_medians, median_ms

from infer_checks import toy


def test_compare_early_exit_reports_all_three_and_the_exit_fractions():
    stages, exits, x = toy("mlp", 0)
    res = compare_early_exit(stages, exits, x, [0.0, 0.5, 0.5], reps=3)  # everyone leaves at exit 0
    assert res["exit_fractions"] == [1.0, 0.0, 0.0]
    assert all(res[k] > 0 for k in ("infer_ms", "full_ms", "simulate_ms"))
    res = compare_early_exit(stages, exits, x, [math.inf, math.inf, 0.5], gate=reference, reps=2)  # all at the end
    assert res["exit_fractions"] == [0.0, 0.0, 1.0]


def test_median_ms_calls_the_function():
    calls = []
    assert median_ms(lambda: calls.append(1), reps=5, warmup=2) >= 0 and len(calls) == 7


def test_interleaved_medians_runs_every_round_through_progress():
    calls, wrapped = {"a": 0, "b": 0}, []

    def progress(rounds):
        wrapped.append(len(rounds))
        return rounds

    runs = {name: (lambda name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls}
    medians = interleaved_medians(runs, 4, progress=progress)
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
    assert wrapped == [4] and calls == {"a": 5, "b": 5}, "4 rounds, plus one untimed warm-up each"


def test_spread_and_the_noisy_warning():
    s = timing.spread([3.0, 1.0, 2.0, 4.0])
    assert s == timing.Spread(1.0, 3.0, 4.0, 4) and s.ratio == 4.0, "median: the upper one of an even count"
    assert timing.spread([2.0]).ratio == 1.0 and timing.Spread(0.0, 0.0, 1.0, 2).ratio == math.inf
    with pytest.raises(ValueError):
        timing.spread([])
    steady = {"a": timing.spread([1.0, 1.2, 1.5]), "b": timing.spread([2.0, 2.1])}
    assert timing.noisy_warning(steady) is None and timing.noisy_warning({}) is None, "1.5x is not over 1.5x"
    warning = timing.noisy_warning(dict(steady, c=timing.spread([1.0, 5.0, 1.1])))
    assert warning.startswith("noisy machine: 1 of 3 timings vary by more than 1.5x")
    assert "worst: c, 1 to 5 ms" in warning
    assert timing.noisy_warning(steady, ratio=1.2).startswith("noisy machine: 1 of 2"), "the ratio is a parameter"


def test_interleaved_spreads_with_a_fake_clock(monkeypatch):
    durations = iter([0.001, 0.004, 0.002, 0.003, 0.003, 0.002])  # rounds of (a, b)
    readings = []

    def clock():
        readings.append(None)
        return 0.0 if len(readings) % 2 else next(durations)

    monkeypatch.setattr(timing, "clock", clock)
    spreads = timing.interleaved_spreads({"a": lambda: None, "b": lambda: None}, 3)
    assert spreads["a"] == pytest.approx(timing.Spread(1.0, 2.0, 3.0, 3))
    assert spreads["b"] == pytest.approx(timing.Spread(2.0, 3.0, 4.0, 3))
    durations = iter([0.001, 0.004, 0.002, 0.003, 0.003, 0.002])
    assert timing.interleaved_medians({"a": lambda: None, "b": lambda: None}, 3) == pytest.approx({"a": 2.0, "b": 3.0})
