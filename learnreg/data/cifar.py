"""CIFAR-10 from its python batches, without torchvision's unrestricted ``pickle.load``.

The official batches are pickled dicts of lists and numpy arrays; :class:`_ArrayUnpickler`
admits exactly the globals those need, so a doctored file under ``$LEARNREG_DATA`` is
refused instead of run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from learnreg.errors import DataError


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's pickled batches (dicts of lists and numpy arrays) and refuses every
    other global, so a doctored batch file cannot name code to run (torchvision's reader
    would unpickle anything)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(
                f"a CIFAR-10 batch file names {module}.{name}: it is not plain data, so it "
                "was not loaded. Download the dataset again from its official source."
            )
        return super().find_class(module, name)


def cifar10_arrays(root: Path, download: bool):
    """CIFAR-10's python batches under ``root``, read without running code from them.

    Args:
        root: the data root; the batches are in ``root/cifar-10-batches-py``.
        download: fetch and extract the official archive (checksum verified) when absent.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 images (N, 32, 32, 3), int64 labels.

    Raises:
        DataError: missing or damaged batches, or a batch that names code to run.
    """
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    if not folder.is_dir() and download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR10.url, str(root), md5=CIFAR10.tgz_md5)

    def read(names) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataError(
                    f"CIFAR10 not found under {root} (no {path}). Set `task.download=true` "
                    "when online, or place CIFAR-10's python batches under $LEARNREG_DATA."
                )
            try:
                with path.open("rb") as f:
                    batch = _ArrayUnpickler(f, encoding="latin1").load()
                x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(batch["labels"], dtype=np.int64)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - any damage to the pickled batch
                raise DataError(
                    f"{path} is not a CIFAR-10 batch ({exc}); download it again"
                ) from None
            if len(x) != len(y):
                raise DataError(f"{path}: {len(x)} images but {len(y)} labels; download it again")
            images.append(x.transpose(0, 2, 3, 1))
            labels.append(y)
        return np.concatenate(images), np.concatenate(labels)

    train = read(name for name, _ in CIFAR10.train_list)
    test = read(name for name, _ in CIFAR10.test_list)
    return (*train, *test)
