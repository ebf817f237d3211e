"""The loss role's search filters: cheap tests that reject a candidate loss untrained.

* ``taylor_invariant``: TaylorGLO's trainability invariant on the coefficients (no data).
* ``prediction_descent``: EvoMAL's rejection protocol: optimize 100 predictions of an
  untrained network directly under the candidate loss; if the task metric does not
  improve, the loss cannot train anything. With ``equivalence_tol`` it is also EvoMAL's
  gradient-equivalence filter: a candidate whose gradients at the optimized predictions
  match (per example, within the tolerance) those of a candidate trained before takes
  that candidate's fitness instead of being trained.

Both are filters of :class:`~learnreg.estimators.Evolution` (``filters: [...]``) for a
search of the loss role (the contract: :mod:`learnreg.estimators.filters`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from learnreg.core import population
from learnreg.core.estimator import derive_seed
from learnreg.errors import ConfigError
from learnreg.estimators.filters import Equivalent, Filter
from learnreg.losses.taylor import TaylorLoss, invariant_margin
from learnreg.registry import register


def loss_values(losses: list, preds: Tensor, target: Tensor) -> Tensor:
    """Each loss on its own slice of ``preds`` (``(P, N, ...)``), shape ``(P,)``: one
    vmapped call when the losses differ only in their values, else a loop."""
    if population.modules_stackable(losses):
        template, values = losses[0], population.stack_parameters(losses)
        return vmap(lambda v, p: functional_call(template, v, (p, target)))(values, preds)
    together = getattr(losses[0], "population_values", None)
    if together is not None:
        return together(losses, preds, target)
    return torch.stack([loss(p, target) for loss, p in zip(losses, preds)])


@register("filter", "taylor_invariant")
class TaylorInvariant(Filter):
    """Reject TaylorGLO coefficient vectors that violate the trainability invariant
    (:func:`learnreg.losses.taylor.invariant_margin`; Gonzalez & Miikkulainen, arXiv
    2002.00059, official runner)."""

    role = "loss"

    def __call__(self, losses, ctx):
        verdicts = []
        for loss in losses:
            if not isinstance(loss, TaylorLoss) or loss.kind != "classification":
                raise ConfigError(
                    "the taylor_invariant filter applies to classification TaylorLoss candidates; "
                    f"got {type(loss).__name__} ({getattr(loss, 'kind', '?')}). Remove it from `filters`."
                )
            margin = float(invariant_margin(loss.theta.detach().double(), loss.num_classes))
            verdicts.append(
                None
                if margin >= 0
                else f"violates the TaylorGLO trainability invariant (margin {margin:.3g} < 0)"
            )
        return verdicts


@register("filter", "prediction_descent")
class PredictionDescent(Filter):
    """EvoMAL's rejection protocol, vectorized over the candidates.

    Args:
        samples: predictions optimized (the first ``samples`` training examples).
        steps: optimizer steps on the predictions (EvoMAL: MNIST 100, Diabetes 1000).
        lr: the optimizer's step size (EvoMAL: the base learning rate, 0.01).
        optimizer: ``adam`` (EvoMAL's code: Adam on the predictions, whatever the base
            optimizer) or ``sgd`` (with ``momentum`` and ``nesterov``). Adam's steps do
            not shrink with the loss's gradient, which the batch mean makes about
            1/``samples`` of a per-example one: under plain SGD at lr 0.01, 100 steps
            move a logit by at most ~0.01 and even cross-entropy is rejected.
        momentum, nesterov: SGD only.
        threshold: reject unless the metric improves by more than this (EvoMAL: 0).
        equivalence_tol: EvoMAL's gradient-equivalence filter (the paper, and its code
            before the 2023 clean-up: 0.01, on the norm of each example's gradient at
            the optimized predictions; here the gradient of that example's own loss,
            not of the batch mean, see ``__call__``); None: off.

    References:
        Raymond et al., EvoMAL (arXiv 2209.08907); the official code
        (github.com/Decadz/Evolved-Model-Agnostic-Loss, ``filters.py`` at 2023-05-07:
        Adam at the base lr on the logits, reject when the mean improvement is <= 0;
        MNIST 100 steps, Diabetes and CIFAR 1000).
    """

    def __init__(
        self,
        samples: int = 100,
        steps: int = 1000,
        lr: float = 0.01,
        optimizer: str = "adam",
        momentum: float = 0.0,
        nesterov: bool = False,
        threshold: float = 0.0,
        equivalence_tol: float | None = None,
    ):
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"prediction_descent: optimizer must be 'adam' or 'sgd', got {optimizer!r}"
            )
        self.samples, self.steps, self.threshold = samples, steps, threshold
        self.optimizer, self.lr = optimizer, lr
        self.sgd = {"momentum": momentum, "nesterov": nesterov}
        self.equivalence_tol = equivalence_tol
        self.archive: list[tuple[list[float], float]] = []  # (gradient norms, fitness)
        self.pending: dict[int, list[float]] = {}  # id(loss) -> norms, until told

    def __call__(self, losses, ctx):
        if not losses:
            return []
        task = ctx.family.sample(0).to(ctx.device)
        model = task.build_model(derive_seed(ctx.seed, "prediction_descent")).to(ctx.device)
        x, y = task.train.x[: self.samples], task.train.y[: self.samples]
        with torch.no_grad():
            start = model(x)
        pred = start.unsqueeze(0).repeat(len(losses), *([1] * start.dim())).requires_grad_()
        if self.optimizer == "adam":
            optimizer = torch.optim.Adam([pred], lr=self.lr)
        else:
            optimizer = torch.optim.SGD([pred], lr=self.lr, **self.sgd)
        with torch.enable_grad():
            for _ in range(self.steps):
                # grad w.r.t. the predictions only: the candidates' own weights stay untouched
                (pred.grad,) = torch.autograd.grad(loss_values(losses, pred, y).sum(), pred)
                optimizer.step()
            (final,) = torch.autograd.grad(loss_values(losses, pred, y).sum(), pred)
        # Each example's gradient norm at the optimized predictions is the candidate's
        # signature, on the per-example scale: the batch mean divides every row by
        # `samples`, which would put any two losses with bounded gradients (CE, 3·CE, a
        # squared error on the probabilities) within 0.01 of each other.
        norms = (final.flatten(2).norm(dim=-1) * pred.shape[1]).double().tolist()
        before, after = metric(start, y, task.kind), metric(pred.detach(), y, task.kind)
        verdicts: list = []
        for loss, signature, gain in zip(losses, norms, (before - after).tolist()):
            if not (math.isfinite(gain) and gain > self.threshold):
                verdicts.append(
                    f"rejection protocol: optimizing {self.samples} predictions under the loss "
                    f"changed the metric by {-gain:+.3g} (needs an improvement > {self.threshold})"
                )
            else:
                verdicts.append(self._equivalent(loss, signature))
        return verdicts

    def _equivalent(self, loss, signature: list[float]) -> Equivalent | None:
        if self.equivalence_tol is None:
            return None
        for known, fitness in self.archive:
            if all(abs(a - b) <= self.equivalence_tol for a, b in zip(signature, known)):
                return Equivalent(
                    fitness,
                    f"gradient equivalence: gradients within {self.equivalence_tol} of a "
                    "candidate already trained; its fitness is reused",
                )
        self.pending[id(loss)] = signature
        return None

    def tell(self, losses: list, fitness: list[float]) -> None:
        """Archive the signatures of the candidates that were trained, with their fitness."""
        for loss, value in zip(losses, fitness):
            signature = self.pending.pop(id(loss), None)
            if signature is not None and math.isfinite(value):
                self.archive.append((signature, float(value)))
        self.pending.clear()

    def state_dict(self) -> dict:
        return {"archive": [[list(s), f] for s, f in self.archive]}

    def load_state_dict(self, state: dict) -> None:
        self.archive = [(list(s), float(f)) for s, f in state.get("archive", [])]


def metric(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Error rate (classification) or MSE (regression) of predictions ``(..., N, C)``."""
    if kind == "classification":
        return (pred.argmax(-1) != target).double().mean(-1)
    return (pred - target).double().square().flatten(-2).mean(-1)
