"""eexit.app.checkpoint: atomic writes, and clear errors for missing, corrupt or mismatched files."""
import json
import math
import os

import pytest
import torch

from eexit.app import checkpoint, zoo

from helpers import generator, new_seed


def lenet_checkpoint(seed: int) -> dict:
    torch.manual_seed(seed)
    model = zoo.build("b-lenet", 10)
    return dict(model="b-lenet", num_classes=10, data=dict(name="digits"), epoch=1, state_dict=model.state_dict())


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "run.pt"
    checkpoint.save(lenet_checkpoint(new_seed()), path)
    before = path.read_bytes()

    def half_then_crash(f):
        f.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # as a Ctrl-C in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, half_then_crash)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.pt"], "the temporary file is removed"


def test_save_load_round_trip(tmp_path):
    seed = new_seed()
    ckpt = lenet_checkpoint(seed)
    path = tmp_path / "sub" / "run.pt"  # folders are created
    checkpoint.save(ckpt, path)
    back = checkpoint.load(path)
    assert back["format"] == checkpoint.FORMAT and back["model"] == "b-lenet"
    model = checkpoint.build_model(back, path)
    assert not model.training
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), f"seed={seed} {k}"


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=f"{missing} does not exist; expected a checkpoint written by eexit train"):
        checkpoint.load(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x01" + os.urandom(300))
    with pytest.raises(ValueError, match="garbage.pt is not a torch file"):
        checkpoint.load(garbage)
    good = tmp_path / "good.pt"
    checkpoint.save(lenet_checkpoint(new_seed()), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.pt is corrupt"):
        checkpoint.load(truncated)
    official = tmp_path / "official.pth.tar"
    torch.save({"state_dict": {"module.x": torch.zeros(1)}, "epoch": 3}, official)
    with pytest.raises(ValueError, match="not an eexit checkpoint.*--official"):
        checkpoint.load(official)
    partial = tmp_path / "partial.pt"
    checkpoint.save(dict(model="b-lenet"), partial)
    with pytest.raises(ValueError, match="lacks"):
        checkpoint.load(partial)


def test_build_model_rejects_weights_of_another_model(tmp_path):
    ckpt = lenet_checkpoint(new_seed())
    with pytest.raises(ValueError, match="does not match model 'b-alexnet'"):
        checkpoint.build_model(dict(ckpt, model="b-alexnet"))
    with pytest.raises(ValueError, match="does not match model 'b-lenet'.*shape mismatches"):
        checkpoint.build_model(dict(ckpt, num_classes=7))
    with pytest.raises(ValueError, match="unknown model 'lenet-9000'"):
        checkpoint.build_model(dict(ckpt, model="lenet-9000"))


def test_thresholds_file(tmp_path):
    ckpt = tmp_path / "run.pt"
    assert checkpoint.thresholds_path(ckpt) == tmp_path / "run.thresholds.json"
    with pytest.raises(ValueError, match="run eexit calibrate"):
        checkpoint.load_thresholds(ckpt)
    t = torch.rand(3, generator=generator(new_seed())).tolist()
    checkpoint.save_json(dict(criterion="confidence", points=[dict(name="a", thresholds=t + [math.inf])]),
                         checkpoint.thresholds_path(ckpt))
    text = checkpoint.thresholds_path(ckpt).read_text()
    assert "Infinity" not in text, "strict JSON: non-finite numbers are written as strings"
    back = checkpoint.load_thresholds(ckpt)
    assert [float(v) for v in back["points"][0]["thresholds"]] == t + [math.inf]
    checkpoint.thresholds_path(ckpt).write_text(json.dumps(dict(points=[1, 2])))
    with pytest.raises(ValueError, match="not a thresholds file"):
        checkpoint.load_thresholds(ckpt)
