"""Adversarial robustness of a trained classifier: FGSM and PGD accuracy (L∞).

Attacks perturb inputs in the task's input space, which learnreg standardizes with the
training statistics; ``eps`` is therefore in standard deviations per feature/pixel
(TaylorGLO's robustness evaluation uses FGSM with ε = 0.1). Pass ``clamp`` to keep
inputs inside a valid range when the inputs are raw.

References:
    Goodfellow et al., arXiv 1412.6572 (FGSM); Madry et al., arXiv 1706.06083 (PGD).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from learnreg.core.task import Split
from learnreg.eval.sharpness import eval_mode


def _input_grad(model, params, buffers, x: Tensor, y: Tensor) -> Tensor:
    def loss(inputs):
        return F.cross_entropy(functional_call(model, (params, buffers), (inputs,)), y)

    return torch.func.grad(loss)(x)


@torch.no_grad()
def _accuracy(model, params, buffers, x: Tensor, y: Tensor) -> float:
    return float((functional_call(model, (params, buffers), (x,)).argmax(-1) == y).sum())


def attack_accuracy(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    split: Split,
    eps: float,
    steps: int = 1,
    step_size: float | None = None,
    random_start: bool = False,
    clamp: tuple[float, float] | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> float:
    """Accuracy on L∞ adversarial examples: FGSM is ``steps=1, step_size=eps``; PGD is
    several projected sign-gradient steps, optionally from a random start.

    Args:
        model, params, buffers: the classifier, used functionally in eval mode.
        split: the examples to attack (the test split).
        eps: L∞ radius.
        steps: attack iterations.
        step_size: per-step size (default: ``eps`` for one step, ``2.5 eps / steps``).
        random_start: start from a uniform point in the ball (PGD).
        clamp: valid input range, or None.
        seed: seeds the random start.
    """
    if step_size is None:
        step_size = eps if steps == 1 else 2.5 * eps / steps
    generator = torch.Generator(device=split.x.device).manual_seed(seed)
    correct = 0.0
    with eval_mode(model):
        for start in range(0, len(split), batch_size):
            x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
            adv = x.clone()
            if random_start:
                noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                adv = adv + eps * (2 * noise - 1)
            for _ in range(steps):
                grad = _input_grad(model, params, buffers, adv, y)
                adv = x + (adv + step_size * grad.sign() - x).clamp(-eps, eps)
                if clamp is not None:
                    adv = adv.clamp(*clamp)
            correct += _accuracy(model, params, buffers, adv, y)
    return correct / len(split)


def fgsm_accuracy(model, params, buffers, split: Split, eps: float = 0.1, **kw) -> float:
    """Accuracy under the fast gradient sign method: ``x + ε · sign(∇ₓ L)``."""
    return attack_accuracy(model, params, buffers, split, eps, steps=1, **kw)


def pgd_accuracy(
    model, params, buffers, split: Split, eps: float = 0.1, steps: int = 10, **kw
) -> float:
    """Accuracy under L∞ projected gradient descent from a random start."""
    return attack_accuracy(model, params, buffers, split, eps, steps=steps, random_start=True, **kw)
