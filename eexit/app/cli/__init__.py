"""The ``eexit`` command line (also ``python -m eexit``): one module per command (``cmd_*.py``, none
importing another; what they share is in :mod:`eexit.app.cli.common` and the rest of
:mod:`eexit.app`), each with ``add_parser(subparsers)`` registering its options and a ``run(args)``
function.

User mistakes (a missing data folder, a checkpoint that is missing, a folder, not a torch file or
truncated, an unknown model, thresholds that do not fit, a device that is not there) end with a
one-line message naming what is wrong (a file: its path and what was expected there) and exit
status 2, no traceback; an interrupted command ends with status 130.

Thresholds follow one convention everywhere: one per exit, the last exit's included (the last exit
takes everyone left, so its value is unused), in ``--thresholds``, in the thresholds file that
``eexit calibrate`` writes next to a checkpoint (``runs/msdnet.pt`` -> ``runs/msdnet.thresholds.json``)
and in every table the commands print, which paste back into ``--thresholds`` and, as a list of
floats, into ``model.infer(x, thresholds=...)``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from eexit.app.cli import cmd_bench, cmd_calibrate, cmd_demo, cmd_eval, cmd_train

COMMANDS = (cmd_demo, cmd_train, cmd_calibrate, cmd_eval, cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eexit", description="Real sample-level early exit for PyTorch: train, calibrate, evaluate and "
        "benchmark early-exit networks. `eexit COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from eexit.app import progress

    progress.ENABLED = {"auto": None, "on": True, "off": False}[args.progress]
    try:
        args.run(args)
    except (ValueError, OSError, ModuleNotFoundError) as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
        parser.exit(2, f"eexit {args.command}: error: {message}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"eexit {args.command}: interrupted\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
