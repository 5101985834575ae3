"""benchmarks/memory_formats.py runs and prints its table (one MSDNet preset and one dense block, a
tiny batch, one round)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import memory_formats  # noqa: E402


def test_memory_formats_prints_a_row_per_case_and_format(capsys, one_thread):
    dense = memory_formats.DENSE[0][0]
    memory_formats.main(["--reps", "1", "--case", "CIFAR-100 budgeted", "--case", dense, "--batch", "2"])
    out = capsys.readouterr().out.splitlines()
    for case in ("CIFAR-100 budgeted", dense):
        rows = [line for line in out if line.startswith(f"| {case} | 2 |")]
        assert [r.split(" | ")[2] for r in rows] == ["channels_last", "contiguous"], case
        assert all(float(r.split(" | ")[-1].rstrip(" |")) > 0 for r in rows)
