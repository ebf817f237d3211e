"""Flatness of a minimum: PGA loss increase in an L2 ball, gradient norm, surrogate gap.

All three measure the training loss around trained parameters θ (a dict, as stored in a
run's ``final/`` files), on a fixed set of examples, with the model used functionally.
The ball is over all parameters jointly (one global L2 norm), as in SAM's neighbourhood.

References:
    Sahoo & Krishnan, "Learning Regularizers", arXiv 2510.08968 (PGA flatness at radii
    0.001, 0.005, 0.05, 0.1). Zhuang et al., arXiv 2203.08065 (surrogate gap).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call

from learnreg.core.objectives import task_loss
from learnreg.core.task import Split
from learnreg.optim import perturbations as pt

RADII = (0.001, 0.005, 0.05, 0.1)


@contextmanager
def eval_mode(model: nn.Module):
    """BatchNorm and dropout in inference mode for the block, then back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class SplitLoss:
    """The mean task loss over (at most ``max_examples`` of) a split, as a function of a
    list of parameter tensors, with its gradient.

    Args:
        model: the network (used functionally, in eval mode).
        params: trained parameters by name.
        buffers: buffers by name (BatchNorm statistics).
        split: the examples.
        kind: ``classification`` or ``regression``.
        max_examples: use the first this many examples (a fixed subset).
        batch_size: evaluation batch size.
    """

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        split: Split,
        kind: str,
        max_examples: int | None = 2048,
        batch_size: int = 1024,
    ):
        self.model, self.names, self.buffers, self.kind = model, list(params), buffers, kind
        self.theta = [params[k].detach() for k in self.names]
        n = len(split) if max_examples is None else min(max_examples, len(split))
        self.batches = [
            (split.x[s : min(s + batch_size, n)], split.y[s : min(s + batch_size, n)])
            for s in range(0, n, batch_size)
        ]
        self.n = n

    def _batch_loss(self, point: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        pred = functional_call(self.model, (dict(zip(self.names, point)), self.buffers), (x,))
        return task_loss(pred, y, self.kind) * (len(x) / self.n)

    @torch.no_grad()
    def value(self, point: list[Tensor]) -> float:
        with eval_mode(self.model):
            return float(sum(self._batch_loss(point, x, y) for x, y in self.batches))

    @torch.no_grad()
    def grad(self, point: list[Tensor]) -> tuple[list[Tensor], float]:
        """The gradient and the value at ``point``."""
        total, value = None, 0.0
        with eval_mode(self.model):
            for x, y in self.batches:
                g, v = torch.func.grad_and_value(self._batch_loss)(point, x, y)
                total = g if total is None else list(torch._foreach_add(total, g))
                value += float(v)
        return total, value


def pga_loss_increase(
    loss: SplitLoss, radius: float, steps: int = 20, step_size=None, seed: int = 0
) -> float:
    """``max_{‖δ‖ ≤ r} L(θ + δ) − L(θ)`` estimated by projected gradient ascent.

    Normalized gradient steps of length ``step_size`` (default ``2.5 r / steps``), each
    followed by projection onto the ball; the largest loss seen counts. The start is a
    tiny seeded random ``δ`` (norm ``r/1000``), so an exact stationary point still
    has a direction to climb.
    """
    step_size = 2.5 * radius / steps if step_size is None else step_size
    base = loss.value(loss.theta)
    generator = torch.Generator(device=loss.theta[0].device).manual_seed(seed)
    noise = [
        torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        for t in loss.theta
    ]
    delta = pt.normalized(noise, radius / 1000)
    best = base
    for _ in range(steps):
        point = list(torch._foreach_add(loss.theta, delta))
        g, value = loss.grad(point)
        best = max(best, value)
        delta = list(torch._foreach_add(delta, pt.normalized(g, step_size)))
        norm = float(pt.global_norm(delta))
        if norm > radius:
            delta = pt.scale(delta, radius / norm)
    best = max(best, loss.value(list(torch._foreach_add(loss.theta, delta))))
    return best - base


def gradient_norm(loss: SplitLoss) -> float:
    """‖∇L(θ)‖ over all parameters."""
    g, _ = loss.grad(loss.theta)
    return float(pt.global_norm(g))


def surrogate_gap(loss: SplitLoss, rho: float = 0.05) -> float:
    """GSAM's surrogate gap ``L(θ + ρ ∇L/‖∇L‖) − L(θ)``."""
    g, value = loss.grad(loss.theta)
    return loss.value(list(torch._foreach_add(loss.theta, pt.normalized(g, rho)))) - value


def flatness(loss: SplitLoss, radii=RADII, steps: int = 20, rho: float = 0.05) -> dict[str, float]:
    """PGA loss increase at each radius, gradient norm and surrogate gap."""
    out = {f"pga_{r:g}": pga_loss_increase(loss, r, steps) for r in radii}
    out["grad_norm"] = gradient_norm(loss)
    out[f"surrogate_gap_{rho:g}"] = surrogate_gap(loss, rho)
    return out
