"""The shape of a loss: its value as a function of the target-class probability
(classification) or of the residual (regression).

Works for any loss role (cross-entropy, a learned network, a Taylor polynomial, a
symbolic tree), so the same plot shows what a method learned and how it changed during
training. Adaptive label smoothing (AdaLFL) is the minimum over the target probability
moving below 1.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def loss_profile(
    loss, kind: str, num_classes: int = 2, points: int = 41
) -> tuple[list[float], list[float]]:
    """Loss values on a grid.

    Classification: logits whose softmax puts probability ``p`` on the target class and
    ``(1 - p) / (C - 1)`` on each other class, for ``p`` in (0, 1).
    Regression: prediction ``r`` against target 0 (one output), for ``r`` in [-3, 3].

    Args:
        loss: the loss role, ``loss(pred, target) -> scalar``.
        kind: ``classification`` or ``regression``.
        num_classes: classes of the loss (or regression outputs; only the first varies).
        points: grid size.

    Returns:
        ``(grid, values)`` as plain lists.
    """
    device = next((p.device for p in loss.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in loss.parameters()), torch.float32)
    if kind == "classification":
        grid = torch.linspace(0.01, 0.99, points, dtype=torch.float64)
        others = (1 - grid) / max(num_classes - 1, 1)
        logits = torch.log(others).unsqueeze(1).repeat(1, num_classes)
        logits[:, 0] = torch.log(grid)
        logits, target = (
            logits.to(device, dtype),
            torch.zeros(points, dtype=torch.long, device=device),
        )
        values = [loss(logits[i : i + 1], target[i : i + 1]).item() for i in range(points)]
    else:
        grid = torch.linspace(-3.0, 3.0, points, dtype=torch.float64)
        pred = torch.zeros(points, num_classes, dtype=dtype, device=device)
        pred[:, 0] = grid.to(dtype)
        target = torch.zeros_like(pred)
        values = [loss(pred[i : i + 1], target[i : i + 1]).item() for i in range(points)]
    return grid.tolist(), values


def profile_argmin(grid: list[float], values: list[float]) -> float:
    """The grid point where the loss is smallest (non-finite values ignored)."""
    finite = [(v, g) for g, v in zip(grid, values) if math.isfinite(v)]
    return min(finite)[1] if finite else float("nan")
