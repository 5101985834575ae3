"""eexit.timing: the early-exit wall-clock comparison returns consistent figures."""
import math

from eexit import reference
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
