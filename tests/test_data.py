"""Datasets: disjoint splits, train-only standardization, IDX folders, clear errors."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from conftest import FASHION_MNIST

from learnreg.data import read_idx, sklearn_task, three_way_split
from learnreg.data.vision import fashion_mnist
from learnreg.errors import DataError


@pytest.mark.parametrize("name", ["diabetes", "digits", "wine", "breast_cancer"])
def test_sklearn_splits_are_disjoint_and_standardized_on_train_only(name):
    task = sklearn_task(name, split_seed=3)
    rows = [
        {tuple(np.round(r, 6)) for r in split.x.numpy()}
        for split in (task.train, task.val, task.test)
    ]
    total = len(task.train) + len(task.val) + len(task.test)
    assert sum(map(len, rows)) >= total - 5  # duplicate rows inside the raw data are rare
    assert not (rows[0] & rows[2]) and not (rows[1] & rows[2]) and not (rows[0] & rows[1])
    torch.testing.assert_close(
        task.train.x.mean(0), torch.zeros(task.train.x.shape[1]), atol=1e-5, rtol=0
    )
    assert task.val.x.mean(0).abs().max() > 1e-4  # val/test were not re-centred on themselves
    assert abs(len(task.test) / total - 0.2) < 0.02


def test_split_indices_never_overlap():
    x = np.arange(1000).reshape(-1, 1)
    y = np.arange(1000) % 4
    (a, _), (b, _), (c, _) = three_way_split(x, y, (0.6, 0.2, 0.2), seed=1)
    sets = [set(a.ravel()), set(b.ravel()), set(c.ravel())]
    assert sum(map(len, sets)) == 1000 and len(set.union(*sets)) == 1000
    with pytest.raises(DataError, match="summing to 1"):
        three_way_split(x, y, (0.5, 0.2, 0.2))


def _write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:  # closed: flushed on 3.12 too
        f.write(data)


def test_read_idx_plain_gzip_and_truncated(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 4, 3))
    _write_idx(tmp_path / "a", images)
    _write_idx(tmp_path / "b.gz", images, compress=True)
    assert np.array_equal(read_idx(tmp_path / "a"), images)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), images)
    (tmp_path / "c").write_bytes((tmp_path / "a").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "d")


def test_idx_folder_task(tmp_path):
    rng = np.random.default_rng(0)
    for stem, shape in {
        "train-images-idx3-ubyte": (60, 28, 28),
        "t10k-images-idx3-ubyte": (20, 28, 28),
    }.items():
        _write_idx(tmp_path / stem, rng.integers(0, 255, shape))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 60))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 20))
    task = fashion_mnist(path=str(tmp_path), val_size=10)
    assert task.train.x.shape == (50, 1, 28, 28) and len(task.val) == 10 and len(task.test) == 20
    assert task.kind == "classification" and task.num_classes == 10


def test_missing_dataset_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNREG_DATA", str(tmp_path))
    from learnreg.data import idx

    monkeypatch.setattr(idx, "SYSTEM_FOLDERS", {"FashionMNIST": [str(tmp_path / "nothing")]})
    idx.load_idx_dataset.cache_clear()
    with pytest.raises(DataError, match="dataset-fashion-mnist") as err:
        fashion_mnist(path=str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(err.value)
    idx.load_idx_dataset.cache_clear()


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_from_the_debian_folder():
    task = fashion_mnist(val_size=5000, test_size=2000)
    assert len(task.train) == 55000 and len(task.val) == 5000 and len(task.test) == 2000
    assert task.train.x.shape[1:] == (1, 28, 28)
    assert set(task.train.y.unique().tolist()) == set(range(10))
    torch.testing.assert_close(task.train.x.mean(), torch.tensor(0.0), atol=1e-3, rtol=0)


def test_nan_inputs_are_rejected():
    from learnreg.core.task import Split
    from learnreg.data.splits import check_split

    bad = Split(torch.tensor([[1.0], [float("nan")]]), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="NaN or Inf"):
        check_split("x", bad, "classification", 2)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        check_split("x", Split(torch.zeros(2, 1), torch.tensor([0, 5])), "classification", 2)
