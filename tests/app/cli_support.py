"""Helpers of the command-line tests: eexit run in this process or as a command, small checkpoints."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import torch

from eexit.app import checkpoint, zoo
from eexit.app.cli import main

ENV = dict(os.environ, OMP_NUM_THREADS="1")
COMMANDS = ["demo", "train", "calibrate", "eval", "bench"]


class Result(NamedTuple):
    code: int
    out: str
    err: str


def run_main(capsys, *args) -> Result:
    """``eexit ARGS`` in this process (fast: no interpreter start-up, no torch import)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return Result(code, out, err)


def run_cli(*args, timeout: int = 600) -> Result:
    """``python -m eexit ARGS`` as a command: what a user sees, warnings and tracebacks included."""
    res = subprocess.run([sys.executable, "-m", "eexit", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env=ENV)
    return Result(res.returncode, res.stdout, res.stderr)


def random_checkpoint(path: Path, model: str = "b-lenet", seed: int = 0) -> Path:
    """An eexit checkpoint of ``model`` with random weights, trained (as it says) on the digits."""
    torch.manual_seed(seed)
    checkpoint.save(dict(model=model, num_classes=10, data=dict(name="digits", data_dir=None, split_seed=0,
                                                                 val_size=None, classes=[str(d) for d in range(10)]),
                         epoch=1, state_dict=zoo.build(model, 10).state_dict()), path)
    return path


def one_line_error(res: Result) -> str:
    """The single line a failed command printed on stderr; asserts exit status 2 and no traceback."""
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err, res.err
    return lines[0]


def split_row(line: str) -> List[str]:
    """The cells of a row of :func:`eexit.app.cli.common.table` (two or more spaces between cells)."""
    import re

    return re.split(r"\s{2,}", line.strip())
