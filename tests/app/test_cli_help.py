"""Every command's --help: each default said once, and what it says true of the code."""
import re

import pytest
from cli_support import COMMANDS, run_main

from eexit.app import checkpoint, zoo
from eexit.app.cli import build_parser


def option_blocks(help_text: str):
    """{option: its help text} of an argparse --help (an option line and its indented continuation)."""
    blocks, name = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-[-\w]+)", line)
        if m:
            name = m.group(1)
            blocks[name] = line
        elif name and line.startswith("      "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    return blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_each_default_is_printed_once(command, capsys):
    res = run_main(capsys, command, "--help")
    assert res.code == 0
    blocks = option_blocks(res.out)
    assert "--device" in blocks and "-h" in blocks
    for option, text in blocks.items():
        assert len(re.findall(r"\bdefault\b", text, re.I)) <= 1, (command, text)
        assert "(default: None)" not in text and "(default: False)" not in text, (command, text)
    assert "(default: cpu)" in blocks["--device"]
    for action in build_parser()._subparsers._group_actions[0].choices[command]._actions:
        if action.option_strings and action.default not in (None, False, [], "==SUPPRESS==") and action.help:
            text = blocks[action.option_strings[0]]
            assert "default" in text, (command, action.option_strings, "the default is shown")


def test_help_says_what_each_command_does(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping (argparse breaks lines at hyphens)
    helps = {c: " ".join(run_main(capsys, c, "--help").out.split()) for c in COMMANDS}
    bench = helps["bench"]
    for name in zoo.MODELS:  # --model alone: any zoo model with random weights, not MSDNet only
        assert name in bench, name
    assert "without --checkpoint: any model of the zoo, built with random weights" in bench
    assert "--exit-fractions" in bench and "calibrated on the timed batch" in bench
    assert "fastest, median and slowest" in bench and "thread count" in bench
    for command in ("calibrate", "eval", "bench"):  # the thresholds file, named as thresholds_path names it
        text = helps[command]
        assert "<checkpoint>.thresholds.json" not in text
        assert "runs/msdnet.pt -> runs/msdnet.thresholds.json" in text, command
    assert checkpoint.thresholds_path("runs/msdnet.pt").as_posix() == "runs/msdnet.thresholds.json"
    for command in ("eval", "bench"):
        assert "one threshold per exit, the last exit's included (the last exit takes everyone left" in helps[command]
    assert "msdnet-digits.thresholds.json" in helps["demo"] and "msdnet-digits.pt" in helps["demo"]
    assert "one per exit, the last exit's included, summing to 1" in helps["calibrate"]
