"""Reading weight files with one-line errors, and what keeps a state_dict from loading into a
model, as one report (used by MSDNet's official loader and the application's checkpoints)."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, List, Mapping, Union

import torch

PathLike = Union[str, os.PathLike]


def mismatch_report(expected: Mapping[str, torch.Tensor], state: Mapping[str, object],
                    optional: Callable[[str], bool] = lambda key: False, show: int = 5) -> List[str]:
    """Lines naming the missing keys (except ``optional`` ones), the unexpected keys and the shape
    mismatches of ``state`` against ``expected`` (a model's ``state_dict()``), the first ``show`` of
    each with expected / got shapes; empty when ``state`` loads."""
    def shape(t: object) -> str:
        return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__

    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and
                  (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k].shape))]
    lines = []
    for title, keys, describe in (
        ("missing keys", missing, lambda k: f"{k} (expected {shape(expected[k])})"),
        ("unexpected keys", unexpected, lambda k: f"{k} (got {shape(state[k])})"),
        ("shape mismatches", mismatched, lambda k: f"{k}: expected {shape(expected[k])}, got {shape(state[k])}"),
    ):
        if keys:
            first = f" (the first {show})" if len(keys) > show else ""
            lines.append(f"{len(keys)} {title}{first}: " + "; ".join(describe(k) for k in keys[:show]))
    return lines


#: what --official and ``--init-from`` take
TORCH_FILE = "a torch file, as torch.save writes it"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format
PICKLE_PROTOCOL = 0x80  # the first byte of a pickle of protocol 2 or more (torch.save's legacy format)


def _unreadable(path: Path, expected: str, err: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``err``, from the error and the file's
    first bytes: one line naming the file and what was ``expected``. Never PyTorch's advice to load
    with weights_only=False: that runs whatever code the file holds."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"checkpoint {path} cannot be read ({e.strerror or e}); expected {expected}"
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if not head:
        what = "is empty"
    elif head != ZIP_MAGIC and head[0] != PICKLE_PROTOCOL:  # text, say: its bytes may read as pickle opcodes
        what = "is not a torch file (neither torch.save's zip archive nor a pickle)"
    elif refused:
        what = (f"holds a Python object of type {refused.group(1)}, which eexit does not load (it reads tensors, "
                f"numbers, strings and containers only, and runs no code from a file)")
    elif head == ZIP_MAGIC:
        what = "is corrupt: a truncated or damaged torch file (its zip archive does not read)"
    else:
        what = "is corrupt, or a pickle that torch.save did not write"
    return f"checkpoint {path} {what}; expected {expected}"


def read_torch(path: PathLike, expected: str = TORCH_FILE, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` onto ``map_location`` (any torch checkpoint, e.g. the official
    MSDNet code's); a one-line ValueError naming the file and what was ``expected`` (e.g.
    the app's ``EEXIT_CHECKPOINT``) when it is missing, a folder, empty, truncated, not a torch file, or
    holds objects the weights-only unpickler refuses."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist; expected {expected}")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a file; expected {expected}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # garbage makes the weights-only unpickler raise anything (KeyError, IndexError...)
        raise ValueError(_unreadable(path, expected, err)) from None
