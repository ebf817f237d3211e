"""Image datasets: MNIST / Fashion-MNIST from IDX folders, CIFAR-10 and SVHN via torchvision.

Data is read from a root directory: ``$LEARNREG_DATA`` (default ``~/.cache/learnreg``).
Fashion-MNIST and MNIST are also read from any plain folder of IDX files, such as the one
Debian's ``dataset-fashion-mnist`` package installs under
``/usr/share/datasets/fashion-mnist``. Nothing is downloaded unless ``download: true``
(or ``LEARNREG_DOWNLOAD=1``) is set.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from learnreg.core.task import Split, Task
from learnreg.data.cifar import cifar10_arrays
from learnreg.data.idx import data_root, load_idx_dataset
from learnreg.data.splits import check_split
from learnreg.errors import DataError
from learnreg.registry import partial, register


def image_task(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    batch_size: int,
    val_size: int,
    train_size: int | None,
    test_size: int | None,
    flatten: bool,
    split_seed: int,
) -> Task:
    """Build a task from uint8 images (N, H, W) or (N, H, W, C): scale, split, normalize.

    The validation split is carved from the official training set; the official test set
    is the test split. Normalization statistics come from the training split only.
    """
    x = torch.as_tensor(train_x).float().div_(255.0)
    xt = torch.as_tensor(test_x).float().div_(255.0)
    x, xt = (a.unsqueeze(1) if a.dim() == 3 else a.permute(0, 3, 1, 2) for a in (x, xt))
    y, yt = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
    if val_size >= len(x):
        raise DataError(f"val_size={val_size} leaves no training data ({len(x)} examples)")
    g = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(len(x), generator=g)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    if test_size is not None:
        keep = torch.randperm(len(xt), generator=g)[:test_size]
        xt, yt = xt[keep], yt[keep]
    train, val = Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])
    mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
    std = train.x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    splits = [Split((s.x - mean) / std, s.y) for s in (train, val, Split(xt, yt))]
    if flatten:
        splits = [Split(s.x.flatten(1), s.y) for s in splits]
    task = Task(name, "classification", *splits, num_classes=num_classes, batch_size=batch_size)
    for split in ("train", "val", "test"):
        check_split(f"{name}.{split}", getattr(task, split), "classification", num_classes)
    return task


def _torchvision_arrays(name: str, download: bool):
    import torchvision

    root = data_root()
    if name == "CIFAR10":
        return cifar10_arrays(root, download)
    cls = getattr(torchvision.datasets, name)
    try:
        if name == "SVHN":
            tr, te = (
                cls(str(root / "SVHN"), split="train", download=download),
                cls(str(root / "SVHN"), split="test", download=download),
            )
            return (
                tr.data.transpose(0, 2, 3, 1),
                tr.labels,
                te.data.transpose(0, 2, 3, 1),
                te.labels,
            )
        tr, te = (
            cls(str(root), train=True, download=download),
            cls(str(root), train=False, download=download),
        )
        return tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets)
    except RuntimeError as exc:
        raise DataError(
            f"{name} not found under {root} ({exc}). Set `task.download=true` when online, "
            f"or place torchvision's {name} files under $LEARNREG_DATA."
        ) from None


def idx_task(
    dataset: str,
    batch_size: int = 128,
    val_size: int = 10000,
    train_size: int | None = None,
    test_size: int | None = None,
    flatten: bool = False,
    split_seed: int = 0,
    path: str | None = None,
    download: bool = False,
) -> Task:
    """A 28x28 grey 10-class dataset (``FashionMNIST`` or ``MNIST``) from an IDX folder.

    Args:
        dataset: torchvision's name of the dataset.
        batch_size: inner-loop batch size.
        val_size: examples carved out of the official training set for validation.
        train_size, test_size: keep only this many (None: all).
        flatten: flatten images to vectors (for MLPs).
        split_seed: seed of the validation carve-out and subsets.
        path: a folder holding the four IDX files (searched first).
        download: let torchvision download the files when none are found.
    """
    arrays = load_idx_dataset(dataset, path, download or _env_download())
    name = _TASK_NAMES[dataset]
    return image_task(
        name, *arrays, 10, batch_size, val_size, train_size, test_size, flatten, split_seed
    )


def torchvision_task(
    dataset: str,
    batch_size: int = 128,
    val_size: int = 5000,
    train_size: int | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
    download: bool = False,
) -> Task:
    """A 32x32 colour 10-class dataset (``CIFAR10`` or ``SVHN``) via torchvision from
    ``$LEARNREG_DATA``; arguments as in :func:`idx_task`."""
    arrays = _torchvision_arrays(dataset, download or _env_download())
    name = _TASK_NAMES[dataset]
    return image_task(
        name, *arrays, 10, batch_size, val_size, train_size, test_size, False, split_seed
    )


_TASK_NAMES = {
    "FashionMNIST": "fashion_mnist",
    "MNIST": "mnist",
    "CIFAR10": "cifar10",
    "SVHN": "svhn",
}
fashion_mnist = register("task", "fashion_mnist")(
    partial(
        idx_task,
        "fashion_mnist",
        "Fashion-MNIST (28x28 grey, 10 classes) from an IDX folder.",
        dataset="FashionMNIST",
    )
)
mnist = register("task", "mnist")(
    partial(
        idx_task,
        "mnist",
        "MNIST (28x28 grey digits, 10 classes) from an IDX folder.",
        dataset="MNIST",
    )
)
cifar10 = register("task", "cifar10")(
    partial(
        torchvision_task,
        "cifar10",
        "CIFAR-10 (32x32 colour, 10 classes) via torchvision.",
        dataset="CIFAR10",
    )
)
svhn = register("task", "svhn")(
    partial(
        torchvision_task,
        "svhn",
        "SVHN (32x32 colour house numbers, 10 classes) via torchvision.",
        dataset="SVHN",
    )
)


def _env_download() -> bool:
    return os.environ.get("LEARNREG_DOWNLOAD", "0").lower() in ("1", "true", "yes")
