"""``make gpu-check``'s script (benchmarks/gpu_check.py) in its dry run (GPU_CHECK_DRY=1): every step
on the CPU at tiny sizes, so the script that only runs on lent GPU machines cannot rot."""
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile

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


def test_gpu_check_refuses_a_bad_step_cap():
    for bad in ("tests", "tests=0", "tets=30", "build=abc"):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--cap", bad], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "--cap" in proc.stderr and "STEP=SECONDS" in proc.stderr and repr(bad) in proc.stderr, proc.stderr


def test_failure_log_records_each_failure_as_it_happens(tmp_path):
    """tests/conftest.py's EEXIT_FAILURE_LOG hook: a failing and a passing test in a throwaway
    folder under tests/ (so the conftest applies); only the failure is written, with its reason."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tmp_failure_log_", dir=ROOT / "tests"))
    try:
        marker = f"reason-{os.getpid()}-{random.random()}"
        (folder / "test_throwaway.py").write_text(
            f"def test_fails():\n    assert False, {marker!r}\n\n\ndef test_passes():\n    assert True\n")
        log = tmp_path / "failures.log"
        env = dict(os.environ, EEXIT_FAILURE_LOG=str(log))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stdout[-3000:]
        text = log.read_text()
        assert text.count("=== ") == 1 and "test_throwaway.py::test_fails (call" in text and marker in text, text
    finally:
        shutil.rmtree(folder)


def test_failure_digest_keeps_every_failure_and_its_error_lines():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    n = random.randint(2, 5)
    log = "".join(f"=== t.py::test_{i} (call, 1.0 s)\n  code\n==== inner ====\nE   Error{i}: why\n"
                  + "".join(f"E   line {j}\n" for j in range(50)) + "\n" for i in range(n))
    digest = gpu_check.failure_digest(log, lines_each=5)
    for i in range(n):
        assert f"=== t.py::test_{i} (call" in digest and f"Error{i}: why" in digest
    assert digest.count("E   line") == 4 * n and "code" not in digest
