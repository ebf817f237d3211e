"""Task metrics of a set of parameters on a whole split, and summaries over seeds."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnreg.core.inner import InnerState, forward


@torch.no_grad()
def evaluate_split(
    model: nn.Module, state: InnerState, split, kind: str, batch_size: int = 2048
) -> dict[str, float]:
    """Metrics of ``state`` on every example of ``split``, in evaluation batches.

    Returns:
        Classification: ``loss`` (cross-entropy), ``error`` and ``accuracy``.
        Regression: ``mse``.
    """
    total, loss_sum, wrong = 0, 0.0, 0.0
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        pred = forward(model, state, x)
        if kind == "classification":
            loss_sum += F.cross_entropy(pred, y, reduction="sum").item()
            wrong += (pred.argmax(-1) != y).sum().item()
        else:
            loss_sum += F.mse_loss(pred, y, reduction="sum").item() / y[0].numel()
        total += len(x)
    if kind == "classification":
        return {"loss": loss_sum / total, "error": wrong / total, "accuracy": 1 - wrong / total}
    return {"mse": loss_sum / total}


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, 95% confidence half-width (normal) and count."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(n), "n": n}


def gradient_scale(model: nn.Module, state: InnerState, batch, loss, kind: str) -> float:
    """‖∇θ loss‖ / ‖∇θ task loss‖ on one batch: how much larger the learned loss's
    gradients are than cross-entropy's (or MSE's). A ratio falling during training is
    AdaLFL's implicit learning-rate schedule."""
    from learnreg.core.objectives import task_loss

    x, y = batch

    def norm(fn) -> float:
        grads = torch.func.grad(
            lambda p: fn(forward(model, InnerState(p, state.buffers, None), x), y)
        )(state.params)
        return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])).item()

    with torch.no_grad():
        reference = norm(lambda pred, target: task_loss(pred, target, kind))
        return norm(loss) / max(reference, 1e-12)


def update_statistics(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """Statistics of the last inner update ``Δθ = after − before`` (what the optimizer
    role did): its RMS over all coordinates, its norm relative to ‖θ‖, and the fraction of
    coordinates it moved (a learned rule may leave many at rest)."""
    with torch.no_grad():
        delta = torch.cat([(after[k] - before[k]).flatten() for k in after]).double()
        theta = torch.cat([after[k].flatten() for k in after]).double()
        return {
            "update_rms": delta.square().mean().sqrt().item(),
            "update_to_weight": (delta.norm() / theta.norm().clamp_min(1e-12)).item(),
            "update_active": (delta != 0).double().mean().item(),
        }
