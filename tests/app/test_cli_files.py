"""A checkpoint that is not one: every command ends in one line naming the file and what was
expected there, exit status 2, no traceback and none of PyTorch's advice to unpickle with
weights_only=False."""
import pickle
from fractions import Fraction

import pytest
import torch
from cli_support import one_line_error, random_checkpoint, run_cli, run_main

from eexit.app import checkpoint

EEXIT = "expected a checkpoint written by eexit train"
OFFICIAL = "expected a torch file saved by the official MSDNet code"


def bad_files(tmp_path):
    """(file, what the message says about it) for each way a --checkpoint can be wrong."""
    good = random_checkpoint(tmp_path / "good.pt")
    (tmp_path / "text.pt").write_bytes(b"hello\n")  # the user test's 6-byte text file
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    torch.save({"state_dict": {"w": torch.zeros(2)}, "note": Fraction(1, 3)}, tmp_path / "object.pt")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "opcodes.txt").write_text("conv1.weight = 0.5\n")  # reads as pickle's GLOBAL opcode: still text
    return [
        (tmp_path / "opcodes.txt", "is not a torch file"),
        (tmp_path / "text.pt", "is not a torch file"),
        (tmp_path / "folder.pt", "is a folder, not a file"),
        (tmp_path / "missing.pt", "does not exist"),
        (tmp_path / "empty.pt", "is empty"),
        (tmp_path / "truncated.pt", "is corrupt: a truncated or damaged torch file"),
        (tmp_path / "object.pt", "holds a Python object of type fractions.Fraction"),
        (tmp_path / "pickle.pt", "is corrupt, or a pickle that torch.save did not write"),
    ]


def check_message(line: str, path, what: str, expected: str) -> None:
    assert f"checkpoint {path} " in line and what in line and expected in line, line
    assert "weights_only" not in line and "\x1b" not in line, line


def test_read_torch_names_the_file_and_what_was_expected(tmp_path):
    for path, what in bad_files(tmp_path):
        with pytest.raises(ValueError) as err:
            checkpoint.load(path)
        assert "\n" not in str(err.value)
        check_message(str(err.value), path, what, EEXIT)
        with pytest.raises(ValueError) as err:
            checkpoint.read_torch(path)
        check_message(str(err.value), path, what, "expected a torch file")
    official = tmp_path / "official.pth.tar"
    torch.save({"state_dict": {"module.x": torch.zeros(1)}, "epoch": 3}, official)
    with pytest.raises(ValueError, match=r"is a torch file but not an eexit checkpoint \(.*--official\); expected"):
        checkpoint.load(official)


@pytest.mark.parametrize("command", ["eval", "calibrate", "bench"])
def test_every_command_rejects_a_bad_checkpoint_in_one_line(command, tmp_path, capsys):
    extra = {"eval": [], "calibrate": ["--budget", 0.5], "bench": ["--thresholds", 0.5, "--reps", 1]}[command]
    for path, what in bad_files(tmp_path):
        line = one_line_error(run_main(capsys, command, "--checkpoint", path, *extra))
        assert line.startswith(f"eexit {command}: error: ")
        check_message(line, path, what, EEXIT)


def test_official_checkpoints_fail_before_the_data_are_read(tmp_path, capsys):
    """--official reads the file first: a bad one is reported even though --data-dir does not exist."""
    for path, what in bad_files(tmp_path):
        line = one_line_error(run_main(capsys, "eval", "--official", "--checkpoint", path, "--model",
                                       "msdnet-cifar-budgeted", "--data", "cifar10", "--data-dir", tmp_path / "no"))
        check_message(line, path, what, OFFICIAL)


def test_as_a_command_no_traceback_and_no_warning(tmp_path):
    """What a user sees: the one line on stderr, nothing else (no pickle-protocol warning either)."""
    files = dict((p.name, (p, what)) for p, what in bad_files(tmp_path))
    for name in ("text.pt", "pickle.pt"):
        path, what = files[name]
        line = one_line_error(run_cli("eval", "--checkpoint", path))
        check_message(line, path, what, EEXIT)
