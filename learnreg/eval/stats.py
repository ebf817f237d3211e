"""Statistics over seeds that hold for small n: Student-t intervals and paired tests.

Every confidence interval the toolkit reports is a Student-t interval for the number of
values it has (with 2 seeds the normal 1.96 would be 6.5x too narrow), every mean is
reported with its n, and a difference is only called significant when its paired 95%
interval excludes zero.

References:
    Student (W. S. Gosset), "The probable error of a mean", Biometrika 6(1), 1908.
"""

from __future__ import annotations

import math

from scipy import stats as scipy_stats

#: metrics where larger is better; every other metric (error, loss, mse) is minimized.
HIGHER_IS_BETTER = frozenset({"accuracy"})


def t_half_width(std: float, n: int, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t confidence interval of a mean.

    Args:
        std: the sample standard deviation (``ddof=1``).
        n: the number of values.
        level: the confidence level.

    Returns:
        ``t_{(1+level)/2, n-1} · std / √n``; NaN when ``n < 2`` (no interval exists).
    """
    if n < 2:
        return math.nan
    return float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, 95% Student-t half-width and count.

    Non-finite values (a diverged run) make the mean non-finite: they are reported,
    never averaged away.
    """
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "ci95": t_half_width(std, n), "n": n}


def paired(learned: list[float], baseline: list[float], metric: str) -> dict:
    """Learned minus baseline, seed by seed (same seeds, same batch order).

    Args:
        learned: the learned run's metric per seed.
        baseline: the baseline's metric for the same seeds, in the same order.
        metric: the metric's name (sets which direction is a win).

    Returns:
        ``mean_diff`` (learned − baseline), ``ci95`` (Student-t half-width of the mean
        difference), ``ci95_low``/``ci95_high``, ``p_value`` (two-sided paired t-test,
        :func:`scipy.stats.ttest_rel`), ``wins`` (seeds where learned is strictly better),
        ``n`` and ``verdict`` (:func:`verdict`).
    """
    if len(learned) != len(baseline):
        raise ValueError(
            f"paired values need equal lengths, got {len(learned)} and {len(baseline)}"
        )
    diffs = [a - b for a, b in zip(learned, baseline)]
    s = summarize(diffs) if diffs else {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
    n = s["n"]
    if n >= 2 and all(math.isfinite(d) for d in diffs):
        p = 1.0 if s["std"] == 0 else float(scipy_stats.ttest_rel(learned, baseline).pvalue)
    else:
        p = math.nan
    higher = metric in HIGHER_IS_BETTER
    wins = sum((d > 0) if higher else (d < 0) for d in diffs)
    out = {
        "mean_diff": s["mean"],
        "ci95": s["ci95"],
        "ci95_low": s["mean"] - s["ci95"],
        "ci95_high": s["mean"] + s["ci95"],
        "p_value": p,
        "wins": wins,
        "n": n,
    }
    out["verdict"] = verdict(out, higher)
    return out


def verdict(diff: dict, higher_is_better: bool = False) -> str:
    """``learned better``, ``baseline better``, ``no significant difference`` (the
    paired 95% interval includes zero) or ``too few seeds`` (n < 2)."""
    low, high = diff["ci95_low"], diff["ci95_high"]
    if diff["n"] < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return "too few seeds" if diff["n"] < 2 else "not comparable (non-finite values)"
    if low <= 0 <= high:
        return "no significant difference"
    learned_higher = low > 0
    return "learned better" if learned_higher == higher_is_better else "baseline better"


def format_mean(s: dict, digits: int = 4) -> str:
    """``mean ± ci95 (n=…)``; the interval is omitted when it does not exist (n < 2)."""
    half = float(s.get("ci95", math.nan))  # "nan" as summary.json writes it
    ci = f" ± {half:.{digits}f}" if math.isfinite(half) else ""
    return f"{float(s['mean']):.{digits}f}{ci} (n={s['n']})"
