"""eexit.nn modules on the Triton backend against the reference, under the Triton interpreter
(tiny shapes: every program instance costs about a millisecond here)."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton (GPU runs: test_nn_modules)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from helpers import generator, new_seed  # noqa: E402
from test_nn_modules import FORMATS, in_channels, make, run  # noqa: E402

# fp16 storage between the two convs of a layer: fp16 rounding of activations of order 1-10.
TRITON_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2)}


@pytest.mark.parametrize("kind", ["conv3x3", "conv_stem_7x7", "bottleneck_normal", "bottleneck_down", "plain_down",
                                  "dense6"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference(kind, fmt, dtype):
    seed = new_seed()
    model = make(kind, seed)
    x = torch.randn(2, in_channels(model), 5, 7, generator=generator(seed)).contiguous(memory_format=fmt)
    ref = run(model, "reference", x)
    got = run(model, "triton", x.to(dtype))
    assert got.dtype == dtype and got.shape == ref.shape
    assert got.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got.float(), ref, **TRITON_TOL[dtype], msg=lambda m: f"seed={seed} {m}")


def test_triton_folding_follows_edits():
    seed = new_seed()
    model = make("dense6", seed)
    x = torch.randn(1, 5, 4, 4, generator=generator(seed))
    run(model, "triton", x)
    model.layers[1].norm1.running_var.mul_(3.0)
    with torch.no_grad():
        model.layers[4].conv2.weight.add_(0.5)
    torch.testing.assert_close(run(model, "triton", x), run(model, "reference", x), **TRITON_TOL[torch.float32])
