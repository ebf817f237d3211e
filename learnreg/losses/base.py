"""Input conventions shared by classification losses."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from learnreg.core.bias import Bias
from learnreg.errors import ShapeError


class LossRole(Bias):
    """Contract: ``loss(pred, target) -> scalar``; ``pred`` is the model's raw output.

    Classification: ``pred`` are logits (N, C) and ``target`` integer labels (N,).
    Regression: ``pred`` and ``target`` are float (N, D).
    """

    role = "loss"


def check_pair(pred: Tensor, target: Tensor, kind: str, num_classes: int | None = None) -> None:
    """Raise a clear error on a label/shape mismatch instead of broadcasting silently."""
    if kind == "classification":
        if pred.dim() != 2 or target.dim() != 1 or pred.shape[0] != target.shape[0]:
            raise ShapeError(
                f"classification loss expects logits (N, C) and labels (N,), got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if num_classes is not None and pred.shape[1] != num_classes:
            raise ShapeError(
                f"loss built for {num_classes} classes got logits with {pred.shape[1]} columns"
            )
        _check_labels(target, pred.shape[1])
    elif pred.shape != target.shape:
        raise ShapeError(
            f"regression loss expects prediction and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _check_labels(target: Tensor, classes: int) -> None:
    """Labels must index a logit column; out of range they would fail deep inside a
    scatter (or trip a device-side assert on a GPU). -100 (PyTorch's ``ignore_index``)
    marks an unlabelled row (transductive few-shot batches) and is allowed."""
    if target.numel() == 0 or target.is_floating_point() or torch.compiler.is_compiling():
        return  # compiling: a data-dependent read would break the graph (the data was checked)
    try:
        labelled = target[target != -100]
        if labelled.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(labelled))  # one reduction
    except RuntimeError:  # under torch.func.vmap labels cannot be read; the data was checked
        return
    if low < 0 or high >= classes:
        raise ShapeError(
            f"labels must be class indices in [0, {classes}) for logits with {classes} "
            f"columns, got labels from {low} to {high}; check the labels or the loss's num_classes"
        )


def probs_and_onehot(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax probabilities and one-hot targets, both (N, C) in the logits' dtype.

    The one-hot is a scatter rather than ``F.one_hot``, which validates labels with a
    data-dependent check that ``torch.func.vmap`` cannot batch."""
    onehot = torch.zeros_like(logits).scatter(-1, target.unsqueeze(-1), 1.0)
    return logits.softmax(-1), onehot


def _traced(t: Tensor) -> bool:
    """Inside ``torch.func`` transforms (vmap, grad) data-dependent checks cannot run; nor
    while ``torch.compile`` traces (the compiled graph-free step of learnreg.core.compiled,
    whose batches come from tasks the eager path already checked)."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(t)


def class_targets(pred: Tensor, target: Tensor) -> Tensor:
    """Per-class target probabilities (N, C) from integer labels (N,) or from
    probability / one-hot rows (N, C), in the logits' dtype.

    Raises:
        ShapeError: shapes that do not fit, or labels outside ``[0, C)``.
    """
    if pred.dim() != 2:
        raise ShapeError(f"classification loss expects logits (N, C), got {tuple(pred.shape)}")
    if target.dim() == 2 and target.is_floating_point():
        if target.shape != pred.shape:
            raise ShapeError(
                f"probability targets must have the logits' shape {tuple(pred.shape)}, "
                f"got {tuple(target.shape)}"
            )
        return target.to(pred.dtype)
    if target.dim() != 1 or target.shape[0] != pred.shape[0] or target.is_floating_point():
        raise ShapeError(
            "classification loss expects integer labels (N,) or probability targets (N, C) "
            f"with logits (N, C), got {tuple(pred.shape)} and {tuple(target.shape)} "
            f"({target.dtype})"
        )
    classes = pred.shape[1]
    if not _traced(target) and bool(((target < 0) | (target >= classes)).any()):  # one sync
        raise ShapeError(
            f"labels must lie in [0, {classes}) for logits with {classes} columns, got "
            f"labels from {int(target.min())} to {int(target.max())}"
        )
    return torch.zeros_like(pred).scatter(-1, target.unsqueeze(-1), 1.0)


def warn_class_count(loss, classes: int, scale_changes: bool) -> None:
    """Warn once per count when a per-class loss meets another class count than the one
    it was meta-trained on (defined, since the per-class function is shared, but unseen)."""
    seen = loss.__dict__.setdefault("_warned_classes", set())
    if classes == loss.num_classes or classes in seen:
        return
    seen.add(classes)
    warnings.warn(
        f"a loss meta-trained on {loss.num_classes} classes is applied to {classes}; the "
        "per-class function is shared, so this is defined, but it never saw this class count"
        + (" (the sum over classes also changes its scale)" if scale_changes else ""),
        stacklevel=4,
    )


def reduce_batch(values: Tensor, reduction: str) -> Tensor:
    """``mean``, ``sum`` or ``none`` over the batch dimension."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def log_one_minus_target_prob(logits: Tensor, target: Tensor) -> Tensor:
    """log(1 - p_target), stable when p_target -> 1 (logsumexp over the other logits)."""
    others = logits.scatter(-1, target.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(others, -1) - torch.logsumexp(logits, -1)
