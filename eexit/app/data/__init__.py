"""Datasets for training and evaluating early-exit networks: train/val/test splits and batches.

``load_splits`` gives the three splits of a dataset with its normalisation and augmentation;
``batches`` iterates a split as float32 [B, C, H, W] images in [0, 1] and int64 [B] labels;
:mod:`eexit.app.data.transforms` then fits the batches to the model's input.
"""
from __future__ import annotations

import os
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from eexit.app.data.datasets import (
    IMAGE_EXTENSIONS,
    FolderImages,
    TensorImages,
    find_folder_images,
    load_cifar,
    load_digits_images,
)
from eexit.app.data.idx import SOURCES as IDX_SOURCES
from eexit.app.data.idx import load_idx, read_idx
from eexit.app.data.idx import resolve_dir as resolve_idx_dir
from eexit.app.data.transforms import AUGMENTATIONS, augment, to_model_input

__all__ = ["AUGMENTATIONS", "DATASETS", "IMAGE_EXTENSIONS", "FolderImages", "ImageSplits", "TensorImages",
           "augment", "batches", "chunk_batches", "find_folder_images", "load_cifar", "load_digits_images",
           "load_idx", "load_splits", "read_idx", "resolve_data_dir", "to_model_input"]

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "folder")

ImageDataset = Union[TensorImages, FolderImages]

# Per-channel statistics of the CIFAR training sets, as in the official MSDNet code.
_CIFAR_NORM = {
    10: ((0.4914, 0.4824, 0.4467), (0.2471, 0.2435, 0.2616)),
    100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageSplits(NamedTuple):
    """A dataset's splits, class names, per-channel normalisation (``to_model_input``'s mean and
    std) and training augmentation kind (one of ``AUGMENTATIONS``)."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: str


def load_splits(name: str, data_dir=None, *, split_seed: int = 0, val_size: Optional[int] = None,
                image_size: int = 32) -> ImageSplits:
    """The train/val/test splits of dataset ``name`` (one of ``DATASETS``).

    - "digits": scikit-learn's 8x8 digits (``data_dir`` not used), a ``split_seed`` permutation
      cut 60/20/20 % (1078/359/360); mean and std of the training pixels; "shift" augmentation.
    - "fashion-mnist", "mnist": the four IDX files (:func:`load_idx`; gzipped or not) in
      ``data_dir``, which for Fashion-MNIST defaults to Debian's ``/usr/share/datasets/fashion-mnist``
      when it exists; the 60000 training images minus ``val_size`` (default 5000) held out for
      validation by a ``split_seed`` permutation, and the 10000 test images; 1 x 28 x 28 grey;
      normalised by the training set's pixel mean and std; no augmentation ("none").
    - "cifar10", "cifar100": ``data_dir`` as in :func:`load_cifar`; the official training set
      minus ``val_size`` (default 5000) images held out for validation by a ``split_seed``
      permutation, and the official test set; MSDNet's normalisation; "crop-flip".
    - "folder": ImageFolder trees (:func:`find_folder_images`) under ``data_dir``. With a
      ``train/`` subfolder: ``val/`` is the validation set if present, else ``val_size`` images
      (default 10 % of train, at least 1) are held out of train; ``test/`` is the test set if
      present, else the validation set doubles as the test set. Without ``train/``, the whole tree
      is split by ``split_seed``: ``val_size`` (default 10 %, at least 1) images each for val and
      test, the rest for training. Images are ``image_size`` squares; ImageNet normalisation;
      "crop-flip".

    Digits and CIFAR keep their native image size (``image_size`` is for "folder" only); split
    index order follows the source. ``val_size`` is refused where it has no meaning (digits, a
    ``val/`` folder).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    gen = torch.Generator().manual_seed(split_seed)
    if name == "digits":
        if val_size is not None:
            raise ValueError("val_size is not used by digits (its split is fixed at 60/20/20 %)")
        data = load_digits_images()
        n = len(data)
        perm = torch.randperm(n, generator=gen)
        n_train, n_val = n * 60 // 100, n * 20 // 100
        train, val, test = (data.subset(i.sort().values) for i in perm.split([n_train, n_val, n - n_train - n_val]))
        return ImageSplits(train, val, test, data.classes, (train.images.mean().item(),),
                           (train.images.std().item(),), "shift")
    if name in IDX_SOURCES:
        full, test = (load_idx(name, data_dir, split) for split in ("train", "test"))
        train_idx, val_idx = _hold_out(len(full), 5000 if val_size is None else val_size, gen, name)
        src = IDX_SOURCES[name]
        return ImageSplits(full.subset(train_idx), full.subset(val_idx), test, full.classes, (src.mean,), (src.std,),
                           "none")
    if data_dir is None:
        raise ValueError(f"--data-dir is required for {name}")
    if name in ("cifar10", "cifar100"):
        which = int(name[5:])
        full = load_cifar(data_dir, which, train=True)
        test = load_cifar(data_dir, which, train=False)
        val_size = 5000 if val_size is None else val_size
        train_idx, val_idx = _hold_out(len(full), val_size, gen, name)
        return ImageSplits(full.subset(train_idx), full.subset(val_idx), test, full.classes, *_CIFAR_NORM[which],
                           "crop-flip")
    return _folder_splits(os.fspath(data_dir), gen, val_size, image_size)


def resolve_data_dir(name: str, data_dir=None) -> Optional[str]:
    """The folder data set ``name`` is read from: ``data_dir`` as given, or the data set's default
    folder (Fashion-MNIST: Debian's, when it exists); None for digits, which needs none."""
    if name in IDX_SOURCES:
        return resolve_idx_dir(name, data_dir)
    return None if data_dir is None else os.fspath(data_dir)


def _hold_out(n: int, val_size: int, gen: torch.Generator, what: str) -> Tuple[Tensor, Tensor]:
    """Sorted (rest, held out) indices of a random ``val_size`` of ``n`` items."""
    if not 1 <= val_size < n:
        raise ValueError(f"val_size must be in 1..{n - 1} ({what} has {n} training images), got {val_size}")
    perm = torch.randperm(n, generator=gen)
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def _folder_splits(root: str, gen: torch.Generator, val_size: Optional[int], image_size: int) -> ImageSplits:
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    trees = {}  # path -> FolderImages of the trees read so far, which must share their class names

    def tree(path: str) -> FolderImages:
        paths, labels, classes = find_folder_images(path)
        for other, data in trees.items():
            if data.classes != classes:
                raise ValueError(f"class folders differ: {path} has {classes}, {other} has {data.classes}")
        trees[path] = FolderImages(paths, labels, image_size, classes)
        return trees[path]

    train_root = os.path.join(root, "train")
    if not os.path.isdir(train_root):
        full = tree(root)
        n = len(full)
        size = max(1, n // 10) if val_size is None else val_size
        if size < 1 or 2 * size >= n:
            raise ValueError(f"val_size must be in 1..{(n - 1) // 2} ({root} has {n} images for train, "
                             f"val and test), got {size}")
        perm = torch.randperm(n, generator=gen)
        val, test, train = (full.subset(i.sort().values) for i in perm.split([size, size, n - 2 * size]))
    else:
        train = tree(train_root)
        val_root, test_root = os.path.join(root, "val"), os.path.join(root, "test")
        if os.path.isdir(val_root):
            if val_size is not None:
                raise ValueError(f"val_size cannot be used: {val_root} is the validation set")
            val = tree(val_root)
        else:
            size = max(1, len(train) // 10) if val_size is None else val_size
            train_idx, val_idx = _hold_out(len(train), size, gen, train_root)
            train, val = train.subset(train_idx), train.subset(val_idx)
        test = tree(test_root) if os.path.isdir(test_root) else val
    return ImageSplits(train, val, test, train.classes, *_IMAGENET_NORM, "crop-flip")


def batches(dataset: ImageDataset, indices: Tensor, batch_size: int,
            workers: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
    """Batches (float32 [B, C, H, W] in [0, 1], int64 [B]) of ``dataset`` items ``indices``
    (int64 [M]), in that order, ``batch_size`` at a time (the last one may be smaller).
    FolderImages are read by a DataLoader with ``workers`` worker processes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return chunk_batches(dataset, torch.as_tensor(indices, dtype=torch.long).split(batch_size), workers)


def chunk_batches(dataset: ImageDataset, chunks: Sequence[Tensor],
                  workers: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
    """One batch, as :func:`batches` gives them, per index chunk (int64 [B_i] each) in turn."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if isinstance(dataset, TensorImages):
        return (dataset.batch(chunk) for chunk in chunks)
    return iter(DataLoader(dataset, batch_sampler=[c.tolist() for c in chunks], num_workers=workers))
