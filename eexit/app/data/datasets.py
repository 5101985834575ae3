"""Image datasets: in-memory tensors, ImageFolder-style trees, scikit-learn's digits and CIFAR.

Every dataset yields ``(image float32 [C, H, W] in [0, 1], label int)``; resizing to the model's
input, normalisation and augmentation are batched tensor ops in :mod:`eexit.app.data.transforms`.
"""
from __future__ import annotations

import os
import pickle
import posixpath
import tarfile
import zlib
from typing import BinaryIO, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


class TensorImages(Dataset):
    """Images held in memory.

    ``images``: uint8 [N, C, H, W] (0..255, converted to float only when read) or float32
    [N, C, H, W] already in [0, 1]; ``labels``: integer [N] (stored int64); ``classes``: optional
    class names, label ``k`` is ``classes[k]``.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Optional[List[str]] = None):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 (0..255) or float32 (in [0, 1]), got {images.dtype}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N] with N = {len(images)} images, got shape {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        self.images = images
        self.labels = labels.long()
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        """(float32 [C, H, W] in [0, 1], label)."""
        return _to_unit_float(self.images[i]), int(self.labels[i])

    def batch(self, idx: Tensor) -> Tuple[Tensor, Tensor]:
        """Rows ``idx`` (int64 [B]) as (float32 [B, C, H, W] in [0, 1], int64 [B])."""
        return _to_unit_float(self.images[idx]), self.labels[idx]

    def subset(self, idx: Tensor) -> "TensorImages":
        """The rows ``idx`` (int64 [M]) as a new TensorImages with the same classes."""
        return TensorImages(self.images[idx], self.labels[idx], self.classes)


def _to_unit_float(x: Tensor) -> Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


class FolderImages(Dataset):
    """Image files read with PIL on access.

    Item ``i``: ``paths[i]`` converted to RGB, its shorter side resized to ``size`` (bilinear),
    centre-cropped to ``size x size``: (float32 [3, size, size] in [0, 1], ``labels[i]``).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], size: int,
                 classes: Optional[List[str]] = None):
        if len(paths) != len(labels):
            raise ValueError(f"paths and labels must have the same length, got {len(paths)} and {len(labels)}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.paths = list(paths)
        self.labels = [int(y) for y in labels]
        self.size = size
        self.classes = classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        from PIL import Image

        path, s = self.paths[i], self.size
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise ValueError(f"cannot read image {path}: {err}") from err
        w, h = im.size
        new = (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
        if new != (w, h):
            im = im.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - s) // 2, (new[1] - s) // 2
        im = im.crop((left, top, left + s, top + s))
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(s, s, 3)
        return x.permute(2, 0, 1).float().div_(255), self.labels[i]

    def subset(self, idx: Tensor) -> "FolderImages":
        """The items ``idx`` (int64 [M]) as a new FolderImages with the same size and classes."""
        idx = idx.tolist()
        return FolderImages([self.paths[i] for i in idx], [self.labels[i] for i in idx], self.size, self.classes)


def find_folder_images(root) -> Tuple[List[str], List[int], List[str]]:
    """An ImageFolder tree ``root/<class>/<image>`` as (paths, labels, classes).

    ``classes``: the sorted names of the subdirectories (hidden ones, starting with ".", are
    skipped); an image's label is its class's index. Images are found by extension
    (:data:`IMAGE_EXTENSIONS`, any case), also in nested folders, sorted by path within a class.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders under {root}: expected the layout {root}/<class>/<image>")
    paths: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, name), followlinks=True)
                       for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise ValueError(f"no images under {root}/<class>/: expected files ending in {' '.join(IMAGE_EXTENSIONS)}")
    return paths, labels, classes


def load_digits_images() -> TensorImages:
    """scikit-learn's handwritten digits (shipped with it, no download): images float32
    [1797, 1, 8, 8] = pixel / 16 in [0, 1], labels int64 [1797] in 0..9, classes "0".."9"."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise RuntimeError("the digits dataset needs scikit-learn (pip install scikit-learn)") from err
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    return TensorImages(images, labels, [str(c) for c in digits.target_names])


class _CifarLayout(NamedTuple):
    folder: str
    archive: str
    train: Tuple[str, ...]
    test: Tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes


_CIFAR = {
    10: _CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz", tuple(f"data_batch_{i}" for i in range(1, 6)),
                     ("test_batch",), "batches.meta", b"labels", b"label_names"),
    100: _CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta",
                      b"fine_labels", b"fine_label_names"),
}

# The only globals a CIFAR pickle needs: numpy arrays (numpy 1 or 2), and bytes as Python 3 writes
# them at protocol 2. Anything else in a pickle could run arbitrary code, so it is refused.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(f: BinaryIO, where: str) -> dict:
    try:
        obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # corrupt pickles raise many kinds (UnpicklingError, EOFError, KeyError, ...)
        raise ValueError(f"corrupt CIFAR file {where}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"corrupt CIFAR file {where}: expected a dict, got {type(obj).__name__}")
    return obj


def _read_cifar_files(data_dir, which: int, names: Sequence[str]) -> Dict[str, Tuple[dict, str]]:
    """Unpickles CIFAR files ``names`` from any of the accepted ``data_dir`` layouts:
    {name: (dict, where it came from)}."""
    lay = _CIFAR[which]
    path = os.fspath(data_dir)
    expected = f"expected {lay.folder}/ or {lay.archive}"
    if not os.path.exists(path):
        raise ValueError(f"CIFAR-{which} data dir {path} does not exist: {expected}")
    if os.path.isdir(path):
        extracted = os.path.basename(os.path.normpath(path)) == lay.folder
        folder = path if extracted or os.path.isfile(os.path.join(path, lay.meta)) else os.path.join(path, lay.folder)
        if os.path.isdir(folder):
            out = {}
            for name in names:
                file = os.path.join(folder, name)
                if not os.path.isfile(file):
                    raise ValueError(f"missing CIFAR-{which} file {file}: expected {', '.join(names)} in {folder}")
                with open(file, "rb") as f:
                    out[name] = _unpickle(f, file), file
            return out
        archive = os.path.join(path, lay.archive)
        if not os.path.isfile(archive):
            raise ValueError(f"no CIFAR-{which} data under {path}: {expected}")
        path = archive
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:  # one pass in archive order: a .tar.gz is decompressed once
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in names and name not in out:
                    where = f"{path}:{member.name}"
                    out[name] = _unpickle(tar.extractfile(member), where), where
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise ValueError(f"cannot read {path} as a CIFAR-{which} tar archive ({expected}): {err}") from err
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"CIFAR-{which} archive {path} lacks {', '.join(missing)}: "
                         f"expected members {lay.folder}/{{{','.join(names)}}}")
    return out


def load_cifar(data_dir, which: int, train: bool) -> TensorImages:
    """The CIFAR-10/100 train (50000) or test (10000) set from the official "python version".

    ``data_dir``: the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``), a folder
    containing it, the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), or a
    folder containing the archive (read in place, nothing is extracted). ``which``: 10 or 100
    (CIFAR-100 uses the 100 fine labels). Images uint8 [n, 3, 32, 32] (RGB), labels int64 [n];
    ``classes`` comes from the archive's meta file.
    """
    if which not in _CIFAR:
        raise ValueError(f"which must be 10 or 100 (CIFAR-10 or CIFAR-100), got {which!r}")
    lay = _CIFAR[which]
    names = lay.train if train else lay.test
    files = _read_cifar_files(data_dir, which, names + (lay.meta,))
    meta, where = files[lay.meta]
    classes = meta.get(lay.names_key)
    if (not isinstance(classes, list) or len(classes) != which
            or not all(isinstance(c, (bytes, str)) for c in classes)):
        raise ValueError(f"corrupt CIFAR file {where}: expected {lay.names_key!r}, a list of {which} names")
    classes = [c.decode() if isinstance(c, bytes) else c for c in classes]
    data, labels = [], []
    for name in names:
        d, where = files[name]
        x, y = d.get(b"data"), d.get(lay.label_key)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise ValueError(f"corrupt CIFAR file {where}: expected b'data', a uint8 array [n, 3072]")
        if y is None:
            raise ValueError(f"corrupt CIFAR file {where}: no {lay.label_key!r}")
        y = np.asarray(y)
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= which)):
            raise ValueError(f"corrupt CIFAR file {where}: expected {lay.label_key!r}, "
                             f"{len(x)} labels in 0..{which - 1}")
        data.append(x)
        labels.append(y)
    images = torch.from_numpy(np.concatenate(data)).view(-1, 3, 32, 32)
    return TensorImages(images, torch.from_numpy(np.concatenate(labels).astype(np.int64)), classes)
