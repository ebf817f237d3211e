"""Training the tuned baseline's learning-rate grid as one stacked run.

Where the optimizer's update is linear in its learning rate (SGD and Adam: their state
does not depend on it), one copy of the model per rate is stacked and the optimizer at rate
1 updates the stack, scaled per copy; the copies' gradients on the shared batch come from
one call of all copies (an MLP's ``stacked_forward``, else ``torch.func.vmap``) or, for
convolutional models on a CPU where that is faster, from a loop over the copies.
:mod:`learnreg.eval.baselines` selects among the trained copies.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from learnreg.core.bias import Biases
from learnreg.core.functional import call_stacked, value_and_grad
from learnreg.core.inner import InnerState
from learnreg.errors import ConfigError
from learnreg.optimizers.fixed import SGD, Adam

LR_LINEAR = (SGD, Adam)  # updates ∝ lr, state independent of lr


def base_lr(optimizer: nn.Module) -> float:
    """A fixed optimizer role's learning rate (the centre of the grid)."""
    args = getattr(optimizer, "init_args", {})
    if optimizer.is_learned or not isinstance(args.get("lr"), (int, float)):
        raise ConfigError(
            f"baseline.tune: the optimizer {type(optimizer).__name__} has no learning rate to "
            "tune; set `baseline.tune: false` or use a fixed optimizer with an `lr`"
        )
    return float(args["lr"])


def with_lr(optimizer: nn.Module, lr: float) -> nn.Module:
    """A fresh copy of a fixed optimizer role at another learning rate."""
    base_lr(optimizer)
    return type(optimizer)(**{**optimizer.init_args, "lr": lr})


def vectorizable(biases: Biases, model: nn.Module, adapt) -> bool:
    """Whether :func:`train_grid` may train every learning rate as one vmapped run."""
    no_running_stats = not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in model.modules()
    )
    return adapt is None and type(biases.optimizer) in LR_LINEAR and no_running_stats


def vmap_is_faster(model: nn.Module, device: torch.device) -> bool:
    """Whether the grid's copies should share one vmapped gradient call: on a GPU, and on
    a CPU unless the model convolves (a vmapped convolution, a grouped one underneath, took
    2x the time of a loop over 9 copies of the small CNN, while 13 copies of the Diabetes
    MLP were 0.86x: ``python -m benchmarks.tune_grid``, BENCHMARKS.md §1(e)). A rule of
    the model and device, not a timing, so the result never depends on the machine's load.
    """
    convolves = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return torch.device(device).type != "cpu" or not convolves


def _copies_gradient(model: nn.Module, loss: nn.Module, size: int, vectorize: bool):
    """``(params, buffers, x, y) -> (grads, losses)`` of ``size`` stacked copies on one
    batch: one call of all copies (:func:`~learnreg.core.functional.call_stacked`) and
    the gradient of their summed losses, each copy's own (``vectorize``), or a loop."""
    if vectorize:

        def by_one_call(p, b, x, y):
            losses = []  # each copy's loss, kept for the divergence check

            def total(q):
                losses.append(torch.stack([loss(out, y) for out in call_stacked(model, q, b, x)]))
                return losses[-1].sum()

            grads, _ = value_and_grad(total, p)
            return grads, losses[-1].detach()

        return by_one_call
    single = grad_and_value(lambda p, b, x, y: loss(functional_call(model, (p, b), (x,)), y))

    def by_loop(p, b, x, y):
        outs = [
            single({k: v[g] for k, v in p.items()}, {k: v[g] for k, v in b.items()}, x, y)
            for g in range(size)
        ]
        grads = {k: torch.stack([o[0][k] for o in outs]) for k in p}
        return grads, torch.stack([o[1] for o in outs])

    return by_loop


def train_grid(ctx, biases: Biases, task, index: int, steps: int, lrs: list[float], vectorize=None):
    """Train one model per learning rate for ``steps`` inner steps as one stacked run.

    Every copy starts from ``biases.init`` (the baseline's, not the trainer's: a learned
    init such as MAML's is the learned side's) and reads the batches of
    ``ctx.new_run("meta_test", index)``, exactly as :func:`meta_test_run` trains the
    baseline of seed ``index``. The parameters and optimizer states of every copy are
    stacked and updated together; the copies' gradients come from one batched call (the
    model's ``stacked_forward`` where it has one, e.g. :class:`~learnreg.models.MLP`,
    else ``vmap``) or from a loop over the copies (``vectorize``; None:
    :func:`vmap_is_faster`). All give the same parameters up to float rounding.

    Returns:
        ``(run, states, diverged_at)``: the run (its model and task), one
        :class:`InnerState` per learning rate, and the inner step each copy's loss became
        non-finite (None: never).
    """
    run = dataclasses.replace(ctx, biases=biases).new_run("meta_test", index, task=task)
    unit = with_lr(biases.optimizer, 1.0).to(ctx.device)
    size = len(lrs)

    def stack(t):
        return t.detach().unsqueeze(0).expand(size, *t.shape).clone()

    params = {k: stack(v) for k, v in run.state.params.items()}
    buffers = {k: stack(v) for k, v in run.state.buffers.items()}
    first = next(iter(params.values()))
    rates = torch.tensor(lrs, dtype=first.dtype, device=first.device)

    if vectorize is None:
        vectorize = vmap_is_faster(run.model, first.device)
    gradient = _copies_gradient(run.model, biases.loss, size, vectorize)
    opt_state = unit.init(params)  # elementwise: the stacked state is every copy's state
    diverged: list[int | None] = [None] * size
    with torch.no_grad():
        for step in range(1, steps + 1):
            x, y = run.next_train()
            grads, values = gradient(params, buffers, x, y)
            updates, opt_state = unit(grads, opt_state, params)
            params = {
                k: p + rates.view(-1, *[1] * (p.dim() - 1)) * updates[k] for k, p in params.items()
            }
            bad = (~torch.isfinite(values)).tolist()
            for g in range(size):
                if bad[g] and diverged[g] is None:
                    diverged[g] = step
    states = [
        InnerState(
            {k: v[g] for k, v in params.items()}, {k: b[g] for k, b in buffers.items()}, None
        )
        for g in range(size)
    ]
    return run, states, diverged
