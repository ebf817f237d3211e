"""Disjoint, seeded train/val/test splits and train-only standardization."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from learnreg.core.task import Split
from learnreg.errors import DataError


def three_way_split(
    x: np.ndarray,
    y: np.ndarray,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Split arrays into disjoint train/val/test parts.

    Args:
        x, y: features and targets, aligned on the first axis.
        fractions: train/val/test fractions, summing to 1.
        seed: shuffling seed.
        stratify: keep class proportions (classification only).

    Returns:
        ``((x_train, y_train), (x_val, y_val), (x_test, y_test))``; no row appears twice.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise DataError(
            f"split fractions must be three positive numbers summing to 1, got {fractions}"
        )
    train_f, val_f, test_f = fractions
    idx = np.arange(len(x))
    strat = y if stratify else None
    rest, test = train_test_split(idx, test_size=test_f, random_state=seed, stratify=strat)
    strat = y[rest] if stratify else None
    train, val = train_test_split(
        rest, test_size=val_f / (train_f + val_f), random_state=seed, stratify=strat
    )
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every array by the mean and std of ``train`` alone (no leakage)."""
    mean = train.mean(axis=0, keepdims=True)
    std = train.std(axis=0, keepdims=True)
    std = np.where(std < 1e-12, 1.0, std)
    return [(a - mean) / std for a in (train, *others)]


def to_split(x: np.ndarray, y: np.ndarray, classification: bool) -> Split:
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if classification:
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    else:
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float32).reshape(len(y), -1)
    return Split(xt, yt)


def check_split(name: str, split: Split, kind: str, num_classes: int) -> None:
    """Reject data a model would silently mis-train on: NaN/Inf, bad labels, shape mismatch."""
    if not torch.isfinite(split.x).all():
        bad = (~torch.isfinite(split.x)).flatten(1).any(1).nonzero().flatten()[:5].tolist()
        raise DataError(
            f"{name}: inputs contain NaN or Inf (rows {bad}...). Clean or impute the data before training."
        )
    if kind == "classification":
        if split.y.dtype not in (torch.int64, torch.int32) or split.y.dim() != 1:
            raise DataError(
                f"{name}: classification targets must be a 1-D integer tensor, got {split.y.dtype} {tuple(split.y.shape)}"
            )
        if len(split.y) and (split.y.min() < 0 or split.y.max() >= num_classes):
            raise DataError(
                f"{name}: labels must lie in [0, {num_classes}), found [{int(split.y.min())}, {int(split.y.max())}]. "
                "Set num_classes or remap the labels."
            )
    elif not torch.isfinite(split.y).all():
        raise DataError(f"{name}: regression targets contain NaN or Inf.")
