"""Checkpoints of the command line: written atomically, read back with clear errors.

A checkpoint is a ``torch.save`` dict:

* ``format``: :data:`FORMAT`; ``model``: a :data:`eexit.app.zoo.MODELS` name; ``num_classes``;
* ``data``: how the data were loaded (name, data_dir, split_seed, val_size, image_size, classes,
  mean, std), so that calibration and evaluation rebuild the same splits;
* ``train``: the training configuration; ``epoch``: epochs completed; ``history``: per-epoch records;
* ``state_dict`` (the model's), ``optimizer``, ``scheduler``: what resuming needs.

Thresholds chosen by ``eexit calibrate`` go next to the checkpoint, in a JSON file named after it
without its last extension (:func:`thresholds_path`: ``runs/msdnet.pt`` ->
``runs/msdnet.thresholds.json``), one threshold per exit in every point (the last exit takes
everyone left: its threshold is unused), as ``--thresholds`` and ``model.infer`` take them.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from torch import nn

from eexit.app import zoo
from eexit.models.state_dict import mismatch_report, read_torch

FORMAT = "eexit-checkpoint-1"
PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write) -> None:
    """Calls ``write(file_object)`` on a temporary file in ``path``'s folder, flushes it to disk,
    then renames it over ``path``: a reader sees the old file or the new one, never half of one.
    The temporary file is removed if ``write`` raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save(checkpoint: Dict[str, Any], path: PathLike) -> None:
    """Writes ``checkpoint`` (with ``format`` set) to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save({**checkpoint, "format": FORMAT}, f))


#: what ``eexit eval``, ``calibrate`` and ``bench`` take as --checkpoint (and ``train`` writes)
EEXIT_CHECKPOINT = "a checkpoint written by eexit train"
def load(path: PathLike) -> Dict[str, Any]:
    """Reads a checkpoint written by :func:`save` onto the CPU; ValueError naming the file when it
    is missing, unreadable, or not an eexit checkpoint."""
    ckpt = read_torch(path, EEXIT_CHECKPOINT)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (a checkpoint of the official MSDNet code? use --official)" if isinstance(ckpt, dict) and \
            "state_dict" in ckpt else ""
        raise ValueError(f"checkpoint {path} is a torch file but not an eexit checkpoint{hint}; expected "
                         f"{EEXIT_CHECKPOINT}")
    missing = [k for k in ("model", "num_classes", "data", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; expected {EEXIT_CHECKPOINT}")
    return ckpt


def build_model(ckpt: Dict[str, Any], path: PathLike = "checkpoint") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode; ValueError if the weights do not fit."""
    model = zoo.build(ckpt["model"], ckpt["num_classes"])
    problems = mismatch_report(model.state_dict(), ckpt["state_dict"])
    if problems:
        raise ValueError(f"checkpoint {path} does not match model {ckpt['model']!r}: " + "; ".join(problems))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def thresholds_path(checkpoint_path: PathLike) -> Path:
    """Where ``eexit calibrate`` writes the thresholds of a checkpoint: ``run.pt`` -> ``run.thresholds.json``."""
    p = Path(checkpoint_path)
    return p.with_name(p.stem + ".thresholds.json")


def _strict(obj: Any) -> Any:
    """``obj`` with non-finite floats as the strings "inf", "-inf", "nan" (``float()`` reads them back)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def save_json(obj: Any, path: PathLike) -> None:
    """Writes ``obj`` as indented strict JSON (non-finite floats as strings), atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n").encode()))


def save_thresholds(checkpoint_path: PathLike, model: str, criterion: str, full_accuracy: float, costs: Any,
                    points: List[Dict[str, Any]]) -> Path:
    """Writes the operating points chosen on the validation split next to the checkpoint
    (:func:`thresholds_path`); ``costs``: :class:`eexit.app.evaluation.Costs`. Returns the file's path."""
    path = thresholds_path(checkpoint_path)
    save_json(dict(model=model, criterion=criterion, split="val", full_accuracy=full_accuracy,
                   costs=costs._asdict(), points=points), path)
    return path


def load_thresholds(checkpoint_path: PathLike) -> Dict[str, Any]:
    """The calibration file of a checkpoint, each point's thresholds as floats (inf included);
    ValueError if there is none or it is malformed."""
    path = thresholds_path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"no thresholds for {checkpoint_path}: {path} does not exist (run eexit calibrate)")
    try:
        data = json.loads(path.read_text())
        for p in data["points"]:
            if not (isinstance(p["name"], str) and isinstance(p["thresholds"], list)):
                raise TypeError
            p["thresholds"] = [float(t) for t in p["thresholds"]]
        data["criterion"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a thresholds file written by eexit calibrate") from None
    return data
