"""The ops as torch.library ops: registration, fake implementations, opcheck, torch.compile,
and the fallback to the reference when the extension is missing."""
import os
import subprocess
import sys

import pytest
import torch

import eexit
from eexit import ops, reference

from helpers import DEVICES, generator, new_seed


def test_extension_is_loaded():
    assert eexit.has_extension()
    assert hasattr(torch.ops.eexit, "exit_gate") and hasattr(torch.ops.eexit, "compact")


def test_extension_uses_the_shared_cpp_runtime():
    """eexit._C must not carry its own copy of libstdc++ (a build on a GPU image did: every C++
    error message with a number in it then crashed the process). setup.py links the shared
    runtime explicitly; gpu_check's build step checks the same."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    if not eexit.has_extension() or not gpu_check.command_output(["nm", "--version"]):
        pytest.skip("needs the built extension and nm")
    assert gpu_check.embedded_cpp_runtime() == ""
    with pytest.raises(IndexError, match=r"index values must be in \[0, 4\) for tensors\[0\], got range \[0, 4\]"):
        torch.ops.eexit.compact([torch.randn(4, 2)], torch.tensor([0, 4]))  # a message with numbers in it


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_opcheck_exit_gate(device, dtype, criterion):
    gen = generator(new_seed())
    for n, c in [(0, 5), (1, 1), (17, 10), (64, 300)]:
        x = (torch.randn(n, c, generator=gen) * 3).to(dtype=dtype, device=device)
        torch.library.opcheck(torch.ops.eexit.exit_gate.default, (x, 0.3, criterion))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_compact(device):
    gen = generator(new_seed())
    a = torch.randn(9, 3, 4, 5, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    b = torch.randn(9, 7, generator=gen).to(device)
    for idx in ([], [3], [8, 0, 4, 4]):
        index = torch.tensor(idx, dtype=torch.long, device=device)
        torch.library.opcheck(torch.ops.eexit.compact.default, ([a, b], index))


def gate_then_compact(logits, feats, threshold: float):
    dec = ops.exit_gate(logits, threshold, "confidence")
    kept = ops.compact([feats, logits], dec.keep_idx)
    return dec.exit_idx, dec.pred, dec.score, kept[0] * 2, kept[1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(device, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(gate_then_compact, fullgraph=True, dynamic=dynamic)
    gen = generator(seed := new_seed())
    for n in (32, 45):
        logits = (torch.randn(n, 10, generator=gen) * 3).to(device)
        feats = torch.randn(n, 4, 3, 3, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
        got, want = compiled(logits, feats, 0.6), gate_then_compact(logits, feats, 0.6)
        for g, w in zip(got, want):
            assert torch.equal(g, w), f"seed={seed} n={n}"


FALLBACK_SCRIPT = r"""
import sys, warnings
sys.modules["eexit._C"] = None  # as if the extension had not been built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import eexit
    import eexit.ops
mine = [w for w in caught if "eexit._C" in str(w.message)]
assert len(mine) == 1 and issubclass(mine[0].category, RuntimeWarning), [str(w.message) for w in caught]
assert not eexit.has_extension()
import torch
x = torch.randn(20, 6)
a, b = eexit.exit_gate(x, 0.4), eexit.reference.exit_gate(x, 0.4)
assert all(torch.equal(p, q) for p, q in zip(a, b))
(c,) = eexit.compact([x], a.keep_idx)
assert torch.equal(c, x[a.keep_idx])
print("ok")
"""


def test_fallback_without_extension_warns_once_and_uses_reference():
    out = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_reference_api_matches_ops():
    """Same call signature and result type in both backends."""
    x = torch.randn(6, 4)
    a, b = ops.exit_gate(x, 0.5), reference.exit_gate(x, 0.5)
    assert type(a) is type(b) is ops.ExitDecision
    assert a._fields == ("exit_idx", "keep_idx", "pred", "score")
