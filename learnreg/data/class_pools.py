"""Labelled images grouped by class, with disjoint meta-train / meta-val / meta-test classes.

A :class:`ClassPool` is what few-shot episodes are drawn from
(:mod:`learnreg.data.episodes`). Sources:

* ``fashion_mnist``, ``mnist``: the official train and test images pooled (the class
  split, not the official split, separates meta-train from meta-test), read from an IDX
  folder (:mod:`learnreg.data.vision`), e.g. Debian's ``/usr/share/datasets/fashion-mnist``.
* ``digits``: scikit-learn's 8x8 digits (shipped with the package).
* ``omniglot``: torchvision's layout under the data root ``$LEARNREG_DATA``::

      omniglot-py/images_background/<alphabet>/<character>/*.png
      omniglot-py/images_evaluation/<alphabet>/<character>/*.png

  every character of both folders is one class (1,623), resized to 28x28, strokes bright.
* ``mini_imagenet``: one of two layouts under ``$LEARNREG_DATA/mini-imagenet``::

      {train,val,test}/<wnid>/*.jpg                      (class folders per split), or
      images/*.jpg + {train,val,test}.csv                (Ravi & Larochelle's split files,
                                                          rows ``filename,label``)

  resized to 84x84 RGB; the split's own classes (64/16/20) are the meta-splits.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from learnreg.data import idx
from learnreg.errors import DataError

PHASES = ("train", "val", "test")
#: Default class split (meta-train, meta-val, meta-test counts) of sources without one.
DEFAULT_SPLITS = {
    "fashion_mnist": (5, 0, 5),
    "mnist": (5, 0, 5),
    "digits": (5, 0, 5),
    "omniglot": (1100, 100, 423),
}
SOURCES = ("fashion_mnist", "mnist", "digits", "omniglot", "mini_imagenet")


@dataclass
class ClassPool:
    """Images by class and which classes belong to which meta-split.

    Attributes:
        name: the source's name.
        x: images ``(N, C, H, W)``, stored compactly (uint8 when the source is).
        y: class ids ``(N,)``.
        classes: meta-split name (``train``, ``val``, ``test``) to its class ids.
        scale: multiplies raw values into [0, 1].
        mean, std: per-channel statistics of the meta-train classes (after ``scale``).
    """

    name: str
    x: Tensor
    y: Tensor
    classes: dict[str, list[int]]
    scale: float = 1.0
    mean: Tensor = field(init=False, repr=False)
    std: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        order = torch.argsort(self.y, stable=True)
        counts = torch.bincount(self.y)
        self._by_class = dict(enumerate(torch.split(order, counts.tolist())))
        train = torch.cat([self._by_class[c] for c in self.classes["train"]])
        sample = self.x[train[:: max(1, len(train) // 10000)]].float() * self.scale
        self.mean = sample.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = sample.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)

    def indices(self, cls: int) -> Tensor:
        """Row indices of class ``cls``."""
        return self._by_class[cls]

    def images(self, rows: Tensor) -> Tensor:
        """Float images of ``rows``, normalized with the meta-train statistics."""
        return (self.x[rows].float() * self.scale - self.mean) / self.std


def split_classes(
    num_classes: int, counts: tuple[int, int, int] | list[int], seed: int
) -> dict[str, list[int]]:
    """Disjoint meta-train / meta-val / meta-test class ids from a seeded permutation."""
    counts = [int(c) for c in counts]
    if len(counts) != 3 or min(counts) < 0 or sum(counts) > num_classes or counts[0] == 0:
        raise DataError(
            f"class_split {counts} must be three counts (meta-train > 0, meta-val, meta-test) "
            f"summing to at most the {num_classes} classes"
        )
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    bounds = np.cumsum([0, *counts])
    return {p: sorted(perm[bounds[i] : bounds[i + 1]]) for i, p in enumerate(PHASES)}


def load_pool(
    source: str,
    class_split: tuple[int, int, int] | list[int] | None = None,
    split_seed: int = 0,
    path: str | None = None,
    download: bool = False,
) -> ClassPool:
    """The class pool of ``source`` (one of :data:`SOURCES`), cached per process.

    Args:
        source: dataset name.
        class_split: meta-train/val/test class counts (default :data:`DEFAULT_SPLITS`);
            mini-ImageNet's split is fixed by its files.
        split_seed: seeds which classes go to which split.
        path: a folder holding the data (default: the data root).
        download: let torchvision download Fashion-MNIST, MNIST or Omniglot when absent.
    """
    if source not in SOURCES:
        raise DataError(f"unknown few-shot source {source!r}; choose from {', '.join(SOURCES)}")
    split = tuple(class_split) if class_split is not None else None
    return _load_pool(source, split, split_seed, path, download)


@functools.lru_cache(maxsize=4)
def _load_pool(source, class_split, split_seed, path, download) -> ClassPool:
    if source == "mini_imagenet":
        if class_split is not None:
            raise DataError("mini_imagenet's class split is fixed by its folders; drop class_split")
        x, y, classes = _mini_imagenet(path)
        return ClassPool(source, x, y, classes, scale=1 / 255)
    if source in ("fashion_mnist", "mnist"):
        name = "FashionMNIST" if source == "fashion_mnist" else "MNIST"
        train_x, train_y, test_x, test_y = idx.load_idx_dataset(name, path, download)
        x = torch.as_tensor(np.concatenate([train_x, test_x])).unsqueeze(1)
        y = torch.as_tensor(np.concatenate([train_y, test_y])).long()
        scale = 1 / 255
    elif source == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1)
        y, scale = torch.as_tensor(data.target).long(), 1 / 16
    else:
        x, y = _omniglot(path, download)
        scale = 1 / 255
    classes = split_classes(int(y.max()) + 1, class_split or DEFAULT_SPLITS[source], split_seed)
    return ClassPool(source, x, y, classes, scale=scale)


def _read_images(files: list[Path], size: int, mode: str, invert: bool = False) -> Tensor:
    """Image files as a uint8 tensor ``(N, C, size, size)``."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as image:
            out.append(np.asarray(image.convert(mode).resize((size, size), Image.BILINEAR)))
    arr = np.stack(out)
    arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
    return torch.as_tensor(255 - arr if invert else arr.copy())


def _omniglot(path: str | None, download: bool) -> tuple[Tensor, Tensor]:
    root = Path(path) if path else idx.data_root() / "omniglot-py"
    parts = [root / "images_background", root / "images_evaluation"]
    if download and not all(p.is_dir() for p in parts):
        import torchvision

        for background in (True, False):
            torchvision.datasets.Omniglot(str(root.parent), background=background, download=True)
    if not all(p.is_dir() for p in parts):
        raise DataError(
            f"Omniglot not found in {root} (expected images_background/ and images_evaluation/ "
            "holding <alphabet>/<character>/*.png). To get it: set `task.download=true` when "
            "online (torchvision's Omniglot), or unpack images_background.zip and "
            f"images_evaluation.zip into {root}, or point `task.path` at that folder."
        )
    characters = sorted(c for part in parts for a in sorted(part.iterdir()) for c in a.iterdir())
    files, labels = [], []
    for label, character in enumerate(characters):
        pngs = sorted(character.glob("*.png"))
        files += pngs
        labels += [label] * len(pngs)
    return _read_images(files, 28, "L", invert=True), torch.tensor(labels)


def _mini_imagenet(path: str | None) -> tuple[Tensor, Tensor, dict[str, list[int]]]:
    root = Path(path) if path else idx.data_root() / "mini-imagenet"
    if all((root / p).is_dir() for p in PHASES):
        split_files = {p: _class_folders(root / p) for p in PHASES}
    elif (root / "images").is_dir() and all((root / f"{p}.csv").is_file() for p in PHASES):
        split_files = {p: _csv_split(root / f"{p}.csv", root / "images") for p in PHASES}
    else:
        raise DataError(
            f"mini-ImageNet not found in {root}. Expected either train/, val/, test/ folders of "
            "<wnid>/*.jpg, or images/*.jpg with Ravi & Larochelle's train.csv, val.csv, "
            "test.csv (rows filename,label). mini-ImageNet has no official download: build it "
            "from ImageNet with those split files, then set $LEARNREG_DATA or `task.path`."
        )
    files, labels, classes, label = [], [], {p: [] for p in PHASES}, 0
    for phase in PHASES:
        for images in split_files[phase].values():
            classes[phase].append(label)
            labels += [label] * len(images)
            files += images
            label += 1
    return _read_images(files, 84, "RGB"), torch.tensor(labels), classes


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(folder.iterdir()) if d.is_dir()}


def _csv_split(table: Path, images: Path) -> dict[str, list[Path]]:
    by_class: dict[str, list[Path]] = {}
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            by_class.setdefault(row["label"], []).append(images / row["filename"])
    missing = [p for files in by_class.values() for p in files if not p.is_file()]
    if missing:
        raise DataError(f"{table} lists {len(missing)} images missing from {images}: {missing[0]}")
    return by_class
