"""AdaLFL and ML3 against the task loss (CE or MSE), same budgets and seeds.

Each preset runs once per seed (meta-training included, so its randomness counts); the
baseline of a seed shares the learned run's model initialization and batch order. For
AdaLFL the gradient-scale ratio ‖∇ learned‖ / ‖∇ task loss‖ at the first and last
evaluation shows the implicit learning-rate schedule.

    python -m benchmarks.loss_learning [--seeds 5] [--presets adalfl/digits_mlp ml3/digits_mlp ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import learnreg
from benchmarks.common import machine

PRESETS = [
    "ml3/digits_mlp",
    "adalfl/digits_mlp",
    "ml3/diabetes_mlp",
    "adalfl/diabetes_mlp",
    "ml3/fmnist_cnn",
    "adalfl/fmnist_cnn",
]


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def grad_scale_trend(run_dir: Path) -> tuple[float, float] | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scales = [
        r["meta_test/learned/grad_scale"] for r in rows if "meta_test/learned/grad_scale" in r
    ]
    return (scales[0], scales[-1]) if scales else None


def run_preset(preset: str, seeds: int, root: Path, overrides: list[str]) -> dict:
    learned, baseline, seconds, trends = [], [], [], []
    for seed in range(seeds):
        out = root / preset.replace("/", "-") / f"seed{seed}"
        summary = learnreg.run(
            f"configs/{preset}.yaml",
            [f"seed={seed}", "logger.backends=[]", *overrides],
            out,
            progress=False,
        )
        metric = "error" if "error" in summary["test"] else "mse"
        learned.append(summary["test"][metric])
        baseline.append(summary["baseline"]["test"][metric])
        seconds.append(summary["meta_train_seconds"] + summary["meta_test_seconds"])
        trend = grad_scale_trend(out)
        if trend:
            trends.append(trend)
    wins = sum(a <= b for a, b in zip(learned, baseline))
    return {
        "preset": preset,
        "metric": metric,
        "learned": _mean_std(learned),
        "baseline": _mean_std(baseline),
        "wins": f"{wins}/{seeds}",
        "seconds": statistics.mean(seconds),
        "grad_scale": f"{statistics.mean(t[0] for t in trends):.2f} → {statistics.mean(t[1] for t in trends):.2f}"
        if trends
        else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--out", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every preset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        rows = [run_preset(p, args.seeds, root, args.overrides) for p in args.presets]
    print(f"machine: {machine()}\n")
    print(
        "| preset | test metric | learned | baseline (task loss) | learned ≤ baseline | grad-scale ratio (start → end) | s/seed |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['metric']} | {r['learned']} | {r['baseline']} | {r['wins']} | {r['grad_scale']} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
