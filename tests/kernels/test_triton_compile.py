"""GPU code checks without a GPU: every Triton conv kernel variant compiled for the real targets.

Each representative shape (a DenseNet-BC layer, MSDNet's odd widths, channel windows) x precision
(fp32 with TF32 / IEEE products, fp16, bf16) x target (sm_80, sm_90) is specialised exactly as the
JIT would specialise it for such tensors (Triton's own binder on CPU tensors) and compiled, for
every autotune config the autotuner keeps for it, to PTX and cubin. The checks: it compiles, its
shared memory fits the target, ptxas spills nothing (its ``-v`` log) and every float ``max`` in
the PTX keeps NaN (the ReLUs: ``max.NaN``). The CUDA kernels of the built extension are checked
from its cubins (``cuobjdump --dump-resource-usage``): no stack frame, i.e. no spills.

The compiles (about a hundred and twenty, ~1 s each) run once per session in two spawned worker
processes with a fresh Triton cache and TRITON_INTERPRET=0, whatever tests/conftest.py set. Skipped when
Triton has no CUDA backend or its bundled ptxas is missing (a CPU-only torch).
"""
import concurrent.futures
import contextlib
import glob
import io
import multiprocessing
import os
import re
import shutil
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CL = torch.channels_last

# Opt-in shared memory per block: sm_80 163 KiB, sm_86 / sm_89 99 KiB, sm_90 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 90: 227 * 1024}
TARGETS = (80, 90)
PRECISIONS = {  # name: (dtype, DOT_PRECISION)
    "fp32-tf32": (torch.float32, "tf32"),
    "fp32-ieee": (torch.float32, "ieee"),
    "fp16": (torch.float16, "tf32"),
    "bf16": (torch.bfloat16, "tf32"),
}
# name: (k, stride, pad, x channels, c_in0, C_in, out channels, c_out0, C_out, prologue, H = W)
SHAPES = {
    # DenseNet-BC (k = 32) at 256 channels so far: BN-ReLU prologue + 1x1 to 128, then 3x3 to 32
    # appended at channel 256 of the block's 512-channel buffer.
    "densenet_1x1": (1, 1, 0, 512, 0, 256, 128, 0, 128, True, 32),
    "densenet_3x3": (3, 1, 1, 128, 0, 128, 512, 256, 32, False, 32),
    # MSDNet: a 22-channel buffer read whole (1x1 to 22), then a strided 3x3 to 37 channels
    # written at channel 37 of a 74-channel buffer; every width odd or unaligned.
    "msdnet_1x1": (1, 1, 0, 22, 0, 22, 22, 0, 22, False, 16),
    "msdnet_3x3_down": (3, 2, 1, 22, 0, 22, 74, 37, 37, False, 16),
    # A window starting mid-buffer (c_in0 = 7) in a 3x3 conv with no padding.
    "window_3x3": (3, 1, 0, 48, 7, 24, 40, 8, 24, False, 8),
}
BATCH = 64
# A float max that turns NaN into the other operand (PTX ``max`` without ``.NaN``).
_NAN_DROPPING_MAX = re.compile(r"\bmax(?:\.ftz)?\.(?:f32|f16|bf16|f16x2|bf16x2|f64)\b")
_NAN_MAX = re.compile(r"\bmax(?:\.ftz)?\.NaN\.")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def _nvidia_tools():
    """(reason to skip or None, bundled bin folder)."""
    from triton import backends

    if "nvidia" not in backends.backends:
        return "this Triton has no CUDA backend (CPU-only torch)", None
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not os.path.exists(os.path.join(bin_dir, "ptxas")):
        return f"Triton's CUDA backend has no bundled ptxas in {bin_dir}", None
    return None, bin_dir


_SKIP, _BIN = _nvidia_tools()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP))


# ----------------------------------------------------------------------------- worker side


def _init_worker():
    torch.set_num_threads(1)


def _kernel_args(shape, dtype):
    """The conv kernel's positional arguments and keyword constants for one shape (CPU tensors:
    the binder reads only dtypes, strides, alignment and integer values)."""
    from eexit.kernels import conv

    k, stride, pad, cx, c_in0, c_in, co, c_out0, c_out, prologue, h = shape
    h_out = (h + 2 * pad - k) // stride + 1
    x = torch.empty(BATCH, cx, h, h, dtype=dtype).to(memory_format=CL)
    w = conv.conv_weight(torch.empty(c_out, c_in, k, k, dtype=dtype))
    out = torch.empty(BATCH, co, h_out, h_out, dtype=dtype).to(memory_format=CL)
    vec = torch.empty(max(c_in, c_out))
    args = [x, w, vec, vec, vec, vec, out, vec, BATCH, h, h, c_in, h_out, h_out, c_out, c_in0, c_out0,
            conv._size_class(BATCH * h_out * h_out), *x.stride(), *w.stride(), *out.stride()]
    consts = dict(KSIZE=k, STRIDE=stride, PAD=pad, RELU=True, PROLOGUE=prologue, HAS_N_ACTIVE=False)
    return args, consts


def _compile_group(shape_name, precision, arch):
    """Compiles every config the autotuner keeps for (shape, precision, arch); one record each."""
    import triton.compiler
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from eexit.kernels import conv

    dtype, dot = PRECISIONS[precision]
    args, consts = _kernel_args(SHAPES[shape_name], dtype)
    consts["DOT_PRECISION"] = dot
    tuner = conv._conv_nhwc_kernel
    fn = tuner.fn
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    named = dict(zip(fn.arg_names, args))
    kept = tuner.early_config_prune(tuner.configs, named, **consts)
    records = []
    knobs.nvidia.dump_ptxas_log = True
    for cfg in kept:
        kwargs = dict(consts, **cfg.all_kwargs())
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
        text = log.getvalue()
        spills, regs = _SPILLS.search(text), _REGS.search(text)
        assert spills and regs, f"no ptxas -v report for {shape_name} {precision} sm_{arch} {cfg}:\n{text}"
        ptx = kernel.asm["ptx"]
        records.append(dict(
            shape=shape_name, precision=precision, arch=arch, config=str(cfg),
            shared=kernel.metadata.shared, regs=int(regs.group(1)), spill_stores=int(spills.group(1)),
            spill_loads=int(spills.group(2)), nan_dropping_max=sorted(set(_NAN_DROPPING_MAX.findall(ptx))),
            nan_max=len(_NAN_MAX.findall(ptx)),
        ))
    return records, [str(c) for c in tuner.configs]


# ----------------------------------------------------------------------------- test side


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(records of every compile, the GPU config list): compiled once for this module."""
    cache = str(tmp_path_factory.mktemp("triton-cache"))
    groups = [(s, p, a) for s in SHAPES for p in PRECISIONS for a in TARGETS]
    ctx = multiprocessing.get_context("spawn")
    with pytest.MonkeyPatch.context() as env:  # what the spawned workers start with
        env.setenv("TRITON_INTERPRET", "0")  # the compiled configs, not the interpreter's
        env.setenv("TRITON_CACHE_DIR", cache)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=_init_worker) as pool:
            results = list(pool.map(_compile_group, *zip(*groups)))
    return [r for recs, _ in results for r in recs], results[0][1]


def _fmt(r):
    return f"{r['shape']} {r['precision']} sm_{r['arch']} {r['config']}"


def test_every_config_compiles_for_some_shape(compiled):
    records, configs = compiled
    assert records
    assert {r["config"] for r in records} == set(configs)
    for s in SHAPES:
        for p in PRECISIONS:
            for a in TARGETS:
                assert any(r["shape"] == s and r["precision"] == p and r["arch"] == a for r in records), (s, p, a)


def test_shared_memory_fits_the_target(compiled):
    records, _ = compiled
    too_big = [f"{_fmt(r)}: {r['shared']} B" for r in records if r["shared"] > SHARED_LIMIT[r["arch"]]]
    assert not too_big
    for s in SHAPES:  # sm_86 / sm_89 (sm_80 code): at least one config per case fits their 99 KiB
        for p in PRECISIONS:
            assert any(r["shared"] <= SHARED_LIMIT[86] for r in records
                       if r["shape"] == s and r["precision"] == p and r["arch"] == 80), (s, p)


def test_no_spills(compiled):
    records, _ = compiled
    spilled = [f"{_fmt(r)}: {r['regs']} registers, {r['spill_stores']} B spill stores"
               for r in records if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, "\n".join(spilled)


def test_every_relu_keeps_nan(compiled):
    records, _ = compiled
    dropping = [f"{_fmt(r)}: {r['nan_dropping_max']}" for r in records if r["nan_dropping_max"]]
    assert not dropping, "\n".join(dropping)
    assert all(r["nan_max"] > 0 for r in records)  # every case has a ReLU epilogue: max.NaN is there


def _extension_cubins():
    """cuobjdump's resource report of the built extension, or None when it has no CUDA code."""
    libs = glob.glob(os.path.join(ROOT, "eexit", "_C*.so"))
    if not libs or not torch._C._dispatch_has_kernel_for_dispatch_key("eexit::exit_gate", "CUDA"):
        return None
    tool = shutil.which("cuobjdump") or os.path.join(_BIN, "cuobjdump")
    return subprocess.run([tool, "--dump-resource-usage", libs[0]], capture_output=True, text=True,
                          check=True).stdout


def test_cuda_kernels_do_not_spill():
    import eexit

    eexit.has_extension()  # loads eexit._C, registering its kernels
    report = _extension_cubins()
    if report is None:
        pytest.skip("eexit._C was built without its CUDA kernels")
    usage = []  # (arch, function, REG, STACK, SHARED, LOCAL)
    arch = None
    lines = iter(report.splitlines())
    for line in lines:
        if line.startswith("arch = "):
            arch = line.split()[-1]
        elif line.strip().startswith("Function "):
            fields = dict(re.findall(r"(\w+):(\d+)", next(lines)))
            usage.append((arch, line.split()[1].rstrip(":"), int(fields["REG"]), int(fields["STACK"]),
                          int(fields["SHARED"]), int(fields["LOCAL"])))
    names = " ".join(u[1] for u in usage)
    for kernel in ("gate_warp_kernel", "gate_block_kernel", "gather_rows_kernel", "DeviceSelectSweepKernel"):
        assert kernel in names
    # CI builds the default arch list; a GPU check builds for its own GPU only
    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    assert {u[0] for u in usage} >= ({f"sm_{cap[0]}{cap[1]}"} if cap else {"sm_80", "sm_90"})
    # A stack frame or local memory is where ptxas spills (no kernel here has local arrays).
    assert not [u for u in usage if u[3] or u[5]], [u for u in usage if u[3] or u[5]]
    assert all(u[2] <= 255 and u[4] <= SHARED_LIMIT[86] for u in usage)
