"""The meta-trainer: one loop for every method, whatever its biases and estimator."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from learnreg.core.bias import Biases, is_learned
from learnreg.core.estimator import Estimator, MetaContext, meta_step
from learnreg.core.inner import InnerRun, inner_step
from learnreg.core.metaparams import meta_parameters
from learnreg.core.monitors import Monitor
from learnreg.core.outer import OuterOptimizer
from learnreg.errors import ConfigError
from learnreg.eval.loss_shape import loss_profile, profile_argmin
from learnreg.eval.metrics import evaluate_split, summarize, update_ratios, update_statistics

MetaOptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
ScheduleFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is ``$LEARNREG_DEVICE`` when set, else CUDA when available, else CPU."""
    if str(device) == "auto":
        if not os.environ.get("LEARNREG_DEVICE"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = os.environ["LEARNREG_DEVICE"]
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if resolved.type == "cuda" and (resolved.index or 0) >= count:
        raise ConfigError(
            f"device {str(device)!r} was asked for, but this machine has "
            f"{count or 'no'} CUDA GPU{'s' if count != 1 else ''} visible to PyTorch. Set "
            "device=cpu, or device=auto (a GPU when there is one), or unset $LEARNREG_DEVICE."
        )
    return resolved


class MetaTrainer:
    """Meta-trains the meta-parameters of ``biases`` and meta-tests what it learned.

    Args:
        family: the task family (a :class:`~learnreg.core.task.SingleTask` for one task).
        biases: the loss, optimizer and init roles.
        objective: the meta-objective.
        estimator: how meta-parameters move (e.g. :class:`TruncatedUnroll`).
        meta_optimizer: builds the torch optimizer over the meta-parameters
            (default: Adam, lr 1e-3).
        seed: seeds every inner run (model init, batch order).
        device: ``auto``, ``cpu``, ``cuda``...
        meta_grad_clip: global norm to clip meta-gradients to (None: no clipping).
        max_bad_steps: consecutive non-finite meta-steps tolerated before stopping.
        logger: a :class:`~learnreg.tracking.Logger` (None: log nothing).
        adapt_meta_optimizer: the meta-optimizer of online adaptation during meta-test
            (default: the same as ``meta_optimizer``).
        meta_lr_schedule: builds a learning-rate schedule over the meta-optimizer, stepped
            once per meta-step (None: constant meta learning rate).
        monitors: :class:`~learnreg.core.monitors.Monitor` hooks (dead-loss detection,
            best-checkpoint selection), called in order after every meta-step, at the end
            of :meth:`fit` and after every inner step of an online meta-test run.
    """

    def __init__(
        self,
        family,
        biases: Biases,
        objective,
        estimator: Estimator,
        meta_optimizer: MetaOptimizerFactory | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "auto",
        meta_grad_clip: float | None = None,
        max_bad_steps: int = 10,
        logger=None,
        adapt_meta_optimizer: MetaOptimizerFactory | None = None,
        meta_lr_schedule: ScheduleFactory | None = None,
        monitors: Sequence[Monitor] = (),
    ):
        self.device = resolve_device(device)
        biases.to(self.device)
        self.meta_optimizer = meta_optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.adapt_meta_optimizer = adapt_meta_optimizer or self.meta_optimizer
        self.meta_lr_schedule = meta_lr_schedule
        self.meta_grad_clip, self.max_bad_steps = meta_grad_clip, max_bad_steps
        self.estimator = estimator
        self.ctx = MetaContext(
            family, biases, objective, self._outer(biases, estimator), seed, self.device, logger
        )
        self.logger = logger
        self.meta_step = 0
        self.target_meta_steps = 0  # the total of the current fit (monitors read it)
        self.monitors = list(monitors)

    @property
    def biases(self) -> Biases:
        return self.ctx.biases

    def _outer(self, biases: Biases, estimator, meta_test: bool = False) -> OuterOptimizer | None:
        """The outer optimizer of meta-training, or of one online meta-test run (which has
        its own meta-optimizer, no schedule and, running on one process, no cross-rank
        averaging)."""
        params = biases.meta_parameters()
        if estimator is None or not estimator.needs_outer or not params:
            return None
        optimizer = (self.adapt_meta_optimizer if meta_test else self.meta_optimizer)(params)
        schedule = self.meta_lr_schedule if not meta_test else None
        return OuterOptimizer(
            params,
            optimizer,
            self.meta_grad_clip,
            self.max_bad_steps,
            scheduler=schedule(optimizer) if schedule is not None else None,
            sync=False if meta_test else None,
            named=meta_parameters(biases),
        )

    def fit(
        self,
        meta_steps: int,
        on_step: Callable[[MetaTrainer], None] | None = None,
        progress: bool = True,
    ) -> MetaTrainer:
        """Meta-train until ``meta_steps`` meta-steps have been taken in total.

        Args:
            meta_steps: the total (a resumed trainer continues from ``self.meta_step``).
            on_step: called after every meta-step (checkpointing hooks here).
            progress: show a progress bar.

        The estimator's :meth:`~learnreg.estimators.base.Estimator.close` runs when
        this returns or raises.
        """
        if self.ctx.outer is None and self.estimator.needs_outer:
            raise ConfigError(
                "nothing to meta-train: no role has meta-parameters (is every role fixed?)"
            )
        bar = tqdm(
            total=meta_steps,
            initial=self.meta_step,
            desc="meta-train",
            disable=not progress or None,
            leave=False,
        )
        self.target_meta_steps = meta_steps
        try:
            while self.meta_step < meta_steps:
                metrics = meta_step(self.ctx, self.estimator)
                self.meta_step += 1
                # Estimators may namespace their own metrics ("search/best_fitness").
                metrics = {k if "/" in k else f"meta/{k}": v for k, v in metrics.items()}
                for monitor in self.monitors:
                    metrics.update(monitor.after_meta_step(self))
                self._log(metrics, meta_step=self.meta_step)
                bar.update(1)
                if on_step is not None:
                    on_step(self)
        finally:  # worker pools, a Ray instance: not kept past meta-training
            close = getattr(self.estimator, "close", None)  # duck-typed estimators may lack it
            if close is not None:
                close()
            bar.close()
        for monitor in self.monitors:
            monitor.after_fit(self)
        return self

    def evaluate(
        self,
        steps: int,
        seeds: int = 1,
        baseline: Biases | None = None,
        adapt: Estimator | None = None,
        eval_every: int = 0,
        progress: bool = True,
        start: int = 0,
        on_seed: Callable[[int, dict], None] | None = None,
    ) -> dict:
        """Meta-test: train fresh models from scratch with the learned biases (frozen, or
        still adapting online when ``adapt`` is given) and, with the same model seeds and
        batch order, with the ``baseline`` biases.

        Args:
            steps: inner steps per meta-test run.
            seeds: meta-test runs (model seeds; episodes for episodic families).
            baseline: the biases to compare with (e.g. cross-entropy + the same SGD).
            adapt: an estimator that keeps updating the meta-parameters during the run
                (online AdaLFL); each seed starts from the same learned meta-parameters.
            eval_every: log test metrics every this many inner steps (0: only at the end).
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
            task = self.ctx.family.meta_test_task(index).to(self.device)
            runs = {
                "learned": self.meta_test_run(
                    self.ctx.biases, task, index, steps, adapt, "learned", eval_every
                )
            }
            if baseline is not None:
                runs["baseline"] = self.meta_test_run(
                    baseline, task, index, steps, None, "baseline", eval_every
                )
            result = {tag: self._test_metrics(run) for tag, (run, _) in runs.items()}
            if baseline is not None:
                self._log_update_ratio(runs, index)
            per_seed.append(result)
            if on_seed is not None:
                on_seed(index, result, runs)
        return per_seed

    def meta_test_run(
        self, biases: Biases, task, index: int, steps: int, adapt, tag: str, eval_every: int = 0
    ):
        """Train one fresh model for ``steps`` inner steps.

        Returns:
            ``(run, biases)``: the finished :class:`InnerRun` and the biases it ended
            with (a copy that kept learning when ``adapt`` is given).
        """
        biases = (
            copy.deepcopy(biases).to(self.device) if adapt is not None else biases.to(self.device)
        )
        ctx = dataclasses.replace(
            self.ctx,
            biases=biases,
            outer=self._outer(biases, adapt, meta_test=True) if adapt else None,
        )
        run = ctx.new_run("meta_test", index, task=task)
        if adapt is not None:
            adapt = copy.deepcopy(adapt)
            adapt.attach(run)
        curve_every = eval_every or steps
        while run.state.step < steps:
            before = run.state.params  # functional updates: the old tensors stay valid
            if adapt is not None:
                stepped = meta_step(ctx, adapt)
                # `base_loss`: estimators written before the rename to `inner_loss`
                inner_loss = stepped.get("inner_loss", stepped.get("base_loss"))
                checks: dict = {}
                for monitor in self.monitors:
                    checks.update(monitor.after_inner_step(self, ctx, run, tag, index))
                if checks:
                    self._log(checks, inner_step=run.state.step, seed=index)
            else:
                with torch.no_grad():
                    run.state, loss = inner_step(
                        run.model, run.state, run.next_train(), biases.loss, biases.optimizer
                    )
                inner_loss = float(loss)
            if not math.isfinite(inner_loss):  # report the divergence; never average it away
                run.diverged_at = run.state.step
                warnings.warn(
                    f"meta-test run {tag} seed {index} diverged at inner step {run.state.step}",
                    stacklevel=2,
                )
                break
            if run.state.step % curve_every == 0 or run.state.step >= steps:
                self._log_curve(run, biases, tag, index, inner_loss, before)
        return run, biases

    @staticmethod
    def _test_metrics(run: InnerRun) -> dict:
        metrics = evaluate_split(run.model, run.state, run.task.test, run.task.kind)
        if run.diverged_at is not None:
            metrics["diverged_at"] = run.diverged_at
        return metrics

    def _log_curve(
        self, run: InnerRun, biases: Biases, tag: str, index: int, inner_loss: float, before
    ) -> None:
        metrics = {
            f"test_{k}": v
            for k, v in evaluate_split(run.model, run.state, run.task.test, run.task.kind).items()
        }
        # A learned loss is in its own units: keep it apart from cross-entropy's train_loss.
        metrics["train_learned_loss" if is_learned(biases.loss) else "train_loss"] = inner_loss
        metrics.update(update_statistics(before, run.state.params))
        # ‖Δθ‖ per logged step, for the update-size ratio against the baseline run.
        run.update_norms[run.state.step] = metrics["update_norm"]
        if is_learned(biases.loss):  # how the loss looks now (it may still be adapting)
            grid, values = loss_profile(biases.loss, run.task.kind, run.task.num_classes)
            metrics["loss_argmin"] = profile_argmin(grid, values)
            metrics["loss_profile"] = values
        self._log(
            {f"meta_test/{tag}/{k}": v for k, v in metrics.items()},
            inner_step=run.state.step,
            seed=index,
        )

    def _log_update_ratio(self, runs: dict, index: int) -> None:
        """``meta_test/update_ratio``: ‖Δθ_learned‖ / ‖Δθ_baseline‖ at each logged step."""
        norms = [runs[tag][0].update_norms for tag in ("learned", "baseline")]
        for step, ratio in update_ratios(*norms).items():
            self._log({"meta_test/update_ratio": ratio}, inner_step=step, seed=index)

    def _log(self, metrics: dict, **axes) -> None:
        if self.logger is not None:
            self.logger.log(metrics, **axes)

    def state_dict(self) -> dict:
        """Meta-parameters, outer-optimizer state, estimator state and progress."""
        return {
            "meta_step": self.meta_step,
            "biases": {k: v.detach() for k, v in self.biases.state_dict().items()},
            "outer": self.ctx.outer.state_dict() if self.ctx.outer is not None else None,
            "estimator": self.estimator.state_dict(),
            "monitors": [m.state_dict() for m in self.monitors],
        }

    def load_state_dict(self, state: dict) -> None:
        self.biases.load_state_dict(state["biases"])
        if self.ctx.outer is not None and state["outer"] is not None:
            self.ctx.outer.load_state_dict(state["outer"])
        self.estimator.load_state_dict(state["estimator"], self.ctx)
        for monitor, monitor_state in zip(self.monitors, state.get("monitors", [])):
            monitor.load_state_dict(monitor_state)
        self.meta_step = int(state["meta_step"])


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
