"""eexit.compile: stages and exits under torch.compile with a dynamic batch dimension."""
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
                    net.infer(x.clone(), [0.5, 0.0])
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
