"""GPU check (``make gpu-check``): on a machine with an NVIDIA GPU, in one command and under a global
deadline (8 minutes by default; --cap raises a step's share),

1. ``build``: builds eexit against this machine's torch with this python (``pip install
   --no-build-isolation --no-deps --no-index -e .``, EEXIT_CUDA=1, MAX_JOBS up to 16,
   TORCH_CUDA_ARCH_LIST = the local GPU's capability only) and checks that the CUDA kernels load;
2. ``tests``: ``EEXIT_TEST_GPU=1 python -m pytest`` on :data:`GPU_TESTS` (with pytest-xdist when
   installed: 8 workers with their share of the cores, a crashed one replaced) (Triton compiled for
   the GPU, not interpreted), recording the pass/fail counts and each failure's report as it
   happens (EEXIT_FAILURE_LOG, tests/conftest.py), so a run cut short still says why;
3. ``bench_gate``, ``bench_dense``, ``bench_msdnet``: a condensed benchmark, each contender timed with
   CUDA synchronisation in interleaved rounds (:func:`eexit.timing.interleaved_medians`), medians:
   the exit gate vs the eager composite vs torch.compile of it; a dense block, the folded and the
   Triton compute paths vs the reference backend eager and under torch.compile; MSDNet CIFAR-100
   anytime, full network and ``infer`` (thresholds calibrated to geometric exit fractions) in the
   reference and fused backends, under torch.compile and :func:`eexit.compile` (with and without
   CUDA graphs), then, time allowing, a first pass of the Triton backend's ``infer`` over several
   batch sizes with each size's first call timed apart (a per-batch-size re-tune of the Triton
   kernels shows there at once);
4. writes ``benchmarks/results/gpu-check-<device>-<date>.md`` (and a ``.json`` of the same figures)
   and prints the table.

Every step runs in its own process with its own timeout (what is left of the deadline, less a
reserve for the steps after it), so a hang or a CUDA error in one cannot take the others with it;
a failure is recorded in the table, and the exit status is 1 when any step was not ``ok``.

Dry run (``GPU_CHECK_DRY=1`` or ``--dry``): everything that needs no GPU, on the CPU at tiny sizes,
so the script cannot rot (tests/test_gpu_check.py runs it): the build is only an import check of
the installed extension, the tests step runs one small test file, the benchmarks run their code
paths with 1-2 rounds, the Triton contenders run under TRITON_INTERPRET=1, torch.compile uses the
``eager`` backend (no code generation), MSDNet is a
2-block model, and the table goes to ``--out-dir`` (a new temporary folder by default).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEPS = ("build", "tests", "bench_gate", "bench_dense", "bench_msdnet")
TITLES = {
    "build": "build",
    "tests": "tests",
    "bench_gate": "Exit gate: fused op vs eager composite vs torch.compile of it",
    "bench_dense": "Dense block: folded and Triton compute paths vs reference eager vs torch.compile(reference)",
    "bench_msdnet": "MSDNet CIFAR-100 anytime: full network and infer",
}
GPU_TESTS = ["tests/ops", "tests/kernels", "tests/nn", "tests/models", "tests/test_calibrate.py",
             "tests/test_compiled.py::test_cuda_graphs_match_compiled_infer"]
DRY_TESTS = ["tests/test_timing.py"]
# (most seconds a step may take, seconds kept back for it while earlier steps run)
GPU_LIMITS = {"build": (220, 30), "tests": (160, 30), "bench_gate": (80, 30), "bench_dense": (90, 30),
              "bench_msdnet": (200, 40)}
DRY_LIMITS = {"build": (60, 5), "tests": (60, 5), "bench_gate": (60, 5), "bench_dense": (60, 5),
              "bench_msdnet": (90, 5)}
MIN_STEP_S = 10  # a step that would get less is skipped
LOG_TAIL_LINES = 40
FAILURE_REPORT_LINES = 30  # error lines kept per failure


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU dry run at tiny sizes (also GPU_CHECK_DRY=1)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the results table goes (default: benchmarks/results; dry run: a new temporary folder)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where the build, test and benchmark logs go (default: a new temporary folder)")
    p.add_argument("--budget", type=float, default=None,
                   help="global deadline in seconds from the start (default 470; dry run 150)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    p.add_argument("--tests", nargs="+", default=None,
                   help=f"test paths of the tests step (default {' '.join(GPU_TESTS)}; dry run {' '.join(DRY_TESTS)})")
    p.add_argument("--test-timeout", type=int, default=90,
                   help="per-test timeout in seconds where pytest-timeout is installed (0: none)")
    p.add_argument("--arch", default=None,
                   help="TORCH_CUDA_ARCH_LIST for the build (default: the local GPU's capability, e.g. 9.0)")
    p.add_argument("--reps", type=int, default=None, help="interleaved rounds per benchmark (default 15-41; dry 1-2)")
    p.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS", type=step_cap,
                   help="raise or lower one step's time cap (repeatable), e.g. --cap tests=300")
    # one step in a worker process (the orchestrator starts these)
    p.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dry = args.dry or os.environ.get("GPU_CHECK_DRY") == "1"
    if args.budget is None:
        args.budget = 150.0 if args.dry else 470.0
    return args


def step_cap(text: str) -> Tuple[str, float]:
    """Parses --cap STEP=SECONDS."""
    name, _, secs = text.partition("=")
    try:
        value = float(secs)
    except ValueError:
        value = -1.0
    if name not in STEPS or value <= 0:
        raise argparse.ArgumentTypeError(f"expected STEP=SECONDS with STEP in {', '.join(STEPS)} and SECONDS > 0, "
                                         f"got {text!r}")
    return name, value


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def step_env(dry: bool) -> Dict[str, str]:
    """Environment of every child: Triton interpreted in a dry run, compiled for the GPU otherwise."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


# ----------------------------------------------------------------------------------------------
# child processes with a timeout
# ----------------------------------------------------------------------------------------------

def run_logged(cmd: List[str], env: Dict[str, str], timeout: float, log_path: Path) -> Dict[str, object]:
    """Runs cmd in its own process group, output to log_path; on timeout the whole group is ended.
    Returns rc (None after a timeout), seconds and the output."""
    start = time.monotonic()
    with open(log_path, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: Optional[int] = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
    text = log_path.read_text(errors="replace")
    return {"rc": rc, "seconds": time.monotonic() - start, "output": text}


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------
# the machine
# ----------------------------------------------------------------------------------------------

def command_output(cmd: List[str], timeout: float = 15) -> Optional[str]:
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(dry: bool) -> Dict[str, object]:
    """Device, versions and the build's arch list; imports torch but not eexit (not built yet)."""
    info: Dict[str, object] = {"python": f"{platform.python_version()} ({sys.executable})",
                               "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
                               "triton": package_version("triton")}
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - recorded in the table
        info.update(torch=f"not importable: {err}", device="unknown", slug="unknown", cuda_ok=False)
        return info
    info["torch"] = torch.__version__
    info["cuda_runtime"] = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["cudnn"] = str(cudnn) if cudnn else "none"
    info["cuda_ok"] = torch.cuda.is_available()
    if dry:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}), dry run", slug="cpu-dry")
    elif torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        major, minor = torch.cuda.get_device_capability(0)
        info["capability"] = f"{major}.{minor}"
        info["device"] = (f"{torch.cuda.get_device_name(0)} (capability {major}.{minor}, "
                          f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB)")
        info["slug"] = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") or "gpu"
        smi = command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["driver"] = smi.splitlines()[0] if smi else "unknown"
    else:
        info.update(device="no CUDA device visible to torch", slug="no-gpu")
    # setup.py's choice: CUDA_HOME, else /usr/local/cuda, else torch's guess from the PATH
    cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    out = command_output([nvcc, "--version"]) if nvcc and os.path.exists(nvcc) else None
    found = re.search(r"release ([\d.]+)", out or "")
    info["nvcc"] = f"{found.group(1)} ({nvcc})" if found else "not found"
    rev = command_output(["git", "rev-parse", "--short", "HEAD"])
    if rev:
        dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
        rev += " + uncommitted changes" if dirty else ""
    info["eexit_source"] = rev or "no git metadata (working-tree copy)"
    return info


# ----------------------------------------------------------------------------------------------
# step 1: build
# ----------------------------------------------------------------------------------------------

CHECK_EXTENSION = (
    "import torch, eexit\n"
    "has = lambda op: torch._C._dispatch_has_kernel_for_dispatch_key(f'eexit::{op}', 'CUDA')\n"
    "print('extension', eexit.has_extension(), 'cuda-kernels', all(map(has, ('exit_gate', 'compact', 'max_pool2d'))))\n"
)


def embedded_cpp_runtime() -> str:
    """The libstdc++ symbols eexit._C defines itself (empty when it uses the shared library, as it
    must: tests/ops/test_torch_library.py checks the same), by ``nm``; empty when nm is missing."""
    found = []
    for so in sorted((ROOT / "eexit").glob("_C*.so")):
        out = "\n".join(command_output(["nm", flags, "--defined-only", str(so)]) or "" for flags in ("-C", "-DC"))
        found += [line.split(" ", 2)[-1] for line in out.splitlines() if re.search(CPP_RUNTIME, line)]
    return ", ".join(sorted(set(found)))


#: symbols of libstdc++ itself (an ostream inserter, a locale facet), not templates a header instantiates
CPP_RUNTIME = r" (std::ostream& std::ostream::_M_insert<long>|std::codecvt<char16_t, char, __mbstate_t>::do_unshift)"


def step_build(args, info, timeout: float, log_dir: Path) -> Dict[str, object]:
    env = step_env(args.dry)
    result: Dict[str, object] = {}
    if args.dry:
        result["summary"] = "dry run: no build; import check of the installed extension only"
        seconds = 0.0
    else:
        arch = args.arch or info.get("capability")
        if not arch:
            return {"status": "failed", "summary": "no CUDA device: cannot pick TORCH_CUDA_ARCH_LIST (use --arch)"}
        jobs = str(min(16, os.cpu_count() or 1))
        env.update(EEXIT_CUDA="1", MAX_JOBS=jobs, TORCH_CUDA_ARCH_LIST=arch)
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
               "--disable-pip-version-check", "--no-input", "-e", "."]
        res = run_logged(cmd, env, timeout - 20, log_dir / "build.log")
        seconds = float(res["seconds"])
        result["summary"] = (f"`pip install --no-build-isolation --no-deps -e .` with EEXIT_CUDA=1, MAX_JOBS={jobs}, "
                             f"TORCH_CUDA_ARCH_LIST={arch}: {seconds:.0f} s")
        if res["rc"] != 0:
            why = "timed out" if res["rc"] is None else f"exit status {res['rc']}"
            result.update(status="timeout" if res["rc"] is None else "failed", log_tail=tail(str(res["output"])))
            result["summary"] = f"{result['summary']}, {why}"
            return result
    check = run_logged([sys.executable, "-c", CHECK_EXTENSION], env, 120, log_dir / "build-check.log")
    found = re.search(r"extension (\w+) cuda-kernels (\w+)", str(check["output"]))
    if check["rc"] != 0 or not found:
        result.update(status="failed", log_tail=tail(str(check["output"])))
        result["summary"] += "; `import eexit` failed"
        return result
    loaded, cuda = found.group(1) == "True", found.group(2) == "True"
    result["summary"] += f"; eexit._C loaded: {'yes' if loaded else 'no'}, CUDA kernels: {'yes' if cuda else 'no'}"
    ok = loaded if args.dry else loaded and cuda
    runtime = embedded_cpp_runtime()
    if runtime:
        import sysconfig

        ok = False
        result["summary"] += (f"; eexit._C defines its own C++ runtime ({runtime}): C++ error messages crash; "
                              f"LDCXXSHARED={sysconfig.get_config_var('LDCXXSHARED')!r}")
    result["status"] = "ok" if ok else "failed"
    result["seconds"] = seconds + float(check["seconds"])
    return result


# ----------------------------------------------------------------------------------------------
# step 2: tests
# ----------------------------------------------------------------------------------------------

# pytest -v progress lines: "path::test PASSED", or with pytest-xdist "[gw3] [ 12%] PASSED path::test"
PROGRESS = re.compile(r"^(?:\S+::\S.* |\[gw\d+\] \[\s*\d+%\] )(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def pytest_counts(output: str) -> Dict[str, int]:
    """Counts from pytest's closing line, or, for a run cut short, from its -v progress lines."""
    for line in reversed(output.splitlines()):
        if re.search(r"\b\d+ (passed|failed|errors?|skipped)\b", line) and re.search(r" in [\d.]+s", line):
            counts: Dict[str, int] = {}
            for n, what in COUNT.findall(line):
                counts["error" if what.startswith("error") else what] = int(n)
            return counts
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "xfailed",
             "XPASS": "xpassed"}
    counts = {}
    for m in filter(None, map(PROGRESS.match, output.splitlines())):
        counts[names[m.group(1)]] = counts.get(names[m.group(1)], 0) + 1
    return counts


def failure_digest(text: str, lines_each: int = FAILURE_REPORT_LINES) -> str:
    """Each failure of the failure log, its header and its first ``E`` lines (the error and where
    it was raised), so that every failure's reason fits in the table."""
    parts = []
    for block in re.split(r"(?m)^=== ", text)[1:]:
        lines = block.splitlines()
        errors = [line for line in lines[1:] if line.startswith("E ")]
        parts.append("\n".join(["=== " + lines[0]] + (errors or lines[1:])[:lines_each]))
    return "\n\n".join(parts)


def step_tests(args, info, timeout: float, log_dir: Path) -> Dict[str, object]:
    env = step_env(args.dry)
    paths = args.tests or (DRY_TESTS if args.dry else GPU_TESTS)
    if not args.dry:
        env.update(EEXIT_TEST_GPU="1", EEXIT_REQUIRE_EXTENSION="1", EEXIT_REQUIRE_CUDA_BUILD="1")
    # -v: one line per test, so the log of a run cut short names the test it was in
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE", "--durations=15"]
    if args.test_timeout and importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={args.test_timeout}")
        version = tuple(int(v) for v in re.findall(r"\d+", package_version("pytest-timeout"))[:2])
        if version >= (2, 3):  # pytest ends the run itself, so its failure report is printed
            cmd.append(f"--session-timeout={max(int(timeout) - 30, 10)}")
    workers = min(8, (os.cpu_count() or 1) // 2)
    if not args.dry and workers > 1 and importlib.util.find_spec("xdist") is not None:
        # the CPU-side test work dominates, one GPU is shared; a crashed worker is replaced ("load":
        # xdist's loadfile scheduler has failed on reassigning a crashed worker's files)
        cmd += ["-n", str(workers), "--dist", "load", "--max-worker-restart", "16"]
        # each worker gets its share of the cores: torch's default (all of them per process) made
        # 8 workers oversubscribe 16 cores, and Inductor's compile pool (one process per core) too
        share = str(max(1, (os.cpu_count() or 1) // workers))
        env.update(OMP_NUM_THREADS=share, TORCHINDUCTOR_COMPILE_THREADS=share)
    cmd += paths
    failure_log = log_dir / "failures.log"  # tests/conftest.py appends each failure as it happens
    failure_log.unlink(missing_ok=True)
    env["EEXIT_FAILURE_LOG"] = str(failure_log)
    res = run_logged(cmd, env, timeout - 5, log_dir / "tests.log")
    output = str(res["output"])
    counts = pytest_counts(output)
    failed = [line.split(" - ")[0] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    env_note = "EEXIT_TEST_GPU=1 " if not args.dry else ""
    summary = f"`{env_note}pytest {' '.join(paths)}`: " + (
        ", ".join(f"{n} {what}" for what, n in counts.items()) or "no counts")
    if not failed and failure_log.exists():  # a run cut short prints no summary: the log names them
        failed = re.findall(r"^=== (\S+) \(", failure_log.read_text(errors="replace"), re.M)
    result: Dict[str, object] = {"counts": counts, "failed_tests": failed[:40], "seconds": res["seconds"]}
    if failure_log.exists():
        result["failure_reports"] = failure_digest(failure_log.read_text(errors="replace"))
    if res["rc"] is None:
        result.update(status="timeout", log_tail=tail(output))
        summary += f" (timed out after {res['seconds']:.0f} s; counts so far)"
    elif res["rc"] == 0:
        result["status"] = "ok"
    else:
        result.update(status="failed", log_tail=tail(output))
        summary += f" (exit status {res['rc']})"
    result["summary"] = summary
    return result


# ----------------------------------------------------------------------------------------------
# steps 3-5: benchmarks, each in a worker process (``--worker NAME``)
# ----------------------------------------------------------------------------------------------

class Bench:
    """One benchmark step's results, saved after every case so a killed worker leaves what it had.
    A row: case, medians in ms per contender, notes. ``ratios``: (numerator, denominator) contender
    pairs the table shows as num/den (above 1: the denominator is faster)."""

    def __init__(self, args, ratios: List[List[str]], legend: str) -> None:
        import torch

        self.dry = args.dry
        if args.dry:
            torch.set_num_threads(1)  # tiny sizes gain nothing from threads; a busy 2-core machine makes them spin
        self.path: Path = args.result
        self.deadline: float = args.deadline
        self.device = torch.device("cpu" if args.dry else "cuda")
        self.compile_backend = "eager" if args.dry else "inductor"
        self.data: Dict[str, object] = {"status": "running", "ratios": ratios, "legend": legend, "rows": [],
                                        "notes": [], "problems": 0}
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()

    def problem(self, row: Dict[str, object], text: str) -> None:
        """A contender or case that failed or was skipped: noted in its row, and the step is not ok."""
        row["notes"].append(text)
        self.data["problems"] += 1
        self.save()

    def row(self, case: str) -> Dict[str, object]:
        r: Dict[str, object] = {"case": case, "ms": {}, "notes": []}
        self.data["rows"].append(r)
        return r

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def warm(self, row: Dict[str, object], fns: Dict[str, Callable[[], object]],
             reserve: float = 5.0) -> Dict[str, Callable[[], object]]:
        """Calls each contender 3 times, once in a dry run (compiles the compiled ones, outside the
        timing); a contender that raises, or that there is no time left for, is left out with a note."""
        calls = 1 if self.dry else 3
        ok = {}
        for name, fn in fns.items():
            if self.left() < reserve:
                self.problem(row, f"{name}: skipped, out of time")
                continue
            try:
                start = time.perf_counter()
                fn()
                self.sync()
                first = time.perf_counter() - start
                for _ in range(calls - 1):
                    fn()
                self.sync()
            except Exception as err:  # noqa: BLE001 - recorded in the table
                self.problem(row, f"{name}: {error_text(err)}")
                traceback.print_exc()
                continue
            if first > 1.0:
                row["notes"].append(f"{name}: first call {first:.1f} s")
            ok[name] = fn
        self.save()
        return ok

    def time(self, row: Dict[str, object], runs: Dict[str, Callable[[], object]], reps: int,
             calls_per_run: int = 1) -> None:
        """Interleaved medians (ms per call) of runs into row."""
        from eexit.timing import interleaved_medians

        if not runs:
            return
        medians = interleaved_medians(runs, reps, self.device)
        row["ms"] = {name: ms / calls_per_run for name, ms in medians.items()}
        row["rounds"] = reps
        self.save()


def error_text(err: BaseException) -> str:
    first = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {first}"


def bench_gate(args) -> Bench:
    """Exit gate at N*C >= 1M (dry: tiny): fp32 and fp16 logits, confidence and entropy."""
    import torch

    from eexit import ops

    from composites import gate_composite

    torch._dynamo.config.capture_dynamic_output_shape_ops = True  # nonzero inside the graph
    torch._dynamo.config.cache_size_limit = 256
    bench = Bench(args, [["eager", "fused"], ["compile", "fused"]],
                  "per call, CUDA-synchronised after each round's calls; eager/fused > 1: the fused op is faster")
    sizes = [(64, 10)] if args.dry else [(4096, 1000), (65536, 100)]
    reps = args.reps or (2 if args.dry else 41)
    thresholds = {"confidence": 0.5, "entropy": 1.0}
    compiled = torch.compile(gate_composite, dynamic=False, backend=bench.compile_backend)
    bench.note(f"torch.compile(gate_composite, dynamic=False, backend={bench.compile_backend!r}); "
               f"{reps} interleaved rounds")
    with torch.inference_mode():
        for criterion in ("confidence", "entropy"):
            for n, c in sizes:
                for dtype in (torch.float32, torch.float16):
                    row = bench.row(f"{criterion} N={n} C={c} {str(dtype).replace('torch.', '')}")
                    if bench.left() < 10:
                        bench.problem(row, "skipped, out of time")
                        continue
                    gen = torch.Generator().manual_seed(n * 7 + c)
                    x = (torch.randn(n, c, generator=gen) * (torch.rand(n, 1, generator=gen) * 8)).to(
                        bench.device, dtype)
                    thr = thresholds[criterion]
                    fns = {"fused": lambda: ops.exit_gate(x, thr, criterion),
                           "eager": lambda: gate_composite(x, thr, criterion),
                           "compile": lambda: compiled(x, thr, criterion)}
                    ok = bench.warm(row, fns)
                    if "fused" in ok:
                        ref = ops.exit_gate(x, thr, criterion)
                        row["notes"].append(f"{ref.exit_idx.numel()} of {n} rows exit")
                        for name in ("eager", "compile"):
                            if name in ok and not torch.equal(ok[name]()[2], ref.pred):
                                bench.problem(row, f"{name}: pred differs from the fused op")
                    # repeat small gates within a round so each contender's share is about a millisecond
                    start = time.perf_counter()
                    if ok:
                        next(iter(ok.values()))()
                        bench.sync()
                    calls = max(1, min(100, int(1e-3 / max(time.perf_counter() - start, 1e-6))))
                    runs = {name: (lambda fn=fn: [fn() for _ in range(calls)]) for name, fn in ok.items()}
                    bench.time(row, runs, reps, calls)
    return bench


def bench_dense(args) -> Bench:
    """DenseConcatBlock eval forward, fp16 channels_last batch 64 (dry: fp32, tiny, Triton interpreted):
    the folded and Triton compute paths against the reference eager and under torch.compile."""
    import torch

    from eexit.nn import DenseConcatBlock
    from eexit.nn.execution import set_compute_path, triton_usable

    torch._dynamo.config.cache_size_limit = 256
    bench = Bench(args, [["eager", "folded"], ["compile", "folded"], ["eager", "triton"], ["compile", "triton"]],
                  "per forward; a/b > 1: b is faster. folded: compute path 'folded' (what backend 'fused' runs); "
                  "triton: the Triton kernels; eager: backend 'reference'")
    device = bench.device
    dtype = torch.float32 if args.dry else torch.float16
    batch = 2 if args.dry else 64
    # (name, in_channels, px, growth, layers); bn_size 4
    shapes = ([("tiny C8 g4 L2 4px", 8, 4, 4, 2)] if args.dry else
              [("in64 g32 L6 32px", 64, 32, 32, 6), ("DenseNet-BC block C64 g32 L12 28px", 64, 28, 32, 12)])
    reps = args.reps or (1 if args.dry else 21)
    if not triton_usable(device):
        bench.note("triton: not usable here (no Triton, or on the CPU without TRITON_INTERPRET=1)")
    elif args.dry:
        bench.note("triton: under TRITON_INTERPRET=1 (the Triton kernels, interpreted on the CPU)")
    bench.note(f"{str(dtype).replace('torch.', '')}, channels_last, batch {batch}, eval, inference_mode; "
               f"torch.compile(reference module, dynamic=False, backend={bench.compile_backend!r}); {reps} rounds")
    for name, c, px, g, layers in shapes:
        row = bench.row(f"{name} N={batch}")
        if bench.left() < 10:
            bench.problem(row, "skipped, out of time")
            continue
        try:  # built outside inference_mode: parameters made there are inference tensors
            torch.manual_seed(c * 100 + layers)
            ref = DenseConcatBlock(c, g, layers, bn_size=4).eval().to(device=device, dtype=dtype)
            ref = ref.to(memory_format=torch.channels_last).set_backend("reference")
            folded = set_compute_path(copy.deepcopy(ref), "folded")
            triton = copy.deepcopy(ref).set_backend("triton") if triton_usable(device) else None
            compiled = torch.compile(ref, dynamic=False, backend=bench.compile_backend)
            x = torch.randn(batch, c, px, px).to(device=device, dtype=dtype, memory_format=torch.channels_last)
        except Exception as err:  # noqa: BLE001 - recorded in the table
            bench.problem(row, f"set-up: {error_text(err)}")
            traceback.print_exc()
            continue
        fns = {"folded": lambda: folded(x), "eager": lambda: ref(x), "compile": lambda: compiled(x)}
        if triton is not None:
            fns["triton"] = lambda: triton(x)
        with torch.inference_mode():
            ok = bench.warm(row, fns)
            for other in ("folded", "triton"):
                if other in ok and "eager" in ok:
                    diff = (ok[other]().float() - ok["eager"]().float()).abs().max().item()
                    row["notes"].append(f"max |{other} - eager| {diff:.2g}")
            bench.time(row, ok, reps)
    return bench


def full_network_module(model):
    """The full network (every stage, last exit) as one nn.Module, for torch.compile."""
    import torch

    from eexit.runner import run_full_network

    class Full(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return run_full_network(*self.net.exit_stages(), x)

    return Full(model)


def bench_msdnet(args) -> Bench:
    """MSDNet CIFAR-100 anytime, batch 256 fp16 channels_last (dry: a 2-block MSDNet, fp32, batch 4)."""
    import torch

    import eexit
    from eexit.calibrate import fractions_for_cost
    from eexit.flops import expected_cost
    from eexit.models import MSDNet, msdnet_cifar_anytime
    from eexit.nn.execution import triton_usable

    from early_exit_common import calibrate, contenders, costs

    torch._dynamo.config.cache_size_limit = 256
    bench = Bench(args, [["full ref", "full fused"], ["full ref compile", "full fused"],
                         ["full fused", "infer fused"], ["infer ref", "infer fused"],
                         ["full ref compile", "infer compiled"], ["infer fused", "infer compiled"],
                         ["infer compiled", "infer graphs"], ["full ref compile", "infer graphs"]],
                  "per batch; a/b > 1: b is faster. full: every stage, last exit (eexit.runner.run_full_network); "
                  "infer: real early exit (model.infer); ref / fused: backend 'reference' / 'fused' (folded); "
                  "compiled: eexit.compile(model); graphs: eexit.compile(model, cuda_graphs=True), "
                  "buckets 1, 2, 4, ..., the batch")
    device = bench.device
    dtype = torch.float32 if args.dry else torch.float16
    batch, n_cal = (4, 32) if args.dry else (256, 1024)
    reps = args.reps or (1 if args.dry else 15)
    target = 0.40
    if args.dry:
        name = "MSDNet 2 blocks (dry run)"
        build = lambda: MSDNet(2, 8, 1, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=10, dataset="cifar")  # noqa: E731
    else:
        name = "msdnet_cifar_anytime(100)"
        build = lambda: msdnet_cifar_anytime(100)  # noqa: E731
    case = f"{name} N={batch} {str(dtype).replace('torch.', '')} channels_last"
    row = bench.row(case)
    try:  # built outside inference_mode: parameters made there are inference tensors
        torch.manual_seed(0)
        ref = build().eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        ref.set_backend("reference")
        fused = copy.deepcopy(ref).set_backend("fused")
        triton = copy.deepcopy(ref).set_backend("triton") if triton_usable(device) else None
        cost = costs(ref, (3, 32, 32))
        lo, hi = cost["exit_costs"][0], cost["exit_costs"][-1]
        # 40% of the full network as in benchmarks/test_bench_msdnet.py, where the exits allow it
        target = min(max(target * cost["full_cost"], lo + 0.1 * (hi - lo)), hi) / cost["full_cost"]
        fractions = fractions_for_cost(cost["exit_costs"], target * cost["full_cost"])
        cl = dict(device=device, dtype=dtype, memory_format=torch.channels_last)
        thresholds = calibrate(ref, torch.randn(n_cal, 3, 32, 32).to(**cl), fractions, "confidence")
        x = torch.randn(batch, 3, 32, 32).to(**cl)
    except Exception as err:  # noqa: BLE001 - recorded in the table
        bench.problem(row, f"set-up: {error_text(err)}")
        traceback.print_exc()
        return bench
    bench.note(f"thresholds (confidence) calibrated on {n_cal} random images to geometric exit fractions "
               f"{', '.join(f'{f:.2f}' for f in fractions)} (expected cost {target:.0%} of the full network); "
               f"{reps} rounds")
    with torch.inference_mode():
        eager = {"full ref": lambda f=contenders(ref, thresholds, "confidence")["full"]: f(x),
                 "full fused": lambda f=contenders(fused, thresholds, "confidence")["full"]: f(x),
                 "infer ref": lambda: ref.infer(x, thresholds),
                 "infer fused": lambda: fused.infer(x, thresholds)}
        ok: Dict[str, Callable[[], object]] = {}
        # the reference contenders, then the fused ones, then the compiled ones: each group is timed
        # with those before it as soon as it is warm, so a step cut short keeps what it had measured
        for group in (("full ref", "infer ref"), ("full fused", "infer fused")):
            ok.update(bench.warm(row, {k: eager[k] for k in group}))
            bench.time(row, ok, reps)
        if "infer fused" in ok:
            out = fused.infer(x, thresholds)
            exits = [int((out.exit_index == k).sum()) for k in range(len(fractions))]
            ratio = cost["full_cost"] / expected_cost(exits, cost["exit_costs"])
            row["notes"].append(f"exits per stage {' '.join(map(str, exits))}: cost ratio full/expected {ratio:.2f}")
        if "full fused" in ok and "full ref" in ok:
            diff = (ok["full fused"]().float() - ok["full ref"]().float()).abs().max().item()
            row["notes"].append(f"max |full fused - full ref| {diff:.2g}")
    compiled: Dict[str, Callable[[], object]] = {
        "full ref compile": lambda c=torch.compile(full_network_module(ref), dynamic=False,
                                                   backend=bench.compile_backend): c(x)}
    if bench.left() < 30:
        bench.problem(row, "infer compiled: skipped, out of time")
    else:
        # outside inference_mode: the copy's parameters must be normal tensors. No example_input:
        # its warm-up compiles the graphs of every kind of caller (no_grad, inference_mode with a
        # normal and with an inference tensor; 156 s on the H200 in run 5), while the timing here
        # needs only inference_mode's, compiled (and, with cuda_graphs, captured for the buckets
        # this input's exits reach) at the first call, which the table notes
        options: Dict[str, object] = {"backend": "eager"} if args.dry else {}
        graphs = bench.device.type == "cuda"
        variants = [("infer compiled", {})] + ([("infer graphs", {"cuda_graphs": True, "buckets": [
            2 ** k for k in range(batch.bit_length())] + [batch]})] if graphs else [])
        for label, extra in variants:
            if bench.left() < 40:
                bench.problem(row, f"{label}: skipped, out of time")
                continue
            try:
                net = eexit.compile(copy.deepcopy(fused), **options, **extra)
                compiled[label] = lambda net=net: net.infer(x, thresholds)
            except Exception as err:  # noqa: BLE001 - recorded in the table
                bench.problem(row, f"{label}: {error_text(err)}")
                traceback.print_exc()
        if not graphs:
            row["notes"].append("infer graphs: not run (CUDA graphs need a GPU)")
    with torch.inference_mode():
        ok.update(bench.warm(row, compiled, reserve=20))
        for label in ("infer compiled", "infer graphs"):
            if label in ok and "infer fused" in ok:
                a, b = ok[label](), ok["infer fused"]()
                same = float((a.exit_index == b.exit_index).float().mean())
                row["notes"].append(f"{label} vs fused: same exit for {same:.1%} of the samples")
        if len(ok) > len(eager):
            bench.time(row, ok, reps)  # all contenders in the same interleaved rounds
        if triton is None:
            row["notes"].append("infer triton first pass: not run (Triton not usable here)")
        elif bench.left() > (120 if bench.device.type == "cuda" else 20):  # the Triton kernels' tuning, last
            first_pass(bench, row, triton, x, thresholds)
        else:
            row["notes"].append("infer triton first pass: not run, out of time")
    return bench


def first_pass(bench: Bench, row: Dict[str, object], model, x, thresholds) -> None:
    """Times model.infer on the first rows of x at several batch sizes in turn, each new size's
    first call apart from a second one, into a note of row. After the first size the two should
    be close: the Triton kernels tune per size class of the batch (a power of two), and these
    sizes share the first one's. A first call far above the second at every size is a re-tune per
    batch size (the regression this is here to show)."""
    n = x.shape[0]
    # dry run: one sample, the Triton kernels interpreted (about 1 ms per program instance)
    sizes = [1] if bench.dry else list(dict.fromkeys(max(1, round(n * f)) for f in (1.0, 0.9, 0.75, 0.6)))
    parts = []
    for size in sizes:
        if bench.left() < 30:
            bench.problem(row, "first pass: cut short, out of time")
            break
        ms = []
        for _ in range(1 if bench.dry else 2):
            start = time.perf_counter()
            model.infer(x[:size], thresholds)
            bench.sync()
            ms.append((time.perf_counter() - start) * 1e3)
        parts.append(f"N={size} " + " / ".join(f"{t:.0f}" for t in ms))
    row["notes"].append("infer triton, first pass (ms, first / second call at each new batch size): "
                        + ", ".join(parts))
    bench.save()


WORKERS = {"bench_gate": bench_gate, "bench_dense": bench_dense, "bench_msdnet": bench_msdnet}


def worker_main(args) -> int:
    """One benchmark step in this process; its results go to args.result (JSON)."""
    try:
        bench = WORKERS[args.worker](args)
    except Exception as err:  # noqa: BLE001 - recorded in the table
        traceback.print_exc()
        data = json.loads(args.result.read_text()) if args.result.exists() else {"rows": [], "notes": []}
        data.update(status="failed", error=error_text(err))
        args.result.write_text(json.dumps(data, indent=1))
        return 1
    bench.data["status"] = "errors" if bench.data["problems"] else "ok"
    bench.save()
    return 0


def step_bench(name: str, args, info, timeout: float, log_dir: Path) -> Dict[str, object]:
    result_path = log_dir / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(result_path),
           "--deadline", str(time.time() + timeout - 5)]
    if args.dry:
        cmd.append("--dry")
    if args.reps:
        cmd += ["--reps", str(args.reps)]
    res = run_logged(cmd, step_env(args.dry), timeout, log_dir / f"{name}.log")
    data: Dict[str, object] = {}
    if result_path.exists():
        try:
            data = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            data = {}
    if res["rc"] is None:
        data["status"] = "timeout"
    elif res["rc"] != 0 or data.get("status") in (None, "running"):
        data["status"] = "failed"
    if data["status"] != "ok" and len(str(res["output"]).strip().splitlines()) > 1:
        data["log_tail"] = tail(str(res["output"]))
    rows = data.get("rows", [])
    timed = sum(1 for r in rows if r.get("ms"))
    data["summary"] = f"{timed} of {len(rows)} cases timed" + (f"; {data['error']}" if data.get("error") else "")
    data["seconds"] = res["seconds"]
    return data


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------

def fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.2f} ms"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def bench_table(data: Dict[str, object]) -> List[str]:
    rows = data.get("rows", [])
    names: List[str] = []
    for r in rows:
        names += [n for n in r["ms"] if n not in names]
    ratios = [(a, b) for a, b in data.get("ratios", []) if any(a in r["ms"] and b in r["ms"] for r in rows)]
    lines = []
    if data.get("legend"):
        lines += [f"Medians {data['legend']}.", ""]
    header = ["case"] + [f"{n}" for n in names] + [f"{a} / {b}" for a, b in ratios] + ["notes"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(names) + len(ratios)) + ["---"]) + "|")
    for r in rows:
        ms = r["ms"]
        cells = [r["case"]] + [fmt_ms(ms.get(n)) for n in names]
        cells += [fmt_ratio(ms[a] / ms[b]) if a in ms and b in ms and ms[b] > 0 else "-" for a, b in ratios]
        cells.append("; ".join(r["notes"]).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    for n in data.get("notes", []):
        lines.append(f"- {n}")
    return lines


def render(info: Dict[str, object], results: Dict[str, Dict[str, object]], args, started: datetime.datetime,
           total_s: float) -> str:
    mode = ("dry run (GPU_CHECK_DRY=1): CPU, tiny sizes, no build; not a measurement" if args.dry else
            "GPU")
    lines = [f"# eexit GPU check: {info.get('device', 'unknown')}, {started.date().isoformat()}", ""]
    lines += ["| | |", "|---|---|"]
    facts = [("date", started.strftime("%Y-%m-%d %H:%M UTC")), ("mode", mode), ("device", info.get("device")),
             ("driver", info.get("driver")), ("torch", info.get("torch")),
             ("CUDA (torch) / cuDNN", f"{info.get('cuda_runtime')} / {info.get('cudnn')}"), ("nvcc", info.get("nvcc")),
             ("triton", info.get("triton")), ("python", info.get("python")), ("host", info.get("host")),
             ("eexit source", info.get("eexit_source")),
             ("run time", f"{total_s:.0f} s (budget {args.budget:.0f} s)")]
    lines += [f"| {k} | {v} |" for k, v in facts if v is not None]
    lines += ["", "## Steps", "", "| step | status | seconds | summary |", "|---|---|---:|---|"]
    for name in STEPS:
        r = results.get(name, {"status": "not run", "summary": "not selected (--steps)"})
        secs = r.get("seconds")
        lines.append(f"| {name} | {r.get('status')} | {'' if secs is None else f'{secs:.0f}'} | "
                     f"{str(r.get('summary', '')).replace('|', chr(92) + '|')} |")
    tests = results.get("tests", {})
    if tests.get("failed_tests"):
        lines += ["", "Failed tests:", ""] + [f"- `{t}`" for t in tests["failed_tests"]]
    if tests.get("failure_reports"):
        lines += ["", "Failure reports (each failure's error lines):", "", "```",
                  str(tests["failure_reports"]).replace("```", "'''"), "```"]
    for name in STEPS[2:]:
        if name in results and results[name].get("rows"):
            lines += ["", f"## {name}: {TITLES[name]}", ""] + bench_table(results[name])
    logs = [(n, r["log_tail"]) for n, r in results.items() if r.get("log_tail")]
    if logs:
        lines += ["", "## Log tails of the steps that were not ok", ""]
        for n, text in logs:
            lines += [f"{n}:", "", "```", text.replace("```", "'''"), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# the orchestrator
# ----------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    start = time.monotonic()
    deadline = start + args.budget
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info(args.dry)
    log(f"device: {info.get('device')}; torch {info.get('torch')}, triton {info.get('triton')}")
    if not args.dry and not info.get("cuda_ok"):
        log("no CUDA device visible to torch: nothing to check here (GPU_CHECK_DRY=1 runs the CPU dry run)")
        return 2
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu-check-out-")) if args.dry else RESULTS)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gpu-check-logs-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"{'dry run, ' if args.dry else ''}budget {args.budget:.0f} s, logs in {log_dir}")
    limits = dict(DRY_LIMITS if args.dry else GPU_LIMITS)
    for name, secs in args.cap:
        limits[name] = (secs, limits[name][1])
    results: Dict[str, Dict[str, object]] = {}
    selected = [s for s in STEPS if s in args.steps]
    for i, name in enumerate(selected):
        cap, _ = limits[name]
        reserve = sum(limits[later][1] for later in selected[i + 1:])
        timeout = min(cap, deadline - time.monotonic() - reserve)
        if timeout < MIN_STEP_S:
            results[name] = {"status": "skipped", "summary": "out of time (global deadline)"}
            log(f"{name}: skipped, out of time")
            continue
        log(f"{name}: up to {timeout:.0f} s")
        t0 = time.monotonic()
        try:
            if name == "build":
                results[name] = step_build(args, info, timeout, log_dir)
            elif name == "tests":
                results[name] = step_tests(args, info, timeout, log_dir)
            else:
                results[name] = step_bench(name, args, info, timeout, log_dir)
        except Exception as err:  # noqa: BLE001 - one step's failure must not stop the others
            results[name] = {"status": "failed", "summary": error_text(err), "log_tail": traceback.format_exc()}
        results[name].setdefault("seconds", time.monotonic() - t0)
        log(f"{name}: {results[name]['status']} ({results[name].get('summary', '')})")
    table = render(info, results, args, started, time.monotonic() - start)
    stem = f"gpu-check-{info.get('slug', 'unknown')}-{started.date().isoformat()}"
    md = out_dir / f"{stem}.md"
    md.write_text(table)
    (out_dir / f"{stem}.json").write_text(json.dumps({"info": info, "results": results}, indent=1, default=str))
    print(table, flush=True)
    log(f"wrote {md}")
    return 0 if all(r.get("status") == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
