"""Figures of a run directory, drawn from its ``metrics.jsonl``: ``learnreg plot RUN_DIR``.

Each plot is a function of the run's records that returns a matplotlib figure, or None
when the run logged nothing it can draw; :data:`PLOTS` lists them, and
:func:`register_plot` adds one. :func:`plot` writes every applicable figure as a PNG under
``RUN_DIR/plots/`` and, when the run was tracked with W&B, logs them to the same W&B run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from learnreg.errors import DataError  # noqa: E402

Records = list[dict]
PLOTS: dict[str, Callable[[Records], plt.Figure | None]] = {}


def register_plot(name: str):
    """Add a plot function ``fn(records) -> Figure | None`` under ``name``."""

    def wrap(fn):
        PLOTS[name] = fn
        return fn

    return wrap


def read_records(run_dir: str | Path) -> Records:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(
            f"{path} not found: `learnreg plot` needs a run directory written by `learnreg run`"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: Records, key: str, axis: str) -> dict[int, tuple[list, list]]:
    """``{seed: (x, y)}`` of a metric along an axis (non-numbers skipped)."""
    out: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in records:
        if key in r and axis in r and isinstance(r[key], (int, float)):
            xs, ys = out[r.get("seed", 0)]
            xs.append(r[axis])
            ys.append(r[key])
    return dict(out)


def _scale(ax) -> str:
    """``log`` when every plotted value is positive (a diverged run logs 0 or NaN)."""
    values = [y for line in ax.get_lines() for y in line.get_ydata()]
    return "log" if values and all(y > 0 for y in values) else "linear"


def _learned_vs_baseline(ax, records: Records, metric: str) -> None:
    """One line per seed of a meta-test metric against inner steps, learned vs baseline."""
    for tag, color in (("learned", "C0"), ("baseline", "C1")):
        for i, (_seed, (xs, ys)) in enumerate(
            sorted(_series(records, f"meta_test/{tag}/{metric}", "inner_step").items())
        ):
            ax.plot(xs, ys, color=color, alpha=0.8, label=tag if i == 0 else None)


@register_plot("learning_curves")
def learning_curves(records: Records):
    """Test metric against inner steps: learned biases vs the baseline, every seed."""
    metric = next(
        (
            m
            for m in ("test_error", "test_mse")
            if any(f"meta_test/learned/{m}" in r for r in records)
        ),
        None,
    )
    if metric is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    _learned_vs_baseline(ax, records, metric)
    ax.set(xlabel="inner step", ylabel=metric.replace("_", " "), title="meta-test learning curves")
    ax.legend()
    return fig


def _smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


@register_plot("meta_training")
def meta_training(records: Records):
    """Meta-loss against meta-steps (raw and smoothed), with skipped (non-finite) steps
    marked, and the inner loss: the learned loss's own value, in its own units (so it is
    not comparable with the task loss)."""
    series = _series(records, "meta/meta_loss", "meta_step").get(0)
    if not series:
        return None
    inner = next(  # `meta/base_loss`: run directories written before the rename
        (
            s
            for key in ("meta/inner_loss", "meta/base_loss")
            if (s := _series(records, key, "meta_step").get(0))
        ),
        None,
    )
    fig, axes = plt.subplots(1, 2 if inner else 1, figsize=(11 if inner else 6, 4), squeeze=False)
    ax = axes[0][0]
    xs, ys = series
    window = max(1, len(ys) // 20)
    ax.plot(xs, ys, lw=0.6, alpha=0.35, color="C0", label="meta-loss")
    ax.plot(xs, _smoothed(ys, window), lw=1.6, color="C0", label=f"moving average ({window})")
    skipped = [r["meta_step"] for r in records if r.get("meta/skipped") == 1.0]
    if skipped:
        ax.scatter(skipped, [0] * len(skipped), marker="x", color="red", label="skipped")
    ax.set(xlabel="meta step", ylabel="meta-loss", title="meta-training")
    ax.legend()
    if inner:
        ax = axes[0][1]
        ax.plot(*inner, lw=0.6, alpha=0.35, color="C2")
        ax.plot(inner[0], _smoothed(inner[1], window), lw=1.6, color="C2")
        ax.set(xlabel="meta step", ylabel="inner loss (the learned loss's own units)")
        ax.set(title="inner loss")
    return fig


@register_plot("loss_shape")
def loss_shape(records: Records):
    """The learned loss as a function of the target probability (or residual) at each
    evaluation of the first meta-test run: how it changed while it kept learning."""
    rows = [r for r in records if "meta_test/learned/loss_profile" in r and r.get("seed", 0) == 0]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        values = r["meta_test/learned/loss_profile"]
        grid = [0.01 + 0.98 * k / (len(values) - 1) for k in range(len(values))]
        ax.plot(
            grid,
            values,
            color=cmap(i / max(len(rows) - 1, 1)),
            label=f"step {r['inner_step']}" if i in (0, len(rows) - 1) else None,
        )
    ax.set(
        xlabel="target-class probability (regression: rescaled residual)",
        ylabel="learned loss",
        title="learned loss shape",
    )
    ax.legend()
    return fig


@register_plot("update_ratio")
def update_ratio(records: Records):
    """‖Δθ_learned‖ / ‖Δθ_baseline‖ against inner steps: how much larger the learned
    biases' updates are than the same-settings baseline's at the same step (same model
    initialization and batches). A constant ratio is a learning rate in disguise."""
    series = _series(records, "meta_test/update_ratio", "inner_step")
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    many = len(series) > 8  # e.g. 600 meta-test episodes: one faint line each, no legend row
    for i, (seed, (xs, ys)) in enumerate(sorted(series.items())):
        if many:
            label = f"each of {len(series)} seeds" if i == 0 else None
            ax.plot(xs, ys, color="C0", alpha=0.15, lw=0.6, label=label)
        else:
            ax.plot(xs, ys, marker=".", label=f"seed {seed}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="inner step", ylabel="‖Δθ learned‖ / ‖Δθ baseline‖")
    ax.set(title="update size: learned vs baseline", yscale=_scale(ax))
    ax.legend()
    return fig


@register_plot("update_statistics")
def update_statistics(records: Records):
    """The optimizer role's updates during meta-test: RMS of one update and its size
    relative to the weights, learned biases vs the baseline."""
    if not any("meta_test/learned/update_rms" in r for r in records):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "update_rms", "RMS of one update"),
        (axes[1], "update_to_weight", "‖Δθ‖ / ‖θ‖"),
    ):
        _learned_vs_baseline(ax, records, key)
        ax.set(xlabel="inner step", ylabel=label, yscale=_scale(ax))
        ax.legend()
    fig.suptitle("optimizer updates during meta-test")
    return fig


@register_plot("pga")
def pga(records: Records):
    """PGA loss increase against the radius of the L2 ball (``learnreg eval``): flatter
    minima rise less. One point per seed, a line through the means."""
    radii = sorted(
        {
            float(k.rsplit("_", 1)[1])
            for r in records
            for k in r
            if k.startswith("eval/learned/pga_")
        }
    )
    if not radii:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for tag, color in (("learned", "C0"), ("baseline", "C1")):
        per_radius = [
            [r[f"eval/{tag}/pga_{x:g}"] for r in records if f"eval/{tag}/pga_{x:g}" in r]
            for x in radii
        ]
        if not any(per_radius):
            continue
        for x, values in zip(radii, per_radius):
            ax.scatter([x] * len(values), values, color=color, s=12, alpha=0.6)
        means = [sum(v) / len(v) for v in per_radius]
        ax.plot(radii, means, color=color, marker="o", label=tag)
    ax.set(xlabel="radius r", ylabel="loss increase", xscale="log", title="PGA loss increase")
    ax.legend()
    return fig


@register_plot("search_fitness")
def search_fitness(records: Records):
    """A loss search's fitness per generation: best so far, generation best and mean
    (lower is better)."""
    keys = {
        "search/best_fitness": "best so far",
        "search/generation_best": "generation best",
        "search/mean_fitness": "generation mean",
    }
    curves = {k: _series(records, k, "meta_step").get(0) for k in keys}
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in keys.items():
        if curves[key]:
            ax.plot(*curves[key], marker=".", label=label)
    ax.set(xlabel="generation", ylabel="fitness (val. error or MSE)", title="loss search")
    ax.legend()
    return fig


def plot(run_dir: str | Path, names: list[str] | None = None, logger=None) -> list[Path]:
    """Write every applicable plot of ``run_dir`` to ``run_dir/plots/<name>.png``.

    Args:
        run_dir: a run directory.
        names: only these plots (default: all in :data:`PLOTS`).
        logger: the run's live logger, if it is still open (the runner passes it); else
            the figures are appended to the run's W&B run, when it has one.

    Returns:
        The PNG paths written.
    """
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name in names or list(PLOTS):
        fig = PLOTS[name](records)
        if fig is None:
            continue
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if logger is not None:
        logger.log_images({f"plots/{p.stem}": p for p in written})
    else:
        _log_to_wandb(run_dir, written)
    return written


def _log_to_wandb(run_dir: Path, paths: list[Path]) -> None:
    """Append the figures to the run's own W&B run, when it has one."""
    if not paths or not (run_dir / "wandb_id").exists():
        return
    import wandb

    from learnreg.tracking.wandb_logger import wandb_mode

    run = wandb.init(
        id=(run_dir / "wandb_id").read_text().strip(),
        resume="allow",
        dir=str(run_dir),
        mode=wandb_mode(),
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )
    run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths})
    log_file = run.settings.sync_file if run.offline else None
    run.finish()
    if log_file:  # finish() can return before wandb-core has flushed the segment
        from learnreg.tracking.wandb_offline import wait_until_complete

        wait_until_complete(log_file)
