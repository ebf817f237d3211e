"""Learning-rate tuning on the validation split: the tuned baseline of every comparison.

A learned loss compared with cross-entropy at an untuned learning rate mostly measures
the learning rate. :func:`tune_lr` trains the same biases at every learning rate of a
log-spaced grid, from the same model initializations and in the same batch order as the
meta-test runs, and :func:`select` picks the rate with the best mean **validation**
metric; the test metric of every grid point is kept for the report but never read by
the selection.

Where the optimizer's update is linear in its learning rate (SGD and Adam: their state
does not depend on it), the grid trains as one vectorized run: the parameters of one
model per learning rate are stacked, every copy's gradient on the shared batch comes from
one ``torch.func.vmap`` (a loop over the copies for convolutional models on a CPU, where
it is faster), and the optimizer at learning rate 1 updates the stack, scaled per copy.
Other optimizers, models with BatchNorm running statistics and online-adapting learned
losses run the grid one rate after another.

Validation data: a single task's own ``val`` split; for episodic families (whose query
set is the test set) the meta-validation episodes, or meta-training episodes when the
class split has no validation classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from tqdm.auto import tqdm

from learnreg.core.bias import Biases
from learnreg.core.inner import InnerState
from learnreg.errors import ConfigError, DataError
from learnreg.eval.meta_test import meta_test_run
from learnreg.eval.metrics import evaluate_split
from learnreg.optimizers.fixed import SGD, Adam

#: Grid factors around the preset learning rate: 10^(k/3), 0.1x to 46x, 9 points, 1x included.
GRID_FACTORS = tuple(10 ** (k / 3) for k in range(-3, 6))
LR_LINEAR = (SGD, Adam)  # updates ∝ lr, state independent of lr


def lr_grid(lr: float, grid: list[float] | None = None) -> list[float]:
    """The learning rates to try: ``grid`` or ``lr · GRID_FACTORS``, always with ``lr``
    itself (so the tuned baseline can never be worse on validation than the untuned one)."""
    values = list(grid) if grid else [lr * f for f in GRID_FACTORS]
    if any(not (isinstance(v, (int, float)) and v > 0) for v in values):
        raise ConfigError(f"baseline.tune.grid must hold positive learning rates, got {grid!r}")
    return sorted({float(v) for v in values} | {float(lr)})


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


def train_grid(ctx, biases: Biases, task, index: int, steps: int, lrs: list[float], vectorize=None):
    """Train one model per learning rate for ``steps`` inner steps as one stacked run.

    Every copy starts from ``biases.init`` (the baseline's, not the trainer's: a learned
    init such as MAML's is the learned side's) and reads the batches of
    ``ctx.new_run("meta_test", index)``, exactly as :func:`meta_test_run` trains the
    baseline of seed ``index``. The parameters and optimizer states of every copy are
    stacked and updated together; the copies' gradients come from one ``vmap`` or from a
    loop over the copies (``vectorize``; None: :func:`vmap_is_faster`). Both give the same
    parameters up to float rounding.

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

    def member_loss(p, b, x, y):
        return biases.loss(functional_call(run.model, (p, b), (x,)), y)

    if vectorize is None:
        vectorize = vmap_is_faster(run.model, first.device)
    if vectorize:
        gradient = vmap(grad_and_value(member_loss), in_dims=(0, 0, None, None))
    else:
        single = grad_and_value(member_loss)

        def gradient(p, b, x, y):
            outs = [
                single({k: v[g] for k, v in p.items()}, {k: v[g] for k, v in b.items()}, x, y)
                for g in range(size)
            ]
            grads = {k: torch.stack([o[0][k] for o in outs]) for k in p}
            return grads, torch.stack([o[1] for o in outs])

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
