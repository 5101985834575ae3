"""The command line end to end: `python -m eexit demo` and its errors."""
import subprocess
import sys

from eexit import demo


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "eexit", *args], capture_output=True, text=True, timeout=300)


def test_demo_prints_a_row_per_threshold():
    out = run_cli("demo", "--batch", "256", "--reps", "3", "--thresholds", "0.5", "0.9")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith(("0.5 ", "0.9 "))]
    assert [r[0] for r in rows] == ["0.5", "0.9"], out.stdout
    for r in rows:
        assert 0.0 <= float(r[1]) <= 100.0
        assert float(r[4]) > 0 and float(r[5]) > 0


def test_demo_rows_are_consistent():
    rows = demo.run("entropy", [2.31, 0.5, 0.0], batch=64, reps=2)
    fractions = [r["exit_fraction"] for r in rows]
    assert fractions[0] == 1.0  # the entropy of 10 classes is at most log 10 = 2.303 < 2.31
    assert fractions[0] >= fractions[1] >= fractions[2] == 0.0  # stricter thresholds let fewer out
    assert rows[1]["acc_exited"] >= rows[0]["acc_exited"]  # confident samples are the accurate ones


def test_user_errors_have_no_traceback():
    out = run_cli("demo", "--thresholds", "1.5")
    assert out.returncode == 2
    assert "must be in [0, 1]" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("demo", "--batch", "0")
    assert out.returncode == 2 and "batch must be >= 1" in out.stderr and "Traceback" not in out.stderr
    assert run_cli("nope").returncode == 2


def test_help_lists_the_demo():
    out = run_cli("--help")
    assert out.returncode == 0 and "demo" in out.stdout
    assert "criterion" in run_cli("demo", "--help").stdout
