"""Tabular tasks: the four scikit-learn datasets shipped with the package (no download,
ever) and tasks from a user's own tensors (:func:`tensor_task`)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn import datasets

from learnreg.core.task import Task
from learnreg.data.splits import check_split, standardize, three_way_split, to_split
from learnreg.errors import DataError
from learnreg.registry import partial, register

_LOADERS = {
    "diabetes": (datasets.load_diabetes, "regression"),
    "digits": (datasets.load_digits, "classification"),
    "wine": (datasets.load_wine, "classification"),
    "breast_cancer": (datasets.load_breast_cancer, "classification"),
}


def sklearn_task(
    name: str,
    batch_size: int = 64,
    fractions: tuple[float, float, float] | list[float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    standardize_inputs: bool = True,
    standardize_target: bool = True,
) -> Task:
    """A task from a scikit-learn toy dataset with disjoint, seeded, stratified splits.

    Args:
        name: ``diabetes``, ``digits``, ``wine`` or ``breast_cancer``.
        batch_size: inner-loop batch size.
        fractions: train/val/test fractions.
        split_seed: seed of the split (fixed across run seeds by default, so every seed
            sees the same held-out test set).
        standardize_inputs: z-score features with train statistics only.
        standardize_target: z-score regression targets with train statistics only.
    """
    loader, kind = _LOADERS[name]
    data = loader()
    return tensor_task(
        data.data,
        data.target,
        kind,
        batch_size,
        name,
        fractions,
        split_seed,
        standardize_inputs,
        standardize_target,
    )


def tensor_task(
    x,
    y,
    kind: Literal["classification", "regression"] | None = None,
    batch_size: int = 64,
    name: str = "tensors",
    fractions: tuple[float, float, float] | list[float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    standardize_inputs: bool = True,
    standardize_target: bool = True,
    num_classes: int | None = None,
) -> Task:
    """A task from your own tensors (or arrays), split and standardized exactly like
    :func:`sklearn_task`: disjoint seeded train/val/test splits (stratified for
    classification), inputs (and regression targets) z-scored with train statistics only.

    Args:
        x: inputs, ``(N, ...)``: features ``(N, D)`` or images ``(N, C, H, W)``.
        y: integer labels ``(N,)`` (classification) or float targets ``(N,)``/``(N, D)``.
        kind: ``classification`` or ``regression``; None: classification when ``y`` holds
            integers.
        batch_size: inner-loop batch size.
        name: the task's name (in logs and summaries).
        fractions: train/val/test fractions.
        split_seed: seed of the split.
        standardize_inputs: z-score inputs (per feature / pixel) with train statistics.
        standardize_target: z-score regression targets with train statistics.
        num_classes: classes (None: the largest label + 1).

    Returns:
        The :class:`~learnreg.core.task.Task`; register a function returning it with
        ``learnreg.registry.register("task", NAME)`` to name it in a config.
    """
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    if len(x) != len(y):
        raise DataError(
            f"tensor_task: x has {len(x)} rows and y {len(y)}; pass one target per input row"
        )
    if kind is None:
        kind = "classification" if np.issubdtype(y.dtype, np.integer) else "regression"
    if kind not in ("classification", "regression"):
        raise DataError(f"tensor_task: kind must be classification or regression, got {kind!r}")
    classification = kind == "classification"
    if classification and not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{name}: classification labels must be integers, got {y.dtype}; "
            "pass kind='regression' or convert the labels"
        )
    (xtr, ytr), (xva, yva), (xte, yte) = three_way_split(
        x, y, tuple(fractions), split_seed, classification
    )
    if standardize_inputs:
        xtr, xva, xte = standardize(xtr, xva, xte)
    if not classification:
        ytr, yva, yte = (a.astype(np.float64).reshape(len(a), -1) for a in (ytr, yva, yte))
        if standardize_target:
            ytr, yva, yte = standardize(ytr, yva, yte)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if classification else int(np.prod(y.shape[1:]))
    task = Task(
        name=name,
        kind=kind,
        train=to_split(xtr, ytr, classification),
        val=to_split(xva, yva, classification),
        test=to_split(xte, yte, classification),
        num_classes=num_classes,
        batch_size=batch_size,
    )
    for split in ("train", "val", "test"):
        check_split(f"{name}.{split}", getattr(task, split), kind, num_classes)
    return task


def _sklearn(name: str, doc: str):
    return register("task", name)(partial(sklearn_task, name, doc, name=name))


diabetes = _sklearn(
    "diabetes", "scikit-learn Diabetes regression (442 rows, 10 features), standardized."
)
digits = _sklearn(
    "digits", "scikit-learn digits, 8x8 images as 64 features, 10 classes (1,797 rows)."
)
wine = _sklearn("wine", "scikit-learn wine, 13 features, 3 classes (178 rows).")
breast_cancer = _sklearn(
    "breast_cancer", "scikit-learn breast cancer, 30 features, 2 classes (569 rows)."
)
