"""A live base-training run: the bookkeeping an estimator keeps between meta-steps.

:class:`InnerRun` holds a task, its model, the inner state
(:class:`~learnreg.core.inner.InnerState`) and the run's seeded batch streams;
:func:`defer_each` and :func:`drew_windows` update a whole meta-batch's runs in one call.
The step function itself is :func:`learnreg.core.inner.inner_step`: this module only
carries its state.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import optree
from torch import Tensor, nn

from learnreg.core.inner import Batch, InnerState
from learnreg.errors import CheckpointError


class InnerRun:
    """A live base-training run: a task, its model, the inner state and seeded batch streams.

    Estimators keep these between meta-steps (a persistent online run) or replace them
    after a horizon. ``state_dict()`` captures everything needed to continue it exactly.

    Args:
        task: the :class:`~learnreg.core.task.Task` being trained on.
        model: a freshly built model for ``task`` (on the run's device).
        state: the inner state at step 0 (None: one set later with :meth:`defer`, or
            built by ``build``).
        seed: seeds the model and the batch order; equal seeds give equal runs.
        index: which run of the estimator's sequence this is (for resuming).
        build: builds the step-0 state on first read, instead of ``state`` (as
            :meth:`defer` with ``fresh``).
    """

    def __init__(
        self,
        task,
        model: nn.Module,
        state: InnerState | None,
        seed: int,
        index: int = 0,
        build: Callable[[], InnerState] | None = None,
    ):
        self.task, self.model = task, model
        self._state, self._pending = state, build
        # step: inner steps taken (known without building a deferred state); fresh: the
        # state is a deferred step-0 state not built yet, which a batched unroll may build
        # together with its meta-batch's. Attributes, not properties: a meta-batch reads
        # them for every run every meta-step, and a property is a Python call each time.
        self.step = state.step if state is not None else 0
        self.fresh = build is not None
        self.seed, self.index = seed, index
        self.train = task.stream("train", seed)
        self.val = task.stream("val", seed + 1)
        self._last_batch: Batch | None = None
        self._last_window: Batch | None = None
        self.diverged_at: int | None = None  # inner step at which the base loss became non-finite
        self.update_norms: dict[int, float] = {}  # ‖Δθ‖ at the logged meta-test steps

    @property
    def state(self) -> InnerState:
        """The inner state; a deferred one (:meth:`defer`) is built on first read."""
        if self._pending is not None:
            self._state, self._pending, self.fresh = self._pending(), None, False
        return self._state

    @state.setter
    def state(self, value: InnerState) -> None:
        self._state, self._pending, self.fresh, self.step = value, None, False, value.step

    def defer(self, build: Callable[[], InnerState], step: int, fresh: bool = False) -> None:
        """Make the state ``build()``, built on first read. A meta-batch's runs are made
        and finished together every meta-step, and most are dropped unread: deferring
        spares a per-run ``init_state`` at the start (``fresh``: ``build`` gives the
        step-0 state) and the split of the batched result at the end
        (:func:`defer_each`).

        Args:
            build: returns the state (called at most once).
            step: the state's ``step`` (known without building it).
            fresh: ``build`` gives the run's step-0 state (``init_state``).
        """
        self._state, self._pending, self.step, self.fresh = None, build, step, fresh

    @property
    def last_batch(self) -> Batch | None:
        """The last training batch the run drew (None before the first)."""
        if self._last_window is not None:  # a window drawn at once: its last batch
            x, y = self._last_window
            self._last_batch, self._last_window = (x[-1], y[-1]), None
        return self._last_batch

    @last_batch.setter
    def last_batch(self, batch: Batch | None) -> None:
        self._last_batch, self._last_window = batch, None

    def drew_window(self, batches: Batch) -> None:
        """Record that the run drew ``batches`` (stacked, ``(steps, batch, ...)``) at once:
        :attr:`last_batch` becomes their last, cut out only when read."""
        self._last_window = batches

    def next_train(self) -> Batch:
        self.last_batch = self.train.next()
        return self.last_batch

    def state_dict(self) -> dict:
        """The run as plain tensors and numbers (the optimizer state as its pytree leaves)."""

        return {
            "seed": self.seed,
            "index": self.index,
            "step": self.state.step,
            "params": {k: v.detach() for k, v in self.state.params.items()},
            "buffers": dict(self.state.buffers),
            "opt_leaves": [
                t.detach() if isinstance(t, Tensor) else t
                for t in optree.tree_leaves(self.state.opt_state)
            ],
            "train": self.train.state_dict(),
            "val": self.val.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a run saved by :meth:`state_dict` (the optimizer state's structure comes
        from this run's freshly initialized state, its values from ``sd``)."""
        device = next(iter(self.state.params.values())).device
        leaves, spec = optree.tree_flatten(self.state.opt_state)
        if len(leaves) != len(sd["opt_leaves"]):
            raise CheckpointError(
                "the checkpointed optimizer state does not match the optimizer role; was the optimizer changed?"
            )
        opt_leaves = [v.to(device) if isinstance(v, Tensor) else v for v in sd["opt_leaves"]]
        self.state = InnerState(
            params={k: v.to(device) for k, v in sd["params"].items()},
            buffers={k: v.to(device) for k, v in sd["buffers"].items()},
            opt_state=optree.tree_unflatten(spec, opt_leaves),
            step=int(sd["step"]),
        )
        self.train.load_state_dict(sd["train"])
        self.val.load_state_dict(sd["val"])


# one call for a whole meta-batch, where a method call per run was a Python call per task


def defer_each(runs: list[InnerRun], member: Callable[[int], InnerState], step: int) -> None:
    """Make run ``i``'s state ``member(i)``, built on first read (:meth:`InnerRun.defer`
    for every run, ``fresh=False``)."""
    for i, run in enumerate(runs):
        run._state, run._pending, run.step, run.fresh = None, partial(member, i), step, False


def drew_windows(runs: list[InnerRun], windows: list[Batch]) -> None:
    """:meth:`InnerRun.drew_window` for every run: run ``i`` drew ``windows[i]``."""
    for run, window in zip(runs, windows):
        run._last_window = window
