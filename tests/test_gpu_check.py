"""``make gpu-check``'s script (benchmarks/gpu_check.py) in its dry run (GPU_CHECK_DRY=1): every step
on the CPU at tiny sizes, so the script that only runs on lent GPU machines cannot rot."""
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ("build", "tests", "bench_gate", "bench_dense", "bench_msdnet")


def test_gpu_check_dry_run_writes_the_table(tmp_path):
    results = ROOT / "benchmarks" / "results"
    before = set(results.iterdir())
    env = dict(os.environ, GPU_CHECK_DRY="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path / "out"),
                           "--log-dir", str(tmp_path / "logs")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    tables = sorted((tmp_path / "out").glob("gpu-check-cpu-dry-*.md"))
    assert len(tables) == 1, report
    text = tables[0].read_text()
    for step in STEPS:
        assert f"| {step} | ok |" in text, f"{step} is not ok:\n{text}"
    contenders = ["fused", "eager", "compile", "full ref", "full fused", "infer ref", "infer fused", "full ref compile",
                  "infer compiled"]
    for contender in contenders:  # a column of every contender: each one ran and was timed
        assert f"| {contender} |" in text, f"no column {contender!r}:\n{text}"
    assert re.search(r"\b[1-9][0-9]* passed\b", text) and " failed" not in text  # the tests step's counts
    assert text in proc.stdout  # printed as well
    assert set(results.iterdir()) == before  # a dry run writes nothing into benchmarks/results
