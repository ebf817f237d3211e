"""Teacher meta-objectives: SAM, GSAM and GAM judge a learned optimizer's parameters.

A learned optimizer meta-trained under a teacher learns to move where the teacher would
(the Learning Regularizers protocol, Sahoo & Krishnan, arXiv 2510.08968). The teacher's
verdict on parameters θ is a scalar ``ℓ(θ)`` whose

* value is the teacher's regularized loss on the validation batch (SAM and GSAM: the
  perturbed loss ``L(θ + ε)``; GAM: ``α L(θ + ε′) + (1 − α) L(θ₃)``, the losses behind
  its ``h₊``), and whose
* gradient with respect to θ is the teacher's update direction (SAM: ``∇L(θ + ε)``;
  GSAM: ``g_p − α g_⊥``; GAM: ``h₊ − γ h₋⊥``), with the perturbations held fixed as in
  the optimizers themselves.

A truncated unroll only needs ``ℓ`` and ``∂ℓ/∂θ`` to backpropagate into the rule, so
the meta-gradient is exactly "how should the rule have moved θ to follow the teacher".
GSAM's and GAM's directions are not the gradient of any one loss; the construction
``ℓ(θ) = loss + ⟨d, θ − stop_grad(θ)⟩`` gives them a scalar with exactly that gradient.
The equations are :mod:`learnreg.optim.perturbations`, shared with the optimizers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from learnreg.core.inner import Batch, InnerState
from learnreg.core.objectives import Objective, task_loss
from learnreg.optim import perturbations as pt
from learnreg.registry import register


class TeacherObjective(Objective):
    """Base: runs a :class:`~learnreg.optim.perturbations.Perturbation`'s passes with
    ``torch.func`` gradients at the state's parameters."""

    perturbation: pt.Perturbation

    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def forward(self, model: nn.Module, state: InnerState, batch: Batch, task) -> Tensor:
        x, y = batch
        names = list(state.params)
        theta = [state.params[k] for k in names]
        # BatchNorm may update running statistics in train mode: on copies, passed as an
        # input (torch.func forbids mutating captured tensors)
        buffers = {k: b.clone() for k, b in state.buffers.items()}

        def loss_at(point: list[Tensor], buffers: dict[str, Tensor]) -> Tensor:
            pred = functional_call(model, (dict(zip(names, point)), buffers), (x,))
            return task_loss(pred, y, task.kind)

        grad_and_value = torch.func.grad_and_value(loss_at)
        hp = self.hyperparameters()
        with torch.no_grad():
            origin = [t.detach() for t in theta]
            point, memory = origin, {}
            grads, value = grad_and_value(point, buffers)
            losses = [value]
            for phase in range(self.perturbation.passes - 1):
                move = self.perturbation.ascend(phase, list(grads), origin, memory, hp)
                point = list(torch._foreach_add(origin if move.from_origin else point, move.offset))
                grads, value = grad_and_value(point, buffers)
                losses.append(value)
            direction = self.perturbation.direction(list(grads), memory, hp)
            loss = self.perturbation.loss(losses, hp)
        return loss + pt.dot(direction, [t - t.detach() for t in theta])


@register("objective", "sam")
class SAMTeacher(TeacherObjective):
    """SAM's (or ASAM's) perturbed validation loss ``L(θ + ε)``; gradient ``∇L(θ + ε)``.

    Args:
        rho: neighbourhood radius.
        adaptive: ASAM's scale-invariant neighbourhood.
    """

    perturbation = pt.SAMPerturbation()

    def __init__(self, rho: float = 0.05, adaptive: bool = False):
        super().__init__()
        self.rho, self.adaptive = rho, adaptive

    def hyperparameters(self):
        return {"rho": self.rho, "adaptive": self.adaptive, "eps": 1e-12}


@register("objective", "gsam")
class GSAMTeacher(TeacherObjective):
    """GSAM's perturbed validation loss; gradient ``g_p − α g_⊥`` (radius fixed at ``rho``).

    Args:
        rho: neighbourhood radius (the optimizer's ``ρ_t``).
        alpha: weight of the surrogate-gap term.
        adaptive: ASAM-style neighbourhood.
    """

    perturbation = pt.GSAMPerturbation()

    def __init__(self, rho: float = 0.05, alpha: float = 0.1, adaptive: bool = False):
        super().__init__()
        self.rho, self.alpha, self.adaptive = rho, alpha, adaptive

    def hyperparameters(self):
        return {"rho_t": self.rho, "alpha": self.alpha, "adaptive": self.adaptive, "eps": 1e-12}


@register("objective", "gam")
class GAMTeacher(TeacherObjective):
    """GAM's (Algorithm 2) regularized validation loss; gradient ``h₊ − γ h₋⊥``.

    Args:
        rho, rho_prime, alpha, beta, gamma: as in :class:`learnreg.optim.GAM`.
    """

    perturbation = pt.GAMPerturbation()

    def __init__(
        self,
        rho: float = 0.2,
        rho_prime: float = 0.03,
        alpha: float = 0.1,
        beta: float = 0.1,
        gamma: float = 0.05,
    ):
        super().__init__()
        self.hp = {
            "rho": rho,
            "rho_prime": rho_prime,
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "eps": 1e-12,
        }

    def hyperparameters(self):
        return dict(self.hp)
