"""eexit.compile: stages and exits under torch.compile with a dynamic batch dimension."""
import copy
import math
import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from torch import nn

import eexit
from eexit.models import MSDNet, b_lenet
from eexit.nn import ConvBNReLU, EarlyExitNetwork, pool_linear_head

from helpers import generator, new_seed, randomise_bn
from infer_checks import check_infer_matches_simulation


def toy_net(seed: int) -> EarlyExitNetwork:
    torch.manual_seed(seed)
    net = EarlyExitNetwork([ConvBNReLU(3, 8), ConvBNReLU(8, 8, stride=2)],
                           [pool_linear_head(8, 5), pool_linear_head(8, 5)])
    return randomise_bn(net, generator(seed)).eval()


def frames() -> int:
    return torch._dynamo.utils.counters["frames"]["total"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_many_stages_of_one_class_stay_compiled():
    """Seven stages and exits of one class (as MSDNet's blocks) share a forward function: all of
    them keep compiled graphs (torch's per-function limit of 8 would otherwise send the rest to
    eager execution)."""
    torch.manual_seed(new_seed())
    net = EarlyExitNetwork([ConvBNReLU(3 if k == 0 else 4, 4) for k in range(7)],
                           [pool_linear_head(4, 3) for _ in range(7)]).eval()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        eexit.compile(net, backend="eager", example_input=torch.randn(3, 3, 6, 6))
        with torch._dynamo.config.patch(error_on_recompile=True):
            net.infer(torch.randn(20, 3, 6, 6), math.inf)


def test_no_recompilation_over_batch_sizes_1_to_512():
    """After the warm-up, every active batch size of infer (1..512, and the empty batch between
    stages) reuses its graphs: the frame count stays put and a recompile raises."""
    seed = new_seed()
    net = eexit.compile(toy_net(seed), backend="eager", example_input=torch.randn(4, 3, 8, 8))
    assert net.compile_seconds is not None and net.compile_seconds >= 0
    compiled = frames()
    assert compiled > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in range(1, 513):
            x = torch.randn(b, 3, 8, 8, generator=generator(seed + b))
            out = net.infer(x, [0.5, 0.0])
            assert out.logits.shape == (b, 5)
            if b % 64 == 1:
                with torch.inference_mode():
                    net.infer(x.clone(), [0.5, 0.0])  # an inference tensor
                    net.infer(x, [0.5, 0.0])  # a normal tensor in inference mode
        net.infer(torch.randn(0, 3, 8, 8), 0.5)
        net.infer(torch.randn(6, 3, 8, 8), 0.0)  # everyone leaves at exit 0: stage 1 sees nobody
    assert frames() == compiled


def test_compiled_infer_matches_simulation_and_eager():
    """Inductor-compiled MSDNet: infer equals the dense simulation of the compiled forward, which
    equals the eager reference; infer is batch-invariant."""
    seed = new_seed()
    torch.manual_seed(seed)
    model = MSDNet(2, 4, 2, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=7, dataset="cifar").eval()
    randomise_bn(model, generator(seed))
    x = torch.randn(9, 3, 32, 32, generator=generator(seed))
    with torch.inference_mode():
        want = model.set_backend("reference")(x)
    eexit.compile(model)
    with torch.inference_mode():
        got = model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"seed={seed} {m}")
    for criterion in ["confidence", "entropy"]:
        out, thr = check_infer_matches_simulation(model, x, criterion, seed, tol=1e-4)
        with torch.inference_mode():
            for i in [0, 4, 8]:
                one = model.infer(x[i: i + 1], thr, criterion)
                assert one.exit_index.item() == out.exit_index[i].item(), f"seed={seed} row {i}"
                torch.testing.assert_close(one.logits[0], out.logits[i], atol=1e-4, rtol=1e-4)


def test_compile_any_early_exit_model():
    """BranchyNet and attach_exits results (aot_eager here for speed) compile too; uncompile goes back."""
    seed = new_seed()
    torch.manual_seed(seed)
    model = b_lenet().eval()
    x = torch.randn(5, 1, 28, 28, generator=generator(seed))  # one channel: channels_last and contiguous at once
    with torch.inference_mode():
        want = model(x)
    eexit.compile(model, example_input=x)  # Inductor
    with torch.inference_mode():
        got = model(x)
        assert model.compiled_parts is not None and model.compile_seconds > 0
        eexit.uncompile(model)
        assert model.compiled_parts is None
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 3))
    net = eexit.nn.attach_exits(backbone, ["1"], 3, torch.zeros(1, 3, 8, 8)).eval()
    eexit.compile(net, backend="aot_eager")
    with torch.inference_mode():
        out = net.infer(torch.randn(4, 3, 8, 8), [0.4, 0.0])
    assert out.logits.shape == (4, 3)
    assert len(model.state_dict()) == len(b_lenet().state_dict()), "compiling adds no parameters"


def lrn_net(seed: int) -> tuple:
    """A toy network with an eexit.nn.LocalResponseNorm, that module, its op's name, input shape."""
    torch.manual_seed(seed)
    net = EarlyExitNetwork([nn.Sequential(ConvBNReLU(3, 8), eexit.nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0)),
                            ConvBNReLU(8, 8, stride=2)], [pool_linear_head(8, 5), pool_linear_head(8, 5)])
    net = randomise_bn(net, generator(seed)).eval()
    return net, net.stages[0][1], "local_response_norm", (3, 8, 8)


def lenet_net(seed: int) -> tuple:
    """B-LeNet, its 1->5 5x5 layer (25 taps: direct at every batch size), the op's name, input shape."""
    torch.manual_seed(seed)
    net = b_lenet().eval()
    return net, net.stages[0][0], "direct_conv2d", (1, 28, 28)


@pytest.mark.parametrize("build", [lrn_net, lenet_net], ids=["lrn", "b-lenet conv1"])
def test_compiled_as_op_modules_keep_eexits_op_in_the_graphs(build, monkeypatch):
    """eexit.compile sets the reference path on the other modules but leaves a compiled_as_op one
    on its own: its op runs inside the graphs (aot_eager: fake kernel, dynamic batch), no batch size
    recompiles after the warm-up, and infer equals the eager fused model's."""
    seed = new_seed()
    net, kept, op_name, shape = build(seed)
    eager = copy.deepcopy(net).set_backend("fused")
    eexit.compile(net, backend="aot_eager", example_input=torch.randn(4, *shape))
    assert kept.compiled_as_op and kept.compute_path == "auto"
    others = [m for m in net.modules() if isinstance(m, eexit.nn.ComputePathModule) and m is not kept]
    assert others and all(m.compute_path == "reference" for m in others if not m.compiled_as_op)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
        for b in (1, 2, 7, 64, 300):
            x = torch.randn(b, *shape, generator=generator(seed + b))
            got, want = net.infer(x, [0.5, 0.0]), eager.infer(x, [0.5, 0.0])
            assert torch.equal(got.exit_index, want.exit_index)
            torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()  # traced again with a spy: the graph calls eexit's op
    calls, real = [], getattr(eexit.ops, op_name)
    monkeypatch.setattr(eexit.ops, op_name, lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.inference_mode():
        net.infer(torch.randn(3, *shape), [0.5, 0.0])
    assert calls, f"the compiled stage did not run eexit.ops.{op_name}"


def test_compile_errors():
    with pytest.raises(TypeError, match="model must be an eexit.nn.EarlyExitModel, got Linear"):
        eexit.compile(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dynamic is set by eexit"):
        eexit.compile(toy_net(new_seed()), dynamic=True)
    with pytest.raises(ValueError, match="example_input must hold at least one sample"):
        eexit.compile(toy_net(new_seed()), example_input=torch.randn(0, 3, 8, 8))


_SECOND_PROCESS = """
import torch, torch._dynamo, eexit
from eexit.nn import ConvBNReLU, EarlyExitNetwork, pool_linear_head
torch.manual_seed(0)
net = EarlyExitNetwork([ConvBNReLU(3, 8)], [pool_linear_head(8, 5)]).eval()
eexit.compile(net, example_input=torch.randn(4, 3, 8, 8))
print("misses", torch._dynamo.utils.counters["inductor"]["fxgraph_cache_miss"])
"""


def test_second_process_reuses_the_compiled_artifacts(tmp_path):
    """Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR) serves a second process's compilation."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", _SECOND_PROCESS], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    misses = [int(r.stdout.split("misses")[-1]) for r in runs]
    assert misses[0] > 0 and misses[1] == 0, misses


def test_time_model_keeps_a_compiled_model_compiled():
    """eexit bench's timing: the eexit backends run the eager stages, "compiled" its own, and the
    model comes back as it was given (compiled parts and compute path)."""
    from eexit.app.evaluation import time_model

    net = eexit.compile(toy_net(new_seed()), backend="eager")
    parts = net.compiled_parts
    times = time_model(net, torch.randn(4, 3, 8, 8), [[0.5, 0.0]], "confidence", ("fused", "compiled"), reps=1)
    assert set(times) == {"fused", "compiled"} and times["compiled"]["compile_s"] >= 0
    assert net.compiled_parts is parts
    assert {m.compute_path for m in net.modules() if isinstance(m, ConvBNReLU)} == {"reference"}


class ShapeLog:
    """Wraps a part and records the batch size of every call."""

    def __init__(self, fn, sizes):
        self.fn, self.sizes = fn, sizes

    def __call__(self, x):
        self.sizes.append((x if isinstance(x, torch.Tensor) else x[0]).shape[0])
        return self.fn(x)


def test_buckets_pad_the_active_batch_and_keep_the_answers():
    """buckets=(...): every compiled part runs at bucket sizes only (a batch above the largest runs
    as it is, an empty one eagerly), infer still equals the dense simulation and the unbucketed
    compiled model, row for row, and no batch size recompiles after the warm-up."""
    seed = new_seed()
    buckets = (3, 8, 20)
    plain = eexit.compile(toy_net(seed), backend="eager", example_input=torch.randn(4, 3, 8, 8))
    net = eexit.compile(toy_net(seed), backend="eager", buckets=list(reversed(buckets)),
                        example_input=torch.randn(4, 3, 8, 8))
    sizes = []
    for group in net.compiled_parts:
        for part in group:
            assert part.buckets == buckets
            part.fn = ShapeLog(part.fn, sizes)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in (1, 2, 3, 5, 8, 9, 19, 20, 27):
            x = torch.randn(b, 3, 8, 8, generator=generator(seed + b))
            check_infer_matches_simulation(net, x, "confidence", seed)
            with torch.inference_mode():
                thr = [0.5, 0.0]
                got, want = net.infer(x, thr), plain.infer(x, thr)
            assert torch.equal(got.exit_index, want.exit_index), f"seed={seed} b={b}"
            torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
        net.infer(torch.randn(0, 3, 8, 8), 0.5)
    assert sizes and set(sizes) <= set(buckets) | {0, 27}, sorted(set(sizes))  # 0: the empty batch, eagerly
    assert 27 in sizes  # above the largest bucket: unpadded


def test_bucket_choice():
    from eexit.bucketed import BucketedPart

    part = BucketedPart(lambda x: x, (4, 16, 64), False, {})
    assert [part.bucket(n) for n in (0, 1, 4, 5, 16, 17, 64, 65)] == [None, 4, 4, 16, 16, 64, 64, None]
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.equal(part(x), x)  # padded to 16 and cut back
    assert part(x) is x  # autograd recording: run as it is


def test_bucket_and_cuda_graph_errors():
    net = toy_net(new_seed())
    with pytest.raises(ValueError, match="buckets must be a non-empty sequence of positive ints"):
        eexit.compile(net, buckets=[4, 0])
    with pytest.raises(ValueError, match="buckets must be a non-empty sequence of positive ints"):
        eexit.compile(net, buckets=[])
    with pytest.raises(TypeError, match="buckets must be a sequence of positive ints, got int"):
        eexit.compile(net, buckets=8)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool, got str"):
        eexit.compile(net, cuda_graphs="yes")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="mode='reduce-overhead' would add torch.compile's"):
            eexit.compile(net, cuda_graphs=True, mode="reduce-overhead")
    else:
        with pytest.raises(ValueError, match=r"cuda_graphs=True needs a CUDA device"):
            eexit.compile(net, cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_match_compiled_infer():
    """cuda_graphs=True on MSDNet (multi-scale lists between stages): infer and forward equal the
    compiled model without graphs; one graph per part and bucket used; outputs stay valid after
    later replays (they are copied out of the graphs' memory)."""
    seed = new_seed()
    torch.manual_seed(seed)
    model = MSDNet(2, 4, 2, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=7, dataset="cifar").eval()
    randomise_bn(model, generator(seed))
    model = model.cuda().to(memory_format=torch.channels_last)
    x = torch.randn(37, 3, 32, 32, generator=generator(seed)).cuda().contiguous(memory_format=torch.channels_last)
    import copy

    plain = eexit.compile(copy.deepcopy(model))
    graphed = eexit.compile(model, cuda_graphs=True, buckets=(8, 16, 64), example_input=x[:4])
    assert graphed.compile_seconds > 0
    with torch.inference_mode():
        for out_g, out_p in zip(graphed(x), plain(x)):
            torch.testing.assert_close(out_g, out_p, atol=1e-4, rtol=1e-4)
        out, thr = check_infer_matches_simulation(graphed, x, "confidence", seed, tol=1e-4)
        want = plain.infer(x, thr)
        assert torch.equal(out.exit_index, want.exit_index), f"seed={seed}"
        kept = out.logits.clone()
        graphed.infer(torch.randn_like(x), thr)  # replays every graph with other data
        assert torch.equal(out.logits, kept), "an output was overwritten by a later replay"
    captured = sum(len(p.graphs) for group in graphed.compiled_parts for p in group)
    assert captured >= 2 * len(graphed.compiled_parts[0]), captured


def test_gate_inside_the_compiled_graphs():
    """gate="inside": stage, exit, gate and compaction compiled as one graph per step (Inductor,
    multi-scale MSDNet): infer equals the dense simulation and the gate-between model for both
    criteria; after the first call per threshold set and kind of input, no batch size recompiles."""
    seed = new_seed()
    torch.manual_seed(seed)
    model = MSDNet(2, 4, 2, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=7, dataset="cifar").eval()
    randomise_bn(model, generator(seed))
    x = torch.randn(9, 3, 32, 32, generator=generator(seed))
    import copy

    between = eexit.compile(copy.deepcopy(model), backend="aot_eager")
    inside = eexit.compile(model, gate="inside", backend="aot_eager", example_input=x[:2])
    assert len(inside.compiled_steps) == 1 and between.compiled_steps is None
    for criterion in ["confidence", "entropy"]:
        out, thr = check_infer_matches_simulation(inside, x, criterion, seed, tol=1e-4)
        with torch.inference_mode():
            want = between.infer(x, thr, criterion)
        assert torch.equal(out.exit_index, want.exit_index), f"seed={seed}"
        torch.testing.assert_close(out.logits, want.logits, atol=1e-4, rtol=1e-4)
    thr = [0.3, 0.0]
    for b in WARM:
        rows = torch.randn(b, 3, 32, 32, generator=generator(seed - b))  # not a view of x: torch guards views' bases
        inside.infer(rows, thr)
        with torch.inference_mode():
            inside.infer(rows, thr)
            inside.infer(rows.clone(), thr)
    compiled = frames()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in range(1, 40, 3):
            rows = torch.randn(b, 3, 32, 32, generator=generator(seed + b))
            got = inside.infer(rows, thr)
            with torch.inference_mode():
                assert torch.equal(inside.infer(rows, thr).exit_index, got.exit_index)
    assert frames() == compiled
    eexit.uncompile(inside)
    assert inside.compiled_steps is None and inside.compiled_parts is None


WARM = eexit.compiled.WARMUP_BATCHES


def test_gate_place_errors():
    net = toy_net(new_seed())
    with pytest.raises(ValueError, match=r"gate must be one of \('between', 'inside'\), got 'within'"):
        eexit.compile(net, gate="within")
    with pytest.raises(ValueError, match="buckets and cuda_graphs need gate='between'"):
        eexit.compile(net, gate="inside", buckets=[4, 8])
