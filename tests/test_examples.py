"""Every script in examples/ runs as a user would run it (a subprocess with this interpreter, from
the repository root) and prints what it shows. The training examples get fewer epochs here; one
intra-op thread, as their tiny batches gain nothing from threads on a busy 2-core machine."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = {  # script: (arguments, lines the output must contain)
    "gate_on_a_real_head.py": ([], ["linear head on digits: test accuracy", "confidence >= 0.9:", "entropy < 0.3:",
                                    "against eexit.reference: same predictions",
                                    "the same rows as eexit.reference.compact"]),
    "msdnet_official_checkpoint.py": ([], ["wrote a stand-in", "loaded MSDNet cifar_anytime: 7 exits",
                                           "test exit fractions", "agreement with the full network", "speedup"]),
    "branchynet_entropy.py": (["2"], ["B-LeNet, 2 epochs", "test accuracy per exit", "entropy T  accuracy"]),
    "exits_on_your_backbone.py": (["3"], ["test accuracy per exit", "thresholds", "early exit: test accuracy"]),
}


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name):
    args, expected = EXAMPLES[name]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in expected:
        assert text in proc.stdout, f"{name}: {text!r} missing from\n{proc.stdout}"
