"""eexit.serve.EarlyExitEngine: the same answers as ``infer`` on each request alone, whatever the
request sizes, arrival order and batching; every row answered exactly once; faults that stay with
their requests; bounded admission; close with and without draining. No timing assertions: every
wait has a timeout so that a bug fails a test instead of hanging the suite."""
import math
import random
import threading
from concurrent.futures import wait

import numpy as np
import pytest
import torch
from torch import nn

from eexit.models import MSDNet, b_lenet
from eexit.nn import EarlyExitNetwork
from eexit.serve import EarlyExitEngine, EngineClosed, EngineOverloaded, StageFailed

from helpers import generator, new_seed, randomise_bn
from infer_checks import thresholds_between_scores, toy

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT = 60  # seconds any single wait may take before the test fails
CRITERIA = ["confidence", "entropy"]


def result(fut):
    return fut.result(timeout=TIMEOUT)


# -- models and requests ---------------------------------------------------------------------

def _spread_heads(net, x, target=10.0):
    """Scales each exit's last Linear so its logits are O(target): scores spread out, as trained ones."""
    with torch.inference_mode():
        peaks = [z.abs().max().item() for z in net(x)]
    with torch.no_grad():
        for head, peak in zip(net.exit_stages()[1], peaks):
            last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.mul_(target / peak)
            last.bias.mul_(target / peak)
    return net


def small_msdnet(seed):
    """eexit.app.zoo's msdnet_digits (4 blocks of 2 layers, 3 scales, 32 px), random weights."""
    torch.manual_seed(seed)
    net = MSDNet(4, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=10, dataset="cifar").eval()
    randomise_bn(net, generator(seed))
    return _spread_heads(net, torch.randn(16, 3, 32, 32, generator=generator(seed)))


def setup(kind, seed, n):
    """(network, [groups of samples of one shape]) with n samples in all."""
    gen = generator(seed)
    if kind == "msdnet":
        return small_msdnet(seed), [torch.randn(n, 3, 32, 32, generator=gen)]
    if kind == "b_lenet":
        torch.manual_seed(seed)
        net = b_lenet().eval()
        return _spread_heads(net, torch.randn(16, 1, 28, 28, generator=gen)), [torch.randn(n, 1, 28, 28, generator=gen)]
    stages, exits, _ = toy(kind, seed)
    net = EarlyExitNetwork(list(stages), list(exits)).eval()  # hand-built, input not declared
    if kind == "mlp":
        return net, [torch.randn(n, 12, generator=gen) * 2]
    # multi-scale features, images of two sizes (never concatenated into one batch)
    return net, [torch.randn(n // 2, 3, 6, 6, generator=gen), torch.randn(n - n // 2, 3, 5, 5, generator=gen)]


def thresholds_for(net, groups, criterion):
    with torch.inference_mode():
        per_group = [net(g) for g in groups]
    all_logits = [torch.cat(zs) for zs in zip(*per_group)]
    return thresholds_between_scores(all_logits, criterion)


def cut(groups, rng, max_size, as_list=False):
    """Requests of 1..max_size samples cut from the groups, shuffled; with ``as_list`` some are
    multi-scale inputs [images, extra] (the toy's stage 0 reads the first)."""
    requests = []
    for g in groups:
        i = 0
        while i < g.shape[0]:
            n = min(rng.randint(1, max_size), g.shape[0] - i)
            r = g[i: i + n]
            requests.append([r, torch.zeros(n, 2)] if as_list and rng.random() < 0.3 else r)
            i += n
    rng.shuffle(requests)
    return requests


def submit_from_threads(engine, requests, n_threads, rng, timeout=None):
    """Submits the requests from n_threads threads (each its share, in order); futures in request order."""
    futures = [None] * len(requests)
    shares = [list(range(t, len(requests), n_threads)) for t in range(n_threads)]
    errors = []

    def client(ids):
        try:
            for i in ids:
                futures[i] = engine.submit(requests[i], timeout=timeout)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(ids,)) for ids in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors
    assert all(f is not None for f in futures)
    return futures


def assert_same_as_infer(net, request, got, thr, criterion, msg, tol=1e-4):
    with torch.inference_mode():
        want = net.infer(request, thr, criterion)
    assert torch.equal(got.exit_index, want.exit_index), msg
    assert torch.equal(got.pred, want.pred), msg
    scale = max(want.logits.nan_to_num(0.0).abs().max().item(), 1.0)
    torch.testing.assert_close(got.logits, want.logits, atol=tol * scale, rtol=tol, equal_nan=True, msg=msg)
    torch.testing.assert_close(got.score, want.score, atol=tol, rtol=tol, equal_nan=True, msg=msg)


# -- answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("kind", ["mlp", "multiscale", "b_lenet", "msdnet"])
def test_answers_equal_infer_on_each_request(kind, criterion):
    seed = new_seed()
    rng = random.Random(seed)
    n = {"msdnet": 96, "b_lenet": 160}.get(kind, 200)
    net, groups = setup(kind, seed, n)
    thr = thresholds_for(net, groups, criterion)
    requests = cut(groups, rng, rng.choice([1, 4, 16]), as_list=kind == "multiscale")
    max_batch, max_wait = rng.choice([3, 16, 64, 256]), rng.choice([0.0, 1.0, 5.0])
    msg = f"seed={seed} max_batch={max_batch} max_wait_ms={max_wait}"
    with EarlyExitEngine(net, thr, criterion, max_batch=max_batch, max_wait_ms=max_wait) as engine:
        futures = submit_from_threads(engine, requests, 3, rng)
        answers = [result(f) for f in futures]
        stats = engine.stats()
    exits = torch.cat([a.exit_index for a in answers])
    assert len(set(exits.tolist())) > 1, f"{msg}: the thresholds should split the samples across exits"
    for i, (r, a) in enumerate(zip(requests, answers)):
        assert_same_as_infer(net, r, a, thr, criterion, f"{msg} request={i}")
    assert stats.requests == stats.completed == len(requests), msg
    assert stats.samples == sum(stats.exits) == n and stats.pending == 0, msg
    assert all(0 < m <= max_batch for m, b in zip(stats.mean_batch, stats.stage_batches) if b), msg


def test_deep_stages_run_batches_gathered_from_many_requests():
    """Single-sample requests: per-request infer runs every stage on batches of one; the engine's
    deep stages run on samples of many requests (max_wait long: stages run only full, or at close)."""
    seed = new_seed()
    net, (x,) = setup("mlp", seed, 96)
    thr = thresholds_for(net, [x], "confidence")
    engine = EarlyExitEngine(net, thr, max_batch=16, max_wait_ms=60_000)
    futures = [engine.submit(x[i: i + 1]) for i in range(96)]
    engine.close(drain=True, timeout=TIMEOUT)
    assert all(f.done() for f in futures)
    for i, f in enumerate(futures):
        assert_same_as_infer(net, x[i: i + 1], f.result(0), thr, "confidence", f"seed={seed} row={i}")
    stats = engine.stats()
    assert stats.stage_batches[0] == 6 and stats.mean_batch[0] == 16, f"seed={seed} {stats}"
    for k, (batches, samples) in enumerate(zip(stats.stage_batches, stats.stage_samples)):
        if samples > 1:
            assert stats.mean_batch[k] > 1, f"seed={seed} stage {k}: {stats}"
    assert stats.completed == 96 and sum(stats.exits) == 96


def test_every_row_answered_exactly_once():
    """Many random requests from four threads against a small max_pending (submitters wait for room):
    every future resolves once, with all its rows, and the same rows as one big infer."""
    seed = new_seed()
    rng = random.Random(seed)
    net, (x,) = setup("mlp", seed, 1500)
    thr = thresholds_for(net, [x], "entropy")
    starts, i = [], 0
    while i < x.shape[0]:
        n = min(rng.randint(1, 9), x.shape[0] - i)
        starts.append((i, n))
        i += n
    requests = [x[i: i + n] for i, n in starts]
    calls = [0] * len(requests)
    lock = threading.Lock()

    def count(k):
        def done(_):
            with lock:
                calls[k] += 1
        return done

    with EarlyExitEngine(net, thr, "entropy", max_batch=rng.choice([8, 32]), max_wait_ms=rng.choice([0.0, 2.0]),
                         max_pending=40) as engine:
        futures = submit_from_threads(engine, requests, 4, rng)
        for k, f in enumerate(futures):
            f.add_done_callback(count(k))
        done, not_done = wait(futures, timeout=TIMEOUT)
        assert not not_done, f"seed={seed}: {len(not_done)} futures never resolved"
        stats = engine.stats()
    with torch.inference_mode():
        want = net.infer(x, thr, "entropy")
    for k, ((i, n), f) in enumerate(zip(starts, futures)):
        got = f.result(0)
        assert got.logits.shape[0] == got.pred.shape[0] == got.exit_index.shape[0] == got.score.shape[0] == n
        assert torch.equal(got.exit_index, want.exit_index[i: i + n]), f"seed={seed} request={k}"
        assert torch.equal(got.pred, want.pred[i: i + n]), f"seed={seed} request={k}"
        torch.testing.assert_close(got.logits, want.logits[i: i + n], atol=1e-4, rtol=1e-4)
    assert calls == [1] * len(requests), f"seed={seed}"
    assert stats.completed == stats.requests == len(requests) and stats.samples == x.shape[0]
    assert stats.peak_pending <= 40 + 9, f"seed={seed} {stats}"


def test_nan_input_takes_the_last_exit_and_list_input():
    seed = new_seed()
    net, groups = setup("multiscale", seed, 20)
    thr = thresholds_for(net, groups, "confidence")
    x = groups[0][:3].clone()
    x[1] = float("nan")
    with EarlyExitEngine(net, thr) as engine:
        got = result(engine.submit(x))
        listed = result(engine.submit([groups[1][:4], torch.zeros(4, 2)]))
    assert got.exit_index[1].item() == len(thr) - 1
    assert_same_as_infer(net, x, got, thr, "confidence", f"seed={seed}")
    assert_same_as_infer(net, [groups[1][:4], torch.zeros(4, 2)], listed, thr, "confidence", f"seed={seed}")


# -- faults ----------------------------------------------------------------------------------

class Tagged(nn.Module):
    """Keeps column 0 (the sample's tag) and transforms the others; with ``poison``, raises when a
    sample tagged < 0 is in its batch, after recording that batch's tags."""

    def __init__(self, d, poison=False):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.poison = poison
        self.failed = []

    def forward(self, x):
        if self.poison and bool((x[:, 0] < 0).any()):
            self.failed.append(x[:, 0].tolist())
            raise ValueError("poisoned sample in the batch")
        return torch.cat([x[:, :1], torch.tanh(self.lin(x[:, 1:]))], 1)


class TagHead(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.lin = nn.Linear(d, classes)
        with torch.no_grad():
            self.lin.weight.mul_(4.0)

    def forward(self, x):
        return self.lin(x[:, 1:])


def tagged_network(seed, poison_stage=None, d=8):
    torch.manual_seed(seed)
    stages = [Tagged(d, poison=k == poison_stage) for k in range(3)]
    return EarlyExitNetwork(stages, [TagHead(d, 5) for _ in range(3)], input_shape=(d + 1,)).eval()


def tagged_inputs(n, seed, d=8):
    x = torch.randn(n, d + 1, generator=generator(seed)) * 2
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def test_a_stage_error_fails_only_the_requests_in_its_batch():
    seed = new_seed()
    rng = random.Random(seed)
    net = tagged_network(seed, poison_stage=1)
    x = tagged_inputs(400, seed)
    with torch.inference_mode():
        thr = thresholds_between_scores(net(x), "confidence")
    starts, i = [], 0
    while i < x.shape[0]:
        n = min(rng.randint(1, 6), x.shape[0] - i)
        starts.append((i, n))
        i += n
    poisoned = set(rng.sample(range(len(starts)), 4))
    requests = []
    for k, (i, n) in enumerate(starts):
        r = x[i: i + n].clone()
        if k in poisoned:  # one sample that never leaves at exit 0 (NaN) and poisons stage 1's batch
            j = rng.randrange(n)
            r[j, 1:] = float("nan")
            r[j, 0] = -1.0 - k
        requests.append(r)
    with EarlyExitEngine(net, thr, max_batch=rng.choice([4, 16, 64]), max_wait_ms=rng.choice([0.0, 2.0])) as engine:
        futures = submit_from_threads(engine, requests, 3, rng)
        done, not_done = wait(futures, timeout=TIMEOUT)
        assert not not_done
        stats = engine.stats()
        later = result(engine.submit(x[:5]))  # the engine goes on serving
    assert_same_as_infer(net, x[:5], later, thr, "confidence", f"seed={seed}")
    failed_tags = {t for batch in net.stages[1].failed for t in batch}
    assert failed_tags, f"seed={seed}: the poisoned stage never saw a poisoned sample"
    victims = {k for k, r in enumerate(requests) if failed_tags & set(r[:, 0].tolist())}
    assert poisoned <= victims
    for k, (r, f) in enumerate(zip(requests, futures)):
        if k in victims:
            err = f.exception(0)
            assert isinstance(err, StageFailed) and err.stage == 1, f"seed={seed} request={k}: {err!r}"
            assert isinstance(err.__cause__, ValueError) and "poisoned" in str(err.__cause__)
        else:
            assert_same_as_infer(net, r, f.result(0), thr, "confidence", f"seed={seed} request={k}")
    assert stats.failed == len(victims) and stats.completed == len(requests) - len(victims), f"seed={seed}"
    assert stats.pending == 0


def test_train_mode_while_serving_fails_the_batch_not_the_engine():
    seed = new_seed()
    net = tagged_network(seed)
    x = tagged_inputs(8, seed)
    with EarlyExitEngine(net, 0.5) as engine:
        net.train()
        err = engine.submit(x[:3]).exception(TIMEOUT)
        assert isinstance(err, StageFailed) and "train mode" in str(err.__cause__)
        net.eval()
        assert result(engine.submit(x[3:])).pred.shape == (5,)


def test_bad_input_fails_its_own_future():
    seed = new_seed()
    net, (x,) = setup("b_lenet", seed, 8)
    with EarlyExitEngine(net, 0.5) as engine:
        bad = {
            "shape": engine.submit(torch.zeros(2, 1, 28, 27)),
            "no batch dim": engine.submit(torch.zeros(1, 28, 28)),
            "dtype": engine.submit(torch.zeros(2, 1, 28, 28, dtype=torch.float64)),
            "numpy": engine.submit(np.zeros((2, 1, 28, 28), dtype=np.float32)),
            "empty": engine.submit(torch.zeros(0, 1, 28, 28)),
        }
        good = engine.submit(x)
        kinds = {name: type(f.exception(TIMEOUT)) for name, f in bad.items()}
        assert result(good).pred.shape == (8,)
        stats = engine.stats()
    assert kinds == {"shape": ValueError, "no batch dim": ValueError, "dtype": TypeError, "numpy": TypeError,
                     "empty": ValueError}
    assert "x.to(torch.float32)" in str(bad["dtype"].exception(0))
    assert stats.rejected == 5 and stats.requests == stats.completed == 1


def test_the_constructor_checks_its_arguments():
    net = tagged_network(new_seed())
    with pytest.raises(ValueError, match="one per exit"):
        EarlyExitEngine(net, [0.5, 0.5])
    with pytest.raises(ValueError, match="criterion"):
        EarlyExitEngine(net, 0.5, "margin")
    with pytest.raises(ValueError, match="max_batch"):
        EarlyExitEngine(net, 0.5, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        EarlyExitEngine(net, 0.5, max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_pending"):
        EarlyExitEngine(net, 0.5, max_pending=0)
    with pytest.raises(ValueError, match="device"):
        EarlyExitEngine(net, 0.5, device="meta")
    with pytest.raises(TypeError, match="EarlyExitModel"):
        EarlyExitEngine(nn.Linear(3, 3), 0.5)
    net.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        EarlyExitEngine(net, 0.5)


# -- admission, overload, cancel, close ------------------------------------------------------

class Gate(nn.Module):
    """Runs ``inner`` once ``go`` is set (set it, or the test times out); ``entered`` is set when a
    batch has arrived. With ``sleep_s`` every batch sleeps first (a slow stage)."""

    def __init__(self, inner, sleep_s=0.0):
        super().__init__()
        self.inner = inner
        self.go = threading.Event()
        self.entered = threading.Event()
        self.sleep_s = sleep_s

    def forward(self, x):
        self.entered.set()
        assert self.go.wait(TIMEOUT), "the test never opened the gate"
        if self.sleep_s:
            threading.Event().wait(self.sleep_s)
        return self.inner(x)


def gated_network(seed, sleep_s=0.0):
    net = tagged_network(seed)
    net.stages[0] = Gate(net.stages[0], sleep_s)
    return net, net.stages[0]


def test_the_deepest_ready_stage_runs_first():
    """Stage 0's second batch is full while the first batch's samples wait, full, at stage 1: the
    first batch goes through every stage before the second one starts."""
    seed = new_seed()
    net, gate = gated_network(seed)
    calls = []
    for k, stage in enumerate(net.stages):
        stage.register_forward_pre_hook(lambda m, inp, k=k: calls.append((k, inp[0].shape[0])))
    x = tagged_inputs(8, seed)
    with EarlyExitEngine(net, [math.inf, math.inf, 0.5], max_batch=4, max_wait_ms=60_000) as engine:
        first = engine.submit(x[:4])
        assert gate.entered.wait(TIMEOUT)
        second = engine.submit(x[4:8])
        gate.go.set()
        assert result(first).exit_index.eq(2).all() and result(second).exit_index.eq(2).all()
    assert calls == [(0, 4), (1, 4), (2, 4)] * 2


def test_submit_waits_for_room_then_raises_overloaded():
    seed = new_seed()
    net, gate = gated_network(seed)
    x = tagged_inputs(64, seed)
    with EarlyExitEngine(net, 0.5, max_batch=4, max_wait_ms=0, max_pending=10) as engine:
        first = engine.submit(x[:4])
        assert gate.entered.wait(TIMEOUT)  # the worker holds that batch: 4 pending
        queued = [engine.submit(x[4:8]), engine.submit(x[8:10])]  # 10 pending: full
        with pytest.raises(EngineOverloaded, match="max_pending=10"):
            engine.submit(x[10:11], timeout=0)
        with pytest.raises(EngineOverloaded):
            engine.submit(x[10:11], timeout=0.02)
        blocked = []
        t = threading.Thread(target=lambda: blocked.append(engine.submit(x[10:13])))  # waits for room
        t.start()
        gate.go.set()
        t.join(TIMEOUT)
        assert len(blocked) == 1
        for f, (i, j) in zip([first, *queued, blocked[0]], [(0, 4), (4, 8), (8, 10), (10, 13)]):
            assert_same_as_infer(net, x[i:j], result(f), 0.5, "confidence", f"seed={seed}")
        big = engine.submit(x[:30])  # larger than max_pending: admitted alone
        assert result(big).pred.shape == (30,)
        stats = engine.stats()
    assert stats.overloaded == 2 and stats.completed == 5 and stats.peak_pending == 30


def test_sustained_overload_keeps_pending_bounded():
    """Four threads submit as fast as they can (timeout 0) to a slow engine: some requests are refused,
    the admitted ones are all answered, and pending never exceeds max_pending plus one request."""
    seed = new_seed()
    rng = random.Random(seed)
    net, gate = gated_network(seed, sleep_s=0.002)
    gate.go.set()
    x = tagged_inputs(64, seed)
    admitted, refused = [], []
    lock = threading.Lock()

    def client(r):
        for _ in range(150):
            n = r.randint(1, 6)
            try:
                f = engine.submit(x[:n], timeout=0)
            except EngineOverloaded:
                with lock:
                    refused.append(n)
                continue
            with lock:
                admitted.append((n, f))

    with EarlyExitEngine(net, 0.5, max_batch=8, max_wait_ms=1.0, max_pending=24) as engine:
        threads = [threading.Thread(target=client, args=(random.Random(rng.random()),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        _, not_done = wait([f for _, f in admitted], timeout=TIMEOUT)
        assert not not_done
        stats = engine.stats()
    assert refused, f"seed={seed}: the engine was never overloaded"
    assert all(f.result(0).pred.shape == (n,) for n, f in admitted)
    assert stats.peak_pending <= 24 + 6, f"seed={seed} {stats}"
    assert stats.overloaded == len(refused) and stats.requests == stats.completed == len(admitted)


def test_a_cancelled_future_drops_its_samples():
    seed = new_seed()
    net, gate = gated_network(seed)
    x = tagged_inputs(12, seed)
    with EarlyExitEngine(net, 0.5, max_batch=4, max_wait_ms=0) as engine:
        first = engine.submit(x[:4])
        assert gate.entered.wait(TIMEOUT)
        cancelled, kept = engine.submit(x[4:8]), engine.submit(x[8:12])
        assert cancelled.cancel()
        gate.go.set()
        assert_same_as_infer(net, x[:4], result(first), 0.5, "confidence", f"seed={seed}")
        assert_same_as_infer(net, x[8:12], result(kept), 0.5, "confidence", f"seed={seed}")
        stats = engine.stats()
    assert cancelled.cancelled() and stats.cancelled == 1 and stats.completed == 2 and stats.pending == 0


def test_close_drains_or_cancels():
    seed = new_seed()
    net, (x,) = setup("mlp", seed, 64)
    engine = EarlyExitEngine(net, 0.5, max_wait_ms=60_000)  # nothing would run before close
    futures = [engine.submit(x[i: i + 4]) for i in range(0, 64, 4)]
    engine.close(drain=True, timeout=TIMEOUT)
    assert all(f.done() and f.result(0).pred.shape == (4,) for f in futures)
    with pytest.raises(EngineClosed):
        engine.submit(x[:1])
    assert engine.closed

    net, gate = gated_network(seed)
    x = tagged_inputs(40, seed)
    engine = EarlyExitEngine(net, 0.5, max_batch=4, max_wait_ms=0, max_pending=12)
    first = engine.submit(x[:4])
    assert gate.entered.wait(TIMEOUT)
    rest = [engine.submit(x[i: i + 4]) for i in (4, 8)]
    refused = []

    def blocked_client():
        try:
            engine.submit(x[12:16])  # no room: waits until close
        except EngineClosed as err:
            refused.append(err)

    t = threading.Thread(target=blocked_client)
    t.start()
    engine.close(drain=False, timeout=0.01)  # the worker is still inside the gated batch
    t.join(TIMEOUT)
    assert len(refused) == 1
    gate.go.set()
    engine.close(timeout=TIMEOUT)
    assert first.done() and all(f.done() for f in rest)
    for f in rest:
        assert isinstance(f.exception(0), EngineClosed)
    assert first.exception(0) is None or isinstance(first.exception(0), EngineClosed)
    stats = engine.stats()
    assert stats.pending == 0 and stats.cancelled + stats.completed == 3


def test_a_bug_in_the_engine_answers_everyone_and_closes_it():
    """An error of the engine's own bookkeeping (simulated) stops the worker: every request in flight
    gets EngineClosed with that error as its cause, and submit refuses new ones; nothing hangs."""
    seed = new_seed()
    net, gate = gated_network(seed)
    x = tagged_inputs(12, seed)
    engine = EarlyExitEngine(net, 0.5, max_batch=4, max_wait_ms=0)
    first = engine.submit(x[:4])
    assert gate.entered.wait(TIMEOUT)
    second = engine.submit(x[4:8])

    def broken(slots):
        raise RuntimeError("bookkeeping bug")

    engine._leave = broken
    gate.go.set()
    for f in (first, second):
        err = f.exception(TIMEOUT)
        assert isinstance(err, EngineClosed) and isinstance(err.__cause__, RuntimeError), repr(err)
    with pytest.raises(EngineClosed, match="bookkeeping bug"):
        engine.submit(x[:1])
    engine.close(timeout=TIMEOUT)
    assert engine.closed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_engine_takes_cpu_requests():
    seed = new_seed()
    rng = random.Random(seed)
    net, groups = setup("multiscale", seed, 60)
    thr = thresholds_for(net, groups, "confidence")
    net = net.cuda()
    requests = cut(groups, rng, 6)
    with EarlyExitEngine(net, thr, max_batch=16, max_wait_ms=1.0) as engine:
        assert engine.device.type == "cuda"
        futures = submit_from_threads(engine, requests, 2, rng)
        answers = [result(f) for f in futures]
    for i, (r, a) in enumerate(zip(requests, answers)):
        assert a.logits.device.type == "cuda"
        assert_same_as_infer(net, r.cuda(), a, thr, "confidence", f"seed={seed} request={i}")


def test_stats_count_a_batch_before_its_futures_resolve():
    """Whoever reads stats() once a result (or a stage's error) is in sees the batches that produced
    it: the engine records a batch before resolving its requests' futures. Read in a done-callback,
    which runs in the worker as the future resolves (before the fix, the batch was recorded after)."""
    seed = new_seed()
    rng = random.Random(seed)
    for poison in (None, 1):
        net = tagged_network(seed, poison_stage=poison)
        n = rng.randint(1, 7)
        x = tagged_inputs(n, seed)
        if poison is not None:
            x[rng.randrange(n), 0] = -1.0  # stage 1 raises on this request's batch
        with EarlyExitEngine(net, [math.inf, math.inf, 0.5], max_batch=64, max_wait_ms=0.0) as engine:
            seen = []
            fut = engine.submit(x)
            fut.add_done_callback(lambda f: seen.append(engine.stats()))
            if poison is None:
                result(fut)
            else:
                assert isinstance(fut.exception(TIMEOUT), StageFailed)
            stats = seen[0]
        ran = 3 if poison is None else 2
        assert stats.stage_batches == (1,) * ran + (0,) * (3 - ran), f"seed={seed}: {stats}"
        assert stats.stage_samples == (n,) * ran + (0,) * (3 - ran), f"seed={seed}: {stats}"
        assert (stats.completed, stats.failed) == ((1, 0) if poison is None else (0, 1)), f"seed={seed}"
