"""Task metrics of a set of parameters on a whole split, and summaries over seeds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnreg.core.inner import InnerState, forward
from learnreg.eval.stats import summarize  # noqa: F401  (re-exported: the old home)


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


def update_statistics(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """Statistics of the last inner update ``Δθ = after − before`` (what the optimizer
    role did): its norm, its RMS over all coordinates, its norm relative to ‖θ‖, and the
    fraction of coordinates it moved (a learned rule may leave many at rest)."""
    with torch.no_grad():
        delta = torch.cat([(after[k] - before[k]).flatten() for k in after]).double()
        theta = torch.cat([after[k].flatten() for k in after]).double()
        return {
            "update_rms": delta.square().mean().sqrt().item(),
            "update_to_weight": (delta.norm() / theta.norm().clamp_min(1e-12)).item(),
            "update_active": (delta != 0).double().mean().item(),
            "update_norm": delta.norm().item(),
        }


def update_ratios(learned: dict[int, float], baseline: dict[int, float]) -> dict[int, float]:
    """‖Δθ_learned‖ / ‖Δθ_baseline‖ at every inner step both runs logged.

    Both runs share the model initialization and batch order, so the ratio at step t says
    how much larger (or smaller) an update of the learned biases is than the baseline's at
    the same point of training: a learned loss that only rescales the gradient shows up
    as a constant ratio. Unlike a gradient-norm ratio on memorised training examples it
    does not blow up when the task loss's gradient vanishes.

    Args:
        learned, baseline: ``{inner_step: ‖Δθ‖}`` of the two runs.
    """
    return {
        step: learned[step] / max(baseline[step], 1e-30)
        for step in sorted(learned.keys() & baseline.keys())
    }
