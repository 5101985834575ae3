"""Triton tests (tests/kernels, tests/nn) run under the Triton interpreter on CPU tensors
(TRITON_INTERPRET=1, set here before anything imports Triton) unless EEXIT_TEST_GPU=1:
``EEXIT_TEST_GPU=1 pytest tests/kernels tests/nn`` runs them compiled on a CUDA GPU."""
import os

if os.environ.get("EEXIT_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_sessionstart(session):
    """A build that is missing what the run requires fails it at once:
    EEXIT_REQUIRE_EXTENSION=1 (make test) needs eexit._C, EEXIT_REQUIRE_CUDA_BUILD=1 (CI)
    needs its CUDA kernels compiled in, even on a machine with no GPU to run them."""
    import torch

    import eexit

    if os.environ.get("EEXIT_REQUIRE_EXTENSION") == "1" and not eexit.has_extension():
        pytest.exit("EEXIT_REQUIRE_EXTENSION=1 but eexit._C did not build or load", returncode=3)
    if os.environ.get("EEXIT_REQUIRE_CUDA_BUILD") == "1":
        for op in ("exit_gate", "compact", "max_pool2d"):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"eexit::{op}", "CUDA"):
                pytest.exit(f"EEXIT_REQUIRE_CUDA_BUILD=1 but eexit::{op} has no CUDA kernel", returncode=3)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny batches (they gain nothing from threads, and a
    busy 2-core machine makes them spin); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_runtest_logreport(report):
    """EEXIT_FAILURE_LOG=FILE: each failure's report is appended to FILE as it happens (with
    pytest-xdist, on the controller), so a run cut short by a time limit still says why its
    failed tests failed (``make gpu-check`` reads it)."""
    path = os.environ.get("EEXIT_FAILURE_LOG")
    if path and report.failed and "PYTEST_XDIST_WORKER" not in os.environ:  # once: not in xdist's workers too
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"=== {report.nodeid} ({report.when}, {report.duration:.1f} s)\n{report.longreprtext}\n\n")
