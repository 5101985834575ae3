"""eexit bench --stream: its options checked before any work, the closed- and open-loop tables (ratios
are the quotients of the printed throughputs), a checkpoint with --exit-fractions, and its help."""
import json
import re

import pytest
from cli_support import one_line_error, random_checkpoint, run_main, split_row

from eexit.app.cli import cmd_bench

pytestmark = pytest.mark.usefixtures("one_thread")

RUNS = ["engine, {} clients", "infer per request", "full per request", "offline infer, batch 32"]


def table_rows(out: str):
    """The rows of the printed tables (cells; an empty cell vanishes): those starting with a request size."""
    return [split_row(line) for line in out.splitlines() if re.match(r"^ +\d+  ", line)]


def test_options_are_checked_before_any_work(capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    for name in ("stream_benchmark", "contender_throughputs", "time_model", "batch_thresholds"):
        monkeypatch.setattr(cmd_bench, name, fail)
    cases = [
        (["--stream", "--request-size", 1, 0], "--request-size must be >= 1, got 0"),
        (["--stream", "--stream-samples", 0], "--stream-samples must be >= 1, got 0"),
        (["--stream", "--stream-rounds", 0], "--stream-rounds must be >= 1, got 0"),
        (["--stream", "--contender-samples", -1], "--contender-samples must be >= 1, got -1"),
        (["--stream", "--clients", 0], "--clients must be >= 1, got 0"),
        (["--stream", "--max-batch", 0], "--max-batch must be >= 1, got 0"),
        (["--stream", "--loads", 0.5, 0], "--loads must be > 0"),
        (["--stream", "--loads", "inf"], "--loads must be > 0"),
        (["--stream", "--max-wait-ms", -1], "--max-wait-ms must be a finite number >= 0, got -1"),
        (["--stream", "--reps", 3, "--compile"], "--reps, --compile: batch timing only, not with --stream"),
        (["--clients", 4, "--loads", 0.5], "--clients, --loads: only with --stream"),
        (["--stream", "--thresholds", 0.5, 0.5, 0], "--thresholds: expected one per exit (2), got 3"),
    ]
    for args, message in cases:
        line = one_line_error(run_main(capsys, "bench", "--model", "b-lenet", *args))
        assert message in line, (args, line)


def test_stream_tables(tmp_path, capsys):
    report = tmp_path / "stream.json"
    res = run_main(capsys, "bench", "--stream", "--model", "b-lenet", "--thresholds", 0.5, 0, "--stream-samples", 64,
                   "--request-size", 1, 4, "--stream-rounds", 2, "--contender-samples", 32, "--loads", 0.25, 0.5,
                   "--max-wait-ms", 2, "--json", report)
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert ", 1 torch thread, " in lines[0] and "--max-batch 256, --max-wait-ms 2" in lines[0]
    rows = table_rows(res.out)
    closed, opened = [r for r in rows if not r[1].endswith("%")], [r for r in rows if r[1].endswith("%")]
    assert [(r[0], r[1]) for r in closed] == [(str(size), run.format(512 // size)) for size in (1, 4) for run in RUNS]
    for i in range(0, len(closed), len(RUNS)):
        engine, contenders = closed[i], closed[i + 1: i + len(RUNS)]
        batches = engine[5].split()  # mean batch per stage (no ratio in the engine's row)
        assert len(engine) == 6 and len(batches) == 2 and all(0 < float(b) <= 64 for b in batches), engine
        for row in [engine] + contenders:
            lo, mid, hi = map(float, row[2:5])
            assert 0 < lo <= mid <= hi, row
        for row in contenders:
            assert len(row) == 6 and row[5].endswith("x"), row
            assert float(row[5][:-1]) == pytest.approx(float(engine[3]) / float(row[3]), rel=0.01, abs=0.006), row
    assert [(r[0], r[1]) for r in opened] == [(str(size), load) for size in (1, 4) for load in ("25%", "50%")]
    for row in opened:
        offered, served, p50, p99, bound = map(float, row[2:7])
        assert min(offered, served, p50) > 0 and p50 <= p99 and bound > 2
        assert row[7] == ("yes" if p99 <= bound else "no") and row[8] == "0"
        assert all(float(b) > 0 for b in row[9].split()) and len(row[9].split()) == 2
    assert "  --thresholds: 0.5 0" in res.out
    figures = json.loads(report.read_text())
    streams = figures["points"][0]["streams"]
    assert figures["threads"] == 1 and [s["request_size"] for s in streams] == [1, 4]
    assert set(streams[0]["samples_per_s"]) == {"engine", "infer per request", "full per request", "offline infer"}
    assert [o["load"] for o in streams[1]["open"]] == [0.25, 0.5]


def test_stream_a_checkpoint_at_exit_fractions(tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "msdnet.pt", model="msdnet-digits")
    res = run_main(capsys, "bench", "--stream", "--checkpoint", ckpt, "--batch-size", 32, "--exit-fractions", 0.4,
                   0.3, 0.2, 0.1, "--stream-samples", 16, "--request-size", 2, "--stream-rounds", 1,
                   "--contender-samples", 8, "--loads")
    assert res.code == 0, res
    assert "requests cut cyclically from 32 test samples" in res.out
    title = next(line for line in res.out.splitlines() if line.startswith("operating point exit fractions 0.4 0.3"))
    measured = [int(v) / 100 for v in title.split("on the pool: ")[1].rstrip(")").split()]
    assert measured == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=3 / 32), "calibrated on the pool"
    assert "open loop" not in res.out
    engine = next(split_row(line) for line in res.out.splitlines() if "engine, 256 clients" in line)
    assert len(engine[-1].split()) == 4


def test_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping
    text = " ".join(run_main(capsys, "bench", "--help").out.split())
    for option, default in [("--request-size R [R ...]", "1 4 16"), ("--stream-samples N", "4096"),
                            ("--stream-rounds N", "3"), ("--contender-samples N", "512"),
                            ("--loads [L ...]", "0.25 0.5 0.9"), ("--max-batch MAX_BATCH", "256"),
                            ("--max-wait-ms MAX_WAIT_MS", "5.0")]:
        assert re.search(re.escape(option) + r" (?:(?! --).)*\(default: " + re.escape(default) + r"\)", text), option
    assert "(default: 2 x --max-batch / request size)" in text
    assert "--max-wait-ms + 3 x the median batch service time" in text
    assert "offline model.infer at batch 256" in text
