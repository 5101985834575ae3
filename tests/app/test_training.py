"""eexit.app.training: reproducible, resumable after any interruption, and data-parallel (gloo, 2 processes)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from eexit.app import checkpoint
from eexit.app.training import TrainConfig, _lr_factor, train

from helpers import new_seed

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def lenet(out, **kw) -> TrainConfig:
    """B-LeNet on the digits: about 0.3 s an epoch."""
    return TrainConfig(**{**dict(model="b-lenet", data="digits", out=str(out), epochs=2, optimizer="adam", lr=2e-3,
                                 weight_decay=0.0), **kw})


def assert_same_weights(a: dict, b: dict, msg: str, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=tol, atol=tol), f"{msg}: {k} differs by {(a[k] - b[k]).abs().max()}"


def cli(*args):
    return [sys.executable, "-m", "eexit", *map(str, args)]


def test_same_seed_same_weights_and_resume_extends_a_run(tmp_path, one_thread):
    seed = new_seed()
    full = train(lenet(tmp_path / "full.pt", epochs=3, seed=seed), log=lambda *_: None)
    again = train(lenet(tmp_path / "again.pt", epochs=3, seed=seed), log=lambda *_: None)
    assert_same_weights(full["state_dict"], again["state_dict"], f"seed={seed}: same seed")
    other = train(lenet(tmp_path / "other.pt", epochs=1, seed=seed + 1), log=lambda *_: None)
    assert not torch.equal(other["state_dict"]["exits.1.weight"], full["state_dict"]["exits.1.weight"])
    part = train(lenet(tmp_path / "part.pt", epochs=1, seed=seed), log=lambda *_: None)
    assert part["epoch"] == 1 and len(part["history"]) == 1
    resumed = train(lenet(tmp_path / "part.pt", epochs=3, seed=seed, resume=True), log=lambda *_: None)
    assert resumed["epoch"] == 3 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    # (the same weights as `full` only after a real interruption: here --epochs grew, which stretches the
    # learning-rate schedule; see test_interrupted_training_resumes_to_the_same_weights)
    assert not torch.equal(resumed["state_dict"]["exits.1.weight"], part["state_dict"]["exits.1.weight"])
    assert resumed["history"][0] == part["history"][0], "the history of the first run is kept"
    for h in full["history"] + resumed["history"]:
        assert len(h["val_accuracy"]) == 2 and 0 <= min(h["val_accuracy"]) <= max(h["val_accuracy"]) <= 1
    assert full["history"][-1]["val_accuracy"][-1] > 0.5, "B-LeNet learns the digits in 3 epochs"


def test_train_refuses_what_it_cannot_do(tmp_path):
    out = tmp_path / "run.pt"
    train(lenet(out, epochs=1), log=lambda *_: None)
    with pytest.raises(ValueError, match="exists: pass --resume"):
        train(lenet(out, epochs=1), log=lambda *_: None)
    with pytest.raises(ValueError, match="holds model 'b-lenet', not 'msdnet-digits'"):
        train(lenet(out, model="msdnet-digits", resume=True), log=lambda *_: None)
    logs = []
    train(lenet(out, epochs=1, resume=True), log=logs.append)
    assert "nothing to do" in logs[-1]
    for bad, match in ((dict(model="resnet-5"), "unknown model"), (dict(data="svhn"), "unknown data set"),
                       (dict(epochs=0), "--epochs must be >= 1"), (dict(optimizer="lbfgs"), "--optimizer"),
                       (dict(lr=-1.0), "--lr"), (dict(augment="mixup"), "--augment"),
                       (dict(exit_weights=[1.0]), "one weight per exit"), (dict(device="cuda:7"), "--device cuda:7"),
                       (dict(data="cifar10"), "--data-dir is required"),
                       (dict(data="mnist"), "--data-dir is required for mnist"),
                       (dict(train_size=0), "--train-size must be >= 1"),
                       (dict(train_size=10**6), "--train-size 1000000 is more than the 1078 samples")):
        with pytest.raises(ValueError, match=match):
            train(lenet(tmp_path / "bad.pt", **{"epochs": 1, **bad}), log=lambda *_: None)


def test_lr_schedules():
    assert _lr_factor("cosine", 0, 100) == 1.0 and abs(_lr_factor("cosine", 50, 100) - 0.5) < 1e-12
    assert _lr_factor("cosine", 100, 100) == 0.0
    assert [_lr_factor("step", s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, .1, .1, .01, .01])


def wait_for_epoch(path, proc, epoch: int, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and checkpoint.load(path)["epoch"] >= epoch:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, sig, one_thread):
    """Killed (SIGKILL: no clean-up at all) or interrupted (Ctrl-C) after its first checkpoint, a run
    resumed with --resume ends with the weights of an uninterrupted run."""
    seed = new_seed()
    out = tmp_path / "run.pt"
    args = ["train", "--model", "b-lenet", "--data", "digits", "--epochs", 8, "--optimizer", "adam", "--lr", 2e-3,
            "--weight-decay", 0, "--seed", seed, "--out", out]
    proc = subprocess.Popen(cli(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epoch(out, proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    done = checkpoint.load(out)["epoch"]  # the file is whole whenever the signal came
    assert 1 <= done < 8, f"seed={seed}: the run was not interrupted ({done} epochs done)"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"], "no temporary file is left behind"
    res = subprocess.run(cli(*args, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming {out} after epoch {done}" in res.stdout
    reference = train(lenet(tmp_path / "ref.pt", epochs=8, seed=seed), log=lambda *_: None)
    assert_same_weights(reference["state_dict"], checkpoint.load(out)["state_dict"], f"seed={seed} {sig.name}")


def test_two_process_gloo_training_equals_one_process(tmp_path, one_thread):
    """torchrun, 2 processes on the CPU (gloo): every step is the single-process step on the whole
    batch (B-LeNet has no BatchNorm, and augmentation is off), so the weights agree."""
    seed = new_seed()
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "eexit",
           "train", "--model", "b-lenet", "--data", "digits", "--epochs", "1", "--batch-size", "200",
           "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "1e-4", "--augment", "none", "--seed", str(seed),
           "--out", str(out)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("epoch 1/1") == 1, "only rank 0 reports"
    same = dict(optimizer="sgd", lr=0.05, weight_decay=1e-4, augment="none", seed=seed)
    single = train(lenet(tmp_path / "one.pt", epochs=1, batch_size=200, **same), log=lambda *_: None)
    ddp = checkpoint.load(out)
    assert ddp["epoch"] == 1
    # rounding differs (two half-batch gradients summed vs one), and an early ReLU or max-pool tie that
    # flips amplifies it (seen: up to 3e-5 of the weights' norm), while a step on other samples or
    # on half the batch moves them by 5e-2 of it
    flat = lambda sd: torch.cat([v.flatten() for v in sd.values()])  # noqa: E731
    rel = lambda a, b: ((flat(a) - flat(b)).norm() / flat(b).norm()).item()  # noqa: E731
    assert rel(ddp["state_dict"], single["state_dict"]) < 1e-3, f"seed={seed}: DDP vs one process"
    half = train(lenet(tmp_path / "half.pt", epochs=1, batch_size=100, **same), log=lambda *_: None)
    gap = rel(half["state_dict"], single["state_dict"])
    assert gap > 1e-2, f"seed={seed}: the comparison cannot tell batch 100 from 200 ({gap})"
