"""The command line end to end on tiny settings: every command, its files and figures, its errors."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from eexit.app import checkpoint, zoo
from eexit.app.cli import main

from datafiles import write_cifar, write_idx_set, write_tree
from helpers import generator, new_seed

ENV = dict(os.environ, OMP_NUM_THREADS="1")
COMMANDS = ["demo", "train", "calibrate", "eval", "bench"]


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "eexit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def ok(*args):
    res = run_cli(*args)
    assert res.returncode == 0, f"eexit {' '.join(map(str, args))}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_demo_end_to_end(tmp_path):
    out = ok("demo", "--data", "digits", "--msdnet-epochs", 1, "--lenet-epochs", 1, "--reps", 1, "--out-dir",
             tmp_path)
    for name in ("msdnet-digits.pt", "b-lenet.pt", "msdnet-digits.thresholds.json", "b-lenet.thresholds.json",
                 "demo.json", "demo.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target (msdnet-digits at 'accuracy drop 0.5')" in out
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert [m["model"] for m in demo["models"]] == ["msdnet-digits", "b-lenet"]
    for m, n_exits in zip(demo["models"], (4, 2)):
        costs = m["costs"]
        assert len(costs["actual"]) == n_exits and costs["actual"] == sorted(costs["actual"]) and costs["full"] > 0
        assert m["samples_timed"] == 360 and len(m["test_exit_accuracy"]) == n_exits
        assert {p["name"] for p in m["points"]} >= {"accuracy drop 0.5"} and len(m["points"]) >= 4
        for p in m["points"]:
            t = p["test"]
            assert sum(t["exit_counts"]) == 360 and len(t["exit_counts"]) == n_exits
            assert 0 <= t["accuracy"] <= 1 and t["infer_accuracy"] == pytest.approx(t["accuracy"], abs=1 / 360)
            lo, hi = costs["actual"][0] / costs["full"], costs["actual"][-1] / costs["full"]
            assert lo - 1e-9 <= t["cost_fraction"] <= hi + 1e-9
            for backend in ("fused", "reference"):
                assert p["timing"][backend]["infer_ms"] > 0 and p["timing"][backend]["speedup_vs_full"] > 0
        assert m["timing"]["fused"]["full_ms"] > 0 and m["timing"]["reference"]["simulate_ms"] > 0
        assert checkpoint.load_thresholds(tmp_path / f"{m['model']}.pt")["points"][0]["thresholds"]
    assert demo["targets"][0]["model"] == "msdnet-digits" and isinstance(demo["targets"][0]["met"], bool)
    printed = [line.split(": ", 1) for line in out.splitlines() if line.startswith("  accuracy drop 0.5: ")]
    assert [len(values.split()) for _, values in printed] == [4, 2], "one threshold per exit, the last one too"
    for (_, values), m in zip(printed, demo["models"]):
        point = next(p for p in m["points"] if p["name"] == "accuracy drop 0.5")
        assert [float(v) for v in values.split()] == pytest.approx([float(t) for t in point["thresholds"]], rel=1e-6)


def test_demo_on_idx_files(tmp_path):
    """--data mnist from a folder of IDX files (5100 random training images: 5000 are held out for
    validation), B-LeNet and msdnet-mnist, quick settings; the data set and folder recorded."""
    write_idx_set(tmp_path / "idx", generator(new_seed()), 5100, 150)
    out = ok("demo", "--data", "mnist", "--data-dir", tmp_path / "idx", "--train-size", 64, "--msdnet-epochs", 1,
             "--lenet-epochs", 1, "--reps", 1, "--time-samples", 32, "--out-dir", tmp_path / "out")
    assert out.startswith(f"eexit demo: MNIST from {tmp_path / 'idx'}")
    demo = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert demo["data"] == "mnist" and demo["data_dir"] == str(tmp_path / "idx")
    assert [m["model"] for m in demo["models"]] == ["b-lenet", "msdnet-mnist"]
    for m in demo["models"]:
        assert m["samples_timed"] == 32 and all(sum(p["test"]["exit_counts"]) == 150 for p in m["points"])
        assert checkpoint.load(tmp_path / "out" / f"{m['model']}.pt")["data"]["train_size"] == 64
    assert [t["model"] for t in demo["targets"]] == ["b-lenet", "msdnet-mnist"]


def test_demo_data_choice(tmp_path):
    from eexit.app.cli import cmd_demo
    from eexit.app.data import idx

    assert cmd_demo.choose_data("digits", None) == ("digits", None, None)
    # auto without the files: digits, with a note saying where it looked and how to get them
    name, folder, note = cmd_demo.choose_data("auto", tmp_path)
    assert (name, folder) == ("digits", None)
    assert str(tmp_path) in note and "dataset-fashion-mnist" in note and "digits instead" in note
    res = run_cli("demo", "--data", "fashion-mnist", "--data-dir", tmp_path / "none")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"Fashion-MNIST folder {tmp_path / 'none'} does not exist" in res.stderr
    write_idx_set(tmp_path / "f", generator(new_seed()), 3, 2)
    assert cmd_demo.choose_data("auto", tmp_path / "f") == ("fashion-mnist", str(tmp_path / "f"), None)
    if os.path.isdir(idx.FASHION_MNIST_DIR):  # Debian's package (make test installs it where it can)
        assert cmd_demo.choose_data("auto", None) == ("fashion-mnist", idx.FASHION_MNIST_DIR, None)
    for bad in (["--time-samples", 0], ["--train-size", 0]):
        res = run_cli("demo", *bad)
        assert res.returncode == 2 and f"{bad[0]} must be >= 1, got 0" in res.stderr


def test_train_calibrate_eval_bench(tmp_path):
    ckpt = tmp_path / "lenet.pt"
    out = ok("train", "--model", "b-lenet", "--data", "digits", "--epochs", 2, "--optimizer", "adam", "--out", ckpt,
             "--seed", new_seed())
    assert "epoch 2/2" in out and checkpoint.load(ckpt)["epoch"] == 2
    out = ok("calibrate", "--checkpoint", ckpt, "--budget", 0.4, 0.8, "--accuracy-drop", 1,
             "--exit-fractions", 0.5, 0.5)
    saved = checkpoint.load_thresholds(ckpt)
    assert [p["name"] for p in saved["points"]] == ["budget 0.4", "budget 0.8", "exit fractions", "accuracy drop 1"]
    assert saved["split"] == "val" and "wrote" in out
    for p in saved["points"]:
        assert len(p["thresholds"]) == 2 and 0 <= p["val"]["accuracy"] <= 1
    fractions = {p["name"]: p["val"]["cost_fraction"] for p in saved["points"]}
    assert fractions["budget 0.4"] <= fractions["budget 0.8"]
    assert abs(fractions["budget 0.4"] - 0.4) < 0.15, "the budget is met on the validation split"
    assert saved["points"][2]["val"]["exit_fractions"][0] == pytest.approx(0.5, abs=0.02)

    report = tmp_path / "eval.json"
    out = ok("eval", "--checkpoint", ckpt, "--json", report, "--thresholds", 0.9, "inf")
    figures = json.loads(report.read_text())
    assert figures["samples"] == 360 and len(figures["exit_accuracy"]) == 2
    assert [p["name"] for p in figures["points"]][-1] == "--thresholds"
    assert figures["points"][-1]["test"]["exit_counts"] == [0, 360], "'inf': nobody leaves at exit 0"
    for p in figures["points"]:
        assert p["test"]["infer_accuracy"] == pytest.approx(p["test"]["accuracy"], abs=1 / 360)
    assert "differs by at most" in out

    bench = tmp_path / "bench.json"
    out = ok("bench", "--checkpoint", ckpt, "--batch-size", 100, "--reps", 2, "--json", bench)
    timing = json.loads(bench.read_text())
    assert set(timing["times"]) == {"fused", "reference"} and timing["batch_size"] == 100
    assert len(timing["times"]["fused"]["infer_ms"]) == 4 and "infer @ budget 0.4" in out
    out = ok("bench", "--model", "msdnet-digits", "--batch-size", 8, "--reps", 1, "--thresholds", 0.5,
             "--backends", "fused")
    assert "random weights" in out and "full network" in out and "reference" not in out
    out = ok("bench", "--model", "msdnet-digits", "--batch-size", 8, "--reps", 1, "--thresholds", 0.5,
             "--backends", "fused", "--compile")
    assert "compiled" in out and "warm-up (eexit.compile)" in out
    out = ok("eval", "--checkpoint", ckpt, "--thresholds", 0.5, "--compile")
    assert "compiled (eexit.compile) in" in out and "differs by at most 0.00 points" in out


def tiny_cifar(tmp_path):
    write_cifar(tmp_path, 10, generator(new_seed()), as_tar=True)  # 35 training and 9 test images
    return tmp_path / "cifar-10-python.tar.gz"


def test_cifar_and_folder_data(tmp_path):
    archive = tiny_cifar(tmp_path / "cifar")
    ckpt = tmp_path / "cifar.pt"
    ok("train", "--model", "b-lenet", "--data", "cifar10", "--data-dir", archive, "--val-size", 5, "--epochs", 1,
       "--batch-size", 16, "--out", ckpt)
    data = checkpoint.load(ckpt)["data"]
    assert data["name"] == "cifar10" and data["data_dir"] == str(archive.resolve()), "recorded as an absolute path"
    out = ok("eval", "--checkpoint", ckpt)
    assert "on the test split (9 samples)" in out
    gen = generator(new_seed())
    write_tree(tmp_path / "folder" / "train", {"cat": 6, "dog": 5}, gen)
    write_tree(tmp_path / "folder" / "val", {"cat": 2, "dog": 2}, gen)
    ckpt = tmp_path / "folder.pt"
    ok("train", "--model", "b-alexnet", "--data", "folder", "--data-dir", tmp_path / "folder", "--epochs", 1,
       "--batch-size", 4, "--workers", 1, "--out", ckpt)
    out = ok("eval", "--checkpoint", ckpt, "--split", "val", "--thresholds", 0.5)
    assert "on the val split (4 samples)" in out


def official_checkpoint(path, preset: str, num_classes: int):
    """A file as the official main.py saves it: DataParallel's module. prefix, no num_batches_tracked."""
    torch.manual_seed(new_seed())
    state = {f"module.{k}": v for k, v in zoo.build(preset, num_classes).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 300, "arch": "msdnet", "state_dict": state, "best_prec1": 75.0}, path)


def test_official_checkpoint(tmp_path):
    archive = tiny_cifar(tmp_path)
    ckpt = tmp_path / "model_best.pth.tar"
    official_checkpoint(ckpt, "msdnet-cifar-budgeted", 10)
    subject = ["--checkpoint", ckpt, "--official", "--model", "msdnet-cifar-budgeted", "--data", "cifar10",
               "--data-dir", archive, "--val-size", 5]
    ok("calibrate", *subject, "--exit-fractions", 0.2, 0.2, 0.2, 0.2, 0.2)
    out = ok("eval", *subject)
    assert "msdnet-cifar-budgeted on the test split (9 samples)" in out and "exit fractions" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"], ["3"], ["4"])]
    assert len(rows) == 5
    official = zoo.build("msdnet-cifar-budgeted", 10)
    from eexit.app.evaluation import model_costs

    assert [float(r[2]) for r in rows] == pytest.approx([c / 1e6 for c in model_costs(official, (3, 32, 32)).official],
                                                        abs=1e-3)
    res = run_cli("eval", *subject[:-6], "--model", "msdnet-cifar-anytime", "--data", "cifar10", "--data-dir", archive,
                  "--val-size", 5)
    assert res.returncode == 2 and "does not match" in res.stderr and "Traceback" not in res.stderr


def test_user_errors_have_no_traceback(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    lenet = tmp_path / "lenet.pt"
    torch.manual_seed(0)
    checkpoint.save(dict(model="b-lenet", num_classes=10, data=dict(name="digits", data_dir=None, split_seed=0,
                                                                    val_size=None, classes=[str(d) for d in range(10)]),
                         epoch=1, state_dict=zoo.build("b-lenet", 10).state_dict()), lenet)
    wrong = tmp_path / "wrong.pt"
    checkpoint.save(dict(checkpoint.load(lenet), model="b-alexnet"), wrong)
    cases = [
        (["train", "--model", "b-lenet", "--data", "cifar10", "--data-dir", tmp_path / "nowhere"], "nowhere"),
        (["train", "--model", "b-lenet", "--data", "cifar10"], "--data-dir is required"),
        (["train", "--model", "lenet-9000", "--data", "digits"], "invalid choice: 'lenet-9000'"),
        (["train", "--model", "b-lenet", "--data", "digits", "--device", "cuda:3", "--out", tmp_path / "x.pt"],
         "--device cuda:3"),
        (["train", "--model", "b-lenet", "--data", "digits", "--out", lenet], "exists: pass --resume"),
        (["eval", "--checkpoint", garbage], f"checkpoint {garbage} is not a torch file"),
        (["eval", "--checkpoint", tmp_path / "missing.pt"], "does not exist; expected a checkpoint written by eexit"),
        (["eval", "--checkpoint", wrong], "does not match model 'b-alexnet'"),
        (["eval", "--checkpoint", lenet, "--thresholds", 0.5, 0.5, 0.5], "expected one per exit (2), got 3"),
        (["eval", "--checkpoint", lenet, "--thresholds", 1.5], "must be in [0, 1]"),
        (["bench", "--checkpoint", lenet, "--reps", 1], "no operating point"),
        (["bench", "--model", "b-lenet", "--device", "banana"], "not a device name"),
        (["calibrate", "--checkpoint", lenet], "give at least one of"),
        (["calibrate", "--checkpoint", lenet, "--budget", 0.01], "outside what the exits allow"),
        (["eval", "--checkpoint", lenet, "--official", "--model", "b-lenet", "--data", "digits"],
         "has no official checkpoints"),
        (["demo", "--reps", 0], "--reps must be >= 1"),
    ]
    for args, message in cases:  # in this process: main() exits 2 with the message, no exception escapes
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert exited.value.code == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
    for args, message in cases[:1] + cases[5:6]:  # and as a command
        res = run_cli(*args)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert run_cli("nope").returncode == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "Example" in out or command == "demo"
    assert "--device" in out and "--progress" in out
    for option in {"train": ["--resume", "--data-dir", "--exit-weights", "--schedule"],
                   "calibrate": ["--budget", "--accuracy-drop", "--exit-fractions", "--official"],
                   "eval": ["--official", "--thresholds", "--json"],
                   "bench": ["--batch-size", "--backends", "--thresholds"],
                   "demo": ["--out-dir", "--msdnet-epochs"]}[command]:
        assert option in out, (command, option)


def test_top_level_help_and_python_m():
    top = ok("--help")
    assert all(c in top for c in COMMANDS)


def test_thresholds_of_the_calibration_file_round_trip_infinity(tmp_path):
    """A budget that skips an exit stores +inf there; the next command reads it back as inf."""
    ckpt = tmp_path / "lenet.pt"
    ok("train", "--model", "b-lenet", "--data", "digits", "--epochs", 1, "--out", ckpt)
    ok("calibrate", "--checkpoint", ckpt, "--exit-fractions", 0, 1)
    thr = checkpoint.load_thresholds(ckpt)["points"][0]["thresholds"]
    assert float(thr[0]) == math.inf
    out = ok("eval", "--checkpoint", ckpt)
    assert "exit fractions" in out and " inf " in out
