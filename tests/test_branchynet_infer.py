"""infer on the three BranchyNet models equals the dense simulation and is batch-invariant."""
import pytest
import torch

from eexit.models import b_alexnet, b_lenet, b_resnet110
from helpers import generator, new_seed
from test_runner import check_infer_matches_simulation

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
    # logits reach hundreds after 110 float32 conv layers whose blocking depends on the batch size
    # (the compacted batch is smaller than the dense one): relative 1e-3, decisions exact
    got, thr = check_infer_matches_simulation(net, x, criterion, seed, tol=1e-3)
    with torch.inference_mode():
        for i in (0, 11):
            one = net.infer(x[i: i + 1], thr, criterion)
            assert one.exit_index.item() == got.exit_index[i].item(), f"seed={seed} row={i}"
            assert one.pred.item() == got.pred[i].item()
