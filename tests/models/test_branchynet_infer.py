"""infer on the three BranchyNet models equals the dense simulation and is batch-invariant."""
import pytest
import torch

from eexit.models import b_alexnet, b_lenet, b_resnet110

from helpers import MODULE_TOL, generator, new_seed, randomise_bn
from infer_checks import check_infer_matches_simulation

pytestmark = pytest.mark.usefixtures("one_thread")
MODELS = {"b_lenet": (b_lenet, (1, 28, 28)), "b_alexnet": (b_alexnet, (3, 32, 32)),
          "b_resnet110": (b_resnet110, (3, 32, 32))}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("criterion", ["entropy", "confidence"])
def test_infer(name, criterion):
    seed = new_seed()
    build, size = MODELS[name]
    torch.manual_seed(seed)
    net = build().eval()
    x = torch.randn(12, *size, generator=generator(seed))
    # Chainer's initialisation gives logits in the hundreds (confidence 1, entropy 0 for every
    # sample): scale each exit's last Linear so its logits are O(10) and the scores spread out,
    # as a trained network's would; this test is about infer's semantics, not the init.
    with torch.inference_mode():
        peaks = [z.abs().max().item() for z in net(x)]
    with torch.no_grad():
        for head, peak in zip(net.exits, peaks):
            last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.mul_(10.0 / peak)
            last.bias.mul_(10.0 / peak)
    got, thr = check_infer_matches_simulation(net, x, criterion, seed, tol=1e-4)
    with torch.inference_mode():
        for i in (0, 11):
            one = net.infer(x[i: i + 1], thr, criterion)
            assert one.exit_index.item() == got.exit_index[i].item(), f"seed={seed} row={i}"
            assert one.pred.item() == got.pred[i].item()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_fused_backend_matches_reference(name, fmt):
    """Every exit's logits on the fused backend (direct convolutions, one-pass LRN, folded ResBlocks,
    in-place ReLUs) against the reference backend, float32; batch 1 and an odd batch."""
    seed = new_seed()
    build, size = MODELS[name]
    torch.manual_seed(seed)
    net = randomise_bn(build(), generator(seed), mean_std=0.5, affine=True).eval()
    for n in (1, 7):
        x = torch.randn(n, *size, generator=generator(seed + n)).contiguous(memory_format=fmt)
        with torch.inference_mode():
            want = net.set_backend("reference")(x)
            got = net.set_backend("fused")(x)
        for k, (g, w) in enumerate(zip(got, want)):
            scale = max(1.0, w.abs().max().item())
            torch.testing.assert_close(g, w, rtol=MODULE_TOL[torch.float32]["rtol"],
                                       atol=MODULE_TOL[torch.float32]["atol"] * scale,
                                       msg=lambda m: f"seed={seed} n={n} exit {k}: {m}")
