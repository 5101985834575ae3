"""attach_exits on the traced graph: what forward does between modules is kept, values crossing a
cut travel with it, heads by feature kind, and what cannot be cut is refused with a clear error."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eexit.nn import TokenHead, attach_exits

from helpers import generator, new_seed
from infer_checks import check_infer_matches_simulation


class Functional(nn.Module):
    """Functional ReLU, pooling and flatten between modules, and a skip that crosses the cuts."""

    def __init__(self, classes=6):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        s = F.relu(self.a(x))
        y = F.max_pool2d(F.relu(self.b(s)), 2)
        y = torch.cat([y, F.avg_pool2d(s, 2)], 1)  # s crosses the cut at b
        y = F.relu(self.c(y)) + y[:, :12]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Tokens(nn.Module):
    """A tiny transformer: class token and positional embedding (parameters, not per-sample)."""

    def __init__(self, dim=16, classes=5):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 7, dim))
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
                                      for _ in range(3)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # x [B, 6, 4]
        t = self.embed(x)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.blocks(t)[:, 0])


class Dropping(nn.Module):
    """Functional dropout reads self.training in Python: its graph differs by mode."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 9), nn.Linear(9, 9), nn.Linear(9, 3)

    def forward(self, x, scale=None):
        y = F.dropout(torch.tanh(self.a(x)), 0.5, self.training)
        return self.c(F.dropout(torch.tanh(self.b(y)), 0.5, self.training))


def spread(net, factor):
    with torch.no_grad():
        for e in net.exits[:-1]:
            [m for m in e.modules() if isinstance(m, nn.Linear)][-1].weight.mul_(factor)
    return net


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_functional_calls_and_skips_are_kept(criterion):
    seed = new_seed()
    torch.manual_seed(seed)
    model = Functional().eval()
    net = spread(attach_exits(model, ["a", "b"], 6, torch.zeros(1, 3, 9, 9)), 30.0).eval()
    x = torch.randn(19, 3, 9, 9, generator=generator(seed))
    h = net.stages[1](net.stages[0](x))
    assert isinstance(h, tuple) and len(h) == 2 and h[1].shape == (19, 8, 9, 9)  # b's output, then s
    with torch.no_grad():
        torch.testing.assert_close(net(x)[-1], model(x), rtol=0, atol=0)
    got, thr = check_infer_matches_simulation(net, x, criterion, seed)
    for i in (0, 18):  # batch-invariant
        one = net.infer(x[i: i + 1], thr, criterion)
        assert one.exit_index.item() == got.exit_index[i].item(), f"seed={seed}"
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(net.infer(x_cl, thr, criterion).exit_index, got.exit_index)


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_token_backbone_gets_token_heads(tokens):
    seed = new_seed()
    torch.manual_seed(seed)
    model = Tokens().eval()
    net = spread(attach_exits(model, ["blocks.0", "blocks.1"], 5, torch.zeros(2, 6, 4), tokens=tokens), 20.0).eval()
    assert all(isinstance(e.head, TokenHead) and e.head.pool == tokens for e in net.exits[:-1])
    x = torch.randn(13, 6, 4, generator=generator(seed))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[-1], model(x))
        head, f = net.exits[0].head, net.stages[0](x)
        torch.testing.assert_close(net(x)[0], head.fc(head.norm(f[:, 0] if tokens == "cls" else f.mean(1))))
    check_infer_matches_simulation(net, x, "confidence", seed)


def test_vector_features_get_linear_heads_and_train_mode_graphs():
    seed = new_seed()
    torch.manual_seed(seed)
    model = Dropping()
    net = attach_exits(model, ["a", "b"], 3, torch.zeros(1, 5))
    assert all(isinstance(e.head, nn.Linear) for e in net.exits[:-1]) and net.training and model.training
    assert all(s._train_graph is not None for s in net.stages)  # the modes trace differently
    x = torch.randn(11, 5, generator=generator(seed))
    for mode in (True, False):
        net.train(mode)
        model.train(mode)
        torch.manual_seed(seed)
        want = model(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(net(x)[-1], want)
    # the train-mode graph runs outside the module tree: the state_dict and modules() stay the same
    # (it was once registered as a submodule, and strict loading into a fresh network then failed)
    fresh = attach_exits(Dropping(), ["a", "b"], 3, torch.zeros(1, 5))
    assert list(net.state_dict()) == list(fresh.state_dict())
    assert len(list(net.modules())) == len(list(fresh.modules()))
    fresh.load_state_dict(net.state_dict())
    net.train()
    net.to(torch.float64)  # the train-mode graph follows the module's conversion
    assert net(x.double())[-1].dtype == torch.float64


def test_training_flags_are_restored_and_modules_shared():
    model = Functional()
    model.b.eval()  # a mixed state, as while fine-tuning part of a model
    attach_exits(model, ["a"], 6, torch.zeros(1, 3, 8, 8))
    assert model.training and model.a.training and not model.b.training


def test_state_dict_round_trip_and_copies():
    seed = new_seed()
    torch.manual_seed(seed)
    net = attach_exits(Functional().eval(), ["a", "b"], 6, torch.zeros(1, 3, 8, 8)).eval()
    other = attach_exits(Functional().eval(), ["a", "b"], 6, torch.zeros(1, 3, 8, 8)).eval()
    other.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, 8, 8, generator=generator(seed))
    with torch.no_grad():
        want = net(x)
        for copied in (other, copy.deepcopy(net)):
            assert all(torch.equal(a, b) for a, b in zip(copied(x), want))


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.b(self.a(x))
        return self.b(x)


class BatchSizeAcross(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 1), nn.Linear(12, 2)

    def forward(self, x):
        n = x.shape[0]
        return self.b(self.a(x).reshape(n, -1))  # n is computed before the cut at a and used after it


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x + torch.rand_like(x)))


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


def test_what_cannot_be_cut_is_refused_clearly():
    with pytest.raises(ValueError, match=r"torch.fx cannot trace Branching: .*control flow.*if x.sum\(\) > 0.*"
                                         r"EarlyExitNetwork\(stages, exits\)"):
        attach_exits(Branching(), ["a"], 2, torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"'getitem' \(computed before 'a', used after it\) is a int, not a "
                                         r"per-sample tensor \[2, \.\.\.\]"):
        attach_exits(BatchSizeAcross(), ["a"], 2, torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="the network cut at 'a' computes something else than the model"):
        attach_exits(Noisy(), ["a"], 2, torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"the output of 'lstm' is a tuple, not a per-sample tensor"):
        attach_exits(TwoOutputs(), ["lstm"], 2, torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match=r"'a' is called 2 times in forward"):
        attach_exits(Twice(), ["a"], 3, torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"TwoInputs.forward takes more than one input"):
        attach_exits(TwoInputs(), ["a"], 3, torch.zeros(1, 3))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.b(self.a(self.a(x)))


class TwoInputs(Twice):
    def forward(self, x, y):
        return self.b(self.a(x) + y)
