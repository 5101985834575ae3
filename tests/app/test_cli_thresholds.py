"""One convention of thresholds everywhere: one per exit, the last one printed too. What a command
prints pastes back into --thresholds and into model.infer; thresholds are checked before any work."""
import json
import math

import pytest
import torch
from cli_support import one_line_error, random_checkpoint, run_main, split_row

from eexit.app import checkpoint, zoo
from eexit.app.cli import cmd_bench, cmd_calibrate, cmd_eval
from eexit.app.cli.common import fmt_threshold, fmt_thresholds, thresholds_lines
from eexit.app.data import load_splits
from eexit.app.evaluation import InputSpec, model_inputs

from helpers import generator, new_seed


def test_printed_thresholds_read_back_as_the_same_float32():
    """The gate compares in float32: the printed text is the shortest that rounds to the same float32."""
    seed = new_seed()
    values = torch.rand(2000, generator=generator(seed)).tolist() + [0.0, 1.0, 0.5, 0.99999994, 1e-30, 2.5e6]
    for v in values:
        text = fmt_threshold(v)
        assert torch.tensor(float(text), dtype=torch.float32) == torch.tensor(v, dtype=torch.float32), (seed, v)
        assert float(text) == float(f"{float(text):.9g}"), f"at most 9 significant digits: {text}"
    assert fmt_threshold(math.inf) == "inf" and fmt_threshold(0.5) == "0.5" and fmt_threshold(0.0) == "0"
    assert fmt_thresholds([0.25, math.inf, 0.0]) == "0.25 inf 0", "one per exit, the last one included"
    lines = thresholds_lines([("a", [0.5, 0.0])]).splitlines()
    assert lines[1] == "  a: 0.5 0" and "the last exit takes everyone left" in lines[0]


def thresholds_cell(out: str, point: str) -> str:
    """The thresholds printed in the row of ``point`` of a points table."""
    rows = [split_row(line) for line in out.splitlines() if line.strip().startswith(point + "  ")]
    assert len(rows) == 1, out
    return rows[0][1]


def test_printed_thresholds_paste_back_into_eval_and_infer(tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "lenet.pt", seed=new_seed())
    res = run_main(capsys, "calibrate", "--checkpoint", ckpt, "--exit-fractions", 0.6, 0.4)
    assert res.code == 0, res
    printed = thresholds_cell(res.out, "exit fractions")
    saved = checkpoint.load_thresholds(ckpt)["points"][0]["thresholds"]
    assert len(printed.split()) == 2 == len(saved), "one per exit, the last one printed too"
    assert printed == fmt_thresholds(saved)

    report = tmp_path / "eval.json"
    res = run_main(capsys, "eval", "--checkpoint", ckpt, "--thresholds", *printed.split(), "--json", report)
    assert res.code == 0, res
    assert thresholds_cell(res.out, "--thresholds") == printed, "eval prints back what it was given"
    assert thresholds_cell(res.out, "exit fractions") == printed
    points = {p["name"]: p for p in json.loads(report.read_text())["points"]}
    assert points["--thresholds"]["test"]["exit_counts"] == points["exit fractions"]["test"]["exit_counts"]

    model = checkpoint.build_model(checkpoint.load(ckpt))
    splits = load_splits("digits", image_size=28)
    x = torch.cat([b for b, _ in model_inputs(splits.test, InputSpec((1, 28, 28), splits.mean, splits.std), 512,
                                              torch.device("cpu"))])
    with torch.inference_mode():
        pasted = model.infer(x, thresholds=[float(t) for t in printed.split()]).exit_index
        assert torch.equal(pasted, model.infer(x, thresholds=saved).exit_index)
    assert pasted.bincount(minlength=2).tolist() == points["exit fractions"]["test"]["exit_counts"]


def test_bench_prints_lines_that_paste_into_infer_and_eval(tmp_path, capsys):
    """Four exits (the user test's case): bench prints all four thresholds of the point it calibrated on
    its batch; they paste into model.infer as they are, and a line of b-lenet's into eval."""
    report = tmp_path / "bench.json"
    res = run_main(capsys, "bench", "--model", "msdnet-digits", "--batch-size", 16, "--reps", 1, "--backends",
                   "fused", "--exit-fractions", 0.25, 0.25, 0.25, 0.25, "--json", report)
    assert res.code == 0, res
    line = next(v for v in res.out.splitlines() if v.startswith("  exit fractions 0.25 0.25 0.25 0.25: "))
    values = [float(v) for v in line.split(": ")[1].split()]
    assert len(values) == 4
    point = json.loads(report.read_text())["points"][0]
    torch.manual_seed(0)  # bench's model and batch
    model = zoo.build("msdnet-digits", 10).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.inference_mode():
        pasted = model.infer(x, thresholds=values).exit_index
        assert torch.equal(pasted, model.infer(x, thresholds=point["thresholds"]).exit_index)
    assert (pasted.bincount(minlength=4).double() / 16).tolist() == point["exit_fractions"]

    ckpt = random_checkpoint(tmp_path / "lenet.pt", seed=new_seed())
    res = run_main(capsys, "bench", "--checkpoint", ckpt, "--batch-size", 50, "--reps", 1, "--backends", "fused",
                   "--exit-fractions", 0.5, 0.5)
    assert res.code == 0, res
    line = next(v for v in res.out.splitlines() if v.startswith("  exit fractions 0.5 0.5: "))
    values = line.split(": ")[1].split()
    res = run_main(capsys, "eval", "--checkpoint", ckpt, "--thresholds", *values)
    assert res.code == 0, res
    assert thresholds_cell(res.out, "--thresholds") == " ".join(values)


def forbid(monkeypatch, module, *names):
    def fail(*args, **kwargs):
        raise AssertionError("evaluation work started before the thresholds were checked")

    for name in names:
        monkeypatch.setattr(module, name, fail)


def test_thresholds_are_checked_before_any_evaluation(tmp_path, capsys, monkeypatch):
    ckpt = random_checkpoint(tmp_path / "lenet.pt")
    forbid(monkeypatch, cmd_eval, "collect_logits", "infer_accuracy", "model_inputs")
    forbid(monkeypatch, cmd_calibrate, "collect_logits")
    forbid(monkeypatch, cmd_bench, "time_model", "model_inputs", "batch_thresholds")
    cases = [
        (["eval", "--thresholds", 0.9, 0.8, 0.7], "--thresholds: expected one per exit (2), got 3"),
        (["eval", "--thresholds", 1.5, 0], "must be in [0, 1], got 1.5"),
        (["eval", "--thresholds", -1, 0, "--criterion", "entropy"], "must be >= 0 (nats), got -1.0"),
        (["bench", "--thresholds", 0.9, 0.8, 0.7], "--thresholds: expected one per exit (2), got 3"),
        (["bench", "--exit-fractions", 0.5, 0.3, 0.2], "--exit-fractions: expected one per exit (2"),
        (["bench", "--exit-fractions", 0.5, 0.6], "they must sum to 1"),
        (["bench", "--exit-fractions", 1.5, -0.5], "each must be in [0, 1]"),
        (["calibrate", "--exit-fractions", 0.5, 0.6], "they must sum to 1"),
        (["calibrate", "--exit-fractions", 1], "--exit-fractions: expected one per exit (2"),
        (["calibrate", "--budget", 0.01], "outside what the exits allow"),
        (["calibrate", "--accuracy-drop", -1], "--accuracy-drop must be >= 0"),
        (["calibrate"], "give at least one of"),
    ]
    for args, message in cases:
        line = one_line_error(run_main(capsys, args[0], "--checkpoint", ckpt, *args[1:]))
        assert message in line, (args, line)
    # a thresholds file that does not fit the model: named, before any evaluation
    checkpoint.save_json(dict(criterion="confidence", points=[dict(name="p", thresholds=[0.5, 0.5, 0.0])]),
                         checkpoint.thresholds_path(ckpt))
    line = one_line_error(run_main(capsys, "eval", "--checkpoint", ckpt))
    assert f"{checkpoint.thresholds_path(ckpt)}, point 'p': expected one per exit (2), got 3" in line
    monkeypatch.undo()
    checkpoint.thresholds_path(ckpt).unlink()
    res = run_main(capsys, "eval", "--checkpoint", ckpt, "--thresholds", 0.9)
    assert res.code == 0 and thresholds_cell(res.out, "--thresholds") == "0.9 0.9", "one value: every exit"


@pytest.mark.parametrize("name", ["msdnet.pt", "model_best.pth.tar"])
def test_the_thresholds_file_is_named_as_the_help_says(name, tmp_path, capsys):
    res = run_main(capsys, "calibrate", "--help")
    assert "runs/msdnet.pt -> runs/msdnet.thresholds.json" in " ".join(res.out.split())
    stem = name.rsplit(".", 1)[0]
    assert checkpoint.thresholds_path(tmp_path / name) == tmp_path / f"{stem}.thresholds.json"
