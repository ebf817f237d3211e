"""Meta-training diagnostics in the task's own units, printed every ``logger.every`` meta-steps.

A meta-loss alone says little: it is in the meta-objective's units after one unrolled
step from wherever the inner runs are. Two probes make it interpretable:

* :func:`one_step_gain`: from a fresh model, how much one inner step with the learned
  biases lowers the meta-objective on a held-out batch, next to one step with the
  baseline (the task loss and the same optimizer) from the same state and batch. A
  learned loss that beats the task loss here is at least a better one-step loss.
* :func:`short_validation`: a fresh model trained for a few inner steps with the
  (frozen) learned biases and with the baseline, and their validation metric (never the
  test split).
"""

from __future__ import annotations

import torch

from learnreg.core.bias import Biases
from learnreg.core.inner import InnerState, inner_step
from learnreg.eval.baselines import primary_metric, validation_task
from learnreg.eval.meta_test import meta_test_run
from learnreg.eval.metrics import evaluate_split

#: Inner steps of the short validation run.
PROBE_STEPS = 100


@torch.no_grad()
def one_step_gain(ctx, baseline: Biases, index: int) -> dict[str, float]:
    """Meta-objective before minus after one inner step, learned biases vs the baseline.

    Args:
        ctx: the trainer's :class:`~learnreg.estimators.base.MetaContext`.
        baseline: the comparison biases (their init is not used: both steps start from
            the learned biases' init, the same state).
        index: which probe this is (seeds the fresh model).
    """
    run = ctx.new_run("probe", index)
    batch, held_out = run.next_train(), run.val.next()

    def objective(state) -> float:
        return float(ctx.objective(run.model, state, held_out, run.task))

    start = objective(run.state)
    learned, _ = inner_step(run.model, run.state, batch, ctx.biases.loss, ctx.biases.optimizer)
    params = run.state.params
    base_start = InnerState(params, run.state.buffers, baseline.optimizer.init(params))
    base, _ = inner_step(run.model, base_start, batch, baseline.loss, baseline.optimizer)
    return {
        "meta/one_step_gain": start - objective(learned),
        "meta/one_step_gain_task_loss": start - objective(base),
    }


def short_validation(trainer, baseline: Biases, steps: int = PROBE_STEPS) -> dict[str, float]:
    """Validation metric after ``steps`` inner steps from a fresh model (seed index -1,
    unused by the meta-test), learned biases (frozen) vs the baseline."""
    task, _ = validation_task(trainer.ctx.family, 0)
    task = task.to(trainer.device)
    metric = primary_metric(task.kind)
    out = {}
    logger, trainer.logger = trainer.logger, None  # no learning curves for probes
    try:
        for name, biases in (("", trainer.biases), ("_task_loss", baseline)):
            run, _ = meta_test_run(trainer, biases, task, -1, steps, None, "probe")
            out[f"meta/val_{metric}_{steps}{name}"] = evaluate_split(
                run.model, run.state, task.val, task.kind
            )[metric]
    finally:
        trainer.logger = logger
    return out
