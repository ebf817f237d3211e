"""Meta-test: fresh models trained from scratch with what meta-training learned.

Every meta-test seed trains one model with the learned roles (frozen, or still adapting
online when an ``adapt`` estimator is given) and, with the same model seed and batch
order, one with the baseline roles; both are scored on the task's test split. The
meta-trainer only meta-trains: these functions read its context (family, device,
logger, monitors) and its meta-test settings (``adapt_meta_optimizer``, clipping).

Online adaptation is part of the estimator contract: an estimator whose ``online`` is
True keeps learning along one run once :meth:`~learnreg.core.estimator.Estimator.attach`
has given it that run; each seed starts from the same learned meta-parameters (a copy)
and has its own outer optimizer (no schedule, no cross-rank averaging: a meta-test run
lives on one process).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable

from tqdm.auto import tqdm

from learnreg.core.bias import Biases, is_learned
from learnreg.core.compiled import graph_free_step
from learnreg.core.estimator import meta_step
from learnreg.core.inner_run import InnerRun
from learnreg.core.metaparams import meta_parameters
from learnreg.core.outer import OuterOptimizer
from learnreg.eval.loss_shape import loss_profile, profile_argmin
from learnreg.eval.metrics import evaluate_split, summarize, update_ratios, update_statistics


def evaluate(
    trainer,
    steps: int,
    seeds: int = 1,
    baseline: Biases | None = None,
    adapt=None,
    eval_every: int = 0,
    progress: bool = True,
    start: int = 0,
    on_seed: Callable[[int, dict, dict], None] | None = None,
) -> list[dict]:
    """Meta-test ``trainer``'s learned roles against ``baseline`` on fresh models.

    Args:
        trainer: the :class:`~learnreg.core.trainer.MetaTrainer` (after :meth:`fit`).
        steps: inner steps per meta-test run.
        seeds: meta-test runs (model seeds; episodes for episodic families).
        baseline: the roles to compare with (e.g. cross-entropy + the same SGD).
        adapt: an online estimator that keeps updating the meta-parameters during each
            run (online AdaLFL); each seed starts from the same learned meta-parameters.
        eval_every: log test metrics every this many inner steps (0: only at the end).
        progress: show a progress bar.
        start: the first seed to run (to resume a partial meta-test).
        on_seed: called after each seed with ``(seed, result, runs)``, ``runs`` mapping
            ``learned``/``baseline`` to the finished ``(InnerRun, biases)`` (checkpoint
            and export hooks go here).

    Returns:
        One ``{"learned": metrics, "baseline": metrics}`` dict per seed (see
        :func:`aggregate` for means and confidence intervals).
    """
    per_seed: list[dict] = []
    for index in tqdm(
        range(start, seeds), desc="meta-test", disable=not progress or None, leave=False
    ):
        task = trainer.ctx.family.meta_test_task(index).to(trainer.device)
        runs = {
            "learned": meta_test_run(
                trainer, trainer.biases, task, index, steps, adapt, "learned", eval_every
            )
        }
        if baseline is not None:
            runs["baseline"] = meta_test_run(
                trainer, baseline, task, index, steps, None, "baseline", eval_every
            )
        result = {tag: final_metrics(run) for tag, (run, _) in runs.items()}
        if baseline is not None:
            log_update_ratio(trainer.logger, runs, index)
        per_seed.append(result)
        if on_seed is not None:
            on_seed(index, result, runs)
    return per_seed


def adapt_outer(trainer, biases: Biases, adapt) -> OuterOptimizer | None:
    """The outer optimizer of one online meta-test run: the trainer's
    ``adapt_meta_optimizer``, clipping and guard, no schedule and no cross-rank averaging."""
    params = biases.meta_parameters()
    if adapt is None or not getattr(adapt, "needs_outer", True) or not params:
        return None
    return OuterOptimizer(
        params,
        trainer.adapt_meta_optimizer(params),
        trainer.meta_grad_clip,
        trainer.max_bad_steps,
        sync=False,
        named=meta_parameters(biases),
    )


def meta_test_run(
    trainer, biases: Biases, task, index: int, steps: int, adapt, tag: str, eval_every: int = 0
) -> tuple[InnerRun, Biases]:
    """Train one fresh model for ``steps`` inner steps.

    Args:
        trainer: the meta-trainer whose context (seed, device, logger, monitors) it uses.
        biases: the roles to train with.
        task: the meta-test task.
        index: the meta-test seed (seeds the model and the batch order).
        steps: inner steps.
        adapt: an online estimator (None: the roles stay frozen).
        tag: names the run in the logs (``learned``, ``baseline``...).
        eval_every: log test metrics every this many inner steps (0: only at the end).

    Returns:
        ``(run, biases)``: the finished :class:`InnerRun` and the biases it ended
        with (a copy that kept learning when ``adapt`` is given).
    """
    device = trainer.device
    biases = copy.deepcopy(biases).to(device) if adapt is not None else biases.to(device)
    ctx = dataclasses.replace(trainer.ctx, biases=biases, outer=adapt_outer(trainer, biases, adapt))
    run = ctx.new_run("meta_test", index, task=task)
    if adapt is not None:
        adapt = copy.deepcopy(adapt)
        adapt.attach(run)  # the base contract refuses estimators that cannot adapt online
    curve_every = eval_every or steps
    while run.state.step < steps:
        before = run.state.params  # functional updates: the old tensors stay valid
        if adapt is not None:
            stepped = meta_step(ctx, adapt)
            # `base_loss`: estimators written before the rename to `inner_loss`
            inner_loss = stepped.get("inner_loss", stepped.get("base_loss"))
            checks: dict = {}
            for monitor in trainer.monitors:
                checks.update(monitor.after_inner_step(trainer, ctx, run, tag, index))
            if checks and trainer.logger is not None:
                trainer.logger.log(checks, inner_step=run.state.step, seed=index)
        else:
            run.state, loss = graph_free_step(
                run.model, run.state, run.next_train(), biases.loss, biases.optimizer,
                trainer.compile_meta_test,
            )  # fmt: skip
            inner_loss = float(loss)
        if not math.isfinite(inner_loss):  # report the divergence; never average it away
            run.diverged_at = run.state.step
            warnings.warn(
                f"meta-test run {tag} seed {index} diverged at inner step {run.state.step}",
                stacklevel=2,
            )
            break
        if run.state.step % curve_every == 0 or run.state.step >= steps:
            log_curve(trainer.logger, run, biases, tag, index, inner_loss, before)
    return run, biases


def final_metrics(run: InnerRun) -> dict:
    """A finished run's test-split metrics (and the step it diverged at, if it did)."""
    metrics = evaluate_split(run.model, run.state, run.task.test, run.task.kind)
    if run.diverged_at is not None:
        metrics["diverged_at"] = run.diverged_at
    return metrics


def log_curve(
    logger, run: InnerRun, biases: Biases, tag: str, index: int, inner_loss: float, before
) -> None:
    """``meta_test/<tag>/*`` at the run's current step: test metrics, the inner loss, the
    update's size and, for a learned loss, how it looks now (it may still be adapting)."""
    metrics = {
        f"test_{k}": v
        for k, v in evaluate_split(run.model, run.state, run.task.test, run.task.kind).items()
    }
    # A learned loss is in its own units: keep it apart from cross-entropy's train_loss.
    metrics["train_learned_loss" if is_learned(biases.loss) else "train_loss"] = inner_loss
    metrics.update(update_statistics(before, run.state.params))
    # ‖Δθ‖ per logged step, for the update-size ratio against the baseline run.
    run.update_norms[run.state.step] = metrics["update_norm"]
    if is_learned(biases.loss):
        grid, values = loss_profile(biases.loss, run.task.kind, run.task.num_classes)
        metrics["loss_argmin"] = profile_argmin(grid, values)
        metrics["loss_profile"] = values
    if logger is not None:
        logger.log(
            {f"meta_test/{tag}/{k}": v for k, v in metrics.items()},
            inner_step=run.state.step,
            seed=index,
        )


def log_update_ratio(logger, runs: dict, index: int) -> None:
    """``meta_test/update_ratio``: ‖Δθ_learned‖ / ‖Δθ_baseline‖ at each logged step."""
    norms = [runs[tag][0].update_norms for tag in ("learned", "baseline")]
    for step, ratio in update_ratios(*norms).items():
        if logger is not None:
            logger.log({"meta_test/update_ratio": ratio}, inner_step=step, seed=index)


def aggregate(per_seed: list[dict]) -> dict:
    """Per-role mean, std and 95% CI of every test metric over meta-test seeds, and how
    many runs diverged."""
    out: dict = {}
    for tag in per_seed[0] if per_seed else []:
        runs = [r[tag] for r in per_seed]
        stats = {m: summarize([r[m] for r in runs]) for m in runs[0] if m != "diverged_at"}
        out[tag] = {
            "test": {m: s["mean"] for m, s in stats.items()},
            "test_std": {m: s["std"] for m, s in stats.items()},
            "test_ci95": {m: s["ci95"] for m, s in stats.items()},
            "diverged": sum("diverged_at" in r for r in runs),
            "per_seed": runs,
        }
    return out
