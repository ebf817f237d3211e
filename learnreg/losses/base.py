"""Input conventions shared by classification losses."""

from __future__ import annotations

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
    if target.numel() == 0 or target.is_floating_point():
        return
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


def log_one_minus_target_prob(logits: Tensor, target: Tensor) -> Tensor:
    """log(1 - p_target), stable when p_target -> 1 (logsumexp over the other logits)."""
    others = logits.scatter(-1, target.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(others, -1) - torch.logsumexp(logits, -1)
