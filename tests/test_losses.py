"""Training losses (eexit.losses)."""
import pytest
import torch
import torch.nn.functional as F

from eexit.losses import joint_loss

from helpers import generator, new_seed


def test_joint_loss_matches_weighted_sum_and_backprops():
    seed = new_seed()
    gen = generator(seed)
    outs = [torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]
    target = torch.randint(0, 5, (4,), generator=gen)

    def ce(z):  # -log softmax at the target, batch mean
        return (torch.logsumexp(z, 1) - z[torch.arange(4), target]).mean()

    weights = [1.0, 0.5, 0.25]
    loss = joint_loss(outs, target, weights)
    want = sum(w * ce(z) for w, z in zip(weights, outs))
    torch.testing.assert_close(loss, want, msg=f"seed {seed}")
    torch.testing.assert_close(joint_loss(outs, target), sum(ce(z) for z in outs), msg=f"seed {seed}")
    torch.testing.assert_close(joint_loss(outs, target, torch.tensor(weights, dtype=torch.float64)), want)

    loss.backward()
    for w, z in zip(weights, outs):  # d/dz of w * mean CE = w * (softmax - onehot) / B
        grad = w * (torch.softmax(z.detach(), 1) - F.one_hot(target, 5)) / 4
        torch.testing.assert_close(z.grad, grad, msg=f"seed {seed}")


@pytest.mark.parametrize("outputs, target, weights, match", [
    ([], torch.tensor([0]), None, "empty"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), [1.0], "2 exits"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), [1.0, 1.0, 1.0], "2 exits"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), torch.ones(3), "one value per exit"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), [1.0, -1.0], r"weights\[1\]"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), [1.0, float("nan")], r"weights\[1\]"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]), ">= 0"),
    ([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), 1.0, "sequence"),
    ([torch.zeros(2, 3), torch.zeros(3, 3)], torch.tensor([0, 1]), None, r"outputs\[1\] has batch size 3"),
    ([torch.zeros(3)], torch.tensor([0, 1]), None, r"logits \[B, C\]"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), None, "list or tuple"),
])
def test_joint_loss_bad_inputs(outputs, target, weights, match):
    with pytest.raises(ValueError, match=match):
        joint_loss(outputs, target, weights)
