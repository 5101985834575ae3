"""eexit train from a backbone the user already has: --init-from, --freeze-backbone, self-distillation
(--distill-weight / --distill-temperature) and the torchvision zoo entries. Tiny data: the digits for
B-LeNet, a 30-image CIFAR-10 archive for the torchvision models and MSDNet."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from eexit.app import checkpoint, data, zoo
from eexit.app.cli import main
from eexit.app.evaluation import InputSpec, collect_logits
from eexit.app.training import TrainConfig, load_init, train

from datafiles import write_cifar
from helpers import generator, new_seed, randomise_bn


def quiet(*_):
    pass


def lenet(out, **kw) -> TrainConfig:
    """B-LeNet on the digits: about 0.3 s an epoch."""
    return TrainConfig(**{**dict(model="b-lenet", data="digits", out=str(out), epochs=2, optimizer="adam", lr=2e-3,
                                 weight_decay=0.0), **kw})


@pytest.fixture
def tiny_cifar(tmp_path):
    """A CIFAR-10 archive of 35 training images (30 train + 5 val here) and 9 test images."""
    write_cifar(tmp_path / "cifar", 10, generator(new_seed()), as_tar=True)
    return tmp_path / "cifar" / "cifar-10-python.tar.gz"


def on_cifar(model, out, archive, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(model=model, data="cifar10", data_dir=str(archive), val_size=5, out=str(out),
                                 epochs=1, batch_size=16, optimizer="adam", lr=1e-3, weight_decay=0.0), **kw})


def torchvision_models():
    return pytest.importorskip("torchvision.models")


def stage_exit_states(model):
    stages, exits = model.exit_stages()
    return [s.state_dict() for s in stages], [e.state_dict() for e in exits]


# ------------------------------------------------------------------------------- --freeze-backbone

@pytest.mark.parametrize("name", ["resnet18-exits", "msdnet-digits"])
def test_freeze_backbone_keeps_stage_weights_and_buffers_bit_identical(name, tiny_cifar, tmp_path, one_thread):
    """The stages' parameters AND BatchNorm statistics end bit-identical (stages in eval mode, not in
    the optimizer), the exits train: for attach_exits models the exits before the last (the last is
    the backbone's own fc, in the last stage), for MSDNet every classifier."""
    if name == "resnet18-exits":
        torchvision_models()
    seed = new_seed()
    torch.manual_seed(seed)
    fresh = zoo.build(name, 10)  # what train() builds from the same seed
    before_stages, before_exits = stage_exit_states(fresh)
    ckpt = train(on_cifar(name, tmp_path / "frozen.pt", tiny_cifar, seed=seed, epochs=2, freeze_backbone=True),
                 log=quiet)
    assert ckpt["train"]["freeze_backbone"] is True
    after = zoo.build(name, 10)
    after.load_state_dict(ckpt["state_dict"])
    after_stages, after_exits = stage_exit_states(after)
    n_buffers = 0
    for k, (b, a) in enumerate(zip(before_stages, after_stages)):
        assert b.keys() == a.keys()
        for key in b:
            assert torch.equal(b[key], a[key]), f"seed={seed}: stage {k} {key} changed"
            n_buffers += "running_" in key
    assert n_buffers > 0, "the stages hold BatchNorm statistics"
    trained = before_exits[:-1] if name == "resnet18-exits" else before_exits
    for k, b in enumerate(trained):
        assert any(not torch.equal(v, after_exits[k][key]) for key, v in b.items()), f"seed={seed}: exit {k} frozen"
    n_exit_params = sum(1 for e in fresh.exit_stages()[1] for _ in e.parameters())
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == n_exit_params, "only the exits are optimised"

    control = train(on_cifar(name, tmp_path / "control.pt", tiny_cifar, seed=seed, epochs=1), log=quiet)
    moved = zoo.build(name, 10)
    moved.load_state_dict(control["state_dict"])
    stats = [(k, v) for k, v in moved.exit_stages()[0][0].state_dict().items() if "running_mean" in k]
    assert any(not torch.equal(v, before_stages[0][k]) for k, v in stats), "without freezing BatchNorm statistics move"


# ------------------------------------------------------------------------------- --init-from

def resnet18_file(tv, seed: int, num_classes: int = 10) -> dict:
    """A torchvision resnet18 state_dict (weights=None) with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    src = tv.resnet18(weights=None, num_classes=num_classes)
    randomise_bn(src, generator(seed), affine=True)
    return src.state_dict()


def test_init_from_torchvision_resnet18_then_frozen_training(tiny_cifar, tmp_path, one_thread):
    tv = torchvision_models()
    seed = new_seed()
    sd = resnet18_file(tv, seed)
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    logs = []
    ckpt = train(on_cifar("resnet18-exits", tmp_path / "run.pt", tiny_cifar, seed=seed + 1, init_from=str(path),
                          freeze_backbone=True), log=logs.append)
    assert f"--init-from: loaded {len(sd)} tensors of {path} into the ResNet backbone" in logs
    assert not any("keep their initialisation" in line or "skipped" in line for line in logs), logs
    model = zoo.build("resnet18-exits", 10)
    model.load_state_dict(ckpt["state_dict"])
    got = model.backbone.state_dict()
    assert got.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(got[k], v), f"seed={seed}: {k} is not the file's after frozen training"


def test_init_from_reads_wrapped_and_prefixed_files_and_skips_only_the_classifier(tmp_path):
    tv = torchvision_models()
    seed = new_seed()
    sd = resnet18_file(tv, seed)
    model = zoo.build("resnet18-exits", 10)
    files = {
        "plain.pth": lambda s: s,
        "state_dict.pth.tar": lambda s: {"state_dict": s, "epoch": 90, "best_acc1": 69.8},
        "model.pt": lambda s: {"model": s, "optimizer": {}, "epoch": 3},
        "dataparallel.pth": lambda s: {f"module.{k}": v for k, v in s.items()},
        "ddp_wrapped.pth": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        "eexit_like.pt": lambda s: {"format": checkpoint.FORMAT, "model": "resnet18-exits", "state_dict": s},
    }
    for i, (name, wrap) in enumerate(files.items()):
        want = {k: v + i if v.is_floating_point() else v for k, v in sd.items()}  # a different file each time
        torch.save(wrap(want), tmp_path / name)
        logs = []
        assert load_init(model, str(tmp_path / name), logs.append) == []
        for k, v in want.items():
            assert torch.equal(model.backbone.state_dict()[k], v), f"seed={seed} {name}: {k}"
        assert len(logs) == 1 and f"loaded {len(sd)} tensors" in logs[0], logs

    # an ImageNet file (1000 classes) into a 10-class model: the final classifier is skipped and reported
    imagenet = resnet18_file(tv, seed + 1, num_classes=1000)
    del imagenet["layer4.1.bn2.running_var"], imagenet["bn1.num_batches_tracked"]
    torch.save(imagenet, tmp_path / "imagenet.pth")
    fc_before = model.backbone.fc.weight.detach().clone()
    kept_before = model.backbone.layer4[1].bn2.running_var.clone()
    logs = []
    assert load_init(model, str(tmp_path / "imagenet.pth"), logs.append) == ["fc.weight", "fc.bias"]
    assert torch.equal(model.backbone.fc.weight, fc_before) and model.backbone.fc.weight.shape == (10, 512)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, kept_before), "a key the file lacks keeps its value"
    assert torch.equal(model.backbone.conv1.weight, imagenet["conv1.weight"])
    text = "\n".join(logs)
    assert "skipped the final classifier's fc.weight (1000, 512), fc.bias (1000,)" in text, text
    assert "2 keys of the ResNet backbone are not in" in text and "bn1.num_batches_tracked" in text, text
    assert "layer4.1.bn2.running_var" in text


def test_init_from_errors_name_the_file_and_the_keys(tmp_path):
    tv = torchvision_models()
    seed = new_seed()
    sd = resnet18_file(tv, seed)
    model = zoo.build("resnet18-exits", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def bad(name, obj, match):
        path = tmp_path / name
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        elif obj is not None:
            torch.save(obj, path)
        with pytest.raises(ValueError, match=match) as err:
            load_init(model, str(path), quiet, zoo.entry("resnet18-exits").init_layout)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), f"{name}: {k} was loaded although the file was refused"

    bad("shape.pth", {**sd, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)},
        r"shape.pth does not fit the ResNet backbone: 1 shape mismatches: layer1.0.conv1.weight: "
        r"expected \(64, 64, 3, 3\), got \(64, 64, 1, 1\)")
    bad("fc_features.pth", {**sd, "fc.weight": torch.zeros(10, 256)},  # not just the number of classes
        r"fc.weight: expected \(10, 512\), got \(10, 256\)")
    bad("unknown.pth", {**sd, "head.weight": torch.zeros(3)},
        r"unknown.pth does not fit the ResNet backbone \(expected: torchvision's resnet18 state_dict.*\): "
        r"1 unexpected keys: head.weight \(got \(3,\)\)")
    bad("timm_mobilenet.pth", {"conv_stem.weight": torch.zeros(16, 3, 3, 3)}, "unexpected keys: conv_stem.weight")
    bad("notes.txt", b"these are not weights\n",
        "notes.txt is not a torch file.*expected a torch file holding a state_dict")
    bad("missing.pth", None, "missing.pth does not exist")
    bad("no_tensors.pt", {"epoch": 3, "arch": "resnet18"}, "no_tensors.pt holds no tensors")
    bad("a_list.pt", [1, 2, 3], "a_list.pt holds no tensors")


def test_init_from_errors_on_the_command_line(tmp_path, capsys):
    text = tmp_path / "weights.txt"
    text.write_text("conv1.weight = 0.5\n")
    renamed = tmp_path / "renamed.pt"
    torch.save({"trunk." + k: v for k, v in zoo.build("b-lenet", 10).state_dict().items()}, renamed)
    base = ["train", "--model", "b-lenet", "--data", "digits", "--out", str(tmp_path / "x.pt")]
    cases = ((["--init-from", str(text)], f"--init-from: checkpoint {text} is not a torch file"),
             (["--init-from", str(tmp_path / "nope.pt")], "nope.pt does not exist"),
             (["--init-from", str(renamed)], f"--init-from: {renamed} does not fit the model: 14 unexpected keys"),
             (["--distill-weight", "-1"], "--distill-weight must be a finite number >= 0"),
             (["--distill-temperature", "0"], "--distill-temperature must be a positive number"))
    for extra, message in cases:
        with pytest.raises(SystemExit) as exited:
            main(base + extra)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------------- resume

def test_resume_keeps_init_freeze_and_distillation(tmp_path, one_thread):
    """Interrupted after its first epoch, a run with --init-from (an eexit checkpoint: its state_dict),
    --freeze-backbone and distillation resumes to the weights of an uninterrupted one; the file is not
    read again; resuming without --freeze-backbone is refused."""
    seed = new_seed()
    pre = train(lenet(tmp_path / "pre.pt", epochs=1, seed=seed), log=quiet)
    opts = dict(init_from=str(tmp_path / "pre.pt"), freeze_backbone=True, distill_weight=1.0, distill_temperature=2.0)
    full = train(lenet(tmp_path / "full.pt", seed=seed + 1, **opts), log=quiet)

    def interrupt_after_epoch_1(line):
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    part = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):
        train(lenet(part, seed=seed + 1, **opts), log=interrupt_after_epoch_1)
    saved = checkpoint.load(part)
    assert saved["epoch"] == 1 and {k: saved["train"][k] for k in opts} == opts
    os.rename(tmp_path / "pre.pt", tmp_path / "moved.pt")  # resuming does not read the file again
    logs = []
    resumed = train(lenet(part, seed=seed + 1, resume=True, **opts), log=logs.append)
    assert any("is not read: resuming" in line for line in logs), logs
    assert resumed["epoch"] == 2
    for k, v in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], v), f"seed={seed}: {k} differs after resuming"
    for k, v in pre["state_dict"].items():
        if k.startswith("stages."):
            assert torch.equal(full["state_dict"][k], v), f"seed={seed}: frozen {k} moved"
    with pytest.raises(ValueError, match="was trained with --freeze-backbone; resume it the same way"):
        train(lenet(part, epochs=3, seed=seed + 1, resume=True, **{**opts, "freeze_backbone": False}), log=quiet)


# ------------------------------------------------------------------------------- distillation

def mean_kl_to_final(state_dict, splits, temperature: float) -> float:
    model = zoo.build("b-lenet", 10)
    model.load_state_dict(state_dict)
    logits, _ = collect_logits(model, splits.val, InputSpec(zoo.entry("b-lenet").input_shape, splits.mean, splits.std))
    teacher = F.log_softmax(logits[-1] / temperature, 1)
    kls = [F.kl_div(F.log_softmax(z / temperature, 1), teacher, log_target=True, reduction="batchmean").item()
           for z in logits[:-1]]
    return sum(kls) / len(kls)


def test_distillation_brings_the_exits_closer_to_the_final_exit(tmp_path, one_thread):
    """New exits on a trained, frozen B-LeNet trunk (its first exit left out of the --init-from file, so
    it starts afresh), trained with and without distillation, same seed and epochs: with it, the
    first exit's mean KL to the final exit on the validation digits is clearly lower, at T = 1 and at
    the training temperature, and the final exit is bit-identical (its logits are detached).

    (Jointly from scratch for a few epochs distillation does not do this on B-LeNet: the final exit,
    the teacher, is still poor and moving, and the first exit then lags behind it.)"""
    seed = new_seed()
    pre = train(lenet(tmp_path / "pre.pt", seed=seed), log=quiet)
    trunk = tmp_path / "trunk.pt"
    torch.save({k: v for k, v in pre["state_dict"].items() if not k.startswith("exits.0.")}, trunk)
    same = dict(seed=seed + 1, init_from=str(trunk), freeze_backbone=True, epochs=4)
    logs = []
    plain = train(lenet(tmp_path / "plain.pt", **same), log=logs.append)
    assert any("not in" in line and "exits.0.5.1.weight" in line for line in logs), logs
    distilled = train(lenet(tmp_path / "distilled.pt", distill_weight=2.0, distill_temperature=2.0, **same),
                      log=quiet)
    for k in ("exits.1.weight", "exits.1.bias"):
        assert torch.equal(plain["state_dict"][k], distilled["state_dict"][k]), f"seed={seed}: {k}"
    splits = data.load_splits("digits")
    for t in (1.0, 2.0):
        without, with_ = (mean_kl_to_final(c["state_dict"], splits, t) for c in (plain, distilled))
        # seen over 70 seeds: with / without at most 0.78 at T = 1, 0.67 at T = 2 (mean 0.57, 0.49); with 2
        # epochs instead of 4, or W = 4 at T = 1, it came within a few % of 1 for some seeds
        assert with_ < 0.9 * without, f"seed={seed}, T={t}: KL {with_:.4f} with distillation, {without:.4f} without"


# ------------------------------------------------------------------------------- zoo entries

def test_torchvision_entries_build_and_load_imagenet_files(tmp_path):
    tv = torchvision_models()
    seed = new_seed()
    model = zoo.build("mobilenet-v3-small-exits", 10)
    assert len(model(torch.zeros(2, 3, 32, 32))) == 4 and type(model.backbone).__name__ == "MobileNetV3"
    torch.manual_seed(seed)
    src = tv.mobilenet_v3_small(weights=None)  # 1000 classes
    randomise_bn(src, generator(seed))
    torch.save({"state_dict": src.state_dict()}, tmp_path / "mnv3.pth")
    logs = []
    skipped = load_init(model, str(tmp_path / "mnv3.pth"), logs.append)
    assert skipped == ["classifier.3.weight", "classifier.3.bias"], logs
    for k, v in src.state_dict().items():
        if k not in skipped:
            assert torch.equal(model.backbone.state_dict()[k], v), f"seed={seed}: {k}"
    for name in ("resnet18-exits", "mobilenet-v3-small-exits"):
        assert zoo.entry(name).init_layout.startswith("torchvision's")


def test_torchvision_is_needed_only_by_its_entries(monkeypatch):
    res = subprocess.run([sys.executable, "-c", "import sys, eexit, eexit.app.cli, eexit.app.training; "
                          "assert 'torchvision' not in sys.modules, 'imported torchvision'"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "torchvision.models", raising=False)
    for name in ("resnet18-exits", "mobilenet-v3-small-exits"):
        with pytest.raises(ModuleNotFoundError, match=f"model {name} needs torchvision .*: pip install torchvision"):
            zoo.build(name, 10)


def test_train_and_eval_commands_with_a_torchvision_backbone(tiny_cifar, tmp_path, capsys):
    """The command line end to end: an ImageNet-shaped resnet18 file, frozen, distilled; then eval."""
    tv = torchvision_models()
    seed = new_seed()
    path = tmp_path / "imagenet.pth"
    torch.save({f"module.{k}": v for k, v in resnet18_file(tv, seed, num_classes=1000).items()}, path)
    out = tmp_path / "r18.pt"
    main(["train", "--model", "resnet18-exits", "--data", "cifar10", "--data-dir", str(tiny_cifar), "--val-size", "5",
          "--epochs", "1", "--batch-size", "16", "--optimizer", "adam", "--seed", str(seed), "--init-from", str(path),
          "--freeze-backbone", "--distill-weight", "1", "--distill-temperature", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert "skipped the final classifier's fc.weight (1000, 512)" in text, text
    assert "the final classifier (fc.weight, fc.bias) was not loaded and stays frozen" in text, text
    cfg = checkpoint.load(out)["train"]
    assert (cfg["init_from"], cfg["freeze_backbone"], cfg["distill_weight"], cfg["distill_temperature"]) == \
        (str(path), True, 1.0, 3.0)
    main(["eval", "--checkpoint", str(out), "--thresholds", "0.5"])
    assert "resnet18-exits on the test split (9 samples)" in capsys.readouterr().out
