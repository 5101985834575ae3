"""eexit.app.data: CIFAR archives in the official format, image folders, digits, transforms, batches."""
import os
import pickle
import re
import shutil
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eexit.app.data import (
    AUGMENTATIONS,
    DATASETS,
    FolderImages,
    TensorImages,
    augment,
    batches,
    find_folder_images,
    load_cifar,
    load_digits_images,
    load_splits,
    to_model_input,
)

from datafiles import CIFAR, N_TEST, known_image, write_cifar, write_image, write_tree
from helpers import DEVICES, generator, new_seed


def pattern(*parts) -> str:
    """A regex for a message holding ``parts`` (paths, words) in this order."""
    return ".*".join(re.escape(str(p)) for p in parts)


# ---------------------------------------------------------------- CIFAR in the official format

LAYOUTS = {  # how data_dir points at the release written under `root`
    "extracted": lambda root, which: os.path.join(root, CIFAR[which][0]),
    "parent-of-extracted": lambda root, which: root,
    "archive": lambda root, which: os.path.join(root, CIFAR[which][1]),
    "parent-of-archive": lambda root, which: root,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("which", [10, 100])
def test_load_cifar_reads_the_official_format(tmp_path, which, layout):
    seed = new_seed()
    train, train_y, test, test_y, classes = write_cifar(tmp_path, which, generator(seed), "archive" in layout)
    data_dir = LAYOUTS[layout](str(tmp_path), which)
    got_train, got_test = load_cifar(data_dir, which, train=True), load_cifar(data_dir, which, train=False)
    for got, images, labels in ((got_train, train, train_y), (got_test, test, test_y)):
        assert got.images.dtype == torch.uint8 and got.images.shape == (len(labels), 3, 32, 32), f"seed={seed}"
        assert torch.equal(got.images, images), f"seed={seed}"
        assert got.labels.dtype == torch.int64 and torch.equal(got.labels, labels), f"seed={seed}"
        assert got.classes == classes, f"seed={seed}"
    img = got_test.images[0].long()  # [3, 32, 32] in RGB order, row-major planes
    assert torch.equal(img[0, 5], 8 * torch.arange(32)) and torch.equal(img[1, :, 7], 8 * torch.arange(32))
    assert img[0, 3, 4] == 32 and img[1, 3, 4] == 24 and (img[2] == 200).all()
    x, y = got_test[0]
    assert x.dtype == torch.float32 and torch.equal(x, known_image_float()) and y == test_y[0].item()


def known_image_float() -> torch.Tensor:
    return torch.from_numpy(known_image()).float() / 255


@pytest.mark.parametrize("which", [10, 100])
def test_cifar_splits(tmp_path, which):
    seed = new_seed()
    train, train_y, test, test_y, classes = write_cifar(tmp_path, which, generator(seed), as_tar=True)
    n = len(train_y)
    name = f"cifar{which}"
    s = load_splits(name, tmp_path, split_seed=seed, val_size=5)
    assert (len(s.train), len(s.val), len(s.test)) == (n - 5, 5, N_TEST), f"seed={seed}"
    assert s.classes == classes and s.augment == "crop-flip"
    assert len(s.mean) == len(s.std) == 3
    ids = {part: s_part.images[:, 0, 0, 0].tolist() for part, s_part in (("train", s.train), ("val", s.val))}
    assert sorted(ids["train"] + ids["val"]) == list(range(n)), f"seed={seed}: train + val must partition train"
    assert torch.equal(s.val.labels, train_y[ids["val"]]) and torch.equal(s.train.labels, train_y[ids["train"]])
    assert torch.equal(s.test.images, test) and torch.equal(s.test.labels, test_y)
    again = load_splits(name, tmp_path, split_seed=seed, val_size=5)
    assert again.val.images[:, 0, 0, 0].tolist() == ids["val"], f"seed={seed}"
    other = load_splits(name, tmp_path, split_seed=seed + 1, val_size=5)
    assert other.val.images[:, 0, 0, 0].tolist() != ids["val"], f"seed={seed}"
    for bad in (0, n, -1):
        with pytest.raises(ValueError, match=f"val_size.*got {bad}"):
            load_splits(name, tmp_path, val_size=bad)
    with pytest.raises(ValueError, match="--data-dir"):
        load_splits(name)
    with pytest.raises(ValueError, match="val_size.*got 5000"):  # the default is larger than this tiny set
        load_splits(name, tmp_path)


def test_cifar_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=pattern(missing, "does not exist")):
        load_cifar(missing, 10, True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=pattern(tmp_path / "empty", "cifar-100-python/ or cifar-100-python.tar.gz")):
        load_cifar(tmp_path / "empty", 100, False)
    with pytest.raises(ValueError, match="which must be 10 or 100"):
        load_cifar(tmp_path, 20, True)
    with pytest.raises(ValueError, match="unknown dataset.*digits, fashion-mnist, mnist, cifar10, cifar100, folder"):
        load_splits("svhn", tmp_path)

    write_cifar(tmp_path / "x", 10, generator(new_seed()), as_tar=False)
    folder = tmp_path / "x" / "cifar-10-batches-py"
    load_cifar(folder, 10, True)  # intact

    def corrupt(name, content: bytes, train=True, match=""):
        good = (folder / name).read_bytes()
        (folder / name).write_bytes(content)
        with pytest.raises(ValueError, match=pattern(folder / name, match)):
            load_cifar(folder, 10, train)
        (folder / name).write_bytes(good)

    corrupt("data_batch_3", b"this is not a pickle")
    corrupt("data_batch_3", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), match="labels")
    corrupt("test_batch", pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}), False)
    corrupt("test_batch", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), False)
    corrupt("test_batch", pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), False)
    corrupt("test_batch", pickle.dumps([1, 2]), False)
    corrupt("batches.meta", pickle.dumps({b"label_names": [b"a", b"b"]}), False)
    corrupt("data_batch_1", pickle.dumps(RunsCode()), match="unexpected global")  # nothing but numpy arrays

    (folder / "data_batch_5").unlink()
    with pytest.raises(ValueError, match=pattern(folder / "data_batch_5")):
        load_cifar(folder, 10, True)
    load_cifar(folder, 10, False)  # the test set does not need it

    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not a tar archive")
    with pytest.raises(ValueError, match=pattern(archive)):
        load_cifar(archive, 10, True)
    with tarfile.open(archive, "w:gz") as tar:  # a real archive with one corrupt member and one missing
        skip = ("test_batch", "data_batch_2")
        tar.add(folder, arcname="cifar-10-batches-py", filter=lambda m: None if m.name.endswith(skip) else m)
        bad = tmp_path / "data_batch_2"
        bad.write_bytes(b"\x80\x02garbage")
        tar.add(bad, arcname="cifar-10-batches-py/data_batch_2")
    with pytest.raises(ValueError, match=pattern(f"{archive}:cifar-10-batches-py/data_batch_2")):
        load_cifar(tmp_path, 10, True)
    with pytest.raises(ValueError, match=pattern(f"{archive} lacks test_batch")):
        load_cifar(archive, 10, False)


class RunsCode:
    """Unpickling this calls os.getcwd: a stand-in for a pickle that would run arbitrary code."""

    def __reduce__(self):
        return os.getcwd, ()


# ---------------------------------------------------------------- image folders


def test_folder_images_pixels(tmp_path):
    seed = new_seed()
    gen = generator(seed)
    s = 12
    rgb = write_image(tmp_path / "a" / "rgb.png", s, s, "RGB", gen)
    gray = write_image(tmp_path / "a" / "gray.png", s, s, "L", gen)
    rgba = write_image(tmp_path / "b" / "rgba.PNG", s, s, "RGBA", gen)
    wide = write_image(tmp_path / "b" / "wide.bmp", 2 * s + 2, s, "RGB", gen)  # shorter side already s
    write_image(tmp_path / "b" / "tall.jpg", 17, 40, "RGB", gen)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    write_image(tmp_path / ".hidden" / "x.png", 4, 4, "RGB", gen)
    Image.new("RGB", (37, 23), (10, 200, 77)).save(tmp_path / "b" / "z_flat.png")

    paths, labels, classes = find_folder_images(tmp_path)
    names = [os.path.relpath(p, tmp_path) for p in paths]
    assert classes == ["a", "b"] and labels == [0, 0, 1, 1, 1, 1]
    assert names == [os.path.join("a", "gray.png"), os.path.join("a", "rgb.png"), os.path.join("b", "rgba.PNG"),
                     os.path.join("b", "tall.jpg"), os.path.join("b", "wide.bmp"), os.path.join("b", "z_flat.png")]

    data = FolderImages(paths, labels, s, classes)
    items = [data[i] for i in range(len(data))]
    for x, _ in items:
        assert x.shape == (3, s, s) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert [y for _, y in items] == labels
    as_float = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float().permute(2, 0, 1) / 255  # noqa: E731
    assert torch.equal(items[0][0], (torch.from_numpy(gray).float() / 255).expand(3, s, s)), f"seed={seed}"
    assert torch.equal(items[1][0], as_float(rgb)), f"seed={seed}"
    assert torch.equal(items[2][0], as_float(rgba[:, :, :3])), f"seed={seed}: alpha is dropped"
    left = (2 * s + 2 - s) // 2
    assert torch.equal(items[4][0], as_float(wide[:, left:left + s])), f"seed={seed}: the centre crop"
    flat = torch.tensor([10, 200, 77]).float().view(3, 1, 1) / 255
    assert torch.allclose(items[5][0], flat.expand(3, s, s), atol=1 / 255 + 1e-6), "a flat image stays flat"

    part = data.subset(torch.tensor([4, 1]))
    assert isinstance(part, FolderImages) and part.paths == [paths[4], paths[1]] and part.labels == [1, 0]
    assert part.size == s and part.classes == classes

    bad = tmp_path / "b" / "broken.png"
    bad.write_text("this is text, not a PNG")
    with pytest.raises(ValueError, match=pattern(bad)):
        FolderImages([str(bad)], [0], s)[0]


def test_find_folder_images_errors(tmp_path):
    with pytest.raises(ValueError, match=pattern(tmp_path / "missing")):
        find_folder_images(tmp_path / "missing")
    with pytest.raises(ValueError, match=pattern(f"no class folders under {tmp_path}")):
        find_folder_images(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=pattern(f"no images under {tmp_path}")):
        find_folder_images(tmp_path)
    with pytest.raises(ValueError, match=pattern(tmp_path / "missing")):
        load_splits("folder", tmp_path / "missing")
    with pytest.raises(ValueError, match="--data-dir is required for folder"):
        load_splits("folder")


def split_paths(split):
    return [os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p) for p in split.paths]


def test_folder_splits_layouts(tmp_path):
    seed = new_seed()
    gen = generator(seed)
    counts = {"cat": 12, "dog": 9, "eel": 4}
    write_tree(tmp_path / "full" / "train", counts, gen)
    write_tree(tmp_path / "full" / "val", {"cat": 2, "dog": 1, "eel": 1}, gen)
    write_tree(tmp_path / "full" / "test", {"cat": 1, "dog": 3, "eel": 1}, gen)
    s = load_splits("folder", tmp_path / "full", image_size=8)
    assert (len(s.train), len(s.val), len(s.test)) == (25, 4, 5) and s.classes == ["cat", "dog", "eel"]
    assert s.test.labels == [0, 1, 1, 1, 2] and s.augment == "crop-flip" and len(s.mean) == len(s.std) == 3
    x, y = s.val[3]
    assert x.shape == (3, 8, 8) and y == 2
    with pytest.raises(ValueError, match="val_size"):
        load_splits("folder", tmp_path / "full", val_size=3)

    shutil.rmtree(tmp_path / "full" / "test")
    s = load_splits("folder", tmp_path / "full")
    assert s.test is s.val and len(s.val) == 4

    shutil.rmtree(tmp_path / "full" / "val")
    s = load_splits("folder", tmp_path / "full", split_seed=seed)
    everything = split_paths(FolderImages(*find_folder_images(tmp_path / "full" / "train")[:2], 8))
    assert len(s.val) == 2 and s.test is s.val, "default: 10 % of train, rounded down"
    assert sorted(split_paths(s.train) + split_paths(s.val)) == sorted(everything), f"seed={seed}"
    for part in (s.train, s.val):
        assert all(p.startswith(["cat", "dog", "eel"][y] + "/") for p, y in zip(split_paths(part), part.labels))
    s7 = load_splits("folder", tmp_path / "full", split_seed=seed, val_size=7)
    assert (len(s7.train), len(s7.val)) == (18, 7)
    assert split_paths(load_splits("folder", tmp_path / "full", split_seed=seed, val_size=7).val) == split_paths(s7.val)
    assert split_paths(load_splits("folder", tmp_path / "full", split_seed=seed + 1, val_size=7).val) != \
        split_paths(s7.val), f"seed={seed}"
    with pytest.raises(ValueError, match="val_size.*got 25"):
        load_splits("folder", tmp_path / "full", val_size=25)

    flat = tmp_path / "full" / "train"  # no train/ inside: the tree itself is split 80/10/10
    s = load_splits("folder", flat, split_seed=seed, image_size=5)
    assert (len(s.train), len(s.val), len(s.test)) == (21, 2, 2)
    assert sorted(split_paths(s.train) + split_paths(s.val) + split_paths(s.test)) == sorted(everything)
    assert s.train[0][0].shape == (3, 5, 5)
    with pytest.raises(ValueError, match="val_size.*got 13"):
        load_splits("folder", flat, val_size=13)


def test_folder_splits_need_the_same_classes(tmp_path):
    gen = generator(new_seed())
    write_tree(tmp_path / "train", {"a": 2, "b": 2}, gen)
    write_tree(tmp_path / "val", {"a": 1, "c": 1}, gen)
    with pytest.raises(ValueError, match=pattern(tmp_path / "val", "'c'", tmp_path / "train")):
        load_splits("folder", tmp_path)


# ---------------------------------------------------------------- digits


def test_digits_splits():
    seed = new_seed()
    full = load_digits_images()
    assert full.images.shape == (1797, 1, 8, 8) and full.images.dtype == torch.float32
    assert full.images.min() == 0 and full.images.max() == 1 and full.labels.dtype == torch.int64
    s = load_splits("digits", "ignored", split_seed=seed)
    assert (len(s.train), len(s.val), len(s.test)) == (1078, 359, 360)
    assert s.classes == [str(k) for k in range(10)] and s.augment == "shift"
    rows = lambda d: Counter(zip(map(bytes, d.images.view(len(d), -1).numpy()), d.labels.tolist()))  # noqa: E731
    assert rows(s.train) + rows(s.val) + rows(s.test) == rows(full), f"seed={seed}: the splits partition the set"
    for part in s[:3]:
        assert part.labels.min() >= 0 and part.labels.max() <= 9
    pixels = s.train.images.double()
    assert s.mean == pytest.approx((pixels.mean().item(),), rel=1e-4)
    assert s.std == pytest.approx((pixels.std().item(),), rel=1e-4)
    again = load_splits("digits", split_seed=seed)
    assert torch.equal(again.val.images, s.val.images) and torch.equal(again.test.labels, s.test.labels)
    other = load_splits("digits", split_seed=seed + 1)
    assert not torch.equal(other.val.images, s.val.images), f"seed={seed}"
    with pytest.raises(ValueError, match="val_size"):
        load_splits("digits", val_size=100)


# ---------------------------------------------------------------- TensorImages and batches


def test_tensor_images():
    seed = new_seed()
    gen = generator(seed)
    images = torch.randint(0, 256, (10, 2, 5, 4), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 3, (10,), generator=gen)
    data = TensorImages(images, labels, ["x", "y", "z"])
    x, y = data[7]
    assert x.dtype == torch.float32 and torch.equal(x, images[7].float() / 255) and y == labels[7].item()
    idx = torch.tensor([9, 0, 9, 3])
    xb, yb = data.batch(idx)
    assert torch.equal(xb, images[idx].float() / 255) and torch.equal(yb, labels[idx])
    part = data.subset(idx)
    assert torch.equal(part.images, images[idx]) and part.classes == ["x", "y", "z"]
    floats = TensorImages(images.float() / 255, labels)
    assert torch.equal(floats.batch(idx)[0], xb) and floats.classes is None
    with pytest.raises(ValueError, match="images must be"):
        TensorImages(images[0], labels)
    with pytest.raises(ValueError, match="labels must be"):
        TensorImages(images, labels[:9])


def test_batches_tensor_images():
    seed = new_seed()
    gen = generator(seed)
    data = TensorImages(torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 10, (50,), generator=gen))
    idx = torch.randperm(50, generator=gen)[:23]
    got = list(batches(data, idx, 5))
    assert [len(y) for _, y in got] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([x for x, _ in got]), data.images[idx].float() / 255), f"seed={seed}"
    assert torch.equal(torch.cat([y for _, y in got]), data.labels[idx]), f"seed={seed}"
    with pytest.raises(ValueError, match="batch_size"):
        batches(data, idx, 0)


def test_batches_folder_images(tmp_path):
    gen = generator(new_seed())
    write_tree(tmp_path, {"a": 3, "b": 4}, gen, size=(6, 9))
    data = FolderImages(*find_folder_images(tmp_path)[:2], 4)
    idx = torch.tensor([6, 0, 3, 2, 5])
    got = list(batches(data, idx, 2))
    assert [tuple(x.shape) for x, _ in got] == [(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in got)
    assert torch.equal(torch.cat([x for x, _ in got]), torch.stack([data[i][0] for i in idx.tolist()]))
    assert torch.cat([y for _, y in got]).tolist() == [1, 0, 1, 0, 1]


# ---------------------------------------------------------------- transforms


def test_to_model_input_channels_and_normalisation():
    seed = new_seed()
    gen = generator(seed)
    x = torch.rand(4, 3, 6, 5, generator=gen)
    mean, std = (0.1, 0.5, 0.3), (0.2, 0.25, 0.5)
    out = to_model_input(x, (3, 6, 5), mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c], atol=1e-6), f"seed={seed}"
    gray = to_model_input(x, (1, 6, 5), mean, std)  # normalised per image channel, then averaged
    assert gray.shape == (4, 1, 6, 5)
    want = sum((x[:, c] - mean[c]) / std[c] for c in range(3)) / 3
    assert torch.allclose(gray[:, 0], want, atol=1e-6), f"seed={seed}"
    one = x[:, :1]
    rgb = to_model_input(one, (3, 6, 5), (0.4,), (0.3,))  # a grey image's statistics, repeated
    assert rgb.shape == (4, 3, 6, 5) and rgb.is_contiguous()
    for c in range(3):
        assert torch.allclose(rgb[:, c], (one[:, 0] - 0.4) / 0.3, atol=1e-6), f"seed={seed}"
    last = to_model_input(x.contiguous(memory_format=torch.channels_last), (3, 6, 5), mean, std)
    assert last.is_contiguous() and torch.equal(last, out)
    for c_in, c_out in ((2, 3), (4, 3), (3, 2)):
        with pytest.raises(ValueError, match=f"{c_in}-channel images.*{c_out} channels"):
            to_model_input(torch.rand(1, c_in, 4, 4), (c_out, 4, 4), (0.5,) * c_in, (0.5,) * c_in)
    with pytest.raises(ValueError, match="mean and std must have 3"):
        to_model_input(x, (3, 6, 5), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="float"):
        to_model_input(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), (3, 4, 4), mean, std)


def test_to_model_input_resize():
    seed = new_seed()
    x = torch.rand(3, 1, 16, 12, generator=generator(seed))
    down = to_model_input(x, (1, 8, 6), (0.0,), (1.0,))
    assert down.shape == (3, 1, 8, 6) and down.dtype == torch.float32 and down.is_contiguous()
    aa = F.interpolate(x, size=(8, 6), mode="bilinear", align_corners=False, antialias=True)
    plain = F.interpolate(x, size=(8, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(down, aa, atol=1e-6) and not torch.allclose(down, plain, atol=1e-3), "antialiased"
    up = to_model_input(x, (3, 32, 24), (0.5,), (0.5,))
    assert up.shape == (3, 3, 32, 24)
    upsized = F.interpolate(x, size=(32, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(up[:, 0], 2 * upsized[:, 0] - 1, atol=1e-6)
    flat = to_model_input(torch.full((2, 3, 7, 9), 0.25), (3, 4, 4), (0.0,) * 3, (1.0,) * 3)
    assert torch.allclose(flat, torch.full_like(flat, 0.25), atol=1e-6), "resizing keeps a flat image flat"


def crop_flip(img: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    crop = img[:, top:top + 8, left:left + 8]
    return crop.flip(2) if flip else crop


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img [C, H, W] moved down by dy and right by dx, zero fill."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_augment_shift(device):
    seed = new_seed()
    x = torch.rand(48, 2, 7, 9, generator=generator(seed)).to(device)
    out = augment(x, "shift", generator(seed))
    assert out.shape == x.shape and out.device == x.device
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(out[i], shifted(x[i], dy, dx))]
        assert len(found) == 1, f"seed={seed} sample {i}: not a shift of its input by [-2, 2]^2"
        offsets += found
    assert len(set(offsets)) > 5, f"seed={seed}: every sample draws its own offset"
    assert torch.equal(augment(x, "shift", generator(seed)), out), f"seed={seed}: reproducible"
    if device != "cpu":
        assert torch.equal(augment(x.cpu(), "shift", generator(seed)), out.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_augment_crop_flip(device):
    seed = new_seed()
    x = torch.rand(40, 3, 8, 8, generator=generator(seed)).to(device)
    out = augment(x, "crop-flip", generator(seed))
    assert out.shape == x.shape and out.device == x.device
    padded = F.pad(x, (4, 4, 4, 4))
    seen = set()
    for i in range(len(x)):
        found = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
                 if torch.equal(out[i], crop_flip(padded[i], top, left, flip))]
        assert len(found) == 1, f"seed={seed} sample {i}: not a (flipped) crop of the 4-padded input"
        seen.add(found[0][2])
    assert seen == {False, True}, f"seed={seed}: some samples flipped, some not"
    assert torch.equal(augment(x, "crop-flip", generator(seed)), out), f"seed={seed}: reproducible"
    assert not torch.equal(augment(x, "crop-flip", generator(seed + 1)), out), f"seed={seed}"


def test_augment_none_and_unknown():
    x = torch.rand(2, 1, 4, 4)
    assert augment(x, "none", torch.Generator()) is x
    assert AUGMENTATIONS == ("none", "shift", "crop-flip") and "folder" in DATASETS
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'.*none, shift, crop-flip"):
        augment(x, "rotate", torch.Generator())
