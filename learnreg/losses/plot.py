"""Pictures of learned losses: the per-element loss over target × prediction.

Any loss with an ``elementwise(target, prediction)`` method (``TaylorLoss``,
``SymbolicLoss``) can be drawn. Classification losses are functions of a one-hot target
``y`` and a probability ``f(x)``: the figure shows the curves at ``y = 1`` (the true
class) and ``y = 0`` (any other class) over ``f(x) ∈ (0, 1)``, and the surface over
continuous ``y ∈ [0, 1]``. Regression losses are drawn over target and prediction in
``[-2, 2]`` (standardized units).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from learnreg.tracking.atomic import save_figure


@torch.no_grad()
def loss_grid(
    loss, kind: str, points: int = 101
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(targets, predictions, values)``: the loss's per-element value on a grid."""
    if kind == "classification":
        targets = torch.linspace(0.0, 1.0, points)
        predictions = torch.linspace(1e-3, 1.0 - 1e-3, points)
    else:
        targets = predictions = torch.linspace(-2.0, 2.0, points)
    device = next(loss.parameters(), torch.empty(0)).device
    t, p = (g.to(device) for g in torch.meshgrid(targets, predictions, indexing="ij"))
    values = loss.elementwise(t, p).float().cpu().numpy()
    return targets.numpy(), predictions.numpy(), values


def plot_loss(loss, path: str | Path, kind: str | None = None, title: str | None = None) -> Path:
    """Write a PNG of ``loss`` over target × prediction (matplotlib's Agg canvas).

    Args:
        loss: a loss module with ``elementwise(target, prediction)``.
        path: the PNG to write (atomically).
        kind: ``classification`` or ``regression`` (default: ``loss.kind``).
        title: figure title (default: the loss's formula when it has one).

    Returns:
        The path written.
    """
    kind = kind or loss.kind
    targets, predictions, values = loss_grid(loss, kind)
    fig = Figure(figsize=(10, 4))
    curves, surface = fig.subplots(1, 2)
    if kind == "classification":
        for target, style in ((1.0, "-"), (0.0, "--")):
            row = int(round(target * (len(targets) - 1)))
            curves.plot(predictions, values[row], style, label=f"y = {target:g}")
        curves.set_xlabel("prediction f(x) (probability)")
    else:
        for target in (-1.0, 0.0, 1.0):
            row = int(np.argmin(np.abs(targets - target)))
            curves.plot(predictions, values[row], label=f"y = {target:g}")
        curves.set_xlabel("prediction f(x)")
    curves.set_ylabel("loss per element")
    curves.legend()
    image = surface.imshow(
        values,
        origin="lower",
        aspect="auto",
        extent=(predictions[0], predictions[-1], targets[0], targets[-1]),
        cmap="viridis",
    )
    surface.set_xlabel("prediction f(x)")
    surface.set_ylabel("target y")
    fig.colorbar(image, ax=surface)
    text = title if title is not None else (str(loss.formula()) if hasattr(loss, "formula") else "")
    fig.suptitle(text if len(text) <= 110 else text[:107] + "...", fontsize=9)
    return save_figure(fig, path)
