"""eexit.nn modules: the fused CPU path against the reference, backend rules, BN folding freshness,
state_dict layout and linear memory of the dense block."""
import pytest
import torch
from torch import nn

from eexit.nn import (
    BACKENDS,
    COMPUTE_PATHS,
    GATE_OPS,
    BottleneckConv,
    ComputePathModule,
    ConvBNReLU,
    DenseConcatBlock,
    EarlyExitNetwork,
    pool_linear_head,
    restoring_backends,
    set_backend,
    set_compute_path,
    set_gate_ops,
)

from helpers import MODULE_TOL, generator, new_seed, randomise_bn

FORMATS = [torch.contiguous_format, torch.channels_last]


def make(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "conv3x3":
        m = ConvBNReLU(5, 7)
    elif kind == "conv_stem_7x7":
        m = ConvBNReLU(3, 8, kernel_size=7, stride=2, padding=3)
    elif kind == "bottleneck_normal":
        m = BottleneckConv(12, 5, "normal")
    elif kind == "bottleneck_down":
        m = BottleneckConv(12, 5, "down", bn_width=2)
    elif kind == "plain_down":
        m = BottleneckConv(6, 5, "down", bottleneck=False)
    else:
        m = DenseConcatBlock(5, 3, 6, bn_size=2)
    return randomise_bn(m, generator(seed), mean_std=0.5, affine=True).eval()


KINDS = ["conv3x3", "conv_stem_7x7", "bottleneck_normal", "bottleneck_down", "plain_down", "dense6"]


def run(model: nn.Module, backend: str, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.set_backend(backend)(x)


def in_channels(model: nn.Module) -> int:
    return model.in_channels if isinstance(model, DenseConcatBlock) else model.net[0].in_channels


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("n,h,w", [(1, 9, 7), (3, 8, 11)])
def test_fused_matches_reference(kind, fmt, n, h, w):
    seed = new_seed()
    model = make(kind, seed)
    x = torch.randn(n, in_channels(model), h, w, generator=generator(seed)).contiguous(memory_format=fmt)
    ref, fused = run(model, "reference", x), run(model, "fused", x)
    assert fused.shape == ref.shape and fused.dtype == ref.dtype
    torch.testing.assert_close(fused, ref, **MODULE_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")
    # same memory-format policy in every backend: the input's
    assert fused.is_contiguous(memory_format=fmt) and ref.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("kind", ["conv3x3", "bottleneck_down", "dense6"])
def test_bfloat16(kind):
    seed = new_seed()
    model = make(kind, seed)
    x = torch.randn(2, in_channels(model), 8, 8, generator=generator(seed))
    ref = run(model, "reference", x)  # float32 reference
    fused = run(model.to(torch.bfloat16), "fused", x.bfloat16())
    assert fused.dtype == torch.bfloat16
    low = run(model, "reference", x.bfloat16()).float()  # PyTorch's own bf16 error
    bound = 4 * (low - ref).abs().max().item() + 1e-2
    assert (fused.float() - ref).abs().max().item() <= bound, f"seed={seed}"


@pytest.mark.parametrize("kind", KINDS)
def test_folding_follows_training_steps(kind):
    """Optimiser steps (train mode, reference) change weights and running stats: the fused path
    must use the new values, never a stale fold."""
    seed = new_seed()
    model = make(kind, seed)
    gen = generator(seed)
    x = torch.randn(4, in_channels(model), 8, 8, generator=gen)
    before = run(model, "fused", x)
    model.set_backend("auto").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = model(torch.randn(4, in_channels(model), 8, 8, generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after, ref = run(model, "fused", x), run(model, "reference", x)
    torch.testing.assert_close(after, ref, **MODULE_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("kind", ["dense6", "bottleneck_normal"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_folding_follows_in_place_edits_and_load_state_dict(kind, fmt):
    """Channels_last runs the packed weights (ConvStack's chain): they follow every edit too."""
    seed = new_seed()
    model = make(kind, seed)
    x = torch.randn(2, in_channels(model), 6, 6, generator=generator(seed)).contiguous(memory_format=fmt)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    run(model, "fused", x)  # fills the fold cache
    bns[-1].running_mean.add_(0.7)  # in-place buffer edit
    torch.testing.assert_close(run(model, "fused", x), run(model, "reference", x), **MODULE_TOL[torch.float32])
    with torch.no_grad():
        convs[0].weight.mul_(-1.5)  # in-place parameter edit
    torch.testing.assert_close(run(model, "fused", x), run(model, "reference", x), **MODULE_TOL[torch.float32])
    other = make(kind, seed + 1)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(run(model, "fused", x), run(other, "reference", x), **MODULE_TOL[torch.float32])
    bns[1].weight.data = torch.rand(bns[1].num_features) + 2.0  # replaced tensor
    torch.testing.assert_close(run(model, "fused", x), run(model, "reference", x), **MODULE_TOL[torch.float32])


def test_train_mode_clears_the_fold_cache():
    model = make("conv3x3", new_seed())
    run(model, "fused", torch.randn(1, 5, 4, 4))
    assert model._fold._store
    model.train()
    assert not model._fold._store


def test_state_dict_is_the_same_in_every_backend_and_follows_msdnet_keys():
    model = make("bottleneck_down", new_seed())
    keys = list(model.state_dict())
    for backend in ("reference", "fused", "triton", "auto"):
        assert list(model.set_backend(backend).state_dict()) == keys
    assert {k.rsplit(".", 1)[0] for k in keys} == {"net.0", "net.1", "net.3", "net.4"}
    assert {k.rsplit(".", 1)[0] for k in make("plain_down", 0).state_dict()} == {"net.0", "net.1"}
    assert model.net[0].out_channels == min(12, 2 * 5)  # inner width min(in, bn_width * out)
    dense = DenseConcatBlock(8, 4, 3)
    assert dense.out_channels == 20 and dense.layers[2].conv1.in_channels == 16


def test_auto_compute_path_rules(monkeypatch):
    model = make("dense6", new_seed())
    x = torch.randn(2, 5, 6, 6)
    seen = []
    monkeypatch.setattr(DenseConcatBlock, "_folded", lambda self, x: seen.append("folded") or torch.zeros(1))
    model.set_backend("auto")
    model.train()
    y = model(x)
    assert y.requires_grad and not seen  # training: reference, with autograd
    model.eval()
    model(x)
    assert not seen  # eval with grad mode on: reference
    with torch.no_grad():
        model(x)
    assert seen == ["folded"]  # eval, grad off: the fast path, folded on CPU


def test_backend_errors(monkeypatch):
    model = make("conv3x3", new_seed())
    with pytest.raises(ValueError, match="backend must be one of"):
        model.set_backend("fast")  # a compute path, not a backend
    with pytest.raises(ValueError, match="compute_path must be one of"):
        set_compute_path(model, "fused")  # a backend, not a compute path
    with pytest.raises(ValueError, match="gate_ops must be one of"):
        set_gate_ops(model, "triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        ConvBNReLU(3, 4, backend="cuda")
    model.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        model.set_backend("fused")(torch.randn(1, 5, 4, 4))
    model.eval()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="compute path 'triton' cannot run on cpu"):
        model.set_backend("triton")(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match="kind must be"):
        BottleneckConv(4, 4, kind="up")
    with pytest.raises(ValueError, match="expected input"):
        DenseConcatBlock(4, 2, 2)(torch.randn(1, 3, 4, 4))
    buf = torch.zeros(1, 9, 4, 4)
    with pytest.raises(ValueError, match=r"BottleneckConv.into: c_in must be 5, got 4"):
        BottleneckConv(5, 2).eval().into(buf, 4, buf, 5)
    assert buf.eq(0).all(), "nothing written"


def test_into_writes_only_its_window():
    """ConvStack.into on the CPU fused path: out[:, c_out0:c_out0+C_out] = module(x[:, :c_in]), and
    the rest of the buffer (here x itself) untouched."""
    seed = new_seed()
    gen = generator(seed)
    conv = BottleneckConv(5, 3, "normal")
    randomise_bn(conv, gen, affine=True)
    conv.eval()
    buf = torch.randn(2, 11, 7, 5, generator=gen)
    before = buf.clone()
    with torch.no_grad():
        want = conv.set_backend("reference")(buf[:, :5])
        conv.set_backend("fused").into(buf, 5, buf, 6)
    torch.testing.assert_close(buf[:, 6:9], want, **MODULE_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")
    assert torch.equal(buf[:, :6], before[:, :6]) and torch.equal(buf[:, 9:], before[:, 9:]), f"seed={seed}"


def compute_paths(model):
    return [m.compute_path for m in model.modules() if isinstance(m, ComputePathModule)]


def test_set_backend_is_recursive_on_any_model():
    model = nn.Sequential(ConvBNReLU(3, 4), nn.Sequential(DenseConcatBlock(4, 2, 2)), nn.ReLU())
    set_backend(model, "reference")
    assert set(compute_paths(model)) == {"reference"}
    model[0].set_backend("fused")
    assert model[0].compute_path == "fast" and model[1][0].compute_path == "reference"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_sets_both_settings(backend):
    """set_backend is the common switch: BACKENDS[backend] = (compute path, gate ops), on every
    eexit module of any model; set_compute_path / set_gate_ops change one setting alone."""
    exit_net = EarlyExitNetwork([ConvBNReLU(3, 4), ConvBNReLU(4, 4)], [pool_linear_head(4, 3), pool_linear_head(4, 3)])
    model = nn.Sequential(exit_net, DenseConcatBlock(4, 2, 2))
    path, gate_ops = BACKENDS[backend]
    set_backend(model, backend)
    assert set(compute_paths(model)) == {path} and exit_net.gate_ops == gate_ops
    assert f"compute_path={path!r}" in repr(model[1]) and f"gate_ops={gate_ops!r}" in repr(exit_net)
    other = next(p for p in COMPUTE_PATHS if p != path)
    with restoring_backends(model):
        set_compute_path(model, other)
        assert set(compute_paths(model)) == {other} and exit_net.gate_ops == gate_ops
        set_gate_ops(model, next(g for g in GATE_OPS if g != gate_ops))
        assert exit_net.gate_ops != gate_ops
    assert set(compute_paths(model)) == {path} and exit_net.gate_ops == gate_ops


@pytest.mark.parametrize("gate_ops", GATE_OPS)
def test_infer_gates_with_the_named_ops(monkeypatch, gate_ops):
    """gate_ops alone decides which exit_gate infer calls, whatever the compute path."""
    from eexit import ops, reference

    called = []
    for name, module in [("fused", ops), ("reference", reference)]:
        real = module.exit_gate
        monkeypatch.setattr(module, "exit_gate", lambda *a, _n=name, _f=real, **k: called.append(_n) or _f(*a, **k))
    net = EarlyExitNetwork([ConvBNReLU(3, 4), ConvBNReLU(4, 4)], [pool_linear_head(4, 3), pool_linear_head(4, 3)])
    net.eval().set_backend("fused")
    set_gate_ops(net, gate_ops)
    net.infer(torch.randn(3, 3, 5, 5), 0.5)
    assert called and set(called) == {gate_ops}


def bytes_allocated(fn) -> int:
    """Bytes the ops inside fn allocated (sum of positive per-op allocations, CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def test_dense_block_memory_is_linear_in_layers():
    """Bytes allocated by one forward: linear in L for the fused path (one buffer, reused scratch,
    per-layer temporaries of fixed size), quadratic for the reference (a cat per layer)."""
    x = torch.randn(2, 8, 16, 16)

    def allocated(layers: int, backend: str) -> int:
        model = DenseConcatBlock(8, 4, layers).eval().set_backend(backend)
        with torch.inference_mode():
            return bytes_allocated(lambda: model(x))

    fused = {L: allocated(L, "fused") for L in (4, 8, 16)}
    ref = {L: allocated(L, "reference") for L in (4, 8, 16)}
    # second differences: ~0 for a linear function, > 0 for a quadratic one
    fused_curve = (fused[16] - fused[8]) - 2 * (fused[8] - fused[4])
    ref_curve = (ref[16] - ref[8]) - 2 * (ref[8] - ref[4])
    assert abs(fused_curve) <= 0.05 * fused[16], (fused, ref)
    assert ref_curve > 0.2 * ref[16], (fused, ref)
    assert fused[16] < 0.6 * ref[16], (fused, ref)


LOW_PRECISION_SCRIPT = r"""
import os, sys, torch
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # test_nn_modules, and helpers from tests/
from test_nn_modules import KINDS, in_channels, make, run
from helpers import generator
for kind in KINDS:
    for dtype in (torch.float16, torch.bfloat16):
        model = make(kind, SEED).to(DEVICE)
        x = torch.randn(3, in_channels(model), 15, 13, generator=generator(SEED)).to(DEVICE)
        ref = run(model, "reference", x)
        low = run(model.to(dtype), "reference", x.to(dtype)).float()  # PyTorch's own low-precision error
        bound = 4 * (low - ref).abs().max().item() + 1e-2
        for backend in BACKENDS:
            err = (run(model, backend, x.to(dtype)).float() - ref).abs().max().item()
            assert err <= bound, (kind, backend, dtype, err, bound)
print("ok")
"""


# cpu: the folded path (and the script itself, which otherwise only a GPU machine would run);
# cuda: folded cuDNN convolutions and the compiled Triton kernels
@pytest.mark.parametrize("device,backends", [
    ("cpu", ("fused",)),
    pytest.param("cuda", ("fused", "triton"),
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_low_precision_fused_matches_reference(device, backends):
    """The fused backend (and on the GPU the Triton kernels, compiled) in fp16 and bf16, within 4x
    PyTorch's own low-precision error against fp32, in a child process: this process may run the
    Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py)."""
    import os
    import subprocess
    import sys

    script = (LOW_PRECISION_SCRIPT.replace("TESTS", repr(os.path.dirname(__file__))).replace("SEED", str(new_seed()))
              .replace("DEVICE", repr(device)).replace("BACKENDS", repr(backends)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
