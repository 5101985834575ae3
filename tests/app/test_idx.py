"""MNIST / Fashion-MNIST IDX files (eexit.app.data.idx): reading gzipped and raw files, the splits,
and every corrupt or missing file refused with a message naming it."""
import gzip
import os

import numpy as np
import pytest
import torch

from eexit.app.data import load_idx, load_splits, read_idx, resolve_data_dir
from eexit.app.data.idx import FASHION_MNIST_DIR, SOURCES

from datafiles import IDX_STEMS, idx_bytes, write_idx_set
from helpers import generator, new_seed


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_load_idx_round_trip(tmp_path, gz, name):
    seed = new_seed()
    data = write_idx_set(tmp_path, generator(seed), 23, 7, gz=gz)
    for split in ("train", "test"):
        got = load_idx(name, tmp_path, split)
        images, labels = data[split]
        assert got.images.dtype == torch.uint8 and got.images.shape == (len(images), 1, 28, 28), seed
        assert torch.equal(got.images[:, 0], torch.from_numpy(images)), seed
        assert got.labels.dtype == torch.int64 and torch.equal(got.labels, torch.from_numpy(labels).long()), seed
        assert got.classes == list(SOURCES[name].classes)


def test_read_idx_shapes_and_empty(tmp_path):
    gen = generator(new_seed())
    for shape in [(5,), (3, 4), (2, 3, 5), (2, 1, 3, 3), (0, 28, 28)]:
        array = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).numpy()
        path = tmp_path / f"a{len(shape)}"
        path.write_bytes(idx_bytes(array))
        got = read_idx(path)
        assert got.shape == shape and np.array_equal(got, array)


def test_load_splits_holds_out_validation(tmp_path):
    seed = new_seed()
    data = write_idx_set(tmp_path, generator(seed), 40, 9)
    splits = load_splits("fashion-mnist", tmp_path, split_seed=seed, val_size=10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 9)
    assert splits.mean == (SOURCES["fashion-mnist"].mean,) and splits.std == (SOURCES["fashion-mnist"].std,)
    assert splits.augment == "none"
    # train and val are disjoint and together the training file, each image once
    rows = {img.tobytes() for img in data["train"][0]}
    seen = [img[0].numpy().tobytes() for part in (splits.train, splits.val) for img in part.images]
    assert len(seen) == 40 and set(seen) == rows, seed
    again = load_splits("fashion-mnist", tmp_path, split_seed=seed, val_size=10)
    assert torch.equal(again.val.images, splits.val.images)
    with pytest.raises(ValueError, match="val"):
        load_splits("mnist", tmp_path, val_size=40)


def write(path, payload: bytes, gz: bool):
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(payload)


@pytest.mark.parametrize("gz", [True, False])
def test_corrupt_files_refused(tmp_path, gz):
    gen = generator(new_seed())
    write_idx_set(tmp_path, gen, 6, 4, gz=gz)
    images = os.path.join(tmp_path, IDX_STEMS["train"][0] + (".gz" if gz else ""))
    labels = os.path.join(tmp_path, IDX_STEMS["train"][1] + (".gz" if gz else ""))
    good = idx_bytes(np.zeros((6, 28, 28), np.uint8))
    cases = [
        (b"\0\0\x09\x03" + good[4:], "not an IDX file of unsigned bytes.*00000903"),  # int8 type, not ubyte
        (b"\x12\x34\x08\x03" + good[4:], "not an IDX file"),
        (b"\0\0\x08\x00", "not an IDX file"),  # no dimensions
        (good[:3], "truncated IDX file.*header"),
        (good[:10], "truncated IDX file.*header"),
        (good[:-1], r"truncated IDX file.*6x28x28 payload needs 4704 bytes, the file ends after 4703"),
        (good + b"\0", "bytes after the 6x28x28 payload"),
        (bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 3, "truncated IDX file"),  # huge size, no payload
    ]
    for payload, match in cases:
        write(images, payload, gz)
        with pytest.raises(ValueError, match=match) as err:
            load_idx("mnist", tmp_path, "train")
        assert images in str(err.value)
    write(images, good, gz)
    write(labels, idx_bytes(np.zeros(5, np.uint8)), gz)
    with pytest.raises(ValueError, match="expected 6 labels"):
        load_idx("mnist", tmp_path, "train")
    write(labels, idx_bytes(np.full(6, 10, np.uint8)), gz)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9, found 10"):
        load_idx("mnist", tmp_path, "train")
    write(images, idx_bytes(np.zeros((6, 784), np.uint8)), gz)
    with pytest.raises(ValueError, match=r"expected images \[n, H, W\]"):
        load_idx("mnist", tmp_path, "train")


def test_broken_gzip_refused(tmp_path):
    write_idx_set(tmp_path, generator(new_seed()), 6, 4, gz=True)
    path = tmp_path / (IDX_STEMS["test"][0] + ".gz")
    blob = path.read_bytes()
    for broken in (blob[: len(blob) // 2], blob[:10] + bytes(len(blob) - 10)):
        path.write_bytes(broken)
        with pytest.raises(ValueError, match=f"(cannot read|truncated) IDX file {path}"):
            load_idx("mnist", tmp_path, "test")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(ValueError, match=f"MNIST folder {tmp_path / 'nowhere'} does not exist.*yann.lecun.com"):
        load_idx("mnist", tmp_path / "nowhere", "train")
    write_idx_set(tmp_path, generator(new_seed()), 4, 4)
    os.remove(tmp_path / (IDX_STEMS["test"][1] + ".gz"))
    with pytest.raises(ValueError, match=f"Fashion-MNIST file t10k-labels-idx1-ubyte\\[.gz\\] is missing from "
                                         f"{tmp_path}.*dataset-fashion-mnist"):
        load_idx("fashion-mnist", tmp_path, "test")
    load_idx("fashion-mnist", tmp_path, "train")  # the other split is intact
    with pytest.raises(ValueError, match="--data-dir is required for mnist"):
        load_splits("mnist")
    with pytest.raises(ValueError, match="unknown IDX data set 'kmnist'"):
        load_idx("kmnist", tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        load_idx("mnist", tmp_path, "val")


def test_fashion_mnist_default_folder():
    if os.path.isdir(FASHION_MNIST_DIR):
        assert resolve_data_dir("fashion-mnist") == FASHION_MNIST_DIR
    else:
        with pytest.raises(ValueError, match="--data-dir is required for fashion-mnist.*dataset-fashion-mnist"):
            resolve_data_dir("fashion-mnist")
    assert resolve_data_dir("digits") is None
    assert resolve_data_dir("mnist", "/x") == "/x"


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    """The real files (make test installs them on Debian as root): sizes, label balance, pixel stats."""
    train, test = load_idx("fashion-mnist", None, "train"), load_idx("fashion-mnist", None, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10 and torch.bincount(test.labels).tolist() == [1000] * 10
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - SOURCES["fashion-mnist"].mean) < 5e-4
    assert abs(pixels.std().item() - SOURCES["fashion-mnist"].std) < 5e-4
