"""The meta-trainer: one loop for every method, whatever its biases and estimator.

Each meta-step the estimator returns an :class:`~learnreg.core.estimator.Estimate` and
:func:`~learnreg.core.estimator.meta_step` applies it (the outer optimizer's clipping,
cross-rank averaging and non-finite guard, or a search's values); monitors then look at
the result. Meta-testing what was learned is :mod:`learnreg.eval.meta_test`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from learnreg.core.bias import Biases
from learnreg.core.estimator import Estimator, MetaContext, meta_step
from learnreg.core.metaparams import meta_parameters
from learnreg.core.monitors import Monitor
from learnreg.core.outer import OuterOptimizer
from learnreg.errors import ConfigError

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
    """Meta-trains the meta-parameters of ``biases`` (meta-test:
    :func:`learnreg.eval.meta_test.evaluate`).

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
            (default: the same as ``meta_optimizer``; read by :mod:`learnreg.eval.meta_test`).
        meta_lr_schedule: builds a learning-rate schedule over the meta-optimizer, stepped
            once per meta-step (None: constant meta learning rate).
        monitors: :class:`~learnreg.core.monitors.Monitor` hooks (dead-loss detection,
            best-checkpoint selection), called in order after every meta-step, at the end
            of :meth:`fit` and after every inner step of an online meta-test run.
        compile_meta_test: the frozen meta-test runs step through ``torch.compile``
            (:func:`learnreg.core.compiled.graph_free_step`; read by
            :mod:`learnreg.eval.meta_test`; config ``meta_test.compile``).
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
        compile_meta_test: bool = False,
    ):
        self.device = resolve_device(device)
        self.compile_meta_test = compile_meta_test
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

    def _outer(self, biases: Biases, estimator) -> OuterOptimizer | None:
        """The outer optimizer of meta-training (None when nothing needs one)."""
        params = biases.meta_parameters()
        if estimator is None or not estimator.needs_outer or not params:
            return None
        optimizer = self.meta_optimizer(params)
        schedule = self.meta_lr_schedule
        return OuterOptimizer(
            params,
            optimizer,
            self.meta_grad_clip,
            self.max_bad_steps,
            scheduler=schedule(optimizer) if schedule is not None else None,
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

        The estimator's :meth:`~learnreg.core.estimator.Estimator.close` runs when
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
