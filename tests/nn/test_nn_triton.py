"""eexit.nn modules on the Triton backend against the reference: by default under the Triton
interpreter on CPU (tests/conftest.py; tiny shapes: every program instance costs about a
millisecond there), compiled on a CUDA GPU with ``EEXIT_TEST_GPU=1``."""
import pytest
import torch

from eexit.nn import set_backend

from helpers import TRITON_DEVICE as DEVICE
from helpers import TRITON_DTYPES as DTYPES
from helpers import TRITON_MODULE_TOL as TRITON_TOL
from helpers import generator, new_seed, require_triton_device
from test_nn_modules import FORMATS, in_channels, make, run

require_triton_device()


@pytest.mark.parametrize("kind", ["conv3x3", "conv_stem_7x7", "bottleneck_normal", "bottleneck_down", "plain_down",
                                  "dense6"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference(kind, fmt, dtype):
    seed = new_seed()
    model = make(kind, seed).to(DEVICE)
    x = torch.randn(2, in_channels(model), 5, 7, generator=generator(seed)).to(DEVICE, memory_format=fmt)
    ref = run(model, "reference", x)
    got = run(model, "triton", x.to(dtype))
    assert got.dtype == dtype and got.shape == ref.shape
    assert got.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got.float(), ref, **TRITON_TOL[dtype], msg=lambda m: f"seed={seed} {m}")


def test_triton_folding_follows_edits():
    seed = new_seed()
    model = make("dense6", seed).to(DEVICE)
    x = torch.randn(1, 5, 4, 4, generator=generator(seed)).to(DEVICE)
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
    stages, _ = model.to(DEVICE).exit_stages()
    x = torch.randn(1, 3, 32, 32, generator=gen).to(DEVICE)
    feats = set_backend(stages[0], "reference")(x)  # stem + layers
    feats = [f.contiguous(memory_format=fmt) for f in feats]
    block = stages[1]
    with torch.no_grad():
        ref = set_backend(block, "reference")(feats)
    windows = []
    for name in ("conv2d_nhwc", "bottleneck_nhwc"):
        real = getattr(kernels, name)

        def spy(*args, _real=real, **kw):
            windows.append(kw.get("out") is not None and kw.get("c_out0", 0) > 0)
            return _real(*args, **kw)

        monkeypatch.setattr(kernels, name, spy)
    with torch.no_grad():
        got = set_backend(block, "triton")(feats)
    assert [g.shape for g in got] == [r.shape for r in ref]
    for g, r in zip(got, ref):
        assert g.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(g, r, **TRITON_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")
    layer_convs = sum(1 for u in block.modules() if type(u).__name__ == "BottleneckConv")
    assert layer_convs >= 2, "the block holds MSD layers"
    assert windows.count(True) == (layer_convs if fmt == torch.channels_last else 0), f"seed={seed} {windows}"
