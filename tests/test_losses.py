"""Training losses (eexit.losses)."""
import pytest
import torch
import torch.nn.functional as F

from eexit.losses import distillation_loss, joint_loss

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


def test_distillation_loss_matches_hand_computation():
    seed = new_seed()
    gen = generator(seed)
    outs = [torch.randn(6, 7, generator=gen, dtype=torch.float64) * 3 for _ in range(4)]
    for t in (1.0, 4.0, 0.5):
        p = F.softmax(outs[-1] / t, 1)  # the final exit, the teacher
        want = sum(t * t * (p * (p.log() - F.log_softmax(z / t, 1))).sum(1).mean() for z in outs[:-1])
        torch.testing.assert_close(distillation_loss(outs, t), want, msg=f"seed {seed}, T={t}")
        with_kl_div = sum(t * t * F.kl_div(F.log_softmax(z / t, 1), p, reduction="batchmean") for z in outs[:-1])
        torch.testing.assert_close(distillation_loss(outs, t), with_kl_div, msg=f"seed {seed}, T={t}")
    assert distillation_loss(outs).item() == pytest.approx(distillation_loss(outs, 4.0).item()), "T defaults to 4"


def test_distillation_loss_is_zero_when_the_exits_agree():
    z = torch.randn(5, 3, generator=generator(new_seed()))
    assert distillation_loss([z, z.clone(), z.clone()], 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss([z + 2.5, z], 1.0).item() == pytest.approx(0.0, abs=1e-6), "a constant shift: same softmax"
    assert distillation_loss([z], 2.0).item() == 0.0, "one exit: nothing to distil"
    assert distillation_loss((z * 2, z), 1.0).item() > 0


def test_distillation_loss_gradient_reaches_only_the_earlier_exits():
    seed = new_seed()
    gen = generator(seed)
    outs = [torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]
    t = 2.0
    distillation_loss(outs, t).backward()
    assert outs[-1].grad is None, "the final exit's logits are detached"
    p = torch.softmax(outs[-1].detach() / t, 1)
    for z in outs[:-1]:  # d/dz of T^2 * batch-mean KL(p || softmax(z / T)) = T * (softmax(z / T) - p) / B
        torch.testing.assert_close(z.grad, t * (torch.softmax(z.detach() / t, 1) - p) / 4, msg=f"seed {seed}")


@pytest.mark.parametrize("outputs, temperature, match", [
    ([], 1.0, "empty"),
    (torch.zeros(2, 3), 1.0, "list or tuple"),
    ([torch.zeros(2, 3), "logits"], 1.0, r"outputs\[1\] must be a tensor"),
    ([torch.zeros(3), torch.zeros(3)], 1.0, r"logits \[B, C\]"),
    ([torch.zeros(2, 3), torch.zeros(3, 3)], 1.0, r"outputs\[0\] has shape \(2, 3\) but the last exit \(3, 3\)"),
    ([torch.zeros(2, 4), torch.zeros(2, 3)], 1.0, r"outputs\[0\] has shape"),
    ([torch.zeros(2, 3)] * 2, 0.0, "temperature must be a finite number > 0"),
    ([torch.zeros(2, 3)] * 2, -1.0, "temperature"),
    ([torch.zeros(2, 3)] * 2, float("inf"), "temperature"),
    ([torch.zeros(2, 3)] * 2, float("nan"), "temperature"),
    ([torch.zeros(2, 3)] * 2, True, "temperature"),
    ([torch.zeros(2, 3)] * 2, "4", "temperature"),
])
def test_distillation_loss_bad_inputs(outputs, temperature, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(outputs, temperature)
