"""MNIST-format datasets from plain IDX folders (MNIST, Fashion-MNIST).

A dataset is found in the first folder holding its four IDX files (plain or gzipped):
``task.path`` when given, then under the data root (``$LEARNREG_DATA``, default
``~/.cache/learnreg``), then the system folder a Debian package installs (Fashion-MNIST:
``/usr/share/datasets/fashion-mnist``). Every file is checked before use: a damaged,
truncated or mismatched file is a :class:`~learnreg.errors.DataError` naming it.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from learnreg.errors import DataError

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SYSTEM_FOLDERS = {
    "FashionMNIST": ["/usr/share/datasets/fashion-mnist"],
    "MNIST": ["/usr/share/datasets/mnist"],
}
HOW_TO_GET = {
    "FashionMNIST": "install Debian's package (`apt-get install dataset-fashion-mnist`), "
    "or set `task.download=true` when online",
    "MNIST": "put the four IDX files in $LEARNREG_DATA/MNIST/raw, or set `task.download=true` when online",
}


def data_root() -> Path:
    return Path(os.environ.get("LEARNREG_DATA", Path.home() / ".cache" / "learnreg")).expanduser()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array.

    Raises:
        DataError: when the file is truncated or is not an IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # a corrupt gzip stream is zlib.error
        raise DataError(
            f"cannot read IDX file {path} ({exc}): the file is damaged; download it again"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(
            f"{path} is truncated: its header announces {ndim} dimensions but holds "
            f"{max(len(raw) - 4, 0) // 4}; download the file again"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}"
        )
    return data.reshape(dims).copy()  # writable, detached from the file buffer


def find_idx_folder(name: str, path: str | None) -> Path | None:
    """The first folder holding the four IDX files (plain or .gz) for dataset ``name``."""
    root = data_root()
    candidates = [Path(path)] if path else []
    candidates += [
        root / name / "raw",
        root / name.lower(),
        root / "fashion-mnist" if name == "FashionMNIST" else root / "mnist",
    ]
    candidates += [Path(p) for p in SYSTEM_FOLDERS.get(name, [])]
    for folder in candidates:
        if all(idx_file(folder, f) is not None for f in IDX_FILES.values()):
            return folder
    return None


def idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def load_idx_dataset(name: str, path: str | None, download: bool):
    folder = find_idx_folder(name, path)
    if folder is None and download:
        import torchvision

        getattr(torchvision.datasets, name)(str(data_root()), train=True, download=True)
        getattr(torchvision.datasets, name)(str(data_root()), train=False, download=True)
        folder = find_idx_folder(name, path)
    if folder is None:
        searched = [path] if path else []
        searched += [str(data_root() / name / "raw"), *SYSTEM_FOLDERS.get(name, [])]
        raise DataError(
            f"{name} not found (looked in: {', '.join(searched)}). To get it: {HOW_TO_GET[name]}; "
            "or point `task.path` at a folder holding the four IDX files."
        )
    files = {k: idx_file(folder, stem) for k, stem in IDX_FILES.items()}
    arrays = {k: read_idx(path) for k, path in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if images.ndim != 3:
            raise DataError(
                f"{files[f'{part}_x']} holds an array of shape {images.shape}; images must be "
                "(N, height, width). Is it a label file in place of an image file?"
            )
        if labels.ndim != 1:
            raise DataError(
                f"{files[f'{part}_y']} holds an array of shape {labels.shape}; labels must be (N,)"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {len(images)} {part} images but {len(labels)} labels; the IDX "
                "files do not belong together. Download the four files again."
            )
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]
