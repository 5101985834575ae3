"""MNIST and Fashion-MNIST from their IDX files (gzipped or not), read strictly.

An IDX file is a big-endian header (two zero bytes, the element type 0x08 = unsigned byte, the
number of dimensions, one uint32 size per dimension) followed by exactly the elements. Anything
else (another magic, a size product the payload does not match, bytes after the payload, a broken
gzip stream) is refused with a ValueError naming the file; nothing is read past the payload's end.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import BinaryIO, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from eexit.app.data.datasets import TensorImages

_CHUNK = 1 << 20


class IdxSource(NamedTuple):
    """Where a data set's IDX files come from and how to get them."""

    title: str
    classes: Tuple[str, ...]
    default_dir: Optional[str]  # used when no data_dir is given and the folder exists
    how_to_get: str
    mean: float  # pixel statistics of the 60000 training images, in [0, 1]
    std: float


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SOURCES: Dict[str, IdxSource] = {
    "fashion-mnist": IdxSource(
        "Fashion-MNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        FASHION_MNIST_DIR,
        "install Debian's package dataset-fashion-mnist (apt install dataset-fashion-mnist puts them in "
        f"{FASHION_MNIST_DIR}) or download them from https://github.com/zalandoresearch/fashion-mnist",
        0.2860, 0.3530),
    "mnist": IdxSource(
        "MNIST", tuple(str(d) for d in range(10)), None,
        "download them from https://yann.lecun.com/exdb/mnist/ (or a mirror of it)",
        0.1307, 0.3081),
}
#: split -> (images file, labels file), without the optional ".gz"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def resolve_dir(name: str, data_dir=None) -> str:
    """The folder to read data set ``name`` from: ``data_dir``, else the source's default folder
    when it exists; ValueError saying how to get the files otherwise."""
    src = SOURCES[name]
    if data_dir is not None:
        return os.fspath(data_dir)
    if src.default_dir is not None and os.path.isdir(src.default_dir):
        return src.default_dir
    where = f" (default {src.default_dir}, which does not exist)" if src.default_dir else ""
    raise ValueError(f"--data-dir is required for {name}{where}: give the folder with the four {src.title} IDX "
                     f"files; to get them, {src.how_to_get}")


def find_file(folder: str, stem: str, name: str) -> str:
    """``folder/stem.gz`` or ``folder/stem``; ValueError naming the folder and the file otherwise."""
    for candidate in (f"{stem}.gz", stem):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    src = SOURCES[name]
    if not os.path.isdir(folder):
        raise ValueError(f"{src.title} folder {folder} does not exist; to get the IDX files, {src.how_to_get}")
    raise ValueError(f"{src.title} file {stem}[.gz] is missing from {folder}; to get it, {src.how_to_get}")


def _read_exact(f: BinaryIO, n: int, path: str, what: str) -> bytes:
    """Exactly ``n`` bytes of ``f`` (read in chunks, so a false size cannot allocate more than the
    file holds); ValueError when the file ends first."""
    parts: List[bytes] = []
    left = n
    while left:
        part = f.read(min(left, _CHUNK))
        if not part:
            raise ValueError(f"truncated IDX file {path}: {what} needs {n} bytes, the file ends after {n - left}")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_idx(path) -> np.ndarray:
    """The uint8 array of an IDX file (``.gz`` read through gzip), shape from its header."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if gzipped else raw
            magic = _read_exact(f, 4, path, "the header")
            if magic[:2] != b"\0\0" or magic[2] != 0x08 or not 1 <= magic[3] <= 4:
                raise ValueError(f"not an IDX file of unsigned bytes: {path} starts with {magic.hex()}, expected "
                                 "0000080N (N = 1..4 dimensions)")
            shape = struct.unpack(f">{magic[3]}I", _read_exact(f, 4 * magic[3], path, "the header"))
            data = _read_exact(f, math.prod(shape), path, f"a {'x'.join(map(str, shape))} payload")
            if f.read(1):
                raise ValueError(f"corrupt IDX file {path}: bytes after the {'x'.join(map(str, shape))} payload "
                                 "its header declares")
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_idx(name: str, data_dir, split: str) -> TensorImages:
    """The ``split`` ("train" or "test") of IDX data set ``name`` ("fashion-mnist" or "mnist") in
    folder ``data_dir`` (see :func:`resolve_dir`): images uint8 [n, 1, H, W], labels int64 [n]
    in 0..9, the data set's class names."""
    if name not in SOURCES:
        raise ValueError(f"unknown IDX data set {name!r}: expected one of {', '.join(SOURCES)}")
    if split not in FILES:
        raise ValueError(f"split must be one of {', '.join(FILES)}, got {split!r}")
    folder = resolve_dir(name, data_dir)
    src = SOURCES[name]
    image_path, label_path = (find_file(folder, stem, name) for stem in FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise ValueError(f"corrupt {src.title} file {image_path}: expected images [n, H, W], got shape {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"corrupt {src.title} file {label_path}: expected {len(images)} labels (one per image in "
                         f"{os.path.basename(image_path)}), got shape {labels.shape}")
    if len(labels) and labels.max() >= len(src.classes):
        raise ValueError(f"corrupt {src.title} file {label_path}: labels must be in 0..{len(src.classes) - 1}, "
                         f"found {labels.max()}")
    return TensorImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        list(src.classes))
