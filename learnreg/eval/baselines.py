"""Learning-rate tuning on the validation split: the tuned baseline of every comparison.

A learned loss compared with cross-entropy at an untuned learning rate mostly measures
the learning rate. :func:`tune_seed` trains the same biases at every learning rate of a
log-spaced grid, from the same model initializations and in the same batch order as the
meta-test runs, and :func:`select` picks the rate with the best mean **validation**
metric; the test metric of every grid point is kept for the report but never read by
the selection.

Where the optimizer's update is linear in its learning rate (SGD and Adam), the grid
trains as one stacked run (:mod:`learnreg.eval.grid_runs`). Other optimizers, models with
BatchNorm running statistics and online-adapting learned losses run the grid one rate
after another.

Validation data: a single task's own ``val`` split; for episodic families (whose query
set is the test set) the meta-validation episodes, or meta-training episodes when the
class split has no validation classes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

from tqdm.auto import tqdm

from learnreg.core.bias import Biases
from learnreg.errors import ConfigError, DataError
from learnreg.eval.grid_runs import base_lr, train_grid, vectorizable, with_lr
from learnreg.eval.meta_test import meta_test_run
from learnreg.eval.metrics import evaluate_split

#: Grid factors around the preset learning rate: 10^(k/3), 0.1x to 46x, 9 points, 1x included.
GRID_FACTORS = tuple(10 ** (k / 3) for k in range(-3, 6))


def lr_grid(lr: float, grid: list[float] | None = None) -> list[float]:
    """The learning rates to try: ``grid`` or ``lr · GRID_FACTORS``, always with ``lr``
    itself (so the tuned baseline can never be worse on validation than the untuned one)."""
    values = list(grid) if grid else [lr * f for f in GRID_FACTORS]
    if any(not (isinstance(v, (int, float)) and v > 0) for v in values):
        raise ConfigError(f"baseline.tune.grid must hold positive learning rates, got {grid!r}")
    return sorted({float(v) for v in values} | {float(lr)})


def validation_task(family, index: int) -> tuple[object, str]:
    """The task whose ``val`` split tunes seed ``index``, and where it comes from."""
    test_task = family.meta_test_task(index)
    if test_task.val is not test_task.test:
        return test_task, "validation split"
    meta_val = getattr(family, "meta_val_task", None)
    if meta_val is not None:
        with contextlib.suppress(DataError):  # no meta-validation classes in the split
            return meta_val(index), "meta-validation episodes"
    return family.sample(index), "meta-training episodes"


def primary_metric(kind: str) -> str:
    return "error" if kind == "classification" else "mse"


def grid_point_metrics(trainer, biases, task, index, steps, lrs, adapt, splits):
    """Metrics on ``splits`` of a model trained at each learning rate (seed ``index``).

    Returns:
        One ``{"lr", "diverged_at", <split>: metrics...}`` dict per learning rate.
    """
    model = task.build_model(0)
    if vectorizable(biases, model, adapt):
        run, states, diverged = train_grid(trainer.ctx, biases, task, index, steps, lrs)
        model = run.model
    else:
        states, diverged = [], []
        logger, trainer.logger = trainer.logger, None  # grid runs log no curves
        try:
            for lr in lrs:
                candidate = Biases(biases.loss, with_lr(biases.optimizer, lr), biases.init)
                run, _ = meta_test_run(trainer, candidate, task, index, steps, adapt, "tune")
                states.append(run.state)
                diverged.append(run.diverged_at)
                model = run.model
        finally:
            trainer.logger = logger
    points = []
    for lr, state, div in zip(lrs, states, diverged):
        point = {"lr": lr, "diverged_at": div}
        for split in splits:
            point[split] = evaluate_split(model, state, getattr(task, split), task.kind)
        points.append(point)
    return points


def tune_seed(trainer, biases, index: int, steps: int, lrs: list[float], adapt=None) -> dict:
    """Every grid point of seed ``index``: validation metrics (for selection) and test
    metrics (for the report), from the same model seed and batch order as the meta-test.

    Returns:
        ``{"tuned_on", "val": [metrics per lr], "test": [...], "diverged_at": [...]}``.
    """
    family, device = trainer.ctx.family, trainer.device
    val_task, source = validation_task(family, index)
    val_task = val_task.to(device)
    test_task = family.meta_test_task(index).to(device)
    if source == "validation split":  # one run gives both splits
        points = grid_point_metrics(
            trainer, biases, test_task, index, steps, lrs, adapt, ("val", "test")
        )
        val, test = [p["val"] for p in points], [p["test"] for p in points]
    else:
        val = [
            p["val"]
            for p in grid_point_metrics(
                trainer, biases, val_task, index, steps, lrs, adapt, ("val",)
            )
        ]
        points = grid_point_metrics(trainer, biases, test_task, index, steps, lrs, adapt, ("test",))
        test = [p["test"] for p in points]
    return {
        "tuned_on": source,
        "val": val,
        "test": test,
        "diverged_at": [p["diverged_at"] for p in points],
    }


def _score(value: float) -> float:
    return value if math.isfinite(value) else math.inf  # a diverged rate is never chosen


def select(lrs: list[float], seeds: list[dict], metric: str) -> int:
    """The index of the learning rate with the best mean validation ``metric`` over seeds
    (ties: the lower mean validation loss, then the smaller rate). Reads ``val`` only."""

    def mean(split_key: str, g: int) -> float:
        values = [_score(s["val"][g].get(split_key, math.nan)) for s in seeds]
        return sum(values) / len(values)

    return min(range(len(lrs)), key=lambda g: (mean(metric, g), mean("loss", g), lrs[g]))


def grid_table(lrs: list[float], seeds: list[dict]) -> list[dict]:
    """Per learning rate: mean validation and test metrics over seeds, and divergences."""
    table = []
    for g, lr in enumerate(lrs):
        row = {"lr": lr, "diverged": sum(s["diverged_at"][g] is not None for s in seeds)}
        for split in ("val", "test"):
            names = seeds[0][split][g]
            row[split] = {m: sum(s[split][g][m] for s in seeds) / len(seeds) for m in names}
        table.append(row)
    return table


def tune_sides(
    trainer,
    sides: dict,
    grid: list[float] | None,
    seeds: int,
    steps: int,
    done: dict,
    on_seed: Callable[[], None] = lambda: None,
    progress: bool = False,
    cache=None,
    source: str = "",
) -> dict:
    """Every grid point of every seed for each side, resuming from what ``done`` holds.

    Args:
        trainer: the run's trainer (its family, device and meta-test seeding).
        sides: ``{name: (biases, adapt)}``: ``tuned`` (the baseline's biases) and, with
            ``tune.learned``, ``learned_tuned`` (the learned biases and their adaptation).
        grid: explicit learning rates, or None for :data:`GRID_FACTORS` around each side's
            own rate (:func:`lr_grid`).
        seeds: meta-test seeds; seed ``i`` shares its model seed and batch order with the
            meta-test's seed ``i``.
        steps: inner steps per grid run (the meta-test budget).
        done: ``{name: {"lrs", "seeds": [tune_seed rows]}}``, filled in place (a run's
            checkpointed progress, so a killed tuning phase resumes at the next seed).
        on_seed: called after each finished seed (the runner checkpoints there).
        progress: show a progress bar.
        cache: a :class:`~learnreg.eval.tuning_cache.TuningCache`: seeds it holds are read
            (their indices listed under ``done[name]["cached"]``), the others stored.
        source: names this run in the entries it stores.

    Returns:
        ``done``.
    """
    for name, (biases, adapt) in sides.items():
        lrs = lr_grid(base_lr(biases.optimizer), grid)
        rows = done.setdefault(name, {"lrs": lrs, "seeds": []})["seeds"]
        for index in tqdm(
            range(len(rows), seeds),
            desc=f"tune lr ({name})",
            disable=not progress or None,
            leave=False,
        ):
            row = cache.lookup(name, index, lrs) if cache is not None else None
            if row is None:
                row = tune_seed(trainer, biases, index, steps, lrs, adapt)
                if cache is not None:
                    cache.store(name, index, lrs, row, source)
            else:
                done[name].setdefault("cached", []).append(index)
            rows.append(row)
            on_seed()
    return done
