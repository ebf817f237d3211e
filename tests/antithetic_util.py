"""A toy where truncation is biased: a learned learning rate on a long-horizon quadratic.

The inner problem is ``f(w) = Σ_j h_j w_j²`` (a bias-free linear model regressing zeros
from two full-batch inputs), trained by SGD whose step is ``lr · exp(log_scale)``; the
meta-loss is the loss averaged over every inner step. Over a horizon of 100 steps the
slow direction (``h = 0.1``) is still far from converged, so a larger step size keeps
paying off in later windows, which a truncated window cannot see: truncated
backpropagation's gradient is about half the full-unroll gradient (Wu et al. 2018's
short-horizon bias).
"""

from __future__ import annotations

import torch
from torch import nn

from learnreg.core.bias import Biases
from learnreg.core.inner import inner_step
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask, Split, Task
from learnreg.estimators import MetaContext
from learnreg.inits import RandomInit
from learnreg.losses import MSE
from learnreg.optimizers import LearnedLR

CURVATURES = (1.0, 0.1)


def quadratic_task() -> Task:
    """Two inputs ``√(2h_j) e_j`` with zero targets: the MSE is ``Σ_j h_j w_j²``."""
    x = torch.diag(torch.tensor(CURVATURES, dtype=torch.float64).mul(2).sqrt())
    split = Split(x, torch.zeros(2, 1, dtype=torch.float64))

    def model_fn():  # every run starts at w = (1, 1), whatever its seed
        model = nn.Linear(2, 1, bias=False).double()
        nn.init.ones_(model.weight)
        return model

    return Task("quadratic", "regression", split, split, split, 1, batch_size=2, model_fn=model_fn)


def quadratic_context(seed: int = 0, lr: float = 0.1) -> MetaContext:
    biases = Biases(MSE(), LearnedLR({"_component_": "sgd", "lr": lr}), RandomInit()).double()
    return MetaContext(
        SingleTask(quadratic_task()), biases, TaskLoss(), None, seed, torch.device("cpu")
    )


def full_unroll_gradient(ctx: MetaContext, horizon: int) -> float:
    """d/d log_scale of the loss averaged over all ``horizon`` steps, by autograd through
    the whole unroll."""
    run = ctx.new_run("meta_train", 0)
    state, total = run.state, 0.0
    for _ in range(horizon):
        batch = run.next_train()
        state, _ = inner_step(run.model, state, batch, ctx.biases.loss, ctx.biases.optimizer)
        total = total + ctx.objective(run.model, state, batch, run.task)
    scale = ctx.biases.optimizer.log_scale
    return torch.autograd.grad(total / horizon, scale)[0].item()
