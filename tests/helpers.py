"""Shared test helpers: devices, tolerances (the one place they are stated) and inputs."""
from __future__ import annotations

import os
import secrets

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Scores are computed in float32 whatever the logits' dtype (fp16/bf16 convert exactly),
# so one float32-level bound per dtype; the fused CPU path uses a 20-ulp exp.
SCORE_TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-5, rtol=2e-5),
}

# append_channels' pre-activation relu(x * scale + shift): float32 math, rounded once to the
# output dtype. The CPU kernel uses a fused multiply-add, the reference a multiply and an add,
# so float32 results may differ by the product's rounding and a half/bfloat16 result by one ulp.
PREACT_TOL = {
    torch.float32: dict(atol=2e-6, rtol=1e-6),
    torch.float16: dict(atol=1e-5, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-5, rtol=8e-3),
}


# eexit.ops.direct_conv2d vs a float64 reference: at most CONV_ERROR_FACTOR times F.conv2d's own
# error in the same dtype, plus CONV_ATOL (float32 sums of up to a few hundred products; one
# rounding to half / bfloat16 at the end).
CONV_ERROR_FACTOR = 4
CONV_ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# eexit.nn modules' folded paths vs their reference path in float32/bfloat16: folded BatchNorm
# reassociates products, a few ulps of the activations' scale.
MODULE_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}


def assert_within_torch_error(got, torch_out, exact, dtype, msg=""):
    """got's error against the float64 ``exact`` at most CONV_ERROR_FACTOR x torch_out's (PyTorch's
    own result in the same dtype) plus CONV_ATOL[dtype]."""
    torch_err = (torch_out.double() - exact).abs().max().item()
    err = (got.double() - exact).abs().max().item()
    assert err <= CONV_ERROR_FACTOR * torch_err + CONV_ATOL[dtype], (msg, err, torch_err)


# eexit.ops.local_response_norm vs float64 torch.nn.functional.local_response_norm: float32
# arithmetic (a 1-2 ulp power) rounded once to the output dtype.
LRN_TOL = {
    torch.float32: dict(atol=1e-6, rtol=4e-6),
    torch.float16: dict(atol=1e-5, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-5, rtol=8e-3),
}

# Triton tests run under the interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1
# unless EEXIT_TEST_GPU=1), or compiled on a CUDA GPU.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if TRITON_INTERPRET else "cuda"
# bf16 arithmetic is wrong in the interpreter: bf16 only on the GPU.
TRITON_DTYPES = [torch.float32, torch.float16] + ([] if TRITON_INTERPRET else [torch.bfloat16])

# Triton conv kernels vs a float64 reference. float32: IEEE products in the interpreter, TF32 on
# the GPU (torch.backends.cudnn.allow_tf32 is on by default, as for F.conv2d).
KERNEL_TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4) if TRITON_INTERPRET else dict(atol=5e-3, rtol=5e-3),
    torch.float16: dict(atol=2e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=8e-2, rtol=3e-2),
}
# eexit.nn modules on the Triton path vs the reference: low-precision storage between the two
# convs of a layer rounds activations of order 1-10; float32 as above (kernels and reference alike).
TRITON_MODULE_TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4) if TRITON_INTERPRET else dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=1.5e-1, rtol=1e-1),
}


def require_triton_device() -> None:
    """Skips the calling test module where the Triton kernels cannot run (no interpreter, no GPU)."""
    import pytest

    pytest.importorskip("triton")
    if not TRITON_INTERPRET and not torch.cuda.is_available():
        pytest.skip("compiled Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1)", allow_module_level=True)


def new_seed() -> int:
    """A fresh seed per test (EEXIT_TEST_SEED replays one); tests put it in their messages."""
    return int(os.environ.get("EEXIT_TEST_SEED", secrets.randbits(31)))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_logits(n: int, c: int, dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    """Logits [n, c] with a random temperature per row: some rows peaked, some flat."""
    scale = torch.rand(n, 1, generator=gen) * 8
    x = torch.randn(n, c, generator=gen) * scale
    return x.to(dtype=dtype, device=device)


def randomise_bn(model, gen: torch.Generator, mean_std: float = 0.2, affine: bool = False):
    """Non-trivial BatchNorm running statistics (mean ~ N(0, mean_std), var in [0.5, 1.5)), and
    with ``affine`` weight in [0.5, 1.5) and bias ~ N(0, 0.3): folding then really changes weights."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * mean_std)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            if affine:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return model
