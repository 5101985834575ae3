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


@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_msdnet_block_grows_in_place_through_channel_windows(fmt, monkeypatch):
    """MSD layers on the Triton path: with channels_last concat buffers every conv writes its channel
    window of the buffer itself (``out=`` the buffer), no slice copies; with contiguous ones the
    results are copied in. Both equal the reference."""
    from eexit import kernels
    from eexit.models import MSDNet
    from helpers import randomise_bn

    seed = new_seed()
    gen = generator(seed)
    torch.manual_seed(seed)
    model = MSDNet(2, 4, 2, 1, "even", 2, [1, 2, 4], [1, 2, 4], num_classes=3, dataset="cifar").eval()
    randomise_bn(model, gen, affine=True)
    stages, _ = model.exit_stages()
    feats = stages[0].set_backend("reference")(torch.randn(1, 3, 32, 32, generator=gen))  # stem + layers
    feats = [f.contiguous(memory_format=fmt) for f in feats]
    block = stages[1]
    with torch.no_grad():
        ref = block.set_backend("reference")(feats)
    windows = []
    for name in ("conv2d_nhwc", "bottleneck_nhwc"):
        real = getattr(kernels, name)

        def spy(*args, _real=real, **kw):
            windows.append(kw.get("out") is not None and kw.get("c_out0", 0) > 0)
            return _real(*args, **kw)

        monkeypatch.setattr(kernels, name, spy)
    with torch.no_grad():
        got = block.set_backend("triton")(feats)
    assert [g.shape for g in got] == [r.shape for r in ref]
    for g, r in zip(got, ref):
        assert g.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(g, r, **TRITON_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")
    layer_convs = sum(1 for u in block.modules() if type(u).__name__ == "BottleneckConv")
    assert layer_convs >= 2, "the block holds MSD layers"
    assert windows.count(True) == (layer_convs if fmt == torch.channels_last else 0), f"seed={seed} {windows}"
