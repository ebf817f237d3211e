"""Widen the baseline's learning-rate grid of finished loss_learning runs, after the fact.

When validation picks the lowest or highest rate of the grid
(``baselines.tuned.settings.at_grid_edge`` in summary.json), the tuned baseline may be
stronger outside it, and the comparison is not yet against a tuned baseline. Re-running
every seed costs the whole meta-training again; this trains only the task loss at the
extra rates, from each run's own resolved config (same model seed, batch order and step
budget as the run's tuning), re-selects the rate by the **validation** metric over the
old and new grid points together, and prints learned minus the re-tuned baseline, paired
by seed, with Student-t intervals. The run's lowest stored grid point is trained again
first and must equal the stored value, so old and new points are the same computation.

Resumable: each run's extra points are cached in ``RUN/grid_extension.json``.

    python -m benchmarks.widen_grid --out DIR --presets ml3/diabetes_mlp \
        --lrs 2.15e-5 4.64e-5 1e-4 2.15e-4 4.64e-4
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from benchmarks.common import machine, paired_cell
from benchmarks.loss_learning import finished
from learnreg import config as configlib
from learnreg.eval import stats
from learnreg.eval.baselines import tune_seed
from learnreg.experiment import build


def extra_points(run_dir: Path, summary: dict, lrs: list[float]) -> list[dict]:
    """Validation and test metrics of the task loss at ``lrs`` for one finished run,
    ``[{"lr", "val", "test"}]``, computed once and cached beside the run."""
    cache = run_dir / "grid_extension.json"
    points = json.loads(cache.read_text()) if cache.exists() else []
    missing = [lr for lr in lrs if not any(math.isclose(lr, p["lr"]) for p in points)]
    if missing:
        stored = min(summary["baselines"]["tuned"]["settings"]["points"], key=lambda p: p["lr"])
        cfg = configlib.load(str(run_dir / "config.yaml"), ["logger.backends=[none]"])
        exp = build(cfg)
        row = tune_seed(
            exp.trainer, exp.baseline, 0, cfg["meta_test"]["steps"], [stored["lr"], *missing]
        )
        for name, value in row["val"][0].items():  # the same computation as the stored grid
            if not math.isclose(value, stored["val"][name], rel_tol=1e-5, abs_tol=1e-7):
                raise SystemExit(
                    f"error: {run_dir}: lr {stored['lr']} gives validation {name} {value}, "
                    f"the run stored {stored['val'][name]}; the code or data changed since "
                    "the run, so its grid cannot be extended"
                )
        points += [
            {"lr": lr, "val": val, "test": test}
            for lr, val, test in zip(missing, row["val"][1:], row["test"][1:])
        ]
        cache.write_text(json.dumps(points, indent=1))
    return points


def retuned(summary: dict, points: list[dict], metric: str) -> dict:
    """The best point by validation ``metric`` over the stored grid and ``points``."""
    grid = summary["baselines"]["tuned"]["settings"]["points"] + points
    sign = -1.0 if metric == "accuracy" else 1.0
    finite = [p for p in grid if math.isfinite(float(p["val"][metric]))]
    best = min(finite, key=lambda p: sign * float(p["val"][metric]))
    lrs = sorted(p["lr"] for p in grid)
    edge = "lowest" if best["lr"] == lrs[0] else "highest" if best["lr"] == lrs[-1] else None
    return {**best, "at_grid_edge": edge, "grid": lrs}


def report(root: Path, preset: str, lrs: list[float]) -> str:
    runs = finished(root, preset)
    if not runs:
        return f"{preset}: no finished runs under {root}"
    metric = "error" if "error" in runs[0][1]["test"] else "mse"
    lines = [f"**{preset}** (test {metric}, n = {len(runs)})", ""]
    lines.append(
        "| seed | tuned lr (9-point grid) | test | re-tuned lr (wider grid) | test | edge |"
    )
    lines.append("|---:|---:|---:|---:|---:|---|")
    learned, old, new = [], [], []
    for run_dir, summary in runs:
        best = retuned(summary, extra_points(run_dir, summary, lrs), metric)
        tuned = summary["baselines"]["tuned"]
        learned.append(float(summary["test"][metric]))
        old.append(float(tuned["test"][metric]))
        new.append(float(best["test"][metric]))
        lines.append(
            f"| {summary['seed']} | {tuned['settings']['lr']:.3g} | {old[-1]:.4g} | "
            f"{best['lr']:.3g} | {new[-1]:.4g} | {best['at_grid_edge'] or 'interior'} |"
        )
    mean = lambda v: stats.format_mean(stats.summarize(v), 3)  # noqa: E731
    lines += [
        "",
        f"learned {mean(learned)}; tuned on the 9-point grid {mean(old)}; "
        f"re-tuned on the wider grid {mean(new)}",
        f"learned − tuned (9-point grid):  {paired_cell(stats.paired(learned, old, metric))}",
        f"learned − re-tuned (wider grid): {paired_cell(stats.paired(learned, new, metric))}",
        "re-tuned − tuned:                "
        + paired_cell(stats.paired(new, old, metric))
        .replace("learned better", "the wider grid's choice better")
        .replace("baseline better", "the 9-point grid's choice better"),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the loss_learning run directories")
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--lrs", nargs="+", type=float, required=True, help="extra grid points")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    for preset in args.presets:
        print(report(Path(args.out), preset, args.lrs) + "\n")


if __name__ == "__main__":
    main()
