"""Data files in the formats eexit reads, written for tests: miniature CIFAR releases (the official
python-pickle format) and ImageFolder trees of PNGs."""
import os
import pickle
import shutil
import struct
import tarfile

import numpy as np
import torch
from PIL import Image

CIFAR = {  # which -> (folder, archive, train files, test files, meta file, label key, names key)
    10: ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "batches.meta", b"labels", b"label_names"),
    100: ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "meta", b"fine_labels",
          b"fine_label_names"),
}
PER_FILE = {10: 7, 100: 31}  # training images per training file (5 files for CIFAR-10, 1 for CIFAR-100)
N_TEST = 9


def known_image() -> np.ndarray:
    """uint8 [3, 32, 32]: red = 8 x column, green = 8 x row, blue = 200."""
    col, row = np.meshgrid(np.arange(32), np.arange(32))
    return np.stack([8 * col, 8 * row, np.full((32, 32), 200)]).astype(np.uint8)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """[n, 3, 32, 32] -> the official rows [n, 3072]: the red plane row by row, then green, then blue."""
    return np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in images])


class Py2Pickler(pickle._Pickler):
    """Pickles as the official files were written (Python 2 cPickle, protocol 2, numpy 1): text and
    bytes as Python 2 strings (read back as bytes with encoding="bytes"), numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(data)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + data if n < 256 else
                   pickle.BINSTRING + struct.pack("<i", n) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_cifar(root, which: int, gen: torch.Generator, as_tar: bool):
    """A miniature CIFAR-`which` release under `root` (extracted folder, or the .tar.gz); returns the
    truth: train images uint8 [n, 3, 32, 32] (red pixel (0, 0) = the image's index) and labels,
    test images (the first one `known_image`) and labels, class names."""
    folder, archive, train_files, test_files, meta_file, label_key, names_key = CIFAR[which]
    classes = [f"class-{k}-{torch.randint(1000, (1,), generator=gen).item()}" for k in range(which)]
    n_train = PER_FILE[which] * len(train_files)
    train = torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=gen).numpy()
    train[:, 0, 0, 0] = np.arange(n_train)
    test = torch.randint(0, 256, (N_TEST, 3, 32, 32), dtype=torch.uint8, generator=gen).numpy()
    test[0] = known_image()
    train_y = torch.randint(0, which, (n_train,), generator=gen).tolist()
    test_y = torch.randint(0, which, (N_TEST,), generator=gen).tolist()
    files = {}
    for k, name in enumerate(train_files):
        part = slice(k * PER_FILE[which], (k + 1) * PER_FILE[which])
        files[name] = {b"batch_label": b"training batch", b"data": cifar_rows(train[part]), label_key: train_y[part]}
    files[test_files[0]] = {b"batch_label": b"testing batch", b"data": cifar_rows(test), label_key: test_y}
    if which == 100:
        for name in ("train", "test"):
            files[name][b"coarse_labels"] = [y // 5 for y in files[name][b"fine_labels"]]
    files[meta_file] = {names_key: [c.encode() for c in classes], b"num_vis": 3072}
    os.makedirs(os.path.join(root, folder))
    for name, d in files.items():
        with open(os.path.join(root, folder, name), "wb") as f:
            Py2Pickler(f, protocol=2).dump(d)
    if as_tar:
        with tarfile.open(os.path.join(root, archive), "w:gz") as tar:
            tar.add(os.path.join(root, folder), arcname=folder)
        shutil.rmtree(os.path.join(root, folder))
    return torch.from_numpy(train), torch.tensor(train_y), torch.from_numpy(test), torch.tensor(test_y), classes



def write_image(path, w: int, h: int, mode: str, gen: torch.Generator) -> np.ndarray:
    """A random image of `mode` ("RGB", "L", "RGBA") saved at `path`; returns its pixels [h, w(, c)]."""
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = torch.randint(0, 256, (h, w, channels), dtype=torch.uint8, generator=gen).numpy()
    pixels = pixels[:, :, 0] if mode == "L" else pixels
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)  # the mode follows from the array's shape
    return pixels


def write_tree(root, counts, gen, size=(9, 11)):
    """root/<class>/img<k>.png for {class: count}."""
    for cls, count in counts.items():
        for k in range(count):
            write_image(os.path.join(root, cls, f"img{k}.png"), *size, "RGB", gen)


IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 00 00 08 ndim, big-endian uint32 sizes, the elements."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder, gen: torch.Generator, n_train: int, n_test: int, gz: bool = True, size: int = 28):
    """The four IDX files of an MNIST-like set (random images, labels 0..9) in folder, gzipped or
    not; returns {split: (images uint8 [n, size, size], labels uint8 [n])}."""
    import gzip

    os.makedirs(folder, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = torch.randint(0, 256, (n, size, size), generator=gen, dtype=torch.uint8).numpy()
        labels = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8).numpy()
        for stem, array in zip(IDX_STEMS[split], (images, labels)):
            payload = idx_bytes(array)
            path = os.path.join(folder, stem + (".gz" if gz else ""))
            with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
                f.write(payload)
        data[split] = (images, labels)
    return data
