"""benchmarks/msdnet_formats.py runs and prints its table (one preset, a tiny batch, one round)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import msdnet_formats  # noqa: E402


def test_msdnet_formats_prints_a_row_per_format(capsys, one_thread):
    msdnet_formats.main(["--reps", "1", "--preset", "CIFAR-100 budgeted", "--batch", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| CIFAR-100 budgeted | 2 |")]
    assert [r.split(" | ")[2] for r in rows] == ["channels_last", "contiguous"]
    assert all(float(r.split(" | ")[-1].rstrip(" |")) > 0 for r in rows)
