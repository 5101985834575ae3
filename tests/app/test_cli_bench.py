"""eexit bench: --exit-fractions calibrated on the timed batch, min / median / max of every timing with
the thread count, and the noisy-machine warning (made deterministic by a fake clock)."""
import itertools
import json

import pytest
import torch
from cli_support import run_main, split_row

from eexit import timing

pytestmark = pytest.mark.usefixtures("one_thread")


def test_exit_fractions_are_met_on_the_benchmark_batch(tmp_path, capsys):
    report = tmp_path / "bench.json"
    fractions = [0.4, 0.3, 0.2, 0.1]
    res = run_main(capsys, "bench", "--model", "msdnet-digits", "--batch-size", 40, "--reps", 2, "--backends",
                   "fused", "--exit-fractions", *fractions, "--json", report)
    assert res.code == 0, res
    figures = json.loads(report.read_text())
    point = figures["points"][0]
    assert point["name"] == "exit fractions 0.4 0.3 0.2 0.1" and point["requested_exit_fractions"] == fractions
    assert point["exit_fractions"] == pytest.approx(fractions, abs=1.5 / 40), "the batch leaves as asked"
    assert figures["threads"] == torch.get_num_threads() == 1
    assert ", 1 torch thread, " in res.out.splitlines()[0]
    header = next(line for line in res.out.splitlines() if line.strip().startswith("run"))
    assert split_row(header)[2:5] == ["min ms", "median ms", "max ms"]
    row = next(split_row(line) for line in res.out.splitlines() if "infer @ exit fractions" in line)
    lo, mid, hi = map(float, row[2:5])
    assert 0 < lo <= mid <= hi
    assert row[-1].split() == [str(round(100 * f)) for f in point["exit_fractions"]]
    spread = figures["times"]["fused"]["spread"]
    assert set(spread) == {"full", "simulate", "infer"} and spread["infer"][0]["reps"] == 2


def test_exit_fractions_on_a_torchvision_model(capsys):
    pytest.importorskip("torchvision")
    res = run_main(capsys, "bench", "--model", "mobilenet-v3-small-exits", "--batch-size", 8, "--reps", 1,
                   "--backends", "fused", "--exit-fractions", 0.5, 0.25, 0.125, 0.125)
    assert res.code == 0, res
    assert "  exit fractions 0.5 0.25 0.125 0.125: " in res.out


class FakeClock:
    """perf_counter whose timed calls take ``durations`` seconds in turn."""

    def __init__(self, durations):
        self.t, self.calls, self.durations = 0.0, 0, itertools.cycle(durations)

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the second reading of a timed call
            self.t += next(self.durations)
        return self.t


def bench(capsys, *extra):
    res = run_main(capsys, "bench", "--model", "b-lenet", "--batch-size", 8, "--reps", 3, "--backends", "fused",
                   "--thresholds", 0.5, 0, *extra)
    assert res.code == 0, res
    rows = [split_row(line) for line in res.out.splitlines() if line.strip().endswith("fused") or " fused " in line]
    return res, rows


def test_noisy_machine_warning(capsys, monkeypatch):
    monkeypatch.setattr(timing, "clock", FakeClock([0.002]))
    res, rows = bench(capsys)
    assert "noisy machine" not in res.err and "noisy machine" not in res.out
    assert len(rows) == 3 and all(r[2:5] == ["2.00", "2.00", "2.00"] for r in rows), rows

    monkeypatch.setattr(timing, "clock", FakeClock([0.001, 0.003]))  # every run: 1 ms, then 3 ms, ...
    res, rows = bench(capsys)
    assert all(r[2] == "1.00" and r[4] == "3.00" for r in rows), rows
    warning = [line for line in res.err.splitlines() if "noisy machine" in line]
    assert len(warning) == 1 and warning[0].startswith("eexit bench: warning: noisy machine: 3 of 3 timings"), res.err
    assert "3.0x" in warning[0]
