"""The comparison blocks of ``summary.json`` and their console form.

``summary.json`` holds the learned run's test metrics (``test``, ``test_std``,
``test_ci95``, ``n``, ``n_test``) and, under ``baselines``, one block of the same shape
per comparison: ``same_settings`` (the task loss at the run's own learning rate),
``tuned`` (its learning rate chosen on validation, :mod:`learnreg.eval.baselines`) and
the meta-trained controls (``learned_lr``). ``paired`` holds learned minus each
baseline seed by seed (:func:`learnreg.eval.stats.paired`).
"""

from __future__ import annotations

import math

from learnreg.eval import stats
from learnreg.eval.baselines import grid_table, select


def block(per_seed: list[dict], n_test: int, settings: dict | None = None) -> dict:
    """Mean, std, Student-t 95% half-width and n of every test metric over seeds."""
    names = [m for m in (per_seed[0] if per_seed else {}) if m != "diverged_at"]
    summaries = {m: stats.summarize([r[m] for r in per_seed]) for m in names}
    out = {
        "test": {m: s["mean"] for m, s in summaries.items()},
        "test_std": {m: s["std"] for m, s in summaries.items()},
        "test_ci95": {m: s["ci95"] for m, s in summaries.items()},
        "n": len(per_seed),
        "n_test": n_test,
        "diverged": sum("diverged_at" in r for r in per_seed),
        "per_seed": per_seed,
    }
    if settings is not None:
        out["settings"] = settings
    return out


def tuned_block(lrs: list[float], seeds: list[dict], metric: str, n_test: int, extra: dict) -> dict:
    """The tuned side: the test metrics of the learning rate chosen on validation, with
    the grid and every grid point's mean validation and test metrics."""
    chosen = select(lrs, seeds, metric)
    per_seed = []
    for s in seeds:
        row = dict(s["test"][chosen])
        if s["diverged_at"][chosen] is not None:
            row["diverged_at"] = s["diverged_at"][chosen]
        per_seed.append(row)
    settings = {
        **extra,
        "lr": lrs[chosen],
        "grid": lrs,
        "selected_by": f"mean validation {metric} over {len(seeds)} seeds",
        "tuned_on": seeds[0]["tuned_on"] if seeds else None,
        "points": grid_table(lrs, seeds),
        "at_grid_edge": grid_edge(lrs, chosen),
    }
    return block(per_seed, n_test, settings)


def grid_edge(lrs: list[float], chosen: int) -> str | None:
    """``lowest`` or ``highest`` when validation chose the grid's end: the best rate may
    lie beyond it, so the tuned baseline may be under-tuned (widen ``baseline.tune.grid``)."""
    if len(lrs) < 2:
        return None
    ordered = sorted(lrs)
    if lrs[chosen] == ordered[0]:
        return "lowest"
    return "highest" if lrs[chosen] == ordered[-1] else None


def paired_table(learned: list[dict], baselines: dict[str, dict]) -> dict:
    """``{baseline: {metric: paired statistics}}``: learned minus baseline per seed, over
    the seeds both have."""
    out = {}
    for name, base in baselines.items():
        rows = base["per_seed"]
        n = min(len(learned), len(rows))
        if n == 0:
            continue
        metrics = [m for m in learned[0] if m != "diverged_at" and m in rows[0]]
        out[name] = {
            m: stats.paired([r[m] for r in learned[:n]], [r[m] for r in rows[:n]], m)
            for m in metrics
        }
    return out


LABELS = {
    "same_settings": "task loss, same settings",
    "tuned": "task loss, tuned lr",
    "learned_lr": "learned-lr control",
}


def _label(name: str, base: dict) -> str:
    settings = base.get("settings", {})
    label = LABELS.get(name, name)
    if isinstance(settings.get("meta_learned_lr"), (int, float)):  # where meta-test starts
        return f"{label} (meta-learned lr {settings['meta_learned_lr']:.3g})"
    lr = settings.get("lr")
    if not isinstance(lr, (int, float)):
        return label
    edge = settings.get("at_grid_edge")
    note = f", the grid's {edge} rate: widen baseline.tune.grid" if edge else ""
    return f"{label} (lr {lr:.3g}{note})"


def _metrics_line(block_: dict) -> str:
    parts = []
    for m, mean in block_["test"].items():
        if m == "accuracy":
            continue
        s = {"mean": mean, "ci95": block_["test_ci95"][m], "n": block_["n"]}
        parts.append(f"{m} {stats.format_mean(s)}")
    return ", ".join(parts)


def format_comparison(summary: dict) -> list[str]:
    """Lines: the learned result and every baseline (mean ± t-CI, n), then the paired
    verdict of learned minus each baseline on the primary metric."""
    learned = {k: summary[k] for k in ("test", "test_ci95")} | {"n": summary.get("n", 0)}
    rows = [("learned", learned), *((_label(k, v), v) for k, v in summary["baselines"].items())]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  test {_metrics_line(b)}" for name, b in rows if b.get("test")]
    metric = "error" if "error" in summary["test"] else "mse"
    for name, diffs in summary.get("paired", {}).items():
        d = diffs.get(metric)
        if d is None:
            continue
        half, p_value = float(d["ci95"]), float(d["p_value"])  # "nan" read back from JSON
        ci = f" ± {half:.4f}" if math.isfinite(half) else ""
        p = f", p={p_value:.3g}" if math.isfinite(p_value) else ""
        lines.append(
            f"  learned − {LABELS.get(name, name)}: {metric} {float(d['mean_diff']):+.4f}{ci}"
            f" (paired t, n={d['n']}{p}, learned better on {d['wins']}/{d['n']}): {d['verdict']}"
        )
    return lines


def format_summary(summary: dict) -> str:
    """The learned result and every baseline (mean ± Student-t 95% CI, n), and the
    paired verdicts; summaries written before the baselines protocol print as before."""
    n = summary.get("n", summary["meta_test_seeds"])
    n_test = f", {summary['n_test']} test examples each" if "n_test" in summary else ""
    lines = [f"{summary['method']} on {summary['task']} ({n} meta-test seeds{n_test}):"]
    if "baselines" in summary:
        lines += format_comparison(summary)
    else:
        for name, block in (("learned ", summary), ("baseline", summary.get("baseline") or {})):
            if block.get("test"):
                parts = [
                    f"{m} {v:.4f} ± {block['test_std'].get(m, 0.0):.4f}"
                    for m, v in block["test"].items()
                    if m != "accuracy"
                ]
                lines.append(f"  {name}  test " + ", ".join(parts))
    blocks = [("learned", summary), *summary.get("baselines", {}).items()]
    for name, block in blocks:
        if block.get("diverged"):
            lines.append(
                f"  WARNING: {block['diverged']} {name} run(s) diverged (per_seed.diverged_at)"
            )
    lines.append(
        f"  meta-train {summary['meta_train_seconds']:.1f}s, meta-test {summary['meta_test_seconds']:.1f}s"
        + (f", lr tuning {summary['tune_seconds']:.1f}s" if summary.get("tune_seconds") else "")
        + (
            f", controls {summary['controls_seconds']:.1f}s"
            if summary.get("controls_seconds")
            else ""
        )
    )
    return "\n".join(lines)
